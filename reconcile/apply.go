package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/cachelun/cachelun/conf"
)

// Engine is what a reload changes in the cache engine.
type Engine interface {
	// CheckNewFiles refuses backing devices that do not exist and cannot
	// be created, and new cache files that do not fit, before any file is
	// created.
	CheckNewFiles(caches []conf.Cache, volumes []conf.Volume) error
	OpenCache(ctx context.Context, c conf.Cache) error
	CloseCache(ctx context.Context, c conf.Cache) error
	// SetCacheConfig runs the open cache c.Name with c's tunables.
	SetCacheConfig(c conf.Cache) error
	// AddVolume opens v's backing device and adds v to its cache.
	AddVolume(ctx context.Context, v conf.Volume) error
	// RemoveVolume writes v's dirty data back, detaches it from its cache
	// and closes its backing device.
	RemoveVolume(ctx context.Context, v conf.Volume) error
	// SetVolumeTunables runs volume v.Name with v's tunables and mode.
	SetVolumeTunables(v conf.Volume, mode string) error
	// SetVolumeMode switches a volume's cache mode; out of a
	// write-caching mode it writes the dirty data back first.
	SetVolumeMode(ctx context.Context, volume, mode string) error
}

// Targets is what a reload changes in the SCSI targets and the iSCSI
// server.
type Targets interface {
	OpenPortal(portal string) error
	// ClosePortal stops a listener and drops the connections it accepted.
	ClosePortal(portal string) error
	// AddTarget creates a target with its LUNs (writeCache: the WCE of
	// each) and adds it to the iSCSI server.
	AddTarget(t conf.Target, writeCache []bool) error
	// RemoveTarget takes a target out of the iSCSI server; RestoreTarget
	// puts the same one back (its LUNs' state included).
	RemoveTarget(t conf.Target) error
	RestoreTarget(t conf.Target) error
	// UpdateTarget applies alias, portals, ACL and CHAP; the iSCSI server
	// logs out the sessions whose access they revoke.
	UpdateTarget(t conf.Target) error
	MapLUN(iqn string, l conf.LUN, writeCache bool) error
	UnmapLUN(iqn string, lun uint64) error
	SetDiscoveryCHAP(c *conf.CHAP)
	// SetWriteCache sets the configured WCE of every LUN and TCMU device
	// serving volume, all or none.
	SetWriteCache(ctx context.Context, volume string, on bool) error
}

// TCMU is the TCMU front end's exported volume set.
type TCMU interface {
	// SetVolumes makes names the exported set; it refuses, changing
	// nothing, when a leaving volume backs a live device.
	SetVolumes(names []string) error
}

// Daemon is what a reload changes in the daemon itself.
type Daemon interface {
	SetLogLevel(level string)
	// SwapConfig makes cfg the running configuration (the admin API's and
	// the TCMU handler's view).
	SwapConfig(cfg *conf.Config)
}

// Effects carries out actions. TCMU is nil while the TCMU front end is off;
// its actions then do nothing.
type Effects struct {
	Engine  Engine
	Targets Targets
	TCMU    TCMU
	Daemon  Daemon
}

// Apply runs the steps in order. When one fails, the undos of the applied
// steps run in reverse order, best effort: a failed undo is logged and the
// rest still run. The error says what failed and whether the rollback was
// complete.
func Apply(ctx context.Context, steps []Step, fx Effects, log *slog.Logger) error {
	var applied []Step
	for _, s := range steps {
		if err := fx.run(ctx, s.Do); err != nil {
			if rbErr := rollback(applied, fx, log); rbErr != nil {
				return fmt.Errorf("%w; rollback incomplete: %v", err, rbErr)
			}
			return fmt.Errorf("%w; rolled back, the previous configuration is in effect", err)
		}
		if fx.skips(s.Do) {
			continue
		}
		log.Info("reload step applied", "step", s.Do.String())
		if s.Undo != nil {
			applied = append(applied, s)
		}
	}
	return nil
}

// rollback undoes the applied steps in reverse order; it goes on after a
// failed undo and returns every failure. It runs to its end even when the
// reload's context is done: a half-undone reload is worse than a slow one.
func rollback(applied []Step, fx Effects, log *slog.Logger) error {
	ctx := context.Background()
	var errs []error
	for i := len(applied) - 1; i >= 0; i-- {
		s := applied[i]
		if err := fx.run(ctx, *s.Undo); err != nil {
			log.Error("rollback step failed", "step", s.Do.String(), "err", err)
			errs = append(errs, fmt.Errorf("undo %s: %w", s.Do.String(), err))
			continue
		}
		log.Info("rollback step done", "step", s.Do.String())
	}
	return errors.Join(errs...)
}

// skips reports whether a is a TCMU action with the front end off.
func (fx Effects) skips(a Action) bool { return a.Op == OpTCMUVolumes && fx.TCMU == nil }

// run carries out one action, wrapping its error with the object it names.
func (fx Effects) run(ctx context.Context, a Action) error {
	switch a.Op {
	case OpLogLevel:
		fx.Daemon.SetLogLevel(a.Name)
	case OpCheckNewFiles:
		return fx.Engine.CheckNewFiles(a.Caches, a.Volumes)
	case OpOpenCache:
		if err := fx.Engine.OpenCache(ctx, a.Cache); err != nil {
			return fmt.Errorf("cache %s: %w", a.Cache.Name, err)
		}
	case OpCloseCache:
		if err := fx.Engine.CloseCache(ctx, a.Cache); err != nil {
			return fmt.Errorf("close cache %s: %w", a.Cache.Name, err)
		}
	case OpTuneCache:
		if err := fx.Engine.SetCacheConfig(a.Cache); err != nil {
			return fmt.Errorf("cache %s: %w", a.Cache.Name, err)
		}
	case OpOpenPortal:
		if err := fx.Targets.OpenPortal(a.Name); err != nil {
			if a.Target.IQN != "" {
				return fmt.Errorf("target %s: %w", a.Target.IQN, err)
			}
			return err
		}
	case OpClosePortal:
		return fx.Targets.ClosePortal(a.Name)
	case OpAddVolume:
		if err := fx.Engine.AddVolume(ctx, a.Volume); err != nil {
			return fmt.Errorf("volume %s: %w", a.Volume.Name, err)
		}
	case OpRemoveVolume:
		if err := fx.Engine.RemoveVolume(ctx, a.Volume); err != nil {
			return fmt.Errorf("remove volume %s: %w", a.Volume.Name, err)
		}
	case OpTuneVolume:
		if err := fx.Engine.SetVolumeTunables(a.Volume, a.Mode); err != nil {
			return fmt.Errorf("volume %s: %w", a.Volume.Name, err)
		}
	case OpVolumeMode:
		if err := fx.Engine.SetVolumeMode(ctx, a.Volume.Name, a.Mode); err != nil {
			return fmt.Errorf("volume %s: mode %s: %w", a.Volume.Name, a.Mode, err)
		}
	case OpWriteCache:
		if err := fx.Targets.SetWriteCache(ctx, a.Volume.Name, a.On); err != nil {
			return fmt.Errorf("volume %s: write_cache %v: %w", a.Volume.Name, a.On, err)
		}
	case OpTCMUVolumes:
		if fx.TCMU == nil {
			return nil
		}
		return fx.TCMU.SetVolumes(a.Names)
	case OpRemoveTarget:
		if err := fx.Targets.RemoveTarget(a.Target); err != nil {
			return fmt.Errorf("remove target %s: %w", a.Target.IQN, err)
		}
	case OpRestoreTarget:
		return fx.Targets.RestoreTarget(a.Target)
	case OpAddTarget:
		return fx.Targets.AddTarget(a.Target, a.WriteCache)
	case OpUpdateTarget:
		if err := fx.Targets.UpdateTarget(a.Target); err != nil {
			return fmt.Errorf("target %s: %w", a.Target.IQN, err)
		}
	case OpMapLUN:
		return fx.Targets.MapLUN(a.Target.IQN, a.LUN, a.On)
	case OpUnmapLUN:
		if err := fx.Targets.UnmapLUN(a.Target.IQN, a.LUN.LUN); err != nil {
			return fmt.Errorf("target %s: unmap LUN %d: %w", a.Target.IQN, a.LUN.LUN, err)
		}
	case OpDiscoveryCHAP:
		fx.Targets.SetDiscoveryCHAP(a.CHAP)
	case OpSwapConfig:
		fx.Daemon.SwapConfig(a.Config)
	default:
		return fmt.Errorf("reconcile: unknown action %q", a.Op)
	}
	return nil
}
