package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachelun/cachelun/admin"
	"github.com/cachelun/cachelun/backend/rbd"
	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/target/scsi"
)

// backingPollInterval is how often an RBD backing's lock is checked (a
// fenced gateway must stop serving within seconds: another one now writes
// the image) and, by default, every backing device's size (a resize is
// noticed about as fast; Options.BackingPollInterval).
const backingPollInterval = 2 * time.Second

// rbdBacking is an RBD image as a volume's backing device, with a monitor
// goroutine that watches its exclusive lock. Its methods are
// the Device's; Close also stops the monitor.
type rbdBacking struct {
	*rbd.Device
	volume  string
	backing string // as configured
	log     *slog.Logger
	locked  bool // the Device took the exclusive lock (the image has the feature)
	// updated is called when librbd reports a change of the image's
	// header (rbd.Device.Updated): the resize watcher checks its size
	// at once rather than at its next poll.
	updated func()

	// fenced is set, never cleared, once the lock was lost: the volume
	// fails all I/O (fenceGate) from then on; a restart takes the image
	// over again if the other client let go. fencedCh is closed then.
	fenced    atomic.Bool
	fencedCh  chan struct{}
	fenceOnce sync.Once

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

func newRBDBacking(dev *rbd.Device, volume, backing string, log *slog.Logger, updated func()) *rbdBacking {
	b := &rbdBacking{Device: dev, volume: volume, backing: backing, log: log, updated: updated,
		locked: dev.LockOwner() != "", stop: make(chan struct{}), done: make(chan struct{}), fencedCh: make(chan struct{})}
	go b.monitor()
	return b
}

// monitor polls until Close, and at once when librbd reports a change of
// the image's header (its update watch). HoldsLock reads librbd's state of the image;
// it does not wait for the OSDs, so an outage does not stall the loop (and
// nothing waits for the loop).
func (b *rbdBacking) monitor() {
	defer close(b.done)
	t := time.NewTicker(backingPollInterval)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
		case <-b.Updated():
			// the header changed: a resize, or a lock that moved
			if b.updated != nil {
				b.updated()
			}
		}
		b.poll()
	}
}

func (b *rbdBacking) poll() {
	if b.locked && !b.fenced.Load() {
		// librbd may not notice at once that its lock was broken; a
		// request refused for it (EROFS, ESHUTDOWN: rbd.ErrFenced) says
		// so for certain
		held, err := b.HoldsLock()
		if err == nil && !held || b.Stats().Fenced > 0 {
			b.fenced.Store(true)
			b.fenceOnce.Do(func() { close(b.fencedCh) })
			b.log.Error("rbd image lock lost to another client: the volume fails all I/O from now on; its dirty data stays in the cache",
				"volume", b.volume, "backing", b.backing)
		}
	}
	// The image's size is the resize watcher's (backing_resize.go), as
	// for every backing device.
}

// Close stops the monitor, then closes the image (releasing its lock).
func (b *rbdBacking) Close() error {
	b.stopMonitor()
	return b.Device.Close()
}

// stopMonitor stops the monitor goroutine and waits for it.
func (b *rbdBacking) stopMonitor() {
	b.closeOnce.Do(func() {
		close(b.stop)
		<-b.done
	})
}

// state is the backing's health for the admin API: fenced once the lock
// was lost; degraded while the last request failed (the last failure is
// newer than the last success); ok otherwise.
func (b *rbdBacking) state() *admin.BackingState {
	st := b.Stats()
	s := &admin.BackingState{Device: b.backing, State: admin.BackingOK, LastOK: st.LastOK,
		InFlight: st.InFlight, Timeouts: st.Timeouts, Fenced: st.Fenced, Failures: st.Errors, Size: b.Size()}
	switch {
	case b.fenced.Load():
		s.State, s.Reason, s.Since = admin.BackingFenced, "the image's exclusive lock was lost to another client; the volume fails all I/O until a restart", st.LastErrorAt
	case st.LastError != nil && st.LastErrorAt.After(st.LastOK):
		s.State, s.Reason, s.Since = admin.BackingDegraded, st.LastError.Error(), st.LastErrorAt
	}
	return s
}

// fenceGate fails every request of a volume whose RBD image was fenced:
// another gateway owns the image now, so the cache's data (reads) and
// its acknowledgements (writes) would no longer be the image's.
// rbd.ErrFenced wraps blk.ErrNotReady: hosts get NOT READY and may retry
// on another path.
type fenceGate struct {
	scsi.Volume
	b *rbdBacking
}

func (g fenceGate) err() error {
	if g.b.fenced.Load() {
		return fmt.Errorf("volume %s: %w", g.b.volume, rbd.ErrFenced)
	}
	return nil
}

func (g fenceGate) ReadAt(ctx context.Context, p []byte, off int64) error {
	return g.orRun(func() error { return g.Volume.ReadAt(ctx, p, off) })
}

func (g fenceGate) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	return g.orRun(func() error { return g.Volume.WriteAt(ctx, p, off, fua) })
}

func (g fenceGate) Flush(ctx context.Context) error {
	return g.orRun(func() error { return g.Volume.Flush(ctx) })
}

func (g fenceGate) Discard(ctx context.Context, off, n int64) error {
	return g.orRun(func() error { return g.Volume.Discard(ctx, off, n) })
}

func (g fenceGate) CompareAndWrite(ctx context.Context, off int64, compare, data []byte, fua bool) error {
	return g.orRun(func() error { return g.Volume.CompareAndWrite(ctx, off, compare, data, fua) })
}

func (g fenceGate) Prefetch(ctx context.Context, off, n int64) error {
	return g.orRun(func() error { return g.Volume.Prefetch(ctx, off, n) })
}

// The gate restates the optional interfaces of internal/blk, gated: it is
// not a blk.Unwrapper, since unwrapping it would bypass the fence.
var (
	_ blk.Copier       = fenceGate{}
	_ blk.AtomicWriter = fenceGate{}
)

// CopyFrom copies through the volume's own Copier, or refuses with
// blk.ErrUnsupported (the device server then copies by read and write,
// through the gate).
func (g fenceGate) CopyFrom(ctx context.Context, src blk.Volume, srcOff, dstOff, n int64, fua bool) error {
	return g.orRun(func() error {
		c, ok := blk.CopierOf(g.Volume)
		if !ok {
			return blk.ErrUnsupported
		}
		return c.CopyFrom(ctx, src, srcOff, dstOff, n, fua)
	})
}

// AtomicLimits are the volume's (none if it has no atomic writes).
func (g fenceGate) AtomicLimits() blk.AtomicLimits {
	if w, ok := blk.AtomicWriterOf(g.Volume); ok {
		return w.AtomicLimits()
	}
	return blk.AtomicLimits{}
}

func (g fenceGate) WriteAtomic(ctx context.Context, p []byte, off int64, fua bool) error {
	return g.orRun(func() error {
		w, ok := blk.AtomicWriterOf(g.Volume)
		if !ok {
			return blk.ErrUnsupported
		}
		return w.WriteAtomic(ctx, p, off, fua)
	})
}

// orRun returns the fence error, or runs f.
func (g fenceGate) orRun(f func() error) error {
	if err := g.err(); err != nil {
		return err
	}
	return f()
}

// gateFenced wraps a volume whose backing is an RBD image in its fence
// gate; other volumes are returned as they are.
func (e *engine) gateFenced(name string, v scsi.Volume) scsi.Volume {
	e.mu.RLock()
	b, ok := e.devs[name].(*rbdBacking)
	e.mu.RUnlock()
	if !ok {
		return v
	}
	return fenceGate{Volume: v, b: b}
}

// whileNotFenced returns ctx, cancelled with a fencing error (wrapping
// rbd.ErrFenced) as soon as the volume's RBD image is fenced, and the
// function that releases it; an image fenced already is that error. A
// drain on a fenced volume must end: its dirty data can never reach the
// image (another client owns it now), and writeback would retry forever.
func (e *engine) whileNotFenced(ctx context.Context, name string) (context.Context, func(), error) {
	e.mu.RLock()
	b, ok := e.devs[name].(*rbdBacking)
	e.mu.RUnlock()
	if !ok {
		return ctx, func() {}, nil
	}
	fencedErr := fmt.Errorf("volume %s: its dirty data cannot be written back here: %w", name, rbd.ErrFenced)
	if b.fenced.Load() {
		return nil, nil, fencedErr
	}
	ctx, cancel := context.WithCancelCause(ctx)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-b.fencedCh:
			cancel(fencedErr)
		case <-ctx.Done():
		case <-stop:
		}
	}()
	return ctx, func() {
		close(stop)
		<-done
		cancel(nil)
	}, nil
}

// drain runs drain (a writeback of the volume's dirty data) under
// whileNotFenced: it fails, at once or as soon as the volume's RBD image
// is fenced, with the fencing error. Every drain of the daemon (the admin
// API's, a mode switch's, a clustered volume's release) goes through it.
func (e *engine) drain(ctx context.Context, name string, drain func(context.Context) error) error {
	ctx, release, err := e.whileNotFenced(ctx, name)
	if err != nil {
		return err
	}
	defer release()
	err = drain(ctx)
	if cause := context.Cause(ctx); err != nil && errors.Is(cause, rbd.ErrFenced) {
		return cause
	}
	return err
}

// backingState is the health of a volume's backing device, nil for
// backings that do not report one (files, block devices).
func (e *engine) backingState(name string) *admin.BackingState {
	e.mu.RLock()
	b, ok := e.devs[name].(*rbdBacking)
	e.mu.RUnlock()
	if !ok {
		return nil
	}
	return b.state()
}

// Backing reports the volume's backing health (admin.BackingReporter): an
// RBD image's, and a backing device of any kind that shrank below the
// volume.
func (v adminVolume) Backing() *admin.BackingState {
	return v.d.withShrink(v.Name(), v.d.eng.backingState(v.Name()))
}
