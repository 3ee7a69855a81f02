package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/cachelun/cachelun/target/scsi"
	"github.com/cachelun/cachelun/target/tcmu"
)

// tcmuStartTimeout bounds the kernel handshake and the re-adoption of
// existing devices at start.
const tcmuStartTimeout = 30 * time.Second

// tcmuExports tracks which volumes the TCMU front end may serve and which
// it serves now: one device per volume.
type tcmuExports struct {
	d       *daemon
	allowed map[string]bool

	mu    sync.Mutex
	inUse map[string]bool
}

// resolve maps a backstore's cfgstring (the volume name) to its volume.
// It is called while the kernel blocks the configfs writer: it only looks
// things up.
func (x *tcmuExports) resolve(cfgstring string, size int64) (scsi.Volume, error) {
	name := strings.TrimSpace(cfgstring)
	vol, ok := x.d.eng.volume(name)
	if !ok || !x.allowed[name] {
		return nil, fmt.Errorf("%w: %q is not a volume exported over TCMU (tcmu.volumes)", tcmu.ErrUnknownVolume, name)
	}
	if size > vol.Size() {
		return nil, fmt.Errorf("%w: device of %d bytes, volume %s has %d", tcmu.ErrVolumeTooSmall, size, name, vol.Size())
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.inUse[name] {
		return nil, fmt.Errorf("%w: volume %s already backs a TCMU device", tcmu.ErrVolumeInUse, name)
	}
	x.inUse[name] = true
	return vol, nil
}

func (x *tcmuExports) release(cfgstring string, _ scsi.Volume) {
	x.mu.Lock()
	delete(x.inUse, strings.TrimSpace(cfgstring))
	x.mu.Unlock()
}

func (x *tcmuExports) check(cfgstring string) error {
	name := strings.TrimSpace(cfgstring)
	if _, ok := x.d.eng.volume(name); !ok || !x.allowed[name] {
		return fmt.Errorf("%q is not a volume exported over TCMU", name)
	}
	return nil
}

// startTCMU runs the TCMU handler when the configuration enables it and
// waits until it answers the kernel (existing devices re-adopted).
func (d *daemon) startTCMU() error {
	tc := d.cfg.TCMU
	if !tc.Enabled {
		return nil
	}
	x := &tcmuExports{d: d, allowed: map[string]bool{}, inUse: map[string]bool{}}
	writeCache := true
	for _, name := range d.cfg.TCMUVolumes() {
		x.allowed[name] = true
		// one WCE default for the handler: write-through if any exported
		// volume asks for it
		if !*d.volumeConf(name).WriteCache {
			writeCache = false
		}
	}
	ready := make(chan struct{})
	var once sync.Once
	h, err := tcmu.New(tcmu.Config{
		Logger:      d.log.With("component", "tcmu"),
		Resolve:     x.resolve,
		Release:     x.release,
		Check:       x.check,
		ConfigDesc:  "cfgstring is the name of a cachelun volume",
		WriteCache:  writeCache,
		DBusAddress: tc.DBus,
		Ready:       func() { once.Do(func() { close(ready) }) },
	})
	if err != nil {
		return fmt.Errorf("TCMU front end: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.tcmuCancel = cancel
	d.tcmuDone = make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		defer close(d.tcmuDone)
		errc <- h.Run(ctx)
	}()
	select {
	case <-ready:
		d.log.Info("TCMU front end ready", "volumes", d.cfg.TCMUVolumes())
		return nil
	case err := <-errc:
		if err == nil {
			err = errors.New("handler stopped")
		}
		return fmt.Errorf("TCMU front end: %w", err)
	case <-time.After(tcmuStartTimeout):
		return fmt.Errorf("TCMU front end: no handshake with the kernel within %s", tcmuStartTimeout)
	}
}

// stopTCMU stops taking commands, lets those in flight finish (the
// handler's grace period) and waits for the handler to exit. Devices stay
// configured in LIO and are re-adopted at the next start.
func (d *daemon) stopTCMU() {
	if d.tcmuCancel == nil {
		return
	}
	d.tcmuCancel()
	<-d.tcmuDone
}
