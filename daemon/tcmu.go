package daemon

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cachelun/cachelun/conf"
	"github.com/cachelun/cachelun/target/scsi"
	"github.com/cachelun/cachelun/target/tcmu"
)

// tcmuStartTimeout bounds the kernel handshake and the re-adoption of
// existing devices at start.
const tcmuStartTimeout = 30 * time.Second

// tcmuExports tracks which volumes the TCMU front end may serve and which
// it serves now: one device per volume. A reload changes the exported set
// and the volumes' write-cache settings live (update, setWriteCache).
type tcmuExports struct {
	d *Daemon

	mu      sync.Mutex
	allowed map[string]bool
	inUse   map[string]bool
	wce     map[string]bool // configured WCE by volume
}

func newTCMUExports(d *Daemon, cfg *conf.Config) *tcmuExports {
	x := &tcmuExports{d: d, allowed: map[string]bool{}, inUse: map[string]bool{}, wce: map[string]bool{}}
	for _, name := range cfg.TCMUVolumes() {
		x.allowed[name] = true
	}
	for _, v := range cfg.Volumes {
		x.wce[v.Name] = v.WriteCache == nil || *v.WriteCache
	}
	return x
}

// resolve maps a backstore's cfgstring (the volume name) to its volume,
// instrumented like the volumes of iSCSI LUNs. It is called while the
// kernel blocks the configfs writer: it only looks things up.
func (x *tcmuExports) resolve(cfgstring string, size int64) (scsi.Volume, error) {
	name := strings.TrimSpace(cfgstring)
	x.mu.Lock()
	defer x.mu.Unlock()
	vol, ok := x.d.eng.volume(name)
	if !ok || !x.allowed[name] {
		return nil, fmt.Errorf("%w: %q is not a volume exported over TCMU (tcmu.volumes)", tcmu.ErrUnknownVolume, name)
	}
	if size > vol.Size() {
		return nil, fmt.Errorf("%w: device of %d bytes, volume %s has %d", tcmu.ErrVolumeTooSmall, size, name, vol.Size())
	}
	if x.inUse[name] {
		return nil, fmt.Errorf("%w: volume %s already backs a TCMU device", tcmu.ErrVolumeInUse, name)
	}
	x.inUse[name] = true
	return x.d.latency.InstrumentVolume(name, vol), nil
}

func (x *tcmuExports) release(cfgstring string, _ scsi.Volume) {
	x.mu.Lock()
	delete(x.inUse, strings.TrimSpace(cfgstring))
	x.mu.Unlock()
}

func (x *tcmuExports) check(cfgstring string) error {
	name := strings.TrimSpace(cfgstring)
	x.mu.Lock()
	allowed := x.allowed[name]
	x.mu.Unlock()
	if _, ok := x.d.eng.volume(name); !ok || !allowed {
		return fmt.Errorf("%q is not a volume exported over TCMU", name)
	}
	return nil
}

// writeCache is the configured WCE of a device serving cfgstring.
func (x *tcmuExports) writeCache(cfgstring string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	on, ok := x.wce[strings.TrimSpace(cfgstring)]
	return !ok || on
}

// setWriteCache records a volume's configured WCE for devices started from
// now on and returns the previous one.
func (x *tcmuExports) setWriteCache(volume string, on bool) (prev bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	prev, ok := x.wce[volume]
	x.wce[volume] = on
	return !ok || prev
}

// bound returns the volumes of names that back a live TCMU device.
func (x *tcmuExports) bound(names []string) []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []string
	for _, n := range names {
		if x.inUse[n] {
			out = append(out, n)
		}
	}
	return out
}

// update makes names the exported set. It refuses, changing nothing, when
// a volume leaving the set backs a live device (checked under the same
// lock resolve takes, so no device can bind it in between). It returns the
// previous set for the undo.
func (x *tcmuExports) update(names []string) (prev []string, err error) {
	next := map[string]bool{}
	for _, n := range names {
		next[n] = true
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	var busy []string
	for n := range x.allowed {
		prev = append(prev, n)
		if !next[n] && x.inUse[n] {
			busy = append(busy, n)
		}
	}
	if len(busy) > 0 {
		slices.Sort(busy)
		return nil, fmt.Errorf("%w: %s", errTCMUVolumeBound, strings.Join(busy, ", "))
	}
	x.allowed = next
	return prev, nil
}

// errTCMUVolumeBound refuses a reload that would take a volume away from
// the TCMU device serving it.
var errTCMUVolumeBound = errors.New("volume backs a live TCMU device (remove the device with targetcli first)")

// tcmuFrontEnd is what the daemon uses of the running TCMU handler (an
// interface so that tests can stand in for the kernel).
type tcmuFrontEnd interface {
	Devices() []tcmu.DeviceInfo
	SetConfiguredWriteCache(ctx context.Context, cfgstring string, on bool) (int, error)
	GrowDevices(ctx context.Context, cfgstring string, oldSize, newSize int64) (int, error)
}

// startTCMU runs the TCMU handler when the configuration enables it and
// waits until it answers the kernel (existing devices re-adopted).
func (d *Daemon) startTCMU() error {
	tc := d.cfg.TCMU
	if !tc.Enabled {
		return nil
	}
	x := newTCMUExports(d, d.cfg)
	ready := make(chan struct{})
	var once sync.Once
	h, err := tcmu.New(tcmu.Config{
		Logger:     d.log.With("component", "tcmu"),
		Resolve:    x.resolve,
		Release:    x.release,
		Check:      x.check,
		ConfigDesc: "cfgstring is the name of a cachelun volume",
		// each device takes its volume's write_cache; WriteCache is only
		// the fallback, the safe one
		WriteCache:       false,
		DeviceWriteCache: x.writeCache,
		// the running configuration's value when the device starts (a
		// change of sanitize_max_bytes_per_sec needs a restart)
		DeviceSanitizeRate: func(cfgstring string) int64 {
			return scsiSanitizeRate(d.config().VolumeSanitizeRate(strings.TrimSpace(cfgstring)))
		},
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
	d.tcmuX, d.tcmuFE = x, h
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
func (d *Daemon) stopTCMU() {
	if d.tcmuCancel == nil {
		return
	}
	d.tcmuCancel()
	<-d.tcmuDone
}
