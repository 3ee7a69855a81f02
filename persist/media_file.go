//go:build linux

package persist

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cachelun/cachelun/internal/flock"
)

const (
	mapSharedValidate = 0x03
	mapSync           = 0x80000
	pageSize          = 4096
)

// fileMedia is a cache file persisted by one of three mechanisms (see
// MediaKind). Reads (and writes for DAX and mmap-msync) go through a shared
// mapping with SetPanicOnFault, so a SIGBUS becomes ErrMediaFault.
//
// Locking: closeMu (read-held by every access, write-held by Close) keeps
// the mapping alive while it is used; the flusher has its own mutex.
type fileMedia struct {
	f        *os.File
	fd       int
	size     int64
	kind     MediaKind
	readOnly bool
	mapping  []byte
	flushCPU func([]byte) // DAX only

	closeMu sync.RWMutex
	closed  bool
	// removeOnClose is the temporary name of a file CreateFile made and
	// nobody committed: Close removes it while the claim still holds.
	removeOnClose string

	fl flusher
}

// WritableKind is the media kind a read-write open of the file at path
// picks (DAX where the file system offers MAP_SYNC): a read-only open
// always reports a non-DAX kind, so inspect asks this. The file must not be
// open (the read-write open claims it); on any error it returns fallback.
func WritableKind(path string, fallback MediaKind) MediaKind {
	m, err := OpenFile(path, FileOptions{})
	if err != nil {
		return fallback
	}
	defer m.Close()
	return m.Kind()
}

// OpenFile is OpenFileContext without cancellation.
func OpenFile(path string, opts FileOptions) (Media, error) {
	return OpenFileContext(context.Background(), path, opts)
}

// OpenFileContext opens (or creates) a cache file. Unless opts.Kind forces
// one, it tries a MAP_SYNC mapping (DAX) and falls back to DefaultFileKind;
// the choice is logged and reported by Kind.
//
// Before it reads or writes anything it claims the file (internal/flock):
// exclusively, or shared when opts.ReadOnly, so read-only commands may run
// side by side but never while a daemon or format holds the file. A file
// held by another process, or by another open in this one, is refused with
// an error wrapping flock.ErrLocked that names the holder's pid. The claim
// lasts until Close.
//
// When it creates or grows the file it first checks the file system's free
// space (ErrNoSpace, with the figures), reserves the new blocks with
// fallocate (a failure is a refusal, except on a file system without
// fallocate), then zero-fills them if asked, checking ctx between chunks.
// If any of that fails or ctx ends, the file is put back: a file this call
// created is removed (before the claim is released, so no other process
// can have opened it meanwhile), a grown one is cut back to its old size.
func OpenFileContext(ctx context.Context, path string, opts FileOptions) (Media, error) {
	flag := os.O_RDWR
	if opts.ReadOnly {
		flag = os.O_RDONLY
	}
	created := false
	f, err := os.OpenFile(path, flag, 0o600)
	if errors.Is(err, os.ErrNotExist) && opts.Create && !opts.ReadOnly {
		f, err = os.OpenFile(path, flag|os.O_CREATE|os.O_EXCL, 0o600)
		created = err == nil
	}
	if err != nil {
		return nil, fmt.Errorf("persist: open cache file: %w", err)
	}
	mode := flock.Exclusive
	if opts.ReadOnly {
		mode = flock.Shared
	}
	if err := flock.Lock(int(f.Fd()), mode, "cache file", path); err != nil {
		// A file this call created and another process claimed at once
		// is that process's now: leave it.
		f.Close()
		return nil, fmt.Errorf("persist: %w", err)
	}
	var undo func()
	if created {
		undo = func() { os.Remove(path) }
	}
	m, err := openClaimed(ctx, f, path, opts, undo)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// CreatingSuffix names a cache file while CreateFile builds it.
const CreatingSuffix = ".creating"

// CreateFile creates a cache file of opts.Size bytes that does not exist
// yet at path. It builds it under path+CreatingSuffix, which it claims
// first (a file another process is creating is refused with its pid; one a
// crash left behind is emptied and reused), then checks the free space,
// reserves and zero-fills it as OpenFileContext does. The caller formats
// the returned media and calls commit, which renames the file to path
// (durably, and never over a file that appeared there meanwhile). Until
// commit succeeds, closing the media removes the file: a failed or
// cancelled creation leaves nothing under either name.
func CreateFile(ctx context.Context, path string, opts FileOptions) (m Media, commit func() error, err error) {
	if opts.ReadOnly || opts.Size <= 0 {
		return nil, nil, fmt.Errorf("%w: create %s: needs a size and write access", ErrInvalidArgument, path)
	}
	if _, err := os.Lstat(path); err == nil {
		return nil, nil, fmt.Errorf("%w: create %s: the file exists", ErrInvalidArgument, path)
	}
	// Refused before the temporary file exists. (openClaimed checks again
	// once it is claimed: space may have gone meanwhile.)
	if err := checkFreeSpace(filepath.Dir(path), path, opts.Size); err != nil {
		return nil, nil, err
	}
	tmp := path + CreatingSuffix
	f, err := flock.OpenLocked(tmp, os.O_RDWR|os.O_CREATE, 0o600, flock.Exclusive, "cache file being created")
	if err != nil {
		return nil, nil, fmt.Errorf("persist: %w", err)
	}
	// What a crash during an earlier creation left was never formatted.
	if err := f.Truncate(0); err != nil {
		os.Remove(tmp)
		f.Close()
		return nil, nil, fmt.Errorf("persist: create %s: %w", tmp, err)
	}
	opts.Create = true
	fm, err := openClaimed(ctx, f, tmp, opts, func() { os.Remove(tmp) })
	if err != nil {
		return nil, nil, err
	}
	fm.removeOnClose = tmp
	commit = func() error {
		if err := renameNoReplace(tmp, path); err != nil {
			return fmt.Errorf("persist: create %s: %w", path, err)
		}
		fm.removeOnClose = ""
		d, err := os.Open(filepath.Dir(path))
		if err != nil {
			return fmt.Errorf("persist: create %s: %w", path, err)
		}
		defer d.Close()
		if err := d.Sync(); err != nil {
			return fmt.Errorf("persist: create %s: sync directory: %w", path, err)
		}
		return nil
	}
	return fm, commit, nil
}

// renameNoReplace renames from to to unless to exists; a file system
// without RENAME_NOREPLACE gets a plain rename after a check.
func renameNoReplace(from, to string) error {
	err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.ENOTSUP) {
		if _, serr := os.Lstat(to); serr == nil {
			return &os.LinkError{Op: "rename", Old: from, New: to, Err: os.ErrExist}
		}
		return os.Rename(from, to)
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	return nil
}

// MinMediaSize is the smallest cache file Format accepts with segments of
// segmentSize bytes (0: the default) that a cache can run on: the
// superblock area and three segments, the engine's minimum (one for the
// open kset, one being filled, one for GC to free).
func MinMediaSize(segmentSize uint32) int64 {
	if segmentSize == 0 {
		segmentSize = DefaultSegmentSize
	}
	return SegmentsOffset + 3*int64(segmentSize)
}

// checkFreeSpace refuses to add n bytes to the file path when the file
// system of dir (its directory) has less free space for unprivileged
// writers.
func checkFreeSpace(dir, path string, n int64) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("persist: statfs %s: %w", dir, err)
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	if n > free {
		return fmt.Errorf("%w: %s needs %s, the file system of %s has %s free", ErrNoSpace, path, humanBytes(n), dir, humanBytes(free))
	}
	return nil
}

// humanBytes prints n in binary units with one decimal ("72.0 GiB").
func humanBytes(n int64) string {
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	if n < 1024 {
		return fmt.Sprintf("%d bytes", n)
	}
	v, u := float64(n)/1024, 0
	for v >= 1024 && u < len(units)-1 {
		v, u = v/1024, u+1
	}
	return fmt.Sprintf("%.1f %s", v, units[u])
}

// openClaimed is OpenFileContext on a file already opened and claimed.
// undo, if not nil, puts back what the caller did before (removes a file
// it created); it runs, before f is closed, when the open fails.
func openClaimed(ctx context.Context, f *os.File, path string, opts FileOptions, undo func()) (_ *fileMedia, err error) {
	log := discardLogger(opts.Logger)
	ok := false
	defer func() {
		if !ok {
			if undo != nil {
				undo()
			}
			f.Close()
		}
	}()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("persist: stat %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrInvalidArgument, path)
	}
	size := st.Size()
	if opts.Size > 0 && size != opts.Size && !opts.ReadOnly {
		if size > opts.Size && !opts.Create {
			return nil, fmt.Errorf("%w: %s is %d bytes, larger than the requested %d", ErrInvalidArgument, path, size, opts.Size)
		}
		if opts.Size > size {
			if err := checkFreeSpace(filepath.Dir(path), path, opts.Size-size); err != nil {
				return nil, err
			}
			if undo == nil {
				old := size
				undo = func() { f.Truncate(old) }
			}
			// Reserve the blocks first: a sparse cache file could run out
			// of space under a live mapping (SIGBUS) or in the middle of a
			// write, and allocating blocks on every first write makes
			// each flush also write allocation metadata.
			err := fallocate(m0fd(f), size, opts.Size-size)
			switch {
			case err == nil:
			case errors.Is(err, syscall.EOPNOTSUPP):
				log.Info("cache media: the file system has no fallocate; the file stays sparse until written", "path", path)
				if err := f.Truncate(opts.Size); err != nil {
					return nil, fmt.Errorf("persist: size %s to %d: %w", path, opts.Size, err)
				}
			case errors.Is(err, syscall.ENOSPC):
				return nil, fmt.Errorf("%w: reserving %s for %s: %w", ErrNoSpace, humanBytes(opts.Size-size), path, err)
			default:
				return nil, fmt.Errorf("persist: reserving %d bytes for %s: %w", opts.Size-size, path, err)
			}
			if opts.ZeroFill {
				start := time.Now()
				if err := zeroFill(ctx, path, f, size, opts.Size-size); err != nil {
					return nil, fmt.Errorf("persist: zero-fill %s: %w", path, err)
				}
				log.Info("cache media: zero-filled", "path", path, "bytes", opts.Size-size, "took", time.Since(start).Round(time.Millisecond))
			}
		} else if err := f.Truncate(opts.Size); err != nil {
			return nil, fmt.Errorf("persist: size %s to %d: %w", path, opts.Size, err)
		}
		size = opts.Size
	}
	if size <= 0 {
		return nil, fmt.Errorf("%w: %s is empty", ErrInvalidArgument, path)
	}
	m := &fileMedia{f: f, fd: int(f.Fd()), size: size, readOnly: opts.ReadOnly}
	m.fl.init()

	kind := opts.Kind
	if kind == "" || kind == KindDAX {
		flushCPU, instr := cacheFlusher()
		if daxSupported && flushCPU != nil && !opts.ReadOnly {
			b, err := syscall.Mmap(m.fd, 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, mapSharedValidate|mapSync)
			if err == nil {
				m.mapping, m.kind, m.flushCPU = b, KindDAX, flushCPU
				// The instruction is in the line so that a run on a CPU
				// model without CLWB shows the fallback it took.
				log.Info("cache media: DAX mapping (MAP_SYNC)", "path", path, "size", size, "flush", instr, "persist", instr+"+sfence")
				ok = true
				return m, nil
			}
			if kind == KindDAX {
				return nil, fmt.Errorf("persist: MAP_SYNC mapping of %s: %w", path, err)
			}
			log.Info("cache media: MAP_SYNC unavailable, using the non-DAX path", "path", path, "err", err, "kind", DefaultFileKind)
		} else if kind == KindDAX {
			return nil, fmt.Errorf("%w: DAX needs a writable file on amd64 with CLWB, CLFLUSHOPT or CLFLUSH", ErrInvalidArgument)
		}
		if daxSupported && flushCPU == nil && !opts.ReadOnly {
			log.Info("cache media: this CPU has no cache-line write-back instruction (CPUID: no CLWB, CLFLUSHOPT or CLFLUSH); DAX is not tried", "path", path, "kind", DefaultFileKind)
		}
		kind = DefaultFileKind
	}
	prot := syscall.PROT_READ
	if kind == KindMmapMsync && !opts.ReadOnly {
		prot |= syscall.PROT_WRITE
	}
	switch kind {
	case KindMmapMsync, KindPwriteFdatasync:
	default:
		return nil, fmt.Errorf("%w: media kind %q", ErrInvalidArgument, kind)
	}
	b, err := syscall.Mmap(m.fd, 0, int(size), prot, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("persist: mmap %s: %w", path, err)
	}
	// Faults fill single pages instead of readahead-built large folios: a
	// later msync or writeback of one dirty 4 KiB page then writes 4 KiB,
	// not a whole folio (doc.go, "Media measurements").
	_ = syscall.Madvise(b, syscall.MADV_RANDOM)
	m.mapping, m.kind = b, kind
	log.Info("cache media: non-DAX file", "path", path, "size", size, "kind", kind)
	ok = true
	return m, nil
}

func (m *fileMedia) Size() int64     { return m.size }
func (m *fileMedia) Kind() MediaKind { return m.kind }

// Flushes is the number of device flushes (msync, fdatasync or CPU cache
// write-back rounds) performed so far.
func (m *fileMedia) Flushes() uint64 {
	m.fl.mu.Lock()
	defer m.fl.mu.Unlock()
	return m.fl.done
}

// guardedCopy copies with SetPanicOnFault so that a SIGBUS on the mapping
// (I/O error, file truncated underneath) is returned as ErrMediaFault.
func guardedCopy(dst, src []byte, what string, off int64) (err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if r := recover(); r != nil {
			re, isRT := r.(runtime.Error)
			fa, isFault := r.(interface{ Addr() uintptr })
			if !isRT || !isFault {
				panic(r)
			}
			err = fmt.Errorf("%w: %s at offset %d: memory fault at %#x: %v", ErrMediaFault, what, off, fa.Addr(), re)
		}
	}()
	copy(dst, src)
	return nil
}

func (m *fileMedia) ReadAt(p []byte, off int64) error {
	if err := checkRange(m.size, off, int64(len(p))); err != nil {
		return err
	}
	m.closeMu.RLock()
	defer m.closeMu.RUnlock()
	if m.closed {
		return ErrClosed
	}
	return guardedCopy(p, m.mapping[off:off+int64(len(p))], "read", off)
}

func (m *fileMedia) WriteAt(p []byte, off int64) error {
	if err := checkRange(m.size, off, int64(len(p))); err != nil {
		return err
	}
	if m.readOnly {
		return fmt.Errorf("%w: media opened read-only", ErrInvalidArgument)
	}
	m.closeMu.RLock()
	defer m.closeMu.RUnlock()
	if m.closed {
		return ErrClosed
	}
	if m.kind == KindPwriteFdatasync {
		for done := 0; done < len(p); {
			n, err := syscall.Pwrite(m.fd, p[done:], off+int64(done))
			if err != nil {
				if errors.Is(err, syscall.EINTR) {
					continue
				}
				return fmt.Errorf("%w: pwrite at offset %d: %w", ErrMediaFault, off+int64(done), err)
			}
			done += n
		}
		return nil
	}
	return guardedCopy(m.mapping[off:off+int64(len(p))], p, "write", off)
}

func (m *fileMedia) Persist(off, n int64) error {
	if err := checkRange(m.size, off, n); err != nil {
		return err
	}
	if m.readOnly {
		return fmt.Errorf("%w: media opened read-only", ErrInvalidArgument)
	}
	m.closeMu.RLock()
	defer m.closeMu.RUnlock()
	if m.closed {
		return ErrClosed
	}
	if n == 0 {
		return nil
	}
	if m.kind == KindDAX {
		// CPU cache write-back needs no coalescing (no system call), and a
		// union of distant ranges would flush far more lines than asked.
		return guardedFlush(m.flushCPU, m.mapping[off:off+n], off)
	}
	return m.fl.persist(off, n, m.flushRange)
}

// flushCoversMedia: an fdatasync writes back every dirty page of the file
// and flushes the device's cache, so it covers every write that returned
// before it began. An msync covers its range only.
func (m *fileMedia) flushCoversMedia() bool { return m.kind == KindPwriteFdatasync }

// persistRanges is Persist of each span; on the pwrite-fdatasync kind,
// whose flush covers the whole file, with one flush for all of them.
func (m *fileMedia) persistRanges(spans []Span) error {
	if m.kind != KindPwriteFdatasync || len(spans) < 2 {
		for _, sp := range spans {
			if err := m.Persist(sp.Off, sp.N); err != nil {
				return err
			}
		}
		return nil
	}
	lo, hi := int64(1<<62), int64(0)
	for _, sp := range spans {
		if err := checkRange(m.size, sp.Off, sp.N); err != nil {
			return err
		}
		lo, hi = min(lo, sp.Off), max(hi, sp.Off+sp.N)
	}
	return m.Persist(lo, hi-lo)
}

// flushRange performs one flush covering [lo, hi).
func (m *fileMedia) flushRange(lo, hi int64) error {
	switch m.kind {
	case KindMmapMsync:
		lo = lo &^ (pageSize - 1)
		hi = min((hi+pageSize-1)&^(pageSize-1), int64(len(m.mapping)))
		for {
			_, _, e := syscall.Syscall(syscall.SYS_MSYNC, uintptr(unsafe.Pointer(&m.mapping[lo])), uintptr(hi-lo), syscall.MS_SYNC)
			if e == syscall.EINTR {
				continue
			}
			if e != 0 {
				return fmt.Errorf("%w: msync [%d,%d): %w", ErrMediaFault, lo, hi, e)
			}
			return nil
		}
	default:
		for {
			err := syscall.Fdatasync(m.fd)
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			if err != nil {
				return fmt.Errorf("%w: fdatasync: %w", ErrMediaFault, err)
			}
			return nil
		}
	}
}

func guardedFlush(flush func([]byte), p []byte, off int64) (err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if r := recover(); r != nil {
			if _, ok := r.(runtime.Error); !ok {
				panic(r)
			}
			err = fmt.Errorf("%w: cache flush at offset %d: %v", ErrMediaFault, off, r)
		}
	}()
	flush(p)
	return nil
}

func (m *fileMedia) Close() error {
	m.closeMu.Lock()
	defer m.closeMu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	var err error
	if m.mapping != nil {
		err = syscall.Munmap(m.mapping)
		m.mapping = nil
	}
	if m.removeOnClose != "" {
		if rerr := os.Remove(m.removeOnClose); rerr != nil && err == nil {
			err = rerr
		}
	}
	if cerr := m.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// flusher coalesces concurrent persist requests: while one flush runs, new
// requests accumulate and the next flush covers all of them (group commit).
// A failed flush is sticky (fail-stop): nothing is known to be durable
// after it, so every later request fails too.
type flusher struct {
	mu      sync.Mutex
	cond    sync.Cond
	running bool
	started uint64
	done    uint64
	lo, hi  int64 // pending union, lo > hi when empty
	pending int   // requests in the pending union
	err     error
}

func (f *flusher) init() {
	f.cond.L = &f.mu
	f.lo, f.hi = 1<<62, 0
}

func (f *flusher) persist(off, n int64, flush func(lo, hi int64) error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lo, f.hi = min(f.lo, off), max(f.hi, off+n)
	f.pending++
	need := f.started + 1
	for f.done < need {
		if f.err != nil {
			return f.err
		}
		if f.running {
			f.cond.Wait()
			continue
		}
		f.running = true
		f.started++
		my, lo, hi := f.started, f.lo, f.hi
		f.lo, f.hi, f.pending = 1<<62, 0, 0
		f.mu.Unlock()
		err := flush(lo, hi)
		f.mu.Lock()
		f.running = false
		f.done = my
		if err != nil && f.err == nil {
			f.err = err
		}
		f.cond.Broadcast()
	}
	return f.err
}

func m0fd(f *os.File) int { return int(f.Fd()) }

// fallocate allocates [off, off+n) of the file (mode 0: allocate, extend
// size if needed), retrying on EINTR.
func fallocate(fd int, off, n int64) error {
	for {
		err := syscall.Fallocate(fd, 0, off, n)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// zeroFillChunk is the size of one zero-fill write.
const zeroFillChunk = 4 << 20

// zeroFill writes zeros over [off, off+n) of f and makes them durable. It
// stops when ctx ends, between chunks (a chunk takes milliseconds), and
// returns ctx's error.
// It writes through a second descriptor opened with O_DIRECT where the file
// system allows it and the range is page aligned, so that filling a large
// cache file neither costs a copy per page nor floods the page cache;
// otherwise it writes through f.
func zeroFill(ctx context.Context, path string, f *os.File, off, n int64) error {
	w := f
	if off%pageSize == 0 && n%pageSize == 0 {
		if d, err := os.OpenFile(path, os.O_WRONLY|syscall.O_DIRECT, 0); err == nil {
			defer d.Close()
			w = d
		}
	}
	// An anonymous mapping is page aligned, as O_DIRECT requires, and
	// reads as zeros.
	buf, err := syscall.Mmap(-1, 0, zeroFillChunk, syscall.PROT_READ, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		return err
	}
	defer syscall.Munmap(buf)
	for done := int64(0); done < n; {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("cancelled after %d of %d bytes: %w", done, n, err)
		}
		k := min(int64(len(buf)), n-done)
		m, err := w.WriteAt(buf[:k], off+done)
		if err != nil && w != f && errors.Is(err, syscall.EINVAL) && done == 0 {
			// O_DIRECT opened but refused (alignment rules of the
			// device): write through the page cache instead.
			w = f
			continue
		}
		if err != nil {
			return err
		}
		done += int64(m)
	}
	if w != f {
		if err := w.Sync(); err != nil {
			return err
		}
	}
	return f.Sync()
}
