package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/conf"
	"github.com/cachelun/cachelun/persist"
	"github.com/cachelun/cachelun/target/scsi"
)

// engine owns the open caches (persist media + cachecore.Cache) and the
// backing devices of their volumes.
type engine struct {
	log     *slog.Logger
	caches  map[string]*openCache
	order   []string // cache names in open order; closed in reverse
	volumes map[string]*cachecore.Volume
	devs    []backend.Device
}

type openCache struct {
	media persist.Media
	cache *cachecore.Cache
}

func newEngine(log *slog.Logger) *engine {
	return &engine{log: log, caches: map[string]*openCache{}, volumes: map[string]*cachecore.Volume{}}
}

// openCache opens the cache file, creating and formatting it when it does
// not exist and a size is configured. An existing file is never formatted
// here (that is `cachelun format`): it may hold dirty data.
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
	m, err := persist.OpenFile(path, persist.FileOptions{Create: create, Size: c.Size.Bytes, Logger: log})
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
			log.Info("cache file created and formatted", "path", path, "size", conf.FormatSize(c.Size.Bytes))
		}
	} else {
		store, err = persist.Open(m)
	}
	if err != nil {
		m.Close()
		if create {
			os.Remove(path)
		}
		return fmt.Errorf("%s: %w", path, err)
	}
	cc, err := cachecore.Open(ctx, store, cacheConfig(c, log))
	if err != nil {
		m.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	e.caches[c.Name] = &openCache{media: m, cache: cc}
	e.order = append(e.order, c.Name)
	log.Info("cache open", "path", path, "media", m.Kind())
	return nil
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
	return cachecore.VolumeConfig{
		Mode:                    mode,
		BlockSize:               v.BlockSize,
		SequentialCutoff:        v.SequentialCutoff.Bytes,
		CongestedReadThreshold:  v.CongestedReadThreshold.D,
		CongestedWriteThreshold: v.CongestedWriteThreshold.D,
	}, nil
}

// addVolume adds a volume to its cache. On success the engine owns dev.
func (e *engine) addVolume(ctx context.Context, v conf.Volume, dev backend.Device) error {
	oc, ok := e.caches[v.Cache]
	if !ok {
		return fmt.Errorf("cache %s is not open", v.Cache)
	}
	vc, err := volumeConfig(v)
	if err != nil {
		return err
	}
	vol, err := oc.cache.AddVolume(ctx, v.Name, dev, vc)
	if err != nil {
		return err
	}
	e.volumes[v.Name] = vol
	e.devs = append(e.devs, dev)
	return nil
}

func (e *engine) volume(name string) (scsi.Volume, bool) {
	v, ok := e.volumes[name]
	return v, ok
}

// close closes every cache (open ksets are persisted, dirty data stays in
// the cache for the next start), then the backing devices and media.
func (e *engine) close(ctx context.Context) error {
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
