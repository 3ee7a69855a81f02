// Command tcmuguest is the TCMU daemon the VM tests run inside the guest:
// target/tcmu + target/scsi serving file-backed volumes. A cfgstring names
// a file <dir>/<cfgstring>.img, which must exist and be at least as large as
// the device; each volume can back one device at a time.
//
// It prints "READY" on stderr once it answers kernel notifications.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/target/scsi"
	"github.com/cachelun/cachelun/target/tcmu"
)

func main() {
	dir := flag.String("dir", "/var/lib/cachelun", "directory holding <cfgstring>.img volume files")
	subtype := flag.String("subtype", "cachelun", "TCMU handler subtype")
	dbusAddr := flag.String("dbus", tcmu.DisableDBus, `D-Bus address for org.kernel.TCMUService1 ("" = system bus, "none" = off)`)
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	vols := &volumes{dir: *dir, open: map[string]*fileVolume{}}
	h, err := tcmu.New(tcmu.Config{
		Logger:      log,
		Subtype:     *subtype,
		DBusAddress: *dbusAddr,
		WriteCache:  true,
		Resolve:     vols.resolve,
		Release:     vols.release,
		Check:       vols.check,
		Ready:       func() { fmt.Fprintln(os.Stderr, "READY") },
	})
	if err != nil {
		log.Error("config", "err", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := h.Run(ctx); err != nil {
		log.Error("tcmu handler failed", "err", err)
		os.Exit(1)
	}
	log.Info("tcmu handler stopped")
}

type volumes struct {
	dir  string
	mu   sync.Mutex
	open map[string]*fileVolume
}

func (v *volumes) path(cfg string) (string, error) {
	if strings.Contains(cfg, "/") || strings.HasPrefix(cfg, ".") {
		return "", fmt.Errorf("%w: %q is not a plain volume name", tcmu.ErrUnknownVolume, cfg)
	}
	return filepath.Join(v.dir, cfg+".img"), nil
}

func (v *volumes) check(cfg string) error {
	p, err := v.path(cfg)
	if err != nil {
		return err
	}
	if _, err := os.Stat(p); err != nil {
		return fmt.Errorf("%w: volume %q has no file %s", tcmu.ErrUnknownVolume, cfg, p)
	}
	return nil
}

func (v *volumes) resolve(cfg string, size int64) (scsi.Volume, error) {
	p, err := v.path(cfg)
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.open[cfg] != nil {
		return nil, fmt.Errorf("%w: volume %q serves another device", tcmu.ErrVolumeInUse, cfg)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: volume %q is not configured (no %s)", tcmu.ErrUnknownVolume, cfg, p)
	}
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if st.Size() < size {
		f.Close()
		return nil, fmt.Errorf("%w: device of %d bytes, volume %q holds %d", tcmu.ErrVolumeTooSmall, size, cfg, st.Size())
	}
	fv := &fileVolume{f: f, size: st.Size()}
	v.open[cfg] = fv
	return fv, nil
}

func (v *volumes) release(cfg string, _ scsi.Volume) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if fv := v.open[cfg]; fv != nil {
		fv.f.Close()
		delete(v.open, cfg)
	}
}

// fileVolume is a scsi.Volume over a regular file.
type fileVolume struct {
	f    *os.File
	size int64
	// caw makes COMPARE AND WRITE atomic: plain writes share it, a
	// compare-and-write holds it exclusively.
	caw sync.RWMutex
}

func (v *fileVolume) Size() int64    { return v.size }
func (v *fileVolume) BlockSize() int { return 512 }

func (v *fileVolume) check(off, n int64) error {
	if off < 0 || n < 0 || off+n > v.size {
		return blk.ErrOutOfRange
	}
	return nil
}

func (v *fileVolume) ReadAt(_ context.Context, p []byte, off int64) error {
	if err := v.check(off, int64(len(p))); err != nil {
		return err
	}
	if _, err := v.f.ReadAt(p, off); err != nil {
		return fmt.Errorf("%w: %v", blk.ErrMedium, err)
	}
	return nil
}

func (v *fileVolume) WriteAt(_ context.Context, p []byte, off int64, fua bool) error {
	v.caw.RLock()
	defer v.caw.RUnlock()
	return v.writeAt(p, off, fua)
}

func (v *fileVolume) writeAt(p []byte, off int64, fua bool) error {
	if err := v.check(off, int64(len(p))); err != nil {
		return err
	}
	if _, err := v.f.WriteAt(p, off); err != nil {
		return fmt.Errorf("%w: %v", blk.ErrMedium, err)
	}
	if fua {
		return v.sync()
	}
	return nil
}

func (v *fileVolume) sync() error {
	if err := v.f.Sync(); err != nil {
		return fmt.Errorf("%w: %v", blk.ErrMedium, err)
	}
	return nil
}

func (v *fileVolume) Flush(context.Context) error { return v.sync() }

func (v *fileVolume) Discard(ctx context.Context, off, n int64) error {
	if err := v.check(off, n); err != nil {
		return err
	}
	return v.WriteAt(ctx, make([]byte, n), off, false)
}

func (v *fileVolume) CompareAndWrite(ctx context.Context, off int64, compare, data []byte, fua bool) error {
	v.caw.Lock()
	defer v.caw.Unlock()
	cur := make([]byte, len(compare))
	if err := v.ReadAt(ctx, cur, off); err != nil {
		return err
	}
	for i := range cur {
		if cur[i] != compare[i] {
			return &blk.MiscompareError{Offset: int64(i)}
		}
	}
	return v.writeAt(data, off, fua)
}

func (v *fileVolume) Prefetch(_ context.Context, off, n int64) error { return v.check(off, n) }
