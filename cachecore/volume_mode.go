package cachecore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cachelun/cachelun/persist"
)

// Operator API: mode switches, drain, live tunables and explain.

// SetMode switches the cache mode live. Leaving a mode that caches writes
// writes back the volume's dirty data first (with progress); writes that
// overlap dirty data keep taking the cache path until it is written back.
func (v *Volume) SetMode(ctx context.Context, m Mode, progress func(Progress)) error {
	m, err := ParseMode(string(m))
	if err != nil {
		return err
	}
	if err := v.replicatedMode(m); err != nil {
		return err
	}
	old := v.mode.Swap(&m)
	vc := *v.vcfg.Load()
	vc.Mode = m
	v.vcfg.Store(&vc)
	if old.cachesWrites() && !m.cachesWrites() {
		return v.drain(ctx, progress)
	}
	return nil
}

// Drain writes back all dirty data of the volume now.
func (v *Volume) Drain(ctx context.Context, progress func(Progress)) error {
	return v.drain(ctx, progress)
}

func (v *Volume) drain(ctx context.Context, progress func(Progress)) error {
	c := v.c
	c.drainers.Add(1)
	defer c.drainers.Add(-1)
	meter := newProgressMeter(c, v)
	lastFlush := time.Time{}
	for {
		keys := v.st.dirtyKeys.Load()
		if progress != nil {
			progress(meter.report(keys <= 0))
		}
		if keys <= 0 {
			return nil
		}
		if err := c.failedErr(); err != nil {
			return err
		}
		if time.Since(lastFlush) > 50*time.Millisecond {
			if err := c.flushAll(); err != nil {
				return err
			}
			lastFlush = time.Now()
		}
		if err := c.pauseForWriteback(ctx, 10*time.Millisecond, "a drain waited"); err != nil {
			return err
		}
	}
}

// SetConfig changes the live tunables (mode, sequential cutoff,
// congestion thresholds, cache policy); BlockSize cannot change. A mode
// change here does not wait for dirty data to be written back (SetMode
// does). A policy change applies from the next read miss and GC step: data
// cached under the old policy stays, with its hit counts.
func (v *Volume) SetConfig(vc VolumeConfig) error {
	if vc.BlockSize == 0 {
		vc.BlockSize = v.blockSize
	}
	if vc.Mode == "" {
		vc.Mode = v.Mode()
	}
	vc, err := vc.withDefaults()
	if err != nil {
		return err
	}
	if vc.BlockSize != v.blockSize {
		return fmt.Errorf("cachecore: %s: block size cannot change live (%d → %d)", v.name, v.blockSize, vc.BlockSize)
	}
	if err := v.replicatedMode(vc.Mode); err != nil {
		return err
	}
	m := vc.Mode
	v.vcfg.Store(&vc)
	v.mode.Store(&m)
	v.c.kickWriteback()
	return nil
}

// Explanation describes what the cache holds for one block.
type Explanation struct {
	Offset int64
	State  string // "miss", "placeholder", "hit", or "offline"
	Dirty  bool
	Pos    persist.Pos
	Gen    uint64 // segment generation the data was written under
	// Checksum, on a cache with data CRCs and a hit: "ok", or why the
	// data of the block's key fails its CRC32C (verified now).
	Checksum string
}

// Explain reports what the index holds for the block at off.
func (v *Volume) Explain(off int64) Explanation {
	e := Explanation{Offset: off, State: "miss"}
	if off < 0 || off >= v.size.Load() {
		e.State = "out of range"
		return e
	}
	st := v.st.idx.peek(uint64(off) >> stripeShift)
	if st == nil {
		return e
	}
	o := uint32(off & (stripeSize - 1))
	st.mu.Lock()
	defer st.mu.Unlock()
	i, j := st.list.span(o, o+1)
	if i == j {
		return e
	}
	x := st.list.ext[i]
	if x.kind == extEmpty {
		e.State = "placeholder"
		return e
	}
	e.State = "hit"
	e.Dirty = x.kind == extDirty
	e.Pos = persist.Pos{Seg: x.seg, Off: x.segOff + (o - x.start)}
	e.Gen = x.gen
	if x.sumLen > 0 {
		b := make([]byte, 1)
		var bad *dataCRCError
		switch err := v.c.readVerified(b, x.seg, x.segOff+(o-x.start), x.sumOff, x.sumLen, x.sum); {
		case err == nil:
			e.Checksum = "ok"
		case errors.As(err, &bad):
			e.Checksum = "bad: " + bad.Error()
		default:
			e.Checksum = "unreadable: " + err.Error()
		}
	}
	return e
}
