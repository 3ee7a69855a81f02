package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sort"
	"strings"

	"github.com/cachelun/cachelun/admin"
	"github.com/cachelun/cachelun/admin/coreadapter"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/conf"
	"github.com/cachelun/cachelun/target/tcmu"
)

// startAdmin starts the admin API (unix socket) and /metrics as
// configured. It returns when they listen, or with the error that kept
// them from it.
func (d *Daemon) startAdmin() error {
	g := d.cfg.Global
	if g.AdminSocket == conf.Off && g.MetricsListen == conf.Off {
		return nil
	}
	cfg := admin.Config{
		Backend:  &adminBackend{d: d},
		Registry: d.registry,
		Logger:   d.log.With("component", "admin"),
		Version:  buildVersion(),
	}
	if g.AdminSocket == conf.Off {
		cfg.NoSocket = true
	} else {
		cfg.SocketPath = d.path(g.AdminSocket)
		if err := os.MkdirAll(filepath.Dir(cfg.SocketPath), 0o750); err != nil {
			return fmt.Errorf("admin socket: %w", err)
		}
	}
	if g.MetricsListen != conf.Off {
		cfg.MetricsListen = g.MetricsListen
	}
	srv, err := admin.NewServer(cfg)
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}
	d.adminSrv = srv // before Serve: handlers read it
	ctx, cancel := context.WithCancel(context.Background())
	d.adminCancel = cancel
	errc := make(chan error, 1)
	d.adminDone = make(chan struct{})
	go func() {
		defer close(d.adminDone)
		errc <- srv.Serve(ctx)
	}()
	select {
	case <-srv.Ready():
		socket, metrics := cfg.SocketPath, conf.Off
		if cfg.NoSocket {
			socket = conf.Off
		}
		if a := srv.Addr("metrics"); a != nil {
			// the bound address: with port 0 the configured one says nothing
			metrics = "http://" + a.String() + "/metrics"
		}
		d.log.Info("admin API ready", "socket", socket, "metrics", metrics)
		return nil
	case err := <-errc:
		if errors.Is(err, admin.ErrMetricsListen) {
			return fmt.Errorf("%w (global.metrics_listen: serve --metrics HOST:PORT moves it, --metrics off disables it)", err)
		}
		return fmt.Errorf("admin: %w", err)
	}
}

func (d *Daemon) stopAdmin() {
	if d.adminCancel == nil {
		return
	}
	d.adminCancel()
	<-d.adminDone
}

// adminBackend shows the running daemon to the admin server.
type adminBackend struct{ d *Daemon }

func (b *adminBackend) Volumes() []admin.VolumeAPI {
	var out []admin.VolumeAPI
	for _, v := range b.d.config().Volumes {
		if vol, ok := b.d.eng.cacheVolume(v.Name); ok {
			out = append(out, adminVolume{VolumeAPI: coreadapter.Volume(vol, v.Cache), d: b.d})
		}
	}
	return out
}

func (b *adminBackend) Caches() []admin.CacheAPI {
	var out []admin.CacheAPI
	for _, c := range b.d.config().Caches {
		if oc, ok := b.d.eng.cache(c.Name); ok {
			name := c.Name
			out = append(out, coreadapter.Cache(c.Name, b.d.path(c.Path), oc.cache, func(ctx context.Context, force bool, progress func(cachecore.Progress)) error {
				return b.d.detachCache(ctx, name, force, progress)
			}))
		}
	}
	return out
}

// RunningConfig prints the running configuration (command-line overrides
// applied, defaults filled in) for `cachelun config show`. A listener
// given port 0 shows the port it got: that is what runs, and a file
// refuses port 0.
func (b *adminBackend) RunningConfig(secrets bool) ([]byte, error) {
	d := b.d
	d.mu.RLock()
	cfg := *d.cfg
	cfg.Targets = slices.Clone(cfg.Targets)
	for i := range cfg.Targets {
		t := &cfg.Targets[i]
		t.Portals = slices.Clone(t.Portals)
		for j, p := range t.Portals {
			if a, ok := d.portalAddr[p]; ok {
				t.Portals[j] = a
			}
		}
	}
	d.mu.RUnlock()
	if a := d.adminSrv.Addr("metrics"); a != nil {
		cfg.Global.MetricsListen = a.String()
	}
	return cfg.TOML(secrets)
}

// Targets lists the configured iSCSI targets, so the session gauges show
// each one at zero before the first login.
func (b *adminBackend) Targets() []admin.Target {
	var out []admin.Target
	for _, t := range b.d.config().Targets {
		out = append(out, admin.Target{Transport: "iscsi", Name: t.IQN})
	}
	return out
}

// Sessions lists the iSCSI sessions, then one row per TCMU device.
func (b *adminBackend) Sessions() []admin.Session {
	out := coreadapter.ISCSISessions(b.d.iscsi.Sessions())
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	if b.d.tcmuFE != nil {
		out = append(out, tcmuSessions(b.d.tcmuFE.Devices())...)
	}
	return out
}

// tcmuSessions shows each TCMU device as a session: LIO's fabrics own the
// initiators, so the row names the device, its volume and the commands in
// its ring.
func tcmuSessions(devs []tcmu.DeviceInfo) []admin.Session {
	out := make([]admin.Session, 0, len(devs))
	for _, dev := range devs {
		out = append(out, admin.Session{
			Transport: "tcmu",
			Target:    dev.ConfigDir,
			Volume:    strings.TrimSpace(dev.Cfgstring),
			ID:        fmt.Sprintf("uio%d", dev.UIO),
			InFlight:  dev.InFlight,
		})
	}
	return out
}

// Reload re-reads the configuration file and applies the difference as
// one transaction (see Daemon.Reload); a dry run only describes it.
func (b *adminBackend) Reload(ctx context.Context, dryRun bool) (string, error) {
	return b.d.reload(ctx, dryRun)
}

// adminVolume notes the mode switches made through the admin API, so that
// a reload's plan can say that a live mode came from there.
type adminVolume struct {
	admin.VolumeAPI
	d *Daemon
}

// errClusterMode refuses a mode that keeps dirty data to a clustered
// volume whose journal is not replicated (its configuration's mode keeps
// none); a replicated one stays in writeback (cachecore.ErrReplicatedMode).
var errClusterMode = errors.New("a clustered volume keeps dirty data only when its journal is replicated " +
	"(mode = \"writeback\" in its configuration): writethrough, writearound and passthrough only")

func (v adminVolume) SetMode(ctx context.Context, m admin.Mode, progress func(admin.Progress)) error {
	if v.d.clu != nil && !replicatedVolume(v.d.volumeConfLocked(v.Name())) {
		if cm := cachecore.Mode(m); cm == cachecore.ModeWriteback || cm == cachecore.ModeWriteonly {
			return fmt.Errorf("volume %s: mode %s: %w", v.Name(), cm, errClusterMode)
		}
	}
	err := v.d.eng.drain(ctx, v.Name(), func(ctx context.Context) error { return v.VolumeAPI.SetMode(ctx, m, progress) })
	// the engine switches before it drains: a cancelled drain still
	// leaves the new mode running
	if mode := cachecore.Mode(v.VolumeAPI.Mode()); mode == cachecore.Mode(m) {
		v.d.noteAdminMode(v.Name(), mode)
	}
	return err
}

// Drain writes the volume's dirty data back. On an RBD image whose lock
// was lost it fails, at once or when the loss is seen: the image is
// another client's now.
func (v adminVolume) Drain(ctx context.Context, progress func(admin.Progress)) error {
	return v.d.eng.drain(ctx, v.Name(), func(ctx context.Context) error { return v.VolumeAPI.Drain(ctx, progress) })
}

// buildVersion names the running binary for status output: the module
// version it was built as ("(devel)" for a build from a checkout) and, when
// the build recorded it, the VCS revision.
func buildVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += " " + s.Value[:12]
		}
	}
	return v
}
