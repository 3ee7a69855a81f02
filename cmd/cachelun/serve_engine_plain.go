//go:build !cachecoreengine

package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"sync"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/conf"
	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/target/scsi"
)

// engine (plainengine build) serves volumes straight from their backing
// devices, without a cache. It exists to test the front end in isolation.
type engine struct {
	log  *slog.Logger
	vols map[string]*plainVolume
}

func newEngine(log *slog.Logger) *engine { return &engine{log: log, vols: map[string]*plainVolume{}} }

func (e *engine) openCache(ctx context.Context, c conf.Cache, path string) error {
	e.log.Warn("plainengine build: cache not used", "cache", c.Name)
	return nil
}

func (e *engine) addVolume(ctx context.Context, v conf.Volume, dev backend.Device) error {
	e.vols[v.Name] = &plainVolume{dev: dev, bs: v.BlockSize}
	return nil
}

func (e *engine) volume(name string) (scsi.Volume, bool) {
	v, ok := e.vols[name]
	return v, ok
}

func (e *engine) close(ctx context.Context) error {
	var errs []error
	for _, v := range e.vols {
		errs = append(errs, v.dev.Flush(ctx), v.dev.Close())
	}
	return errors.Join(errs...)
}

type plainVolume struct {
	dev backend.Device
	bs  int
	cw  sync.Mutex // COMPARE AND WRITE atomicity
}

func (v *plainVolume) Size() int64    { return v.dev.Size() }
func (v *plainVolume) BlockSize() int { return v.bs }
func (v *plainVolume) ReadAt(ctx context.Context, p []byte, off int64) error {
	return v.dev.ReadAt(ctx, p, off)
}
func (v *plainVolume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	v.cw.Lock()
	err := v.dev.WriteAt(ctx, p, off)
	v.cw.Unlock()
	if err == nil && fua {
		err = v.dev.Flush(ctx)
	}
	return err
}
func (v *plainVolume) Flush(ctx context.Context) error { return v.dev.Flush(ctx) }
func (v *plainVolume) Discard(ctx context.Context, off, n int64) error {
	return v.dev.Discard(ctx, off, n)
}
func (v *plainVolume) Prefetch(ctx context.Context, off, n int64) error { return nil }
func (v *plainVolume) CompareAndWrite(ctx context.Context, off int64, compare, data []byte, fua bool) error {
	v.cw.Lock()
	defer v.cw.Unlock()
	cur := make([]byte, len(compare))
	if err := v.dev.ReadAt(ctx, cur, off); err != nil {
		return err
	}
	for i := range cur {
		if cur[i] != compare[i] {
			return &blk.MiscompareError{Offset: int64(i)}
		}
	}
	if bytes.Equal(cur, data) && !fua {
		return nil
	}
	if err := v.dev.WriteAt(ctx, data, off); err != nil {
		return err
	}
	if fua {
		return v.dev.Flush(ctx)
	}
	return nil
}
