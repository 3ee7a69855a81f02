package backend

import (
	"context"
	"errors"

	"golang.org/x/sys/unix"
)

// Provisioner is implemented by devices that can tell allocated ranges
// from holes (regular files, with SEEK_DATA and SEEK_HOLE). The cache
// engine asks it for the ranges it holds no dirty data of.
type Provisioner interface {
	// Provisioning reports whether [off, off+run) holds data (mapped) or
	// is a hole, for the longest run <= n from off with one state.
	// ErrNotTracked means the device cannot tell (a block device, a file
	// system without SEEK_DATA): callers report the range mapped.
	Provisioning(ctx context.Context, off, n int64) (mapped bool, run int64, err error)
}

// ErrNotTracked: the device does not know which ranges are allocated.
var ErrNotTracked = errors.New("backend: allocation is not tracked by this device")

var _ Provisioner = (*File)(nil)

// Provisioning answers from the file's extents (lseek SEEK_DATA and
// SEEK_HOLE). Hole boundaries come in the file system's block size; a run
// is cut to align (the logical block size the caller asked in, through n
// and off's alignment) only by the caller.
func (f *File) Provisioning(ctx context.Context, off, n int64) (bool, int64, error) {
	if err := f.check("provisioning", off, n); err != nil {
		return false, 0, err
	}
	if err := f.acquire(ctx); err != nil {
		return false, 0, err
	}
	defer f.mu.RUnlock()
	if n == 0 {
		return true, 0, nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return true, n, ErrNotTracked
	}
	data, err := unix.Seek(f.fd, off, unix.SEEK_DATA)
	switch {
	case err == unix.ENXIO:
		return false, n, nil // no data from off to the end of the file
	case err != nil:
		return true, n, ErrNotTracked
	case data > off:
		return false, min(data-off, n), nil
	}
	hole, err := unix.Seek(f.fd, off, unix.SEEK_HOLE)
	if err != nil {
		return true, n, ErrNotTracked
	}
	return true, min(max(hole-off, 1), n), nil
}
