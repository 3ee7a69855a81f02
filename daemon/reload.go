package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/conf"
	"github.com/cachelun/cachelun/reconcile"
	"github.com/cachelun/cachelun/target/scsi"
)

// Live reload.
//
// A reload loads and validates the configuration file again; package
// reconcile compares it with the running configuration and works out the
// transaction (the steps, their order and their undos), and runs it over
// the daemon's effects below. Reloads are serialized by Daemon.reloadMu.

// errReloadDefault refuses a reload of the embedded default configuration.
var errReloadDefault = errors.New("the daemon runs the embedded default configuration: nothing to reload")

// errNotOpen is a reload step's object missing from the engine.
var errNotOpen = errors.New("not open")

// drainLogInterval spaces the progress lines of a volume drain.
const drainLogInterval = time.Second

// reload re-reads the configuration file and applies the difference. A dry
// run returns the plan and changes nothing. The returned text is the plan
// (one change a line) in both cases.
func (d *Daemon) reload(ctx context.Context, dryRun bool) (string, error) {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()

	old := d.config()
	next, err := d.loadForReload(old)
	if err != nil {
		return "", fmt.Errorf("configuration not reloaded, nothing applied: %w", err)
	}
	plan, err := reconcile.MakePlan(old, next, d.liveValues(old))
	if err != nil {
		return plan.String(), err
	}
	if err := d.tcmuBound(old, next); err != nil {
		return plan.String(), err
	}
	if err := d.clusterReload(plan.Changes); err != nil {
		return plan.String(), err
	}
	if dryRun {
		return plan.String(), nil
	}
	if plan.Changes.Empty() {
		// nothing runs differently, but the file may still differ from
		// the last one loaded where the live state already matches it
		d.mu.Lock()
		d.cfg = next
		d.mu.Unlock()
		d.forgetAdminModes()
		return plan.String(), nil
	}
	d.log.Info("reload: applying", "source", next.Source, "changes", len(plan.Changes.Changes))
	log := d.log.With("component", "reload")
	if err := reconcile.Apply(ctx, plan.Steps, d.reloadEffects(log, next), log); err != nil {
		d.log.Error("reload failed", "err", err)
		return plan.String(), err
	}
	d.forgetAdminModes()
	d.log.Info("reload applied", "plan", plan.String())
	return plan.String(), nil
}

// liveValues are the running values that can change outside the file:
// today a volume's cache mode (the admin API's `volume mode`).
func (d *Daemon) liveValues(old *conf.Config) []reconcile.LiveValue {
	var out []reconcile.LiveValue
	if d.clu != nil {
		// a clustered volume's running writethrough is the cluster's,
		// not a live change a reload would undo
		return nil
	}
	for _, v := range old.Volumes {
		vol, ok := d.eng.cacheVolume(v.Name)
		if !ok {
			continue
		}
		running := vol.Mode()
		if fileMode, err := cachecore.ParseMode(v.Mode); err == nil && fileMode == running {
			continue
		}
		source := "live"
		if d.adminMode(v.Name) == running {
			source = "live, set by admin"
		}
		out = append(out, reconcile.LiveValue{Section: conf.SectionVolume, Name: v.Name, Field: "mode",
			Value: string(running), Source: source})
	}
	return out
}

// errClusterReload refuses a live change of volumes or targets on a
// cluster node.
var errClusterReload = errors.New("a cluster node applies changes of volumes, targets and LUNs at a restart " +
	"(ownership and ALUA states are set up when it starts); nothing applied")

// clusterReload refuses, on a cluster node, a plan that changes volumes,
// targets or the TCMU exports.
func (d *Daemon) clusterReload(p conf.Plan) error {
	if d.clu == nil {
		return nil
	}
	for _, c := range p.Changes {
		switch c.Section {
		case conf.SectionVolume, conf.SectionTarget, conf.SectionTCMU:
			return fmt.Errorf("%s: %w", c, errClusterReload)
		}
	}
	return nil
}

// loadForReload loads the file the daemon was started with and carries the
// command-line overrides (data dir, --listen, --metrics) over to it.
func (d *Daemon) loadForReload(old *conf.Config) (*conf.Config, error) {
	src := old.Source
	if src == "" || strings.HasPrefix(src, "<") {
		return nil, errReloadDefault
	}
	next, err := conf.Load(src)
	if err != nil {
		return nil, err
	}
	next.Global.DataDir = old.Global.DataDir
	if d.metricsOverride != "" {
		next.Global.MetricsListen = d.metricsOverride
	}
	if d.listenOverride != "" {
		for i := range next.Targets {
			next.Targets[i].Portals = []string{d.listenOverride}
		}
	}
	return next, nil
}

// tcmuBound refuses a plan that takes a volume away from the TCMU device
// serving it: the volumes leaving the exported set, or leaving the
// configuration, that back a live device.
func (d *Daemon) tcmuBound(old, next *conf.Config) error {
	if d.tcmuX == nil || !next.TCMU.Enabled {
		return nil
	}
	stays := map[string]bool{}
	for _, n := range next.TCMUVolumes() {
		stays[n] = true
	}
	var leaving []string
	for _, n := range old.TCMUVolumes() {
		if !stays[n] {
			leaving = append(leaving, n)
		}
	}
	if busy := d.tcmuX.bound(leaving); len(busy) > 0 {
		return fmt.Errorf("%w: %s; nothing applied", errTCMUVolumeBound, strings.Join(busy, ", "))
	}
	return nil
}

// reloadEffects is the daemon as one reload transaction changes it.
func (d *Daemon) reloadEffects(log *slog.Logger, next *conf.Config) reconcile.Effects {
	fx := &reloadFx{d: d, log: log, next: next, removed: map[string]*scsi.Target{}}
	e := reconcile.Effects{Engine: fx, Targets: fx, Daemon: fx}
	if d.tcmuX != nil {
		e.TCMU = fx
	}
	return e
}

// reloadFx carries out a reload's actions on the daemon. removed keeps
// the SCSI targets a step took away, so that an undo puts the same ones
// (with their LUNs' reservations and unit attentions) back.
type reloadFx struct {
	d       *Daemon
	log     *slog.Logger
	next    *conf.Config // the configuration being applied
	removed map[string]*scsi.Target
}

// sanitizeRate is the SANITIZE OVERWRITE rate limit a LUN of volume starts
// with: the new configuration's, or, for a volume only the running one
// has (an undo mapping it again), the running one's.
func (fx *reloadFx) sanitizeRate(volume string) int64 {
	for _, c := range []*conf.Config{fx.next, fx.d.config()} {
		for _, v := range c.Volumes {
			if v.Name == volume {
				return v.SanitizeMaxBytesPerSec.Bytes
			}
		}
	}
	return conf.DefaultSanitizeMaxBytesPerSec
}

func (fx *reloadFx) CheckNewFiles(caches []conf.Cache, volumes []conf.Volume) error {
	for _, v := range volumes {
		if err := checkBackingExists(v, fx.d.path(v.Backing)); err != nil {
			return fmt.Errorf("volume %s: %w", v.Name, err)
		}
	}
	return checkCacheSpace(caches, fx.d.path)
}

func (fx *reloadFx) OpenCache(ctx context.Context, c conf.Cache) error {
	return fx.d.eng.openCache(ctx, c, fx.d.path(c.Path))
}

func (fx *reloadFx) CloseCache(ctx context.Context, c conf.Cache) error {
	return fx.d.eng.closeCache(ctx, c.Name)
}

func (fx *reloadFx) SetCacheConfig(c conf.Cache) error {
	oc, ok := fx.d.eng.cache(c.Name)
	if !ok {
		return errNotOpen
	}
	return oc.cache.SetConfig(cacheConfig(c, fx.log))
}

// AddVolume opens a volume's backing device and adds it to its cache.
func (fx *reloadFx) AddVolume(ctx context.Context, v conf.Volume) error {
	dev, err := openBacking(v, fx.d.path(v.Backing))
	if err != nil {
		return err
	}
	if err := fx.d.eng.addVolume(ctx, v, dev); err != nil {
		dev.Close()
		return err
	}
	return nil
}

// RemoveVolume drains and removes a volume no LUN maps any more. Its data
// is on the backing device afterwards, so adding it again undoes it.
func (fx *reloadFx) RemoveVolume(ctx context.Context, v conf.Volume) error {
	fx.log.Info("removing volume: writing back its dirty data", "volume", v.Name)
	return fx.d.eng.removeVolume(ctx, v.Cache, v.Name, fx.drainProgress(v.Name))
}

func (fx *reloadFx) SetVolumeTunables(v conf.Volume, mode string) error {
	vol, ok := fx.d.eng.cacheVolume(v.Name)
	if !ok {
		return errNotOpen
	}
	vc, err := volumeConfig(v)
	if err != nil {
		return err
	}
	if vc.Mode, err = cachecore.ParseMode(mode); err != nil {
		return err
	}
	return vol.SetConfig(vc)
}

func (fx *reloadFx) SetVolumeMode(ctx context.Context, volume, mode string) error {
	vol, ok := fx.d.eng.cacheVolume(volume)
	if !ok {
		return errNotOpen
	}
	m, err := cachecore.ParseMode(mode)
	if err != nil {
		return err
	}
	fx.log.Info("volume mode switch", "volume", volume, "from", vol.Mode(), "to", m)
	return vol.SetMode(ctx, m, fx.drainProgress(volume))
}

func (fx *reloadFx) OpenPortal(p string) error {
	fx.d.mu.Lock()
	defer fx.d.mu.Unlock()
	return fx.d.openPortal(p)
}

// ClosePortal stops a listener no target names any more, dropping the
// connections it accepted (UpdateTarget already logged their sessions
// out).
func (fx *reloadFx) ClosePortal(p string) error {
	fx.d.mu.Lock()
	defer fx.d.mu.Unlock()
	fx.d.closePortal(p)
	return nil
}

func (fx *reloadFx) AddTarget(t conf.Target, writeCache []bool) error {
	d := fx.d
	st := scsi.NewTarget(scsi.TargetConfig{Name: t.IQN, Logger: d.log.With("component", "scsi", "target", t.IQN), CopyManager: d.copyManager()})
	for i, l := range t.LUNs {
		if err := d.addLU(st, t.IQN, l, writeCache[i], fx.sanitizeRate(l.Volume)); err != nil {
			return err
		}
	}
	d.mu.RLock()
	tc := d.iscsiTarget(t, st)
	d.mu.RUnlock()
	if err := d.iscsi.AddTarget(tc); err != nil {
		return fmt.Errorf("target %s: %w", t.IQN, err)
	}
	d.mu.Lock()
	d.targets[strings.ToLower(t.IQN)] = st
	d.mu.Unlock()
	return nil
}

func (fx *reloadFx) RemoveTarget(t conf.Target) error {
	d := fx.d
	key := strings.ToLower(t.IQN)
	if err := d.iscsi.RemoveTarget(t.IQN); err != nil {
		return err
	}
	d.mu.Lock()
	fx.removed[key] = d.targets[key]
	delete(d.targets, key)
	d.mu.Unlock()
	return nil
}

func (fx *reloadFx) RestoreTarget(t conf.Target) error {
	d := fx.d
	key := strings.ToLower(t.IQN)
	st := fx.removed[key]
	if st == nil {
		return fmt.Errorf("target %s: nothing to restore", t.IQN)
	}
	d.mu.RLock()
	tc := d.iscsiTarget(t, st)
	d.mu.RUnlock()
	if err := d.iscsi.AddTarget(tc); err != nil {
		return err
	}
	d.mu.Lock()
	d.targets[key] = st
	d.mu.Unlock()
	delete(fx.removed, key)
	return nil
}

func (fx *reloadFx) UpdateTarget(t conf.Target) error {
	st, err := fx.scsiTarget(t.IQN)
	if err != nil {
		return err
	}
	fx.d.mu.RLock()
	tc := fx.d.iscsiTarget(t, st)
	fx.d.mu.RUnlock()
	return fx.d.iscsi.UpdateTarget(tc)
}

func (fx *reloadFx) MapLUN(iqn string, l conf.LUN, writeCache bool) error {
	st, err := fx.scsiTarget(iqn)
	if err != nil {
		return err
	}
	return fx.d.addLU(st, iqn, l, writeCache, fx.sanitizeRate(l.Volume))
}

func (fx *reloadFx) UnmapLUN(iqn string, lun uint64) error {
	st, err := fx.scsiTarget(iqn)
	if err != nil {
		return err
	}
	return st.RemoveLU(lun)
}

func (fx *reloadFx) scsiTarget(iqn string) (*scsi.Target, error) {
	fx.d.mu.RLock()
	defer fx.d.mu.RUnlock()
	st, ok := fx.d.targets[strings.ToLower(iqn)]
	if !ok {
		return nil, fmt.Errorf("target %s is not running", iqn)
	}
	return st, nil
}

func (fx *reloadFx) SetDiscoveryCHAP(c *conf.CHAP) {
	if c == nil {
		fx.d.iscsi.SetDiscoveryCHAP(nil)
	} else {
		fx.d.iscsi.SetDiscoveryCHAP(iscsiCHAP(c))
	}
}

// SetWriteCache applies a volume's write_cache to the LUNs that serve it:
// iSCSI LUNs mapped to it and TCMU devices bound to it, as their
// configured WCE (scsi.LU.SetConfiguredWriteCache: a host's saved MODE
// SELECT wins; turning the cache off flushes first). LUNs mapped later
// take it from the new configuration. It applies to all or, putting back
// the ones it changed when one fails, to none.
func (fx *reloadFx) SetWriteCache(ctx context.Context, volume string, on bool) error {
	d := fx.d
	var lus []*scsi.LU
	d.mu.RLock()
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
				lus = append(lus, lu)
			}
		}
	}
	d.mu.RUnlock()
	var undo []func(context.Context) error
	putBack := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			if err := undo[i](context.Background()); err != nil {
				fx.log.Error("write_cache: putting a LUN back failed", "volume", volume, "err", err)
			}
		}
	}
	for _, lu := range lus {
		prev := lu.ConfiguredWriteCache()
		changed, err := lu.SetConfiguredWriteCache(ctx, on)
		if err != nil {
			putBack()
			return err
		}
		if !changed && lu.WriteCacheSavedByHost() {
			fx.log.Info("write_cache: the host's saved caching page stays in force", "volume", volume,
				"lun", lu.LUN(), "wce", lu.WriteCacheEnabled())
		}
		undo = append(undo, func(ctx context.Context) error {
			_, err := lu.SetConfiguredWriteCache(ctx, prev)
			return err
		})
	}
	if d.tcmuX == nil {
		return nil
	}
	prev := d.tcmuX.setWriteCache(volume, on)
	n, err := d.tcmuFE.SetConfiguredWriteCache(ctx, volume, on)
	if err != nil {
		// some devices may have taken it
		d.tcmuX.setWriteCache(volume, prev)
		if _, uerr := d.tcmuFE.SetConfiguredWriteCache(context.Background(), volume, prev); uerr != nil {
			fx.log.Error("write_cache: putting TCMU devices back failed", "volume", volume, "err", uerr)
		}
		putBack()
		return err
	}
	if n > 0 {
		fx.log.Info("write_cache applied to TCMU devices", "volume", volume, "devices", n)
	}
	return nil
}

// SetVolumes takes volumes out of, or offers them to, the TCMU front
// end's exported set; it fails (and the reload rolls back) if a leaving
// one got bound to a device since the plan was checked.
func (fx *reloadFx) SetVolumes(names []string) error {
	_, err := fx.d.tcmuX.update(names)
	return err
}

func (fx *reloadFx) SetLogLevel(level string) {
	if fx.d.level != nil {
		fx.d.level.Set(ParseLevel(level))
	}
}

// SwapConfig makes cfg the one the admin API and the TCMU handler see:
// removed volumes disappear from status before they are drained.
func (fx *reloadFx) SwapConfig(cfg *conf.Config) {
	fx.d.mu.Lock()
	fx.d.cfg = cfg
	fx.d.mu.Unlock()
}

// drainProgress logs a volume's write-back progress at most once per
// drainLogInterval, and its end.
func (fx *reloadFx) drainProgress(volume string) func(cachecore.Progress) {
	var last time.Time
	return func(p cachecore.Progress) {
		if !p.Done && time.Since(last) < drainLogInterval {
			return
		}
		last = time.Now()
		fx.log.Info("writeback progress", "volume", volume, "written", conf.FormatSize(p.WrittenBytes),
			"left", conf.FormatSize(p.DirtyBytes), "start_dirty", conf.FormatSize(p.StartDirtyBytes), "time_left", p.Remaining)
	}
}
