//go:build linux

package persist

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"syscall"
	"time"
	"unsafe"
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

	fl flusher
}

// OpenFile opens (or creates) a cache file. Unless opts.Kind forces one, it
// tries a MAP_SYNC mapping (DAX) and falls back to DefaultFileKind; the
// choice is logged and reported by Kind.
func OpenFile(path string, opts FileOptions) (Media, error) {
	log := discardLogger(opts.Logger)
	flag := os.O_RDWR
	if opts.ReadOnly {
		flag = os.O_RDONLY
	}
	if opts.Create && !opts.ReadOnly {
		flag |= os.O_CREATE
	}
	f, err := os.OpenFile(path, flag, 0o600)
	if err != nil {
		return nil, fmt.Errorf("persist: open cache file: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
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
		if err := f.Truncate(opts.Size); err != nil {
			return nil, fmt.Errorf("persist: size %s to %d: %w", path, opts.Size, err)
		}
		if opts.Size > size {
			// Reserve the blocks now: a sparse cache file could run out of
			// space under a live mapping (SIGBUS) or in the middle of a
			// write, and allocating blocks on every first write makes each
			// flush also write allocation metadata.
			if err := fallocate(m0fd(f), size, opts.Size-size); err != nil {
				log.Info("cache media: fallocate failed, file stays sparse", "path", path, "err", err)
			}
			if opts.ZeroFill {
				start := time.Now()
				if err := zeroFill(path, f, size, opts.Size-size); err != nil {
					return nil, fmt.Errorf("persist: zero-fill %s: %w", path, err)
				}
				log.Info("cache media: zero-filled", "path", path, "bytes", opts.Size-size, "took", time.Since(start).Round(time.Millisecond))
			}
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
		if daxSupported && !opts.ReadOnly {
			b, err := syscall.Mmap(m.fd, 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, mapSharedValidate|mapSync)
			if err == nil {
				m.mapping, m.kind = b, KindDAX
				var how string
				m.flushCPU, how = cacheFlusher()
				log.Info("cache media: DAX mapping (MAP_SYNC)", "path", path, "size", size, "persist", how)
				ok = true
				return m, nil
			}
			if kind == KindDAX {
				return nil, fmt.Errorf("persist: MAP_SYNC mapping of %s: %w", path, err)
			}
			log.Info("cache media: MAP_SYNC unavailable, using the non-DAX path", "path", path, "err", err, "kind", DefaultFileKind)
		} else if kind == KindDAX {
			return nil, fmt.Errorf("%w: DAX needs a writable file on amd64", ErrInvalidArgument)
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

// zeroFill writes zeros over [off, off+n) of f and makes them durable.
// It writes through a second descriptor opened with O_DIRECT where the file
// system allows it and the range is page aligned, so that filling a large
// cache file neither costs a copy per page nor floods the page cache;
// otherwise it writes through f.
func zeroFill(path string, f *os.File, off, n int64) error {
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
