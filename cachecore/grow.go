package cachecore

import (
	"context"
	"errors"
	"fmt"

	"github.com/cachelun/cachelun/internal/blk"
)

// ErrShrink refuses a smaller size for a volume (Volume.Grow): blocks past
// the new end may hold dirty data the backing device has not got, and a
// volume never drops data silently. Shrinking means removing the volume
// (which writes its dirty data back) and adding it again.
var ErrShrink = errors.New("cachecore: a volume never shrinks")

// Grow makes the volume newSize bytes while it serves I/O: the backing
// device (whose Size must already hold newSize) grew, and the blocks past
// the old end become addressable. newSize must be a multiple of the block
// size; the old size is a no-op, a smaller one is refused with ErrShrink.
//
// Order, so that no request and no crash sees half of it: the index and
// the bypass tracker are extended first (nothing addresses the new range
// yet); then the volume's record in the cache file gets the new size,
// durably (a dual-slot record, persist.Store.SetVolumes), because replay
// drops keys past the recorded size and writes past the old end must
// survive a crash (C1, C5); only then does the volume admit requests past
// the old end. A crash before the record is durable leaves the old size
// recorded and nothing written past it; the next AddVolume sees the grown
// device and records the new size again. If the record cannot be
// persisted the volume keeps its old size and the error is returned.
//
// Grow is safe with requests in flight (they were admitted inside the old
// size) and is serialized with AddVolume and RemoveVolume (Cache.mu).
func (v *Volume) Grow(ctx context.Context, newSize int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c := v.c
	bs := int64(v.blockSize)
	if newSize <= 0 || newSize%bs != 0 {
		return fmt.Errorf("cachecore: %s: new size %d is not a positive multiple of the block size %d: %w", v.name, newSize, bs, blk.ErrMisaligned)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := v.state.Load(); s == volRemoving || s == volClosed || c.closed.Load() {
		return fmt.Errorf("cachecore: %s: volume is being removed or its cache closed: %w", v.name, blk.ErrNotReady)
	}
	old := v.size.Load()
	switch {
	case newSize == old:
		return nil
	case newSize < old:
		return fmt.Errorf("cachecore: %s: %d bytes is smaller than its size %d: %w", v.name, newSize, old, ErrShrink)
	}
	if d := v.dev.Size(); newSize > d {
		return fmt.Errorf("cachecore: %s: backing device has %d bytes, cannot grow to %d: %w", v.name, d, newSize, blk.ErrOutOfRange)
	}
	if c.failed.Load() {
		// The volume table cannot be trusted to persist: growing
		// without recording would lose writes past the old end at the
		// next open. Refused until the cache is detached or replaced.
		return fmt.Errorf("cachecore: %s: cannot record a new size: %w", v.name, c.failedErr())
	}
	vs := v.st
	vs.idx.grow(newSize)
	v.tracker.grow(newSize)
	recs := c.store.Volumes()
	found := false
	for i := range recs {
		if recs[i].ID == vs.id {
			recs[i].Size = uint64(newSize)
			found = true
		}
	}
	if !found {
		return fmt.Errorf("cachecore: %s: no record of the volume in the cache file", v.name)
	}
	if err := c.store.SetVolumes(recs); err != nil {
		return c.metaErr("persist volume table", err)
	}
	vs.grow(newSize)
	v.size.Store(newSize)
	c.log.Info("volume grew", "volume", v.name, "old_size", old, "new_size", newSize)
	return nil
}
