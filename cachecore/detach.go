package cachecore

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// ErrNotFailed is wrapped by Detach of a cache that has not failed.
var ErrNotFailed = errors.New("cachecore: cache has not failed")

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

// Detach takes a failed cache out of service: its goroutines stop, nothing
// touches the cache file any more, and every volume serves I/O directly on
// its backing device (passthrough), whatever OnCacheFailure says. A volume
// that still holds dirty data in the cache is refused (ErrDirtyData, with
// the volumes and their dirty bytes) unless force is set; with force its
// dirty data is abandoned, so its backing device serves the older data it
// holds. The cache file is marked detached and Open refuses it until it is
// formatted again. Close still has to be called.
func (c *Cache) Detach(ctx context.Context, force bool) error {
	if !c.failed.Load() {
		return fmt.Errorf("%w: only a cache retired after a media failure can be detached", ErrNotFailed)
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
	done := c.stopWorkersDone()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("cachecore: detach: waiting for the cache's goroutines: %w", ctx.Err())
	}
	info := c.store.Info()
	info.Flags |= InfoFlagDetached
	if err := c.store.SetInfo(info); err != nil {
		c.log.Warn("could not mark the detached cache file (format it before any reuse)", "err", err)
	}
	c.log.Warn("cache detached: volumes serve I/O from their backing devices", "volumes", len(vols))
	return nil
}
