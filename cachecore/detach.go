package cachecore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/cachelun/cachelun/internal/blk"
)

// ErrWritebackFailed is wrapped by Detach of a healthy cache whose dirty
// data could not be written back (the cache stays in service).
var ErrWritebackFailed = errors.New("cachecore: writeback failed")

// detachWritebackFailures is how many failed writeback passes a healthy
// Detach tolerates (writeback retries with backoff: a transient backing
// error costs one pass) before it gives up.
const detachWritebackFailures = 3

// ErrDirtyData is wrapped by Detach without force while volumes hold dirty
// data in the failed cache.
var ErrDirtyData = errors.New("cachecore: volumes hold dirty data in the cache")

// ErrDetachedCache is wrapped by Open of a cache file that was detached
// from service: its contents are older than what the volumes' backing
// devices received since, so it is never served again.
var ErrDetachedCache = errors.New("cachecore: cache file was detached from service")

// InfoFlagDetached is set in the cache info record (best effort: the media
// failed) when the cache is detached; Open refuses such a file until it is
// formatted again.
const InfoFlagDetached uint32 = 1 << 1

// Detach is DetachWithProgress without progress reports.
func (c *Cache) Detach(ctx context.Context, force bool) error {
	return c.DetachWithProgress(ctx, force, nil)
}

// DetachWithProgress takes the cache out of service: its volumes go on
// serving I/O directly on their backing devices (mode passthrough), its
// goroutines stop, and the cache file is marked detached: Open refuses it
// until it is formatted again. Close still has to be called.
//
// A healthy cache is detached as bcache detaches a cache set: its volumes
// switch to passthrough (no new dirty data), writeback writes back all
// their dirty data at full speed (reported to progress, as a drain), the
// requests that took the cache path meanwhile are waited for (new ones are
// held for that moment, not failed), the rest is written back, the backing
// devices are flushed, and only then do the volumes use their backing
// devices alone. If writeback keeps failing (a backing error), the cache
// fails or ctx ends first, Detach gives up with the reason
// (ErrWritebackFailed) and the volumes go back to their modes; with force
// it detaches anyway and abandons what could not be written back. Dirty
// data of volumes recorded in the cache but not attached cannot be written
// back: refused (ErrDirtyData) unless force abandons it.
//
// A failed cache is detached at once. A volume that still holds dirty
// data in it is refused (ErrDirtyData, with the volumes and their dirty
// bytes) unless force is set; with force its dirty data is abandoned, so
// its backing device serves the older data it holds.
func (c *Cache) DetachWithProgress(ctx context.Context, force bool, progress func(Progress)) error {
	if !c.failed.Load() {
		return c.detachHealthy(ctx, force, progress)
	}
	c.mu.Lock()
	vols := make([]*Volume, 0, len(c.volumes))
	for _, v := range c.volumes {
		vols = append(vols, v)
	}
	c.mu.Unlock()
	var dirty []string
	for _, v := range vols {
		if v.st.dirtyKeys.Load() > 0 {
			dirty = append(dirty, fmt.Sprintf("%s (%d dirty bytes)", v.name, v.st.dirtyBytes.Load()))
		}
	}
	if len(dirty) > 0 && !force {
		return fmt.Errorf("%w: %s; detaching with force abandons it (the backing devices keep older data)", ErrDirtyData, strings.Join(dirty, ", "))
	}
	for _, v := range vols {
		if v.st.dirtyKeys.Load() > 0 {
			v.abandoned.Store(true)
			c.log.Error("cache detached: dirty data abandoned; the volume now serves the older data of its backing device",
				"volume", v.name, "dirty_bytes", v.st.dirtyBytes.Load())
		}
	}
	c.detached.Store(true)
	if err := c.finishDetach(ctx); err != nil {
		return err
	}
	c.log.Warn("cache detached: volumes serve I/O from their backing devices", "volumes", len(vols))
	return nil
}

// attachedVolumes returns the attached volumes.
func (c *Cache) attachedVolumes() []*Volume {
	c.mu.Lock()
	defer c.mu.Unlock()
	vols := make([]*Volume, 0, len(c.volumes))
	for _, v := range c.volumes {
		vols = append(vols, v)
	}
	return vols
}

// storeMode sets the volume's mode without draining (Detach drains all
// volumes itself).
func (v *Volume) storeMode(m Mode) {
	v.mode.Store(&m)
	vc := *v.vcfg.Load()
	vc.Mode = m
	v.vcfg.Store(&vc)
}

func (c *Cache) detachHealthy(ctx context.Context, force bool, progress func(Progress)) error {
	if c.closed.Load() {
		return fmt.Errorf("cachecore: detach: cache closed: %w", blk.ErrNotReady)
	}
	if !c.detaching.CompareAndSwap(false, true) {
		return fmt.Errorf("cachecore: detach: the cache is already detached or being detached: %w", blk.ErrNotReady)
	}
	detached := false
	defer func() {
		if !detached {
			c.detaching.Store(false)
		}
	}()
	vols := c.attachedVolumes()
	var unattached []string
	for i := range c.vols {
		if vs := c.vols[i].Load(); vs != nil && vs.vol.Load() == nil && vs.dirtyKeys.Load() > 0 {
			unattached = append(unattached, fmt.Sprintf("%s (%d dirty bytes)", vs.name, max(vs.dirtyBytes.Load(), 0)))
		}
	}
	if len(unattached) > 0 && !force {
		return fmt.Errorf("%w: %s: recorded in the cache but not attached, so their dirty data cannot be written back; attach them first, or detach with force to abandon it",
			ErrDirtyData, strings.Join(unattached, ", "))
	}
	modes := make([]Mode, len(vols))
	for i, v := range vols {
		modes[i] = v.Mode()
		v.storeMode(ModePassthrough)
	}
	restore := func() {
		for i, v := range vols {
			v.storeMode(modes[i])
		}
		c.kickWriteback()
	}
	meter := newProgressMeter(c, vols...)
	// giveUp reports whether a failed step ends the detach: always without
	// force, and with force when the cache itself is gone or ctx ended.
	giveUp := func(err error) bool {
		return !force || ctx.Err() != nil || c.failed.Load() || errors.Is(err, blk.ErrNotReady)
	}
	if err := c.writeBackAll(ctx, vols, meter, progress); err != nil && giveUp(err) {
		restore()
		return err
	}
	// Requests that chose the cache path before the switch may still add
	// dirty data: hold new requests while they finish, write back what they
	// added and flush the backing devices. The hold lasts one writeback
	// pass at most when the first stage succeeded.
	ch := make(chan struct{})
	c.resumed.Store(&ch)
	for _, v := range vols {
		v.state.CompareAndSwap(volOnline, volPaused)
	}
	resume := func() {
		for _, v := range vols {
			v.state.CompareAndSwap(volPaused, volOnline)
		}
		close(ch)
	}
	err := func() error {
		for _, v := range vols {
			if err := v.waitIdle(ctx); err != nil {
				return fmt.Errorf("cachecore: detach: waiting for requests of %s: %w", v.name, err)
			}
		}
		if err := c.writeBackAll(ctx, vols, meter, nil); err != nil {
			return err
		}
		for _, v := range vols {
			if err := v.dev.Flush(ctx); err != nil {
				v.stats.addError("backing_flush")
				return fmt.Errorf("cachecore: detach: flushing the backing device of %s: %w", v.name, err)
			}
		}
		return nil
	}()
	if err != nil && giveUp(err) {
		resume()
		restore()
		return err
	}
	for _, v := range vols {
		if v.st.dirtyKeys.Load() > 0 {
			v.abandoned.Store(true)
			c.log.Error("cache detached with force: dirty data abandoned; the volume now serves the older data of its backing device",
				"volume", v.name, "dirty_bytes", v.st.dirtyBytes.Load(), "err", err)
		}
	}
	c.detached.Store(true)
	detached = true
	resume()
	if err := c.finishDetach(ctx); err != nil {
		return err
	}
	if progress != nil {
		p := meter.report(true)
		progress(p)
	}
	c.log.Warn("cache detached after writing back its dirty data: volumes serve I/O from their backing devices", "volumes", len(vols))
	return nil
}

// writeBackAll waits until writeback has written back every dirty key of
// vols (at full speed, as a drain), reporting progress. It gives up when
// writeback failed detachWritebackFailures times since it started, the
// cache fails or ctx ends.
func (c *Cache) writeBackAll(ctx context.Context, vols []*Volume, meter *progressMeter, progress func(Progress)) error {
	c.drainers.Add(1)
	defer c.drainers.Add(-1)
	fails := c.wbFailures.Load()
	var lastFlush time.Time
	for {
		dirty := false
		for _, v := range vols {
			if v.st.dirtyKeys.Load() > 0 {
				dirty = true
				break
			}
		}
		if progress != nil {
			progress(meter.report(false))
		}
		if !dirty {
			return nil
		}
		if err := c.failedErr(); err != nil {
			return err
		}
		if c.wbFailures.Load()-fails >= detachWritebackFailures {
			c.wbErrMu.Lock()
			last := c.wbErr
			c.wbErrMu.Unlock()
			return fmt.Errorf("%w %d times while detaching, the cache stays in service: %w", ErrWritebackFailed, detachWritebackFailures, last)
		}
		if time.Since(lastFlush) > 50*time.Millisecond {
			if err := c.flushAll(); err != nil {
				return err
			}
			lastFlush = time.Now()
		}
		if err := c.pauseForWriteback(ctx, 10*time.Millisecond, "a detach waited for writeback"); err != nil {
			return err
		}
	}
}

// finishDetach stops the cache's goroutines and marks the file detached, so
// no later Open serves its contents (they are older than the backing
// devices from now on).
func (c *Cache) finishDetach(ctx context.Context) error {
	done := c.stopWorkersDone()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("cachecore: detach: waiting for the cache's goroutines: %w", ctx.Err())
	}
	info := c.store.Info()
	info.Flags |= InfoFlagDetached
	if err := c.store.SetInfo(info); err != nil {
		c.log.Error("could not mark the detached cache file: format it before any reuse (its clean data is older than the backing devices now)", "err", err)
	}
	return nil
}
