package backend

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/internal/flock"
)

// FileOptions configures OpenFile.
type FileOptions struct {
	// Direct opens the device with O_DIRECT, bypassing the page cache.
	// Offsets and lengths must then be multiples of the device's direct-I/O
	// alignment (File.Alignment, 512 on most file systems); buffers of any
	// address are accepted (unaligned ones go through an aligned bounce
	// buffer).
	Direct bool
	// ReadOnly opens the device read-only; writes and discards fail with
	// ErrReadOnly.
	ReadOnly bool
	// Create creates a regular file that does not exist yet (Size must then
	// be positive).
	Create bool
	// Size, if positive, is the device size. A regular file smaller than Size
	// is extended (sparse); a larger file or block device exposes only its
	// first Size bytes. A block device smaller than Size is an error.
	Size int64
}

// File is a backing device on a regular file or a block device. Flush is
// fdatasync; Discard punches a hole (fallocate PUNCH_HOLE|KEEP_SIZE, which
// block devices implement as zero-out) and falls back to writing zeroes.
type File struct {
	path string
	// size is what requests are checked against; PollSize moves it.
	size atomic.Int64
	// limit is FileOptions.Size when the device was larger at open (it
	// exposes only its first limit bytes), else 0.
	limit    int64
	direct   bool
	readOnly bool
	align    int64 // offset/length alignment for O_DIRECT (1 without)
	memAlign int   // buffer address alignment for O_DIRECT

	bounce sync.Pool // *[]byte of bounceSize bytes, memAlign-aligned

	mu     sync.RWMutex // RLock per request; Lock to close, so the fd is never reused under a request
	fd     int
	closed bool
	punch  bool // fallocate punch-hole still believed to work; guarded by punchMu

	punchMu sync.Mutex
}

var _ Device = (*File)(nil)

const bounceSize = 1 << 20

// OpenFile opens a regular file or a block device as a backing device.
func OpenFile(path string, opts FileOptions) (*File, error) {
	flags := unix.O_CLOEXEC
	if opts.ReadOnly {
		flags |= unix.O_RDONLY
	} else {
		flags |= unix.O_RDWR
	}
	if opts.Create {
		if opts.ReadOnly {
			return nil, fmt.Errorf("backend: open %s: Create with ReadOnly", path)
		}
		flags |= unix.O_CREAT
	}
	if opts.Direct {
		flags |= unix.O_DIRECT
	}
	// A block device is claimed with O_EXCL, as bcache claims its devices:
	// the kernel then refuses it to mounts and to every other exclusive
	// opener, cachelun or not.
	var pre unix.Stat_t
	isBlock := unix.Stat(path, &pre) == nil && pre.Mode&unix.S_IFMT == unix.S_IFBLK
	if isBlock {
		flags |= unix.O_EXCL
	}
	fd, err := unix.Open(path, flags, 0o600)
	if err != nil {
		if isBlock && errors.Is(err, unix.EBUSY) {
			return nil, busyDevice(path)
		}
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	// Claimed before anything is read or written (the size check of init
	// may extend a file): a second daemon naming the same backing device
	// is refused with the holder's pid. Read-only opens share the claim.
	mode := flock.Exclusive
	if opts.ReadOnly {
		mode = flock.Shared
	}
	what := "backing file"
	if isBlock {
		what = "backing block device"
	}
	if err := flock.Lock(fd, mode, what, path); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("backend: %w", err)
	}
	f := &File{path: path, fd: fd, direct: opts.Direct, readOnly: opts.ReadOnly, align: 1, memAlign: 1, punch: true}
	if err := f.init(opts); err != nil {
		unix.Close(fd)
		return nil, err
	}
	memAlign := f.memAlign
	f.bounce.New = func() any {
		b := alignedBuffer(bounceSize, memAlign)
		return &b
	}
	return f, nil
}

// busyDevice is the refusal of a block device another exclusive opener
// holds: a cachelun process (whose flock claim names it) or a mount, a
// device mapper or md array, which the kernel does not name here.
func busyDevice(path string) error {
	if fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0); err == nil {
		defer unix.Close(fd)
		if pid, ok := flock.Holder(fd); ok {
			return fmt.Errorf("backend: %w: backing block device %s is in use by another process (pid %d); a second process must not open it", flock.ErrLocked, path, pid)
		}
	}
	return fmt.Errorf("backend: %w: backing block device %s is in use (mounted, or opened exclusively by another process); a second process must not open it", flock.ErrLocked, path)
}

func (f *File) init(opts FileOptions) error {
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err != nil {
		return &os.PathError{Op: "fstat", Path: f.path, Err: err}
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFBLK:
		var devSize uint64
		if err := ioctlGetUint64(f.fd, unix.BLKGETSIZE64, &devSize); err != nil {
			return &os.PathError{Op: "ioctl BLKGETSIZE64", Path: f.path, Err: err}
		}
		f.size.Store(int64(devSize))
		if opts.Size > 0 {
			if opts.Size > int64(devSize) {
				return fmt.Errorf("backend: %s: block device has %d bytes, %d requested: %w", f.path, devSize, opts.Size, blk.ErrOutOfRange)
			}
			if opts.Size < int64(devSize) {
				f.limit = opts.Size
			}
			f.size.Store(opts.Size)
		}
		if f.direct {
			lbs, err := unix.IoctlGetInt(f.fd, unix.BLKSSZGET)
			if err != nil || lbs <= 0 {
				lbs = 512
			}
			f.align, f.memAlign = int64(lbs), max(lbs, 4096)
		}
	case unix.S_IFREG:
		f.size.Store(st.Size)
		if opts.Size > 0 {
			if st.Size > opts.Size {
				f.limit = opts.Size
			}
			if st.Size < opts.Size {
				if f.readOnly {
					return fmt.Errorf("backend: %s: read-only file has %d bytes, %d requested: %w", f.path, st.Size, opts.Size, blk.ErrOutOfRange)
				}
				if err := unix.Ftruncate(f.fd, opts.Size); err != nil {
					return &os.PathError{Op: "ftruncate", Path: f.path, Err: err}
				}
			}
			f.size.Store(opts.Size)
		}
		if f.direct {
			f.align, f.memAlign = 512, 4096
			var sx unix.Statx_t
			if err := unix.Statx(f.fd, "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &sx); err == nil &&
				sx.Mask&unix.STATX_DIOALIGN != 0 && sx.Dio_offset_align > 0 {
				f.align = int64(sx.Dio_offset_align)
				f.memAlign = max(int(sx.Dio_mem_align), 4096)
			}
		}
	default:
		return fmt.Errorf("backend: %s: not a regular file or block device", f.path)
	}
	if size := f.size.Load(); f.direct && size%f.align != 0 {
		return fmt.Errorf("backend: %s: size %d not a multiple of the direct-I/O alignment %d: %w", f.path, size, f.align, blk.ErrMisaligned)
	}
	return nil
}

func ioctlGetUint64(fd int, req uint, v *uint64) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(v)))
	if errno != 0 {
		return errno
	}
	return nil
}

// alignedBuffer returns n bytes whose address is a multiple of align.
func alignedBuffer(n, align int) []byte {
	if align <= 1 {
		return make([]byte, n)
	}
	b := make([]byte, n+align)
	shift := 0
	if r := int(uintptr(unsafe.Pointer(&b[0])) % uintptr(align)); r != 0 {
		shift = align - r
	}
	return b[shift : shift+n : shift+n]
}

func (f *File) isAligned(p []byte) bool {
	return len(p) == 0 || uintptr(unsafe.Pointer(&p[0]))%uintptr(f.memAlign) == 0
}

// Path returns the path the device was opened with.
func (f *File) Path() string { return f.path }

// Size returns the device size in bytes.
func (f *File) Size() int64 { return f.size.Load() }

// PollSize re-reads the size of the file (fstat) or block device
// (BLKGETSIZE64) and makes it the device's Size: a file grown with truncate
// or a resized block device (a grown logical volume, a rescanned LUN) is
// served up to its new end, one that shrank fails requests past its new end.
// A device opened with FileOptions.Size smaller than itself keeps that
// limit; with Direct the size is rounded down to the alignment. changed
// reports a difference from the previous Size.
func (f *File) PollSize() (size int64, changed bool, err error) {
	if err := f.acquire(context.Background()); err != nil {
		return 0, false, err
	}
	defer f.mu.RUnlock()
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err != nil {
		return 0, false, &os.PathError{Op: "fstat", Path: f.path, Err: err}
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFBLK:
		var devSize uint64
		if err := ioctlGetUint64(f.fd, unix.BLKGETSIZE64, &devSize); err != nil {
			return 0, false, &os.PathError{Op: "ioctl BLKGETSIZE64", Path: f.path, Err: err}
		}
		size = int64(devSize)
	default:
		size = st.Size
	}
	if f.limit > 0 {
		size = min(size, f.limit)
	}
	size -= size % f.align
	old := f.size.Swap(size)
	return size, old != size, nil
}

// Alignment returns the offset and length alignment requests must respect:
// the direct-I/O alignment with Direct, 1 otherwise.
func (f *File) Alignment() int64 { return f.align }

func (f *File) check(what string, off, n int64) error {
	if err := checkRange(what, off, n, f.size.Load()); err != nil {
		return err
	}
	if off%f.align != 0 || n%f.align != 0 {
		return fmt.Errorf("backend: %s %s [%d,+%d) not aligned to %d for O_DIRECT: %w", what, f.path, off, n, f.align, blk.ErrMisaligned)
	}
	return nil
}

// acquire takes the close lock for one request; release with f.mu.RUnlock.
func (f *File) acquire(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.RLock()
	if f.closed {
		f.mu.RUnlock()
		return ErrClosed
	}
	return nil
}

func (f *File) ioError(op string, off int64, n int, err error) error {
	return fmt.Errorf("backend: %s %s [%d,+%d): %w: %w", op, f.path, off, n, blk.ErrMedium, err)
}

// ReadAt fills p from off.
func (f *File) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := f.check("read", off, int64(len(p))); err != nil {
		return err
	}
	if err := f.acquire(ctx); err != nil {
		return err
	}
	defer f.mu.RUnlock()
	if !f.direct || f.isAligned(p) {
		return f.preadFull(p, off)
	}
	bp := f.bounce.Get().(*[]byte)
	defer f.bounce.Put(bp)
	for len(p) > 0 {
		n := min(len(p), bounceSize)
		if err := f.preadFull((*bp)[:n], off); err != nil {
			return err
		}
		copy(p, (*bp)[:n])
		p, off = p[n:], off+int64(n)
	}
	return nil
}

func (f *File) preadFull(p []byte, off int64) error {
	for len(p) > 0 {
		n, err := unix.Pread(f.fd, p, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return f.ioError("read", off, len(p), err)
		}
		if n == 0 {
			// Inside Size but past the end of the file: a regular file that
			// was truncated under us. Hosts must not see invented zeroes.
			return f.ioError("read", off, len(p), errors.New("unexpected end of file"))
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// WriteAt writes p at off. It is durable after the next Flush.
func (f *File) WriteAt(ctx context.Context, p []byte, off int64) error {
	if f.readOnly {
		return ErrReadOnly
	}
	if err := f.check("write", off, int64(len(p))); err != nil {
		return err
	}
	if err := f.acquire(ctx); err != nil {
		return err
	}
	defer f.mu.RUnlock()
	if !f.direct || f.isAligned(p) {
		return f.pwriteFull(p, off)
	}
	bp := f.bounce.Get().(*[]byte)
	defer f.bounce.Put(bp)
	for len(p) > 0 {
		n := min(len(p), bounceSize)
		copy(*bp, p[:n])
		if err := f.pwriteFull((*bp)[:n], off); err != nil {
			return err
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

func (f *File) pwriteFull(p []byte, off int64) error {
	for len(p) > 0 {
		n, err := unix.Pwrite(f.fd, p, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return f.ioError("write", off, len(p), err)
		}
		if n == 0 {
			return f.ioError("write", off, len(p), errors.New("short write"))
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// Flush makes completed writes durable (fdatasync).
func (f *File) Flush(ctx context.Context) error {
	if err := f.acquire(ctx); err != nil {
		return err
	}
	defer f.mu.RUnlock()
	if f.readOnly {
		return nil
	}
	for {
		err := unix.Fdatasync(f.fd)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return f.ioError("flush", 0, 0, err)
		}
		return nil
	}
}

// Discard zeroes [off, off+n): a punched hole where the file system or device
// supports it, written zeroes otherwise.
func (f *File) Discard(ctx context.Context, off, n int64) error {
	if f.readOnly {
		return ErrReadOnly
	}
	if err := f.check("discard", off, n); err != nil {
		return err
	}
	if err := f.acquire(ctx); err != nil {
		return err
	}
	defer f.mu.RUnlock()
	if n == 0 {
		return nil
	}
	f.punchMu.Lock()
	punch := f.punch
	f.punchMu.Unlock()
	if punch {
		err := unix.Fallocate(f.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
		for err == unix.EINTR {
			err = unix.Fallocate(f.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
		}
		switch {
		case err == nil:
			return nil
		case err == unix.EOPNOTSUPP || err == unix.ENOSYS:
			f.punchMu.Lock()
			f.punch = false
			f.punchMu.Unlock()
		case err == unix.EINVAL:
			// Misaligned for this device: fall back for this request only.
		default:
			return f.ioError("discard", off, int(n), err)
		}
	}
	return f.writeZeroes(ctx, off, n)
}

func (f *File) writeZeroes(ctx context.Context, off, n int64) error {
	bp := f.bounce.Get().(*[]byte)
	defer f.bounce.Put(bp)
	clear(*bp)
	for n > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		k := min(n, bounceSize)
		if err := f.pwriteFull((*bp)[:k], off); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}

// Close closes the file after in-flight requests finish.
func (f *File) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	if err := unix.Close(f.fd); err != nil {
		return &os.PathError{Op: "close", Path: f.path, Err: err}
	}
	return nil
}
