package daemon

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/cachelun/cachelun/admin"
	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
)

// Live capacity growth. Every backingPollInterval (Options.BackingPollInterval),
// and at once when librbd reports that an RBD image's header changed (its
// update watch: `rbd resize` notifies it), the resize watcher asks each
// volume's backing device for its current size (backend.SizePoller: fstat
// of a file, BLKGETSIZE64 of a block device, the header of an RBD image)
// and compares it with the volume's size:
//
//   - Larger: the volume grows (cachecore.Volume.Grow, which records the
//     new size in the cache file first), then every iSCSI LUN of the volume
//     takes the new capacity with CAPACITY DATA HAS CHANGED for each of its
//     I_T nexuses (scsi.LU.RefreshCapacity), and a TCMU device that showed
//     the whole volume is resized through LIO (tcmu.Handler.GrowDevices),
//     whose RECONFIG_DEVICE the handler answers with the same unit
//     attention. No restart, no reload.
//   - Smaller: the volume keeps its size; nothing is truncated and no
//     cached data is dropped. It is logged as an error (once per size), and
//     the volume's backing state says "shrunk" (admin API, `cachelun volume
//     show`, cachelun_volume_backing_degraded) until the device is back to
//     at least the volume's size. Requests past the device's new end fail
//     there (read misses fail, writeback retries and keeps the dirty data).
//
// The watcher holds no lock across a poll; it follows a growth under
// reloadMu (TryLock: while a reload runs it leaves the growth to its next
// round) and stops before shutdown takes the daemon apart.

// resizeWatch is the watcher goroutine and what it found.
type resizeWatch struct {
	interval time.Duration
	cancel   context.CancelFunc
	done     chan struct{}

	// mu guards shrunk (a leaf).
	mu     sync.Mutex
	shrunk map[string]shrinkState
}

// shrinkState is a volume whose backing device is smaller than it.
type shrinkState struct {
	size  int64 // the device's size
	since time.Time
}

// startResizeWatch starts the watcher. interval 0 takes backingPollInterval.
// It runs before the admin API serves (which reads d.resize) and after the
// TCMU front end is set (which the watcher reads).
func (d *Daemon) startResizeWatch(interval time.Duration) {
	if interval <= 0 {
		interval = backingPollInterval
	}
	if d.resize == nil {
		d.resize = &resizeWatch{shrunk: map[string]shrinkState{}}
	}
	w := d.resize
	ctx, cancel := context.WithCancel(context.Background())
	w.interval, w.cancel, w.done = interval, cancel, make(chan struct{})
	go func() {
		defer close(w.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case <-d.eng.sizeKick: // an RBD image's header changed
			}
			d.checkBackingSizes(ctx)
		}
	}()
}

// stopResizeWatch stops the watcher and waits for it.
func (d *Daemon) stopResizeWatch() {
	if d.resize == nil || d.resize.cancel == nil {
		return
	}
	d.resize.cancel()
	<-d.resize.done
}

// checkBackingSizes polls every volume's backing device once. The polls
// hold no lock (an RBD image's may wait for the cluster, up to its
// ceph_op_timeout); a growth is followed under reloadMu, and a round that
// finds a reload running leaves it to the next round (the reload may be
// removing the very volume).
func (d *Daemon) checkBackingSizes(ctx context.Context) {
	d.eng.mu.RLock()
	devs := make(map[string]backend.Device, len(d.eng.devs))
	for name, dev := range d.eng.devs {
		devs[name] = dev
	}
	d.eng.mu.RUnlock()
	for name, dev := range devs {
		if ctx.Err() != nil {
			return
		}
		d.checkBackingSize(ctx, name, dev)
	}
}

// checkBackingSize compares one backing device's current size with its
// volume's and follows a growth.
func (d *Daemon) checkBackingSize(ctx context.Context, name string, dev backend.Device) {
	p, ok := backend.PollerOf(dev)
	if !ok {
		return
	}
	vol, ok := d.eng.cacheVolume(name)
	if !ok {
		return
	}
	size, _, err := p.PollSize()
	if err != nil {
		// an outage or a closing device: the backing state and the
		// requests that fail say so; the next round tries again
		d.log.Debug("backing size poll failed", "volume", name, "err", err)
		return
	}
	size &^= int64(vol.BlockSize() - 1)
	cur := vol.Size()
	switch {
	case size < cur:
		d.noteShrunk(name, size, cur)
	case size > cur:
		d.clearShrunk(name, size)
		if !d.reloadMu.TryLock() {
			return
		}
		defer d.reloadMu.Unlock()
		if v, ok := d.eng.cacheVolume(name); !ok || v != vol {
			return // removed or replaced meanwhile
		}
		if err := d.growVolume(ctx, name, vol, size); err != nil {
			d.log.Error("backing device grew but the volume could not follow; it keeps its size", "volume", name, "size", cur, "backing_size", size, "err", err)
		}
	default:
		d.clearShrunk(name, size)
	}
}

// growVolume grows the volume to size and tells every host that sees it.
func (d *Daemon) growVolume(ctx context.Context, name string, vol *cachecore.Volume, size int64) error {
	old := vol.Size()
	if err := vol.Grow(ctx, size); err != nil {
		return err
	}
	luns := d.refreshLUNCapacity(name)
	var tcmuDevs int
	var tcmuErr error
	if d.tcmuFE != nil {
		tcmuDevs, tcmuErr = d.tcmuFE.GrowDevices(ctx, name, old, size)
	}
	d.log.Warn("backing device grew: volume grown, hosts notified (CAPACITY DATA HAS CHANGED)",
		"volume", name, "old_size", old, "new_size", size, "iscsi_luns", luns, "tcmu_devices", tcmuDevs)
	if tcmuErr != nil {
		return fmt.Errorf("volume grown to %d, but resizing its TCMU devices failed: %w", size, tcmuErr)
	}
	return nil
}

// refreshLUNCapacity makes every iSCSI LUN of the volume take its new
// size (each I_T nexus gets CAPACITY DATA HAS CHANGED). It returns how
// many LUNs it reached.
func (d *Daemon) refreshLUNCapacity(volume string) int {
	d.mu.RLock()
	defer d.mu.RUnlock()
	n := 0
	for _, t := range d.cfg.Targets {
		st := d.targets[strings.ToLower(t.IQN)]
		if st == nil {
			continue
		}
		for _, l := range t.LUNs {
			if l.Volume != volume {
				continue
			}
			if lu := st.LU(l.LUN); lu != nil {
				lu.RefreshCapacity()
				n++
			}
		}
	}
	return n
}

func (d *Daemon) noteShrunk(name string, size, volSize int64) {
	w := d.resize
	w.mu.Lock()
	prev, seen := w.shrunk[name]
	if !seen || prev.size != size {
		since := time.Now()
		if seen {
			since = prev.since
		}
		w.shrunk[name] = shrinkState{size: size, since: since}
	}
	w.mu.Unlock()
	if !seen || prev.size != size {
		d.log.Error("backing device shrank below its volume: the volume keeps its size and its cached data; requests past the device's end fail until it is grown back",
			"volume", name, "volume_size", volSize, "backing_size", size)
	}
}

func (d *Daemon) clearShrunk(name string, size int64) {
	w := d.resize
	w.mu.Lock()
	_, seen := w.shrunk[name]
	delete(w.shrunk, name)
	w.mu.Unlock()
	if seen {
		d.log.Warn("backing device is back to at least its volume's size", "volume", name, "backing_size", size)
	}
}

// shrinkOf reports whether the volume's backing device was last seen
// smaller than the volume.
func (d *Daemon) shrinkOf(name string) (shrinkState, bool) {
	w := d.resize
	if w == nil {
		return shrinkState{}, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	s, ok := w.shrunk[name]
	return s, ok
}

// withShrink adds a shrunk backing device to the backing state st (nil for
// backings that report none): a fenced image stays fenced, anything else
// becomes shrunk.
func (d *Daemon) withShrink(name string, st *admin.BackingState) *admin.BackingState {
	s, ok := d.shrinkOf(name)
	if !ok {
		return st
	}
	if st == nil {
		st = &admin.BackingState{Device: d.backingName(name), State: admin.BackingOK}
	}
	st.Size = s.size
	if st.State != admin.BackingFenced {
		st.State, st.Since = admin.BackingShrunk, s.since
		st.Reason = fmt.Sprintf("the backing device has %d bytes, less than the volume; the volume keeps its size and cached data, requests past the device's end fail", s.size)
	}
	return st
}

// backingName is the configured backing of a volume.
func (d *Daemon) backingName(volume string) string {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.volumeConf(volume).Backing
}
