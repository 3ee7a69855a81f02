package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/backend/rbd"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/conf"
	"github.com/cachelun/cachelun/internal/flock"
	"github.com/cachelun/cachelun/persist"
	"github.com/cachelun/cachelun/target/scsi"
)

// engine owns the open caches (persist media + cachecore.Cache) and the
// backing devices of their volumes. mu guards the maps (a reload changes
// them while the admin API and the TCMU handler look volumes up); it is
// never held during engine calls that wait for I/O.
type engine struct {
	log     *slog.Logger
	mu      sync.RWMutex
	caches  map[string]*openCache
	order   []string // cache names in open order; closed in reverse
	volumes map[string]*cachecore.Volume
	devs    map[string]backend.Device // backing device by volume name
	// openMedia opens a cache file (openFileMedia); tests wrap the media
	// to inject faults.
	openMedia func(ctx context.Context, path string, opts persist.FileOptions) (persist.Media, func() error, error)
	// sizeKick (one pending value) asks the resize watcher to check the
	// backing devices' sizes now: an RBD image's header changed.
	sizeKick chan struct{}
}

type openCache struct {
	media persist.Media
	cache *cachecore.Cache
}

func newEngine(log *slog.Logger) *engine {
	return &engine{log: log, caches: map[string]*openCache{}, volumes: map[string]*cachecore.Volume{},
		devs: map[string]backend.Device{}, openMedia: openFileMedia, sizeKick: make(chan struct{}, 1)}
}

// openCache opens the cache file, creating and formatting it when it does
// not exist and a size is configured. An existing file is never formatted
// here (that is `cachelun format`): it may hold dirty data.
//
// The file is claimed (persist.OpenFileContext) before anything is read or
// written, and so is its intent log; a file another process holds is
// refused with its pid, and nothing of that process's is touched.
//
// A new file is built by persist.CreateFile: under a claimed temporary
// name, after a free-space check, reserved, zero-filled (cancelled with
// ctx) and formatted, then renamed into place; a failed or cancelled
// creation leaves nothing under either name, and a crash during one
// leaves no file under the configured name that the next start would
// refuse as "not a cachelun cache file".
func (e *engine) openCache(ctx context.Context, c conf.Cache, path string) error {
	log := e.log.With("cache", c.Name)
	_, statErr := os.Stat(path)
	create := errors.Is(statErr, os.ErrNotExist)
	if create && c.Size.Bytes == 0 {
		return fmt.Errorf("cache file %s does not exist and no size is set to create it", path)
	}
	if create {
		if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
			return err
		}
	}
	zeroFill := c.ZeroFill == nil || *c.ZeroFill
	m, commit, err := e.openMedia(ctx, path, persist.FileOptions{Create: create, Size: c.Size.Bytes, ZeroFill: create && zeroFill, Logger: log})
	if err != nil {
		return err
	}
	var store *persist.Store
	if create {
		store, err = persist.Format(m, persist.FormatOptions{
			SegmentSize: uint32(c.SegmentSize.Bytes),
			BlockSize:   uint32(c.BlockSize.Bytes),
			DataCRC:     c.DataCRC,
		})
		if err == nil {
			err = commit()
		}
		if err == nil {
			log.Info("cache file created and formatted", "path", path, "size", conf.FormatSize(c.Size.Bytes), "zero_filled", zeroFill)
		}
	} else {
		store, err = persist.Open(m)
	}
	if err != nil {
		// an uncommitted new file is removed by Close
		m.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	var cc *cachecore.Cache
	if ipath, ierr := intentPath(path, store.Superblock().UUID); ierr != nil {
		log.Warn("no intent log: a crash of this process can lose acknowledged writes not yet journaled", "err", ierr)
		cc, err = cachecore.Open(ctx, store, cacheConfig(c, log))
	} else if il, ierr := cachecore.OpenIntentFile(ipath); errors.Is(ierr, flock.ErrLocked) {
		// Another process holds an intent log of this cache's UUID: it
		// serves a copy of this file. Running without the log would do
		// no harm to it, but two copies of one cache are never both
		// current: refuse.
		m.Close()
		return fmt.Errorf("%s: %w", path, ierr)
	} else if ierr != nil {
		log.Warn("no intent log: a crash of this process can lose acknowledged writes not yet journaled", "err", ierr)
		cc, err = cachecore.Open(ctx, store, cacheConfig(c, log))
	} else {
		log.Debug("intent log", "path", ipath)
		cc, err = cachecore.OpenWithIntent(ctx, store, cacheConfig(c, log), il)
	}
	if err != nil {
		m.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	e.mu.Lock()
	e.caches[c.Name] = &openCache{media: m, cache: cc}
	e.order = append(e.order, c.Name)
	e.mu.Unlock()
	if m.Kind() == persist.KindDAX {
		log.Info("cache open", "path", path, "media", m.Kind(), "flush", persist.FlushInstruction())
	} else {
		log.Info("cache open", "path", path, "media", m.Kind())
	}
	return nil
}

// intentPath is where the intent log of the cache file at cachePath lives:
// in the service's runtime directory ($RUNTIME_DIRECTORY, set by systemd's
// RuntimeDirectory=, else /run/cachelun), which is tmpfs, so it costs no disk
// writes and is gone after a reboot, as it must be; it is named by the cache
// UUID, unique per cache file. Without a writable runtime directory (an
// unprivileged demo) it sits next to the cache file; the boot id it records
// keeps it from being trusted after a reboot there too.
func intentPath(cachePath string, uuid [16]byte) (string, error) {
	name := fmt.Sprintf("%x.intent", uuid)
	runtimeDir, _, _ := strings.Cut(os.Getenv("RUNTIME_DIRECTORY"), ":")
	for _, dir := range []string{runtimeDir, "/run/cachelun"} {
		if dir == "" {
			continue
		}
		if err := os.MkdirAll(dir, 0o750); err != nil {
			continue
		}
		if unix.Access(dir, unix.W_OK) == nil {
			return filepath.Join(dir, name), nil
		}
	}
	abs, err := filepath.Abs(cachePath)
	if err != nil {
		return "", err
	}
	return abs + ".intent", nil
}

// openFileMedia opens an existing cache file, or with opts.Create builds a
// new one and returns the commit that renames it into place.
func openFileMedia(ctx context.Context, path string, opts persist.FileOptions) (persist.Media, func() error, error) {
	if opts.Create {
		return persist.CreateFile(ctx, path, opts)
	}
	m, err := persist.OpenFileContext(ctx, path, opts)
	return m, nil, err
}

func cacheConfig(c conf.Cache, log *slog.Logger) cachecore.Config {
	return cachecore.Config{
		Logger:               log,
		GCPercent:            *c.GCPercent,
		JournalFlushInterval: c.JournalFlushInterval.D,
		OnCacheFailure:       cachecore.FailurePolicy(c.OnCacheFailure),
		Writeback: cachecore.WritebackConfig{
			TargetDirtyPercent:   *c.Writeback.TargetDirtyPercent,
			HighWatermarkPercent: *c.Writeback.HighWatermarkPercent,
			IdleAfter:            c.Writeback.IdleAfter.D,
			MaxBytesPerSec:       c.Writeback.MaxBytesPerSec.Bytes,
		},
	}
}

func volumeConfig(v conf.Volume) (cachecore.VolumeConfig, error) {
	mode, err := cachecore.ParseMode(v.Mode)
	if err != nil {
		return cachecore.VolumeConfig{}, err
	}
	policy, err := cachecore.ParsePolicy(v.CachePolicy)
	if err != nil {
		return cachecore.VolumeConfig{}, err
	}
	return cachecore.VolumeConfig{
		Policy:                  policy,
		Mode:                    mode,
		BlockSize:               v.BlockSize,
		SequentialCutoff:        v.SequentialCutoff.Bytes,
		CongestedReadThreshold:  v.CongestedReadThreshold.D,
		CongestedWriteThreshold: v.CongestedWriteThreshold.D,
	}, nil
}

// addVolume adds a volume to its cache. On success the engine owns dev.
func (e *engine) addVolume(ctx context.Context, v conf.Volume, dev backend.Device) error {
	return e.addVolumeReplicated(ctx, v, dev, false)
}

// addVolumeReplicated adds a volume to its cache, marked replicated or not
// (cachecore.VolumeConfig.Replicated). On success the engine owns dev.
func (e *engine) addVolumeReplicated(ctx context.Context, v conf.Volume, dev backend.Device, replicated bool) error {
	oc, ok := e.cache(v.Cache)
	if !ok {
		return fmt.Errorf("cache %s is not open", v.Cache)
	}
	vc, err := volumeConfig(v)
	if err != nil {
		return err
	}
	vc.Replicated = replicated
	if d, ok := dev.(*rbd.Device); ok {
		dev = newRBDBacking(d, v.Name, v.Backing, e.log, e.kickSizes) // watches its lock and header
	}
	vol, err := oc.cache.AddVolume(ctx, v.Name, dev, vc)
	if err != nil {
		if b, ok := dev.(*rbdBacking); ok {
			b.stopMonitor() // the caller still owns, and closes, the image
		}
		return err
	}
	e.mu.Lock()
	e.volumes[v.Name] = vol
	e.devs[v.Name] = dev
	e.mu.Unlock()
	return nil
}

// kickSizes asks the resize watcher for a size check now; it never blocks.
func (e *engine) kickSizes() {
	select {
	case e.sizeKick <- struct{}{}:
	default:
	}
}

// addVolumeFresh adds a clustered volume whose image this node just took
// the lock of, after another node owned it: whatever its cache holds of it
// from an earlier run is dropped first (the other node wrote the image
// meanwhile), so the volume starts with nothing cached. Dirty data of a
// volume whose journal was replicated is dropped without writeback
// (cachecore.PurgeReplica): the node that owned the volume since applied
// this node's journal from its mirror, and the mirror here holds that
// node's. Dirty data of a volume that was not replicated when this cache
// last held it (a run before it was clustered) has no other copy: it is
// written back to the image first, as the cache's removal of a volume
// always does. replicated marks the volume added (addVolumeReplicated).
// On success the engine owns dev.
func (e *engine) addVolumeFresh(ctx context.Context, v conf.Volume, dev backend.Device, replicated bool) error {
	oc, ok := e.cache(v.Cache)
	if !ok {
		return fmt.Errorf("cache %s is not open", v.Cache)
	}
	vc, err := volumeConfig(v)
	if err != nil {
		return err
	}
	switch n, err := oc.cache.PurgeReplica(v.Name); {
	case err == nil:
		if n > 0 {
			e.log.Warn("cluster: dropped the volume's dirty data from this node's earlier ownership; the newer owner's journal replaces it",
				"volume", v.Name, "dirty_bytes", n)
		}
		return e.addVolumeReplicated(ctx, v, dev, replicated)
	case !errors.Is(err, cachecore.ErrNotReplicated):
		return fmt.Errorf("dropping the cached data: %w", err)
	}
	vol, err := oc.cache.AddVolume(ctx, v.Name, dev, vc)
	if err != nil {
		return err
	}
	if n := vol.Stats().DirtyBytes; n > 0 {
		e.log.Warn("cluster: the cache holds dirty data of the volume from before it was clustered; writing it back before serving",
			"volume", v.Name, "dirty_bytes", n)
	}
	if err := oc.cache.RemoveVolume(ctx, v.Name, nil); err != nil {
		return fmt.Errorf("dropping the cached data: %w", err)
	}
	return e.addVolumeReplicated(ctx, v, dev, replicated)
}

// holdsReplica reports whether cache holds a volume record of name marked
// replicated (cachecore.VolumeConfig.Replicated).
func (e *engine) holdsReplica(cacheName, name string) bool {
	oc, ok := e.cache(cacheName)
	if !ok {
		return false
	}
	rec, ok := oc.cache.VolumeRecord(name)
	return ok && rec.Flags&persist.VolumeFlagReplicated != 0
}

// removeVolume drains the volume's dirty data to its backing device
// (reporting progress), detaches it from its cache and closes the device.
func (e *engine) removeVolume(ctx context.Context, cacheName, name string, progress func(cachecore.Progress)) error {
	oc, ok := e.cache(cacheName)
	if !ok {
		return fmt.Errorf("cache %s is not open", cacheName)
	}
	if err := oc.cache.RemoveVolume(ctx, name, progress); err != nil {
		return err
	}
	e.mu.Lock()
	dev := e.devs[name]
	delete(e.volumes, name)
	delete(e.devs, name)
	e.mu.Unlock()
	if dev == nil {
		return nil
	}
	return errors.Join(dev.Flush(ctx), dev.Close())
}

// detachCache takes a cache out of service (cachecore.Cache.Detach; a
// healthy one after writing back its dirty data, reported to progress): its
// volumes go on serving I/O on their backing devices, in passthrough.
// It waits for a running reload (which may be tuning that cache) and keeps
// the next one out until it is done. The cache stays in the engine (Close
// still runs at shutdown); the file is marked detached and is not opened
// again until it is formatted.
func (d *Daemon) detachCache(ctx context.Context, name string, force bool, progress func(cachecore.Progress)) error {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	oc, ok := d.eng.cache(name)
	if !ok {
		return fmt.Errorf("cache %s is not open", name)
	}
	if err := oc.cache.DetachWithProgress(ctx, force, progress); err != nil {
		return fmt.Errorf("cache %s: %w", name, err)
	}
	d.log.Warn("cache detached: its volumes serve I/O on their backing devices; format the file before using it again",
		"cache", name, "force", force)
	return nil
}

// closeCache closes a cache that no volume uses any more, and its file.
func (e *engine) closeCache(ctx context.Context, name string) error {
	e.mu.Lock()
	oc, ok := e.caches[name]
	delete(e.caches, name)
	if i := slices.Index(e.order, name); i >= 0 {
		e.order = slices.Delete(e.order, i, i+1)
	}
	e.mu.Unlock()
	if !ok {
		return nil
	}
	return errors.Join(oc.cache.Close(ctx), oc.media.Close())
}

func (e *engine) volume(name string) (scsi.Volume, bool) {
	v, ok := e.cacheVolume(name)
	if !ok {
		return nil, false
	}
	return e.gateFenced(name, v), true
}

func (e *engine) cacheVolume(name string) (*cachecore.Volume, bool) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	v, ok := e.volumes[name]
	return v, ok
}

func (e *engine) cache(name string) (*openCache, bool) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	oc, ok := e.caches[name]
	return oc, ok
}

// close closes every cache (open ksets are persisted, dirty data stays in
// the cache for the next start), then the backing devices and media.
func (e *engine) close(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	var errs []error
	for i := len(e.order) - 1; i >= 0; i-- {
		oc := e.caches[e.order[i]]
		if err := oc.cache.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("cache %s: %w", e.order[i], err))
		}
	}
	for _, d := range e.devs {
		if err := d.Flush(ctx); err != nil {
			errs = append(errs, err)
		}
		if err := d.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, name := range e.order {
		if err := e.caches[name].media.Close(); err != nil {
			errs = append(errs, fmt.Errorf("cache %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}
