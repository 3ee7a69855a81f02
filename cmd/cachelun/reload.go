package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/conf"
	"github.com/cachelun/cachelun/target/scsi"
)

// Live reload.
//
// A reload loads and validates the configuration file again, compares it
// with the running configuration (conf.Diff) and, when every change can be
// applied live, applies them as one transaction. Steps run in an order in
// which no host sees an inconsistent state: caches and volumes appear
// before LUNs are mapped to them, LUNs are unmapped (and revoked sessions
// logged out) before their volumes are drained and removed, portals open
// before targets name them and close after no target names them. Each
// applied step records its undo; when a step fails, the undos run in
// reverse order (best effort) and the error says what failed and what
// could not be rolled back. Reloads are serialized by daemon.reloadMu.

// errReloadNotLive refuses a reload with changes that need a restart.
var errReloadNotLive = errors.New("changes need a restart; nothing applied")

// errReloadDefault refuses a reload of the embedded default configuration.
var errReloadDefault = errors.New("the daemon runs the embedded default configuration: nothing to reload")

// drainLogInterval spaces the progress lines of a volume drain.
const drainLogInterval = time.Second

// reload re-reads the configuration file and applies the difference. A dry
// run returns the plan and changes nothing. The returned text is the plan
// (one change a line) in both cases.
func (d *daemon) reload(ctx context.Context, dryRun bool) (string, error) {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()

	old := d.config()
	next, err := d.loadForReload(old)
	if err != nil {
		return "", fmt.Errorf("configuration not reloaded, nothing applied: %w", err)
	}
	live, liveNotes := d.liveConfig(old)
	plan := reloadPlan(live, next)
	annotateLive(&plan, liveNotes)
	if restart := plan.NeedsRestart(); len(restart) > 0 {
		reasons := make([]string, len(restart))
		for i, c := range restart {
			reasons[i] = c.String()
		}
		return plan.String(), fmt.Errorf("%w: %s", errReloadNotLive, strings.Join(reasons, "; "))
	}
	if err := d.tcmuBound(old, next); err != nil {
		return plan.String(), err
	}
	if dryRun {
		return plan.String(), nil
	}
	if plan.Empty() {
		// nothing runs differently, but the file may still differ from
		// the last one loaded where the live state already matches it
		d.mu.Lock()
		d.cfg = next
		d.mu.Unlock()
		d.forgetAdminModes()
		return plan.String(), nil
	}
	d.log.Info("reload: applying", "source", next.Source, "changes", len(plan.Changes))
	tx := &reloadTxn{d: d, log: d.log.With("component", "reload")}
	if err := tx.apply(ctx, old, next, plan); err != nil {
		if rbErr := tx.rollback(); rbErr != nil {
			err = fmt.Errorf("%w; rollback incomplete: %v", err, rbErr)
		} else {
			err = fmt.Errorf("%w; rolled back, the previous configuration is in effect", err)
		}
		d.log.Error("reload failed", "err", err)
		return plan.String(), err
	}
	d.forgetAdminModes()
	d.log.Info("reload applied", "plan", plan.String())
	return plan.String(), nil
}

// liveValue says where a live value that differs from the last loaded file
// came from, for the plan.
type liveValue struct {
	section conf.Section
	name    string
	field   string
	source  string // "live" or "live, set by admin"
}

// liveConfig is the running configuration with the values that can change
// outside the file replaced by the live ones: the file is the desired
// state, so a reload compares it with what runs, not with what was loaded
// last. Today that is a volume's cache mode (the admin API's `volume mode`).
// The notes name each replaced value.
func (d *daemon) liveConfig(old *conf.Config) (*conf.Config, []liveValue) {
	live := *old
	live.Volumes = slices.Clone(old.Volumes)
	var notes []liveValue
	for i, v := range live.Volumes {
		vol, ok := d.eng.cacheVolume(v.Name)
		if !ok {
			continue
		}
		running := vol.Mode()
		if fileMode, err := cachecore.ParseMode(v.Mode); err == nil && fileMode == running {
			continue
		}
		live.Volumes[i].Mode = string(running)
		source := "live"
		if d.adminMode(v.Name) == running {
			source = "live, set by admin"
		}
		notes = append(notes, liveValue{section: conf.SectionVolume, name: v.Name, field: "mode", source: source})
	}
	return &live, notes
}

// annotateLive marks the changes whose old value is a live one, e.g.
// "mode modified writethrough (live, set by admin) -> writeback (file)".
func annotateLive(plan *conf.Plan, notes []liveValue) {
	for i, c := range plan.Changes {
		for _, n := range notes {
			if c.Section == n.section && c.Name == n.name && c.Field == n.field && c.Kind == conf.Modified {
				plan.Changes[i].Old = fmt.Sprintf("%s (%s)", c.Old, n.source)
				plan.Changes[i].New = c.New + " (file)"
			}
		}
	}
}

// loadForReload loads the file the daemon was started with and carries the
// command-line overrides (data dir, --listen, --metrics) over to it.
func (d *daemon) loadForReload(old *conf.Config) (*conf.Config, error) {
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

// reloadPlan is conf.Diff with the TCMU volume set handled as the daemon
// can: without the set when the TCMU front end stays off (it then derives
// from LUN mappings and means nothing), live when the front end stays on
// (volumes join and leave the handler's exported set; whether a leaving
// volume is still bound to a device is checked against the running
// handler, see tcmuBound).
func reloadPlan(old, next *conf.Config) conf.Plan {
	plan := conf.Diff(old, next)
	isTCMUVolume := func(c conf.Change) bool { return c.Section == conf.SectionTCMU && c.Field == "volume" }
	switch {
	case old.TCMU.Enabled && next.TCMU.Enabled:
		for i, c := range plan.Changes {
			if isTCMUVolume(c) {
				plan.Changes[i].Live = true
			}
		}
	case !old.TCMU.Enabled && !next.TCMU.Enabled:
		plan.Changes = slices.DeleteFunc(plan.Changes, isTCMUVolume)
	}
	return plan
}

// tcmuBound refuses a plan that takes a volume away from the TCMU device
// serving it: the volumes leaving the exported set, or leaving the
// configuration, that back a live device.
func (d *daemon) tcmuBound(old, next *conf.Config) error {
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

// reloadTxn applies a plan step by step and remembers how to undo each.
type reloadTxn struct {
	d    *daemon
	log  *slog.Logger
	undo []undoStep
}

type undoStep struct {
	what string
	fn   func(ctx context.Context) error
}

func (tx *reloadTxn) done(what string, undo func(ctx context.Context) error) {
	tx.log.Info("reload step applied", "step", what)
	tx.undo = append(tx.undo, undoStep{what: what, fn: undo})
}

// rollback undoes the applied steps in reverse order; it goes on after a
// failed undo and returns every failure.
func (tx *reloadTxn) rollback() error {
	ctx := context.Background()
	var errs []error
	for i := len(tx.undo) - 1; i >= 0; i-- {
		u := tx.undo[i]
		if err := u.fn(ctx); err != nil {
			tx.log.Error("rollback step failed", "step", u.what, "err", err)
			errs = append(errs, fmt.Errorf("undo %s: %w", u.what, err))
			continue
		}
		tx.log.Info("rollback step done", "step", u.what)
	}
	tx.undo = nil
	return errors.Join(errs...)
}

func (tx *reloadTxn) apply(ctx context.Context, old, next *conf.Config, plan conf.Plan) error {
	changed := func(s conf.Section, name string) bool {
		for _, c := range plan.Changes {
			if c.Section == s && c.Name == name {
				return true
			}
		}
		return false
	}
	steps := []func(context.Context, *conf.Config, *conf.Config, func(conf.Section, string) bool) error{
		tx.logLevel,
		tx.addCaches,
		tx.tuneCaches,
		tx.openPortals,
		tx.addVolumes,
		tx.tuneVolumes,
		tx.tcmuWithdraw,
		tx.removeTargets,
		tx.unmapLUNs,
		tx.updateTargets,
		tx.mapLUNs,
		tx.addTargets,
		tx.tcmuExport,
		tx.discovery,
		tx.swapConfig,
		tx.closePortals,
		tx.removeVolumes,
		tx.removeCaches,
	}
	for _, step := range steps {
		if err := step(ctx, old, next, changed); err != nil {
			return err
		}
	}
	return nil
}

type changedFunc = func(conf.Section, string) bool

func (tx *reloadTxn) logLevel(_ context.Context, old, next *conf.Config, _ changedFunc) error {
	if old.Global.LogLevel == next.Global.LogLevel || tx.d.level == nil {
		return nil
	}
	prev := tx.d.level.Level()
	tx.d.level.Set(parseLevel(next.Global.LogLevel))
	tx.done("log_level "+next.Global.LogLevel, func(context.Context) error {
		tx.d.level.Set(prev)
		return nil
	})
	return nil
}

func (tx *reloadTxn) addCaches(ctx context.Context, old, next *conf.Config, _ changedFunc) error {
	// Checked before a new cache file is created: a reload that fails on
	// a later step rolls back but would leave the file it created.
	var fresh []conf.Cache
	for _, c := range next.Caches {
		if findCache(old, c.Name) == nil {
			fresh = append(fresh, c)
		}
	}
	for _, v := range next.Volumes {
		if findVolume(old, v.Name) != nil {
			continue
		}
		if err := checkBackingExists(v, tx.d.path(v.Backing)); err != nil {
			return fmt.Errorf("volume %s: %w", v.Name, err)
		}
	}
	if err := checkCacheSpace(fresh, tx.d.path); err != nil {
		return err
	}
	for _, c := range next.Caches {
		if findCache(old, c.Name) != nil {
			continue
		}
		if err := tx.d.eng.openCache(ctx, c, tx.d.path(c.Path)); err != nil {
			return fmt.Errorf("cache %s: %w", c.Name, err)
		}
		name := c.Name
		tx.done("open cache "+name, func(ctx context.Context) error { return tx.d.eng.closeCache(ctx, name) })
	}
	return nil
}

func (tx *reloadTxn) tuneCaches(_ context.Context, old, next *conf.Config, changed changedFunc) error {
	for _, c := range next.Caches {
		o := findCache(old, c.Name)
		if o == nil || !changed(conf.SectionCache, c.Name) {
			continue
		}
		oc, ok := tx.d.eng.cache(c.Name)
		if !ok {
			return fmt.Errorf("cache %s is not open", c.Name)
		}
		if err := oc.cache.SetConfig(cacheConfig(c, tx.log)); err != nil {
			return fmt.Errorf("cache %s: %w", c.Name, err)
		}
		prev := cacheConfig(*o, tx.log)
		tx.done("tune cache "+c.Name, func(context.Context) error { return oc.cache.SetConfig(prev) })
	}
	return nil
}

func (tx *reloadTxn) openPortals(_ context.Context, _, next *conf.Config, _ changedFunc) error {
	d := tx.d
	for _, t := range next.Targets {
		for _, p := range t.Portals {
			d.mu.Lock()
			_, open := d.portals[p]
			err := d.openPortal(p)
			d.mu.Unlock()
			if err != nil {
				return fmt.Errorf("target %s: %w", t.IQN, err)
			}
			if open {
				continue
			}
			tx.done("open portal "+p, func(context.Context) error {
				d.mu.Lock()
				defer d.mu.Unlock()
				d.closePortal(p)
				return nil
			})
		}
	}
	return nil
}

func (tx *reloadTxn) addVolumes(ctx context.Context, old, next *conf.Config, _ changedFunc) error {
	for _, v := range next.Volumes {
		if findVolume(old, v.Name) != nil {
			continue
		}
		if err := tx.d.addVolume(ctx, v); err != nil {
			return err
		}
		tx.done("add volume "+v.Name, func(ctx context.Context) error {
			return tx.d.eng.removeVolume(ctx, v.Cache, v.Name, tx.drainProgress(v.Name))
		})
	}
	return nil
}

// addVolume opens a volume's backing device and adds it to its cache.
func (d *daemon) addVolume(ctx context.Context, v conf.Volume) error {
	dev, err := openBacking(v, d.path(v.Backing))
	if err != nil {
		return fmt.Errorf("volume %s: %w", v.Name, err)
	}
	if err := d.eng.addVolume(ctx, v, dev); err != nil {
		dev.Close()
		return fmt.Errorf("volume %s: %w", v.Name, err)
	}
	return nil
}

// tuneVolumes applies the live volume settings: tunables first (keeping
// the running mode), then the mode, whose switch out of a write-caching
// mode writes the dirty data back first.
func (tx *reloadTxn) tuneVolumes(ctx context.Context, old, next *conf.Config, changed changedFunc) error {
	for _, v := range next.Volumes {
		o := findVolume(old, v.Name)
		if o == nil || !changed(conf.SectionVolume, v.Name) {
			continue
		}
		vol, ok := tx.d.eng.cacheVolume(v.Name)
		if !ok {
			return fmt.Errorf("volume %s is not open", v.Name)
		}
		nvc, err := volumeConfig(v)
		if err != nil {
			return fmt.Errorf("volume %s: %w", v.Name, err)
		}
		ovc, err := volumeConfig(*o)
		if err != nil {
			return fmt.Errorf("volume %s: %w", v.Name, err)
		}
		running := vol.Mode()
		tunables := nvc
		tunables.Mode = running
		if err := vol.SetConfig(tunables); err != nil {
			return fmt.Errorf("volume %s: %w", v.Name, err)
		}
		prevTunables := ovc
		prevTunables.Mode = running
		tx.done("tune volume "+v.Name, func(context.Context) error { return vol.SetConfig(prevTunables) })
		if nvc.Mode != running {
			tx.log.Info("volume mode switch", "volume", v.Name, "from", running, "to", nvc.Mode)
			if err := vol.SetMode(ctx, nvc.Mode, tx.drainProgress(v.Name)); err != nil {
				return fmt.Errorf("volume %s: mode %s: %w", v.Name, nvc.Mode, err)
			}
			tx.done(fmt.Sprintf("volume %s mode %s", v.Name, nvc.Mode), func(ctx context.Context) error {
				return vol.SetMode(ctx, running, tx.drainProgress(v.Name))
			})
		}
		if fmtWCE(o.WriteCache) != fmtWCE(v.WriteCache) {
			if err := tx.setWriteCache(ctx, old, v.Name, fmtWCE(v.WriteCache) == "true"); err != nil {
				return err
			}
		}
	}
	return nil
}

// setWriteCache applies a volume's write_cache to the LUNs that serve it:
// iSCSI LUNs mapped to it and TCMU devices bound to it, as their
// configured WCE (scsi.LU.SetConfiguredWriteCache: a host's saved MODE
// SELECT wins; turning the cache off flushes first). LUNs mapped later
// take it from the new configuration.
func (tx *reloadTxn) setWriteCache(ctx context.Context, cfg *conf.Config, volume string, on bool) error {
	d := tx.d
	var lus []*scsi.LU
	d.mu.RLock()
	for _, t := range cfg.Targets {
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
	for _, lu := range lus {
		prev := lu.ConfiguredWriteCache()
		changed, err := lu.SetConfiguredWriteCache(ctx, on)
		if err != nil {
			return fmt.Errorf("volume %s: write_cache %v: %w", volume, on, err)
		}
		if !changed && lu.WriteCacheSavedByHost() {
			tx.log.Info("write_cache: the host's saved caching page stays in force", "volume", volume,
				"lun", lu.LUN(), "wce", lu.WriteCacheEnabled())
		}
		tx.done(fmt.Sprintf("volume %s LUN %d write_cache %v", volume, lu.LUN(), on), func(ctx context.Context) error {
			_, err := lu.SetConfiguredWriteCache(ctx, prev)
			return err
		})
	}
	if d.tcmuX == nil {
		return nil
	}
	prev := d.tcmuX.setWriteCache(volume, on)
	n, err := d.tcmuFE.SetConfiguredWriteCache(ctx, volume, on)
	tx.done(fmt.Sprintf("volume %s TCMU write_cache %v", volume, on), func(ctx context.Context) error {
		d.tcmuX.setWriteCache(volume, prev)
		_, err := d.tcmuFE.SetConfiguredWriteCache(ctx, volume, prev)
		return err
	})
	if err != nil {
		return fmt.Errorf("volume %s: write_cache %v: %w", volume, on, err)
	}
	if n > 0 {
		tx.log.Info("write_cache applied to TCMU devices", "volume", volume, "devices", n)
	}
	return nil
}

// tcmuWithdraw takes the volumes that leave the TCMU front end's exported
// set out of it before their LUNs are mapped or they are removed; it fails
// (and the reload rolls back) if one got bound to a device since the check.
func (tx *reloadTxn) tcmuWithdraw(_ context.Context, old, next *conf.Config, _ changedFunc) error {
	if tx.d.tcmuX == nil {
		return nil
	}
	var keep []string
	for _, n := range old.TCMUVolumes() {
		if slices.Contains(next.TCMUVolumes(), n) {
			keep = append(keep, n)
		}
	}
	return tx.setTCMUVolumes(keep)
}

// tcmuExport offers the volumes that join the exported set once their
// volumes exist and their iSCSI LUNs are unmapped: a later `targetcli
// create` can bind them.
func (tx *reloadTxn) tcmuExport(_ context.Context, _, next *conf.Config, _ changedFunc) error {
	if tx.d.tcmuX == nil {
		return nil
	}
	return tx.setTCMUVolumes(next.TCMUVolumes())
}

func (tx *reloadTxn) setTCMUVolumes(names []string) error {
	x := tx.d.tcmuX
	prev, err := x.update(names)
	if err != nil {
		return err
	}
	if slices.Equal(sortedCopy(prev), sortedCopy(names)) {
		return nil
	}
	tx.done("TCMU volumes "+strings.Join(names, ","), func(context.Context) error {
		_, err := x.update(prev)
		return err
	})
	return nil
}

func sortedCopy(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func fmtWCE(b *bool) string {
	if b == nil || *b {
		return "true"
	}
	return "false"
}

func (tx *reloadTxn) removeTargets(_ context.Context, old, next *conf.Config, _ changedFunc) error {
	d := tx.d
	for _, t := range old.Targets {
		key := strings.ToLower(t.IQN)
		if findTarget(next, key) != nil {
			continue
		}
		d.mu.RLock()
		st := d.targets[key]
		tc := d.iscsiTarget(t, st)
		d.mu.RUnlock()
		if err := d.iscsi.RemoveTarget(t.IQN); err != nil {
			return fmt.Errorf("remove target %s: %w", t.IQN, err)
		}
		d.mu.Lock()
		delete(d.targets, key)
		d.mu.Unlock()
		tx.done("remove target "+t.IQN, func(context.Context) error {
			if err := d.iscsi.AddTarget(tc); err != nil {
				return err
			}
			d.mu.Lock()
			d.targets[key] = st
			d.mu.Unlock()
			return nil
		})
	}
	return nil
}

// lunDiff returns the LUNs of o that n drops or maps differently, and
// those of n that are new or mapped differently.
func lunDiff(o, n conf.Target) (gone, added []conf.LUN) {
	for _, l := range o.LUNs {
		if i := slices.IndexFunc(n.LUNs, func(x conf.LUN) bool { return x.LUN == l.LUN }); i < 0 || n.LUNs[i] != l {
			gone = append(gone, l)
		}
	}
	for _, l := range n.LUNs {
		if i := slices.IndexFunc(o.LUNs, func(x conf.LUN) bool { return x.LUN == l.LUN }); i < 0 || o.LUNs[i] != l {
			added = append(added, l)
		}
	}
	return gone, added
}

func (tx *reloadTxn) scsiTarget(iqn string) (*scsi.Target, error) {
	tx.d.mu.RLock()
	defer tx.d.mu.RUnlock()
	st, ok := tx.d.targets[strings.ToLower(iqn)]
	if !ok {
		return nil, fmt.Errorf("target %s is not running", iqn)
	}
	return st, nil
}

func (tx *reloadTxn) unmapLUNs(_ context.Context, old, next *conf.Config, _ changedFunc) error {
	for _, o := range old.Targets {
		n := findTarget(next, strings.ToLower(o.IQN))
		if n == nil {
			continue
		}
		gone, _ := lunDiff(o, *n)
		if len(gone) == 0 {
			continue
		}
		st, err := tx.scsiTarget(o.IQN)
		if err != nil {
			return err
		}
		for _, l := range gone {
			if err := st.RemoveLU(l.LUN); err != nil {
				return fmt.Errorf("target %s: unmap LUN %d: %w", o.IQN, l.LUN, err)
			}
			tx.done(fmt.Sprintf("unmap %s LUN %d", o.IQN, l.LUN), func(context.Context) error {
				return tx.d.addLU(st, old, o.IQN, l)
			})
		}
	}
	return nil
}

// updateTargets applies alias, portal, ACL and CHAP changes. The iSCSI
// server logs out the sessions whose access they revoke.
func (tx *reloadTxn) updateTargets(_ context.Context, old, next *conf.Config, changed changedFunc) error {
	d := tx.d
	for _, o := range old.Targets {
		key := strings.ToLower(o.IQN)
		n := findTarget(next, key)
		if n == nil || !changed(conf.SectionTarget, key) {
			continue
		}
		if o.Alias == n.Alias && slices.Equal(o.Portals, n.Portals) && slices.Equal(o.Initiators, n.Initiators) &&
			chapEqual(o.CHAP, n.CHAP) {
			continue
		}
		st, err := tx.scsiTarget(o.IQN)
		if err != nil {
			return err
		}
		d.mu.RLock()
		prev, upd := d.iscsiTarget(o, st), d.iscsiTarget(*n, st)
		d.mu.RUnlock()
		if err := d.iscsi.UpdateTarget(upd); err != nil {
			return fmt.Errorf("target %s: %w", o.IQN, err)
		}
		tx.done("update target "+o.IQN, func(context.Context) error { return d.iscsi.UpdateTarget(prev) })
	}
	return nil
}

func chapEqual(a, b *conf.CHAP) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func (tx *reloadTxn) mapLUNs(_ context.Context, old, next *conf.Config, _ changedFunc) error {
	for _, n := range next.Targets {
		o := findTarget(old, strings.ToLower(n.IQN))
		if o == nil {
			continue
		}
		_, added := lunDiff(*o, n)
		if len(added) == 0 {
			continue
		}
		st, err := tx.scsiTarget(n.IQN)
		if err != nil {
			return err
		}
		for _, l := range added {
			if err := tx.d.addLU(st, next, n.IQN, l); err != nil {
				return err
			}
			tx.done(fmt.Sprintf("map %s LUN %d to %s", n.IQN, l.LUN, l.Volume), func(context.Context) error {
				return st.RemoveLU(l.LUN)
			})
		}
	}
	return nil
}

func (tx *reloadTxn) addTargets(_ context.Context, old, next *conf.Config, _ changedFunc) error {
	d := tx.d
	for _, t := range next.Targets {
		key := strings.ToLower(t.IQN)
		if findTarget(old, key) != nil {
			continue
		}
		st := scsi.NewTarget(scsi.TargetConfig{Name: t.IQN, Logger: d.log.With("component", "scsi", "target", t.IQN), CopyManager: d.copyManager()})
		for _, l := range t.LUNs {
			if err := d.addLU(st, next, t.IQN, l); err != nil {
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
		d.targets[key] = st
		d.mu.Unlock()
		tx.done("add target "+t.IQN, func(context.Context) error {
			d.mu.Lock()
			delete(d.targets, key)
			d.mu.Unlock()
			return d.iscsi.RemoveTarget(t.IQN)
		})
	}
	return nil
}

func (tx *reloadTxn) discovery(_ context.Context, old, next *conf.Config, _ changedFunc) error {
	if chapEqual(old.Discovery.CHAP, next.Discovery.CHAP) {
		return nil
	}
	set := func(c *conf.CHAP) {
		if c == nil {
			tx.d.iscsi.SetDiscoveryCHAP(nil)
		} else {
			tx.d.iscsi.SetDiscoveryCHAP(iscsiCHAP(c))
		}
	}
	set(next.Discovery.CHAP)
	tx.done("discovery CHAP", func(context.Context) error {
		set(old.Discovery.CHAP)
		return nil
	})
	return nil
}

// swapConfig makes the new configuration the one the admin API and the
// TCMU handler see: removed volumes disappear from status before they are
// drained.
func (tx *reloadTxn) swapConfig(_ context.Context, old, next *conf.Config, _ changedFunc) error {
	d := tx.d
	d.mu.Lock()
	d.cfg = next
	d.mu.Unlock()
	tx.done("switch configuration", func(context.Context) error {
		d.mu.Lock()
		d.cfg = old
		d.mu.Unlock()
		return nil
	})
	return nil
}

// closePortals stops the listeners no target names any more, dropping the
// connections they accepted (UpdateTarget already logged their sessions
// out).
func (tx *reloadTxn) closePortals(_ context.Context, _, next *conf.Config, _ changedFunc) error {
	d := tx.d
	used := map[string]bool{}
	for _, t := range next.Targets {
		for _, p := range t.Portals {
			used[p] = true
		}
	}
	d.mu.Lock()
	var unused []string
	for p := range d.portals {
		if !used[p] {
			unused = append(unused, p)
		}
	}
	for _, p := range unused {
		d.closePortal(p)
	}
	d.mu.Unlock()
	for _, p := range unused {
		tx.done("close portal "+p, func(context.Context) error {
			d.mu.Lock()
			defer d.mu.Unlock()
			return d.openPortal(p)
		})
	}
	return nil
}

// removeVolumes drains and removes the volumes the new configuration
// drops. No LUN maps them any more. Their data is on the backing device
// afterwards, so the undo adds them again.
func (tx *reloadTxn) removeVolumes(ctx context.Context, old, next *conf.Config, _ changedFunc) error {
	for _, v := range old.Volumes {
		if findVolume(next, v.Name) != nil {
			continue
		}
		tx.log.Info("removing volume: writing back its dirty data", "volume", v.Name)
		if err := tx.d.eng.removeVolume(ctx, v.Cache, v.Name, tx.drainProgress(v.Name)); err != nil {
			return fmt.Errorf("remove volume %s: %w", v.Name, err)
		}
		tx.done("remove volume "+v.Name, func(ctx context.Context) error { return tx.d.addVolume(ctx, v) })
	}
	return nil
}

func (tx *reloadTxn) removeCaches(ctx context.Context, old, next *conf.Config, _ changedFunc) error {
	for _, c := range old.Caches {
		if findCache(next, c.Name) != nil {
			continue
		}
		if err := tx.d.eng.closeCache(ctx, c.Name); err != nil {
			return fmt.Errorf("close cache %s: %w", c.Name, err)
		}
		tx.done("close cache "+c.Name, func(ctx context.Context) error {
			return tx.d.eng.openCache(ctx, c, tx.d.path(c.Path))
		})
	}
	return nil
}

// drainProgress logs a volume's write-back progress at most once per
// drainLogInterval, and its end.
func (tx *reloadTxn) drainProgress(volume string) func(cachecore.Progress) {
	var last time.Time
	return func(p cachecore.Progress) {
		if !p.Done && time.Since(last) < drainLogInterval {
			return
		}
		last = time.Now()
		tx.log.Info("writeback progress", "volume", volume, "written", conf.FormatSize(p.WrittenBytes),
			"left", conf.FormatSize(p.DirtyBytes), "start_dirty", conf.FormatSize(p.StartDirtyBytes), "time_left", p.Remaining)
	}
}

func findCache(c *conf.Config, name string) *conf.Cache {
	for i := range c.Caches {
		if c.Caches[i].Name == name {
			return &c.Caches[i]
		}
	}
	return nil
}

func findVolume(c *conf.Config, name string) *conf.Volume {
	for i := range c.Volumes {
		if c.Volumes[i].Name == name {
			return &c.Volumes[i]
		}
	}
	return nil
}

// findTarget finds a target by lower-case IQN.
func findTarget(c *conf.Config, key string) *conf.Target {
	for i := range c.Targets {
		if strings.ToLower(c.Targets[i].IQN) == key {
			return &c.Targets[i]
		}
	}
	return nil
}
