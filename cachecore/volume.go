package cachecore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/internal/blk"
)

const (
	volOnline int32 = iota
	volRemoving
	volClosed
	// volPaused: a healthy Detach holds new requests for a moment (they
	// wait in enter, they do not fail).
	volPaused
)

// Volume is a cached volume; it implements target/scsi.Volume.
type Volume struct {
	c    *Cache
	st   *volState
	name string
	// size is what check admits; it only grows (Grow), after everything
	// that serves the new range covers it.
	size      atomic.Int64
	blockSize int
	dev       backend.Device

	// repl ships the volume's journal to other gateways (replicate.go).
	repl atomic.Pointer[replicatorBox]

	mode atomic.Pointer[Mode]
	vcfg atomic.Pointer[VolumeConfig]

	state    atomic.Int32
	inflight atomic.Int64

	// abandoned: Detach with force gave up this volume's dirty data; it
	// serves its backing device from then on.
	abandoned atomic.Bool
	tracker   *bypassTracker
	// epochs knows whether dirty data of an older flush epoch is still
	// waiting for writeback: no write may reach the backing device
	// directly until it is written back (C6).
	epochs dirtyEpochs
	// heldBackAt is when (unix ns) a write last took the cache path only
	// because of epochs; writeback runs at full speed for a while after,
	// so that bypass can resume.
	heldBackAt atomic.Int64
	seq        seqDetector
	readLat    latencyEWMA
	writeLat   latencyEWMA

	// directSeq counts writes that reach the backing device directly
	// (bypass, writethrough, discard), counted before they are issued;
	// flushedSeq is the directSeq a completed backing flush covered. Flush
	// flushes the backing device when they differ (C3),
	// and so does a kset commit holding clean keys of the volume: a clean
	// key may only become durable once the backing data it mirrors is.
	directSeq, flushedSeq atomic.Uint64
	backingFlushMu        sync.Mutex
	// directMu serializes COMPARE AND WRITE on the backing device after a
	// cache failure.
	directMu sync.Mutex

	stats volCounters

	// sampler and adv: the sizing advisor's hook (advisor.go).
	sampler atomic.Pointer[ReadSampler]
	adv     atomic.Pointer[volAdvisor]
}

func newVolume(c *Cache, vs *volState, dev backend.Device, vc VolumeConfig) *Volume {
	v := &Volume{c: c, st: vs, name: vs.name, blockSize: vc.BlockSize, dev: dev, tracker: newBypassTracker(vs.size.Load())}
	v.size.Store(vs.size.Load())
	m := vc.Mode
	v.mode.Store(&m)
	v.vcfg.Store(&vc)
	v.stats.errors = make(map[string]uint64)
	// Replayed dirty keys all belong to epochs of an earlier session,
	// before the cache's current epoch. Writeback does not touch a volume
	// that is not attached, so nothing uncounts them meanwhile.
	v.epochs.reset(vs.dirtyKeys.Load(), c.epoch.Load())
	// Open counted the bytes dirty in the replayed index; recount (the
	// volume may have been detached and attached again), then every index
	// change keeps the count up to date.
	vs.dirtyBytes.Store(vs.idx.dirtyBytes())
	return v
}

// Name returns the volume name.
func (v *Volume) Name() string { return v.name }

// Size returns the volume size in bytes.
func (v *Volume) Size() int64 { return v.size.Load() }

// BlockSize returns the logical block size reported to hosts.
func (v *Volume) BlockSize() int { return v.blockSize }

// Mode returns the current cache mode.
func (v *Volume) Mode() Mode { return *v.mode.Load() }

func (v *Volume) check(off int64, n int64) error {
	if off < 0 || n < 0 {
		return fmt.Errorf("cachecore: %s: offset %d length %d: %w", v.name, off, n, blk.ErrOutOfRange)
	}
	bs := int64(v.blockSize)
	if off%bs != 0 || n%bs != 0 {
		return fmt.Errorf("cachecore: %s: offset %d length %d not multiples of %d: %w", v.name, off, n, bs, blk.ErrMisaligned)
	}
	if size := v.size.Load(); off > size || n > size-off {
		return fmt.Errorf("cachecore: %s: [%d,+%d) beyond size %d: %w", v.name, off, n, size, blk.ErrOutOfRange)
	}
	return nil
}

func (v *Volume) enter() error {
	for {
		v.inflight.Add(1)
		s := v.state.Load()
		if s == volOnline {
			v.c.ioCount.Add(1)
			return nil
		}
		v.inflight.Add(-1)
		if s != volPaused {
			return fmt.Errorf("cachecore: volume %s is offline: %w", v.name, blk.ErrNotReady)
		}
		if ch := v.c.resumed.Load(); ch != nil {
			<-*ch
		}
	}
}

func (v *Volume) exit() { v.inflight.Add(-1) }

// tryEnter is enter without waiting: false when the volume is not online
// (paused by a detach, being removed, closed). It counts no host request:
// its callers are GC's own work, or a copy whose destination's enter
// counted it.
func (v *Volume) tryEnter() bool {
	v.inflight.Add(1)
	if v.state.Load() == volOnline {
		return true
	}
	v.inflight.Add(-1)
	return false
}

// waitIdle waits until no request of the volume is running.
func (v *Volume) waitIdle(ctx context.Context) error {
	for v.inflight.Load() != 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

// direct reports whether I/O must go straight to the backing device
// because the cache failed, or returns the error the failure policy
// prescribes for this volume.
func (v *Volume) direct() (bool, error) {
	c := v.c
	if !c.failed.Load() {
		// A healthy cache detached after writing back all of its dirty
		// data: the backing device holds everything.
		return c.detached.Load(), nil
	}
	if c.detached.Load() || v.abandoned.Load() {
		return true, nil
	}
	switch c.config().OnCacheFailure {
	case FailPassthrough:
		return true, nil
	case FailFail:
		return false, c.failedErr()
	}
	if v.st.dirtyKeys.Load() > 0 {
		return false, fmt.Errorf("cachecore: %s holds dirty data in the failed cache: %w", v.name, c.failedErr())
	}
	return true, nil
}

// retryDirect reports whether an operation that failed with err should be
// redone on the backing device because the cache failed under it and the
// policy lets this volume continue.
func (v *Volume) retryDirect(err error) bool {
	if err == nil || !v.c.failed.Load() {
		return false
	}
	if !isMediaFault(err) && !errors.Is(err, ErrCacheFailed) {
		return false
	}
	d, _ := v.direct()
	return d
}

func (v *Volume) backingErr(op string, off int64, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	v.stats.addError("backing_" + op)
	return fmt.Errorf("cachecore: %s: backing %s at %d: %w: %w", v.name, op, off, blk.ErrMedium, err)
}

func (v *Volume) mediaErr(what string, err error) error {
	v.c.fail(what, err)
	v.stats.addError("cache_media")
	return fmt.Errorf("cachecore: %s: %s: %w", v.name, what, v.c.failedErr())
}
