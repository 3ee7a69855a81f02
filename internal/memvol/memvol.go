package memvol

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/cachelun/cachelun/internal/blk"
)

// Volume is an in-memory volume. The zero value is not usable; call New.
type Volume struct {
	blockSize int

	mu   sync.RWMutex
	data []byte

	flushes   atomic.Int64
	fuaWrites atomic.Int64
	discards  atomic.Int64
	prefetch  atomic.Int64
}

// New returns a zero-filled volume of size bytes. size must be a positive
// multiple of blockSize, and blockSize a power of two of at least 512.
func New(size int64, blockSize int) (*Volume, error) {
	if blockSize < 512 || blockSize&(blockSize-1) != 0 {
		return nil, fmt.Errorf("memvol: block size %d: %w", blockSize, blk.ErrMisaligned)
	}
	if size <= 0 || size%int64(blockSize) != 0 {
		return nil, fmt.Errorf("memvol: size %d not a positive multiple of %d: %w", size, blockSize, blk.ErrMisaligned)
	}
	return &Volume{blockSize: blockSize, data: make([]byte, size)}, nil
}

// Size returns the volume size in bytes.
func (v *Volume) Size() int64 { return int64(len(v.data)) }

// BlockSize returns the logical block size in bytes.
func (v *Volume) BlockSize() int { return v.blockSize }

func (v *Volume) check(off, n int64) error {
	bs := int64(v.blockSize)
	if off < 0 || n < 0 || off%bs != 0 || n%bs != 0 {
		return fmt.Errorf("memvol: [%d,+%d): %w", off, n, blk.ErrMisaligned)
	}
	if off+n > int64(len(v.data)) || off+n < off {
		return fmt.Errorf("memvol: [%d,+%d) past %d: %w", off, n, len(v.data), blk.ErrOutOfRange)
	}
	return nil
}

// ReadAt copies [off, off+len(p)) into p.
func (v *Volume) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := v.check(off, int64(len(p))); err != nil {
		return err
	}
	v.mu.RLock()
	copy(p, v.data[off:])
	v.mu.RUnlock()
	return nil
}

// WriteAt copies p to off. fua is counted; memory is always "durable".
func (v *Volume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := v.check(off, int64(len(p))); err != nil {
		return err
	}
	v.mu.Lock()
	copy(v.data[off:], p)
	v.mu.Unlock()
	if fua {
		v.fuaWrites.Add(1)
	}
	return nil
}

// Flush counts the call.
func (v *Volume) Flush(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	v.flushes.Add(1)
	return nil
}

// Discard zeroes [off, off+n).
func (v *Volume) Discard(ctx context.Context, off, n int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := v.check(off, n); err != nil {
		return err
	}
	v.mu.Lock()
	clear(v.data[off : off+n])
	v.mu.Unlock()
	v.discards.Add(1)
	return nil
}

// CompareAndWrite compares and, if equal, writes, atomically.
func (v *Volume) CompareAndWrite(ctx context.Context, off int64, compare, data []byte, fua bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(compare) != len(data) {
		return fmt.Errorf("memvol: compare %d bytes, write %d: %w", len(compare), len(data), blk.ErrMisaligned)
	}
	if err := v.check(off, int64(len(data))); err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	cur := v.data[off : off+int64(len(compare))]
	for i := range compare {
		if cur[i] != compare[i] {
			return &blk.MiscompareError{Offset: int64(i)}
		}
	}
	copy(cur, data)
	if fua {
		v.fuaWrites.Add(1)
	}
	return nil
}

// Prefetch validates the range and counts the call.
func (v *Volume) Prefetch(ctx context.Context, off, n int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := v.check(off, n); err != nil {
		return err
	}
	v.prefetch.Add(1)
	return nil
}

// Counters reports how many flushes, FUA writes, discards and prefetches the
// volume has seen.
func (v *Volume) Counters() (flushes, fuaWrites, discards, prefetches int64) {
	return v.flushes.Load(), v.fuaWrites.Load(), v.discards.Load(), v.prefetch.Load()
}
