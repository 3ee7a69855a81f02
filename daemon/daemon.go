package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/cachelun/cachelun/admin"
	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/backend/rbd"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/conf"
	"github.com/cachelun/cachelun/internal/flock"
	"github.com/cachelun/cachelun/persist"
	"github.com/cachelun/cachelun/target/iscsi"
	"github.com/cachelun/cachelun/target/scsi"
)

// Daemon is one running configuration: caches and volumes (through the
// engine), SCSI targets, the iSCSI server and its portal listeners.
//
// Start order: data dir (claimed through its lock file), backing devices,
// caches, volumes, SCSI
// targets, iSCSI server and listeners, TCMU handler, admin API. Shutdown
// runs it backwards: the admin API stops, iSCSI sessions are asked to log
// out and drained, the TCMU handler finishes its commands, so no command is
// in flight when the engine closes (which persists open ksets and leaves
// dirty data for the next start).
type Daemon struct {
	log *slog.Logger
	// level is the logger's level, changed by a reload (nil: fixed).
	level *slog.LevelVar
	eng   *engine

	// reloadMu serializes reloads (one transaction at a time).
	reloadMu sync.Mutex

	// mu guards cfg, portals, portalAddr and targets: a reload swaps them
	// while the admin API and the TCMU handler read them.
	mu  sync.RWMutex
	cfg *conf.Config

	iscsi *iscsi.Server
	// portals holds the running listeners by configured portal.
	portals map[string]*portalListener
	// portalAddr maps a configured portal to the address its listener got
	// (they differ when the port is 0).
	portalAddr map[string]string
	// targets holds the SCSI device server of each iSCSI target, by
	// lower-case IQN (the key conf.Diff uses).
	targets map[string]*scsi.Target
	// copyMgr lets EXTENDED COPY reach every LUN of every target.
	copyMgr *scsi.CopyManager

	serving bool // listeners serve as soon as they open (after start)
	serveWG sync.WaitGroup
	failCh  chan error

	// registry holds every metric of the daemon; latency records the
	// per-volume, per-operation latency histograms on it.
	registry *prometheus.Registry
	latency  *admin.Latency

	// dirLock claims the data dir for this daemon from the start of
	// start to the end of shutdown.
	dirLock *flock.LockFile
	// socketLock claims an admin socket outside the data dir (nil when
	// the socket is in it, which dirLock covers).
	socketLock *flock.LockFile

	adminCancel context.CancelFunc
	adminDone   chan struct{}
	tcmuCancel  context.CancelFunc
	tcmuDone    chan struct{}
	// tcmuX and tcmuFE are the TCMU front end's exported volumes and
	// handler (nil while TCMU is off); set once at start.
	tcmuX  *tcmuExports
	tcmuFE tcmuFrontEnd
	// listenOverride is the --listen address that replaced every target's
	// portals ("" when none).
	listenOverride string
	// metricsOverride is the --metrics value that replaced
	// global.metrics_listen ("" when none); a reload keeps it.
	metricsOverride string
	// adminSrv is the admin server (nil when both its listeners are
	// off); set once at start, before it serves.
	adminSrv *admin.Server

	// adminModesMu guards adminModes: the cache mode last set through the
	// admin API, by volume, until a reload converges the volume to the
	// file again. It only labels the reload plan.
	adminModesMu sync.Mutex
	adminModes   map[string]cachecore.Mode

	// resize follows the backing devices' sizes (backing_resize.go); set
	// once at start.
	resize *resizeWatch
	// clu is the cluster node's part (nil on a single node); set once at
	// start.
	clu *clusterd
}

// noteAdminMode records a mode switch made through the admin API.
func (d *Daemon) noteAdminMode(volume string, m cachecore.Mode) {
	d.adminModesMu.Lock()
	defer d.adminModesMu.Unlock()
	if d.adminModes == nil {
		d.adminModes = map[string]cachecore.Mode{}
	}
	d.adminModes[volume] = m
}

// adminMode is the mode last set through the admin API ("" if none since
// the last reload).
func (d *Daemon) adminMode(volume string) cachecore.Mode {
	d.adminModesMu.Lock()
	defer d.adminModesMu.Unlock()
	return d.adminModes[volume]
}

// forgetAdminModes clears the record after a reload made every volume's
// mode the file's.
func (d *Daemon) forgetAdminModes() {
	d.adminModesMu.Lock()
	defer d.adminModesMu.Unlock()
	clear(d.adminModes)
}

type lunURL struct {
	url, volume, mode string
}

// start is Start.
func start(ctx context.Context, cfg *conf.Config, opts Options) (d *Daemon, err error) {
	log := opts.Logger
	reg := prometheus.NewRegistry()
	latency, err := admin.NewLatency(reg)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	d = &Daemon{cfg: cfg, log: log, portalAddr: map[string]string{}, failCh: make(chan error, 1),
		listenOverride: opts.ListenOverride, portals: map[string]*portalListener{}, targets: map[string]*scsi.Target{},
		registry: reg, latency: latency, level: opts.Level, metricsOverride: opts.MetricsOverride}
	defer func() {
		if err != nil {
			d.shutdown(context.Background())
		}
	}()
	if err := os.MkdirAll(cfg.Global.DataDir, 0o750); err != nil {
		return d, fmt.Errorf("data dir: %w", err)
	}
	// The data dir's state (LUN state, admin socket, relative cache and
	// backing files) belongs to one daemon: a second one is refused here,
	// before it opens, creates or removes anything.
	d.dirLock, err = flock.CreateLockFile(filepath.Join(cfg.Global.DataDir, dataDirLockName), "data directory lock")
	if err != nil {
		return d, fmt.Errorf("data dir %s: %w", cfg.Global.DataDir, err)
	}
	// An admin socket outside the data dir (/run/cachelun/admin.sock) may
	// be named by daemons of different data dirs: the first one's is
	// claimed, so a second is refused here rather than after it opened its
	// caches, and never replaces or removes the first one's socket.
	if sock := cfg.Global.AdminSocket; sock != conf.Off && filepath.Dir(d.path(sock)) != cfg.Global.DataDir {
		if err := os.MkdirAll(filepath.Dir(d.path(sock)), 0o750); err != nil {
			return d, fmt.Errorf("admin socket: %w", err)
		}
		d.socketLock, err = flock.CreateLockFile(d.path(sock)+".lock", "admin socket lock")
		if err != nil {
			return d, fmt.Errorf("admin socket %s: %w", d.path(sock), err)
		}
	}
	d.eng = newEngine(log)
	clock := opts.Clock
	if clock == nil {
		clock = realClock{}
	}
	if cfg.Cluster != nil {
		if d.clu, err = newClusterd(d, cfg, clock); err != nil {
			return d, err
		}
	}
	// Backing devices are opened (claimed, checked, created when
	// backing_size says so) before any cache file: a missing or foreign
	// backing must refuse the start before a large cache file is created
	// and zero-filled for nothing.
	devs := make([]backend.Device, len(cfg.Volumes))
	defer func() {
		for _, dev := range devs {
			if dev != nil {
				dev.Close()
			}
		}
	}()
	for i, v := range cfg.Volumes {
		if d.clu != nil {
			// a clustered volume's image is watched, not taken: the
			// ownership rules take it once the caches are open
			if err := d.clu.openVolume(v, d.path(v.Backing)+rbdOwnerSuffix); err != nil {
				return d, fmt.Errorf("volume %s: %w", v.Name, err)
			}
			continue
		}
		dev, err := openBacking(v, d.path(v.Backing))
		if err != nil {
			return d, fmt.Errorf("volume %s: %w", v.Name, err)
		}
		devs[i] = dev
	}
	if err := checkCacheSpace(cfg.Caches, d.path); err != nil {
		return d, err
	}
	for _, c := range cfg.Caches {
		if err := d.eng.openCache(ctx, c, d.path(c.Path)); err != nil {
			return d, fmt.Errorf("cache %s: %w", c.Name, err)
		}
	}
	d.logRecovered(cfg.Caches)
	if d.clu != nil {
		// the peer link, then each volume taken or left to its owner
		if err := d.clu.start(ctx, clock); err != nil {
			return d, fmt.Errorf("cluster: %w", err)
		}
	}
	for i, v := range cfg.Volumes {
		if devs[i] == nil {
			continue // clustered
		}
		if err := d.eng.addVolume(ctx, v, devs[i]); err != nil {
			return d, fmt.Errorf("volume %s: %w", v.Name, err)
		}
		devs[i] = nil // the engine owns it
	}

	ic := cfg.ISCSI
	d.iscsi = iscsi.NewServer(iscsi.Config{
		Logger:                   log.With("component", "iscsi"),
		NOPInterval:              ic.NOPInterval.D,
		NOPTimeout:               ic.NOPTimeout.D,
		MaxSessions:              ic.MaxSessions,
		MaxRecvDataSegmentLength: ic.MaxRecvDataSegmentLength,
		MaxBurstLength:           ic.MaxBurstLength,
		FirstBurstLength:         ic.FirstBurstLength,
		MaxOutstandingR2T:        ic.MaxOutstandingR2T,
		QueueDepth:               ic.QueueDepth,
		MaxTransferLength:        int(ic.MaxTransferLength.Bytes),
		InitialR2T:               ic.InitialR2T,
	})
	if c := cfg.Discovery.CHAP; c != nil {
		d.iscsi.SetDiscoveryCHAP(iscsiCHAP(c))
	}

	// Listen before adding targets: a portal with port 0 only gets its
	// real address here, and the target must be configured with it.
	for _, t := range cfg.Targets {
		for _, p := range t.Portals {
			if err := d.openPortal(p); err != nil {
				return d, fmt.Errorf("target %s: %w", t.IQN, err)
			}
		}
	}
	for _, t := range cfg.Targets {
		st := scsi.NewTarget(scsi.TargetConfig{Name: t.IQN, Logger: log.With("component", "scsi", "target", t.IQN), CopyManager: d.copyManager()})
		for _, l := range t.LUNs {
			if err := d.addLU(st, t.IQN, l, cfg.VolumeWriteCache(l.Volume), cfg.VolumeSanitizeRate(l.Volume)); err != nil {
				return d, err
			}
		}
		if err := d.iscsi.AddTarget(d.iscsiTarget(t, st)); err != nil {
			return d, fmt.Errorf("target %s: %w", t.IQN, err)
		}
		d.targets[strings.ToLower(t.IQN)] = st
	}

	if err := d.startTCMU(); err != nil {
		return d, err
	}
	d.startResizeWatch(opts.BackingPollInterval)
	if err := d.startAdmin(); err != nil {
		return d, err
	}

	if d.clu != nil {
		d.clu.run()
	}
	d.mu.Lock()
	d.serving = true
	for _, pl := range d.portals {
		d.servePortal(pl)
	}
	d.mu.Unlock()
	return d, nil
}

// realClock is the wall clock.
type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// portalListener is one portal's listener and the Serve loop running on it.
type portalListener struct {
	l      net.Listener
	cancel context.CancelFunc
	done   chan struct{}
}

// openPortal listens on a configured portal unless it already does. The
// listener serves once the daemon is serving. Caller holds d.mu or runs
// before the daemon is shared.
func (d *Daemon) openPortal(p string) error {
	if _, ok := d.portals[p]; ok {
		return nil
	}
	l, err := net.Listen("tcp", p)
	if err != nil {
		return fmt.Errorf("portal %s: %w", p, err)
	}
	pl := &portalListener{l: l}
	d.portals[p] = pl
	d.portalAddr[p] = l.Addr().String()
	if d.serving {
		d.servePortal(pl)
	}
	return nil
}

func (d *Daemon) servePortal(pl *portalListener) {
	ctx, cancel := context.WithCancel(context.Background())
	pl.cancel, pl.done = cancel, make(chan struct{})
	d.serveWG.Add(1)
	go func() {
		defer d.serveWG.Done()
		defer close(pl.done)
		err := d.iscsi.Serve(ctx, pl.l)
		if err != nil && ctx.Err() == nil && !errors.Is(err, iscsi.ErrServerClosed) {
			select {
			case d.failCh <- fmt.Errorf("portal %s: %w", pl.l.Addr(), err):
			default:
			}
		}
	}()
}

// closePortal stops a portal's listener and drops the connections it
// accepted, waiting for its Serve loop. Caller holds d.mu.
func (d *Daemon) closePortal(p string) {
	pl, ok := d.portals[p]
	if !ok {
		return
	}
	delete(d.portals, p)
	delete(d.portalAddr, p)
	if pl.cancel != nil {
		pl.cancel()
		<-pl.done
	} else {
		pl.l.Close()
	}
}

// addLU maps LUN l of target iqn to its volume, with wce its configured
// write cache and sanitizeRate its SANITIZE OVERWRITE rate limit (bytes/s,
// 0 for none).
func (d *Daemon) addLU(st *scsi.Target, iqn string, l conf.LUN, wce bool, sanitizeRate int64) error {
	id := scsi.LUNIdentity(iqn, l.Volume)
	if d.clu != nil {
		// the same identity on every node (target IQN and volume name),
		// the ALUA groups of every node, the volume switched at takeover
		return d.clu.addLU(l.Volume, iqn, l.LUN, func(vol scsi.Volume, alua *scsi.ALUAConfig, pr scsi.PRShare) (*scsi.LU, error) {
			lu, err := st.AddLU(l.LUN, scsi.LUConfig{
				Volume:       d.latency.InstrumentVolume(l.Volume, vol),
				SerialNumber: id.Serial,
				DeviceID:     id.DeviceID,
				Thin:         l.Thin,
				StatePath:    d.lunStatePath(iqn, l.LUN),
				WriteCache:   wce,
				ALUA:         alua,
				PR:           pr,

				SanitizeMaxBytesPerSec: scsiSanitizeRate(sanitizeRate),
			})
			if err != nil {
				return nil, fmt.Errorf("target %s: LUN %d: %w", iqn, l.LUN, err)
			}
			return lu, nil
		})
	}
	vol, ok := d.eng.volume(l.Volume)
	if !ok {
		return fmt.Errorf("target %s: LUN %d: volume %s not open", iqn, l.LUN, l.Volume)
	}
	if _, err := st.AddLU(l.LUN, scsi.LUConfig{
		Volume:       d.latency.InstrumentVolume(l.Volume, vol),
		SerialNumber: id.Serial,
		DeviceID:     id.DeviceID,
		Thin:         l.Thin,
		StatePath:    d.lunStatePath(iqn, l.LUN),
		WriteCache:   wce,

		SanitizeMaxBytesPerSec: scsiSanitizeRate(sanitizeRate),
	}); err != nil {
		return fmt.Errorf("target %s: LUN %d: %w", iqn, l.LUN, err)
	}
	return nil
}

// iscsiTarget is the iSCSI server's view of a configured target. Caller
// holds d.mu (portalAddr) or runs before the daemon is shared.
func (d *Daemon) iscsiTarget(t conf.Target, st *scsi.Target) iscsi.TargetConfig {
	portals := make([]string, len(t.Portals))
	for i, p := range t.Portals {
		portals[i] = d.portalAddr[p]
	}
	tpgt := uint16(1)
	if d.clu != nil {
		// the node's target port group: relative port ids differ per node
		tpgt = d.clu.tpgt()
	}
	tc := iscsi.TargetConfig{Name: t.IQN, Alias: t.Alias, SCSI: st, Portals: portals, TPGT: tpgt,
		Initiators: t.Initiators}
	if t.CHAP != nil {
		tc.CHAP = iscsiCHAP(t.CHAP)
	}
	return tc
}

// config returns the running configuration (replaced, never modified, by
// a reload).
func (d *Daemon) config() *conf.Config {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.cfg
}

// failed delivers an error when a portal listener dies.
func (d *Daemon) failed() <-chan error { return d.failCh }

// shutdown stops in reverse start order. It is safe on a partly started
// daemon.
func (d *Daemon) shutdown(ctx context.Context) error {
	var errs []error
	d.stopResizeWatch()
	d.stopAdmin()
	// a reload still running (an admin job outlives its API) finishes or
	// rolls back before anything it touches goes away
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	if d.iscsi != nil {
		if err := d.iscsi.Shutdown(ctx); err != nil {
			d.log.Warn("iSCSI sessions did not all log out in time; dropped", "err", err)
		}
	}
	d.mu.Lock()
	for p := range d.portals {
		d.closePortal(p)
	}
	d.mu.Unlock()
	d.serveWG.Wait()
	d.stopTCMU()
	if d.clu != nil {
		d.clu.stopOwnership() // nothing is taken over while the engine closes
		d.clu.releaseOwned(ctx)
	}
	if d.eng != nil {
		// not bounded by ctx: closing persists the open ksets, which must
		// finish for a clean restart; it releases the images' locks
		if err := d.eng.close(context.Background()); err != nil {
			errs = append(errs, err)
		}
	}
	if d.clu != nil {
		if err := d.clu.close(); err != nil {
			errs = append(errs, fmt.Errorf("cluster: %w", err))
		}
	}
	d.logDirtyLeft()
	// last: the data dir is free only once every file in it is closed
	// (the admin socket was removed by stopAdmin)
	if err := d.socketLock.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := d.dirLock.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (d *Daemon) lunURLs() []lunURL {
	d.mu.RLock()
	defer d.mu.RUnlock()
	var out []lunURL
	for _, t := range d.cfg.Targets {
		for _, p := range t.Portals {
			for _, l := range t.LUNs {
				out = append(out, lunURL{
					url:    fmt.Sprintf("iscsi://%s/%s/%d", d.portalAddr[p], t.IQN, l.LUN),
					volume: l.Volume,
					mode:   d.volumeMode(l.Volume),
				})
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].url < out[j].url })
	return out
}

// volumeMode is the mode a volume runs in as configured: its file's, as
// clusterVolumeMode has it for a clustered volume. Caller holds d.mu.
func (d *Daemon) volumeMode(name string) string {
	if d.clu != nil {
		return clusterVolumeMode(d.volumeConf(name).Mode)
	}
	return d.volumeConf(name).Mode
}

// volumeConfLocked is volumeConf for a caller that does not hold d.mu.
func (d *Daemon) volumeConfLocked(name string) conf.Volume {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.volumeConf(name)
}

func (d *Daemon) volumeConf(name string) conf.Volume {
	for _, v := range d.cfg.Volumes {
		if v.Name == name {
			return v
		}
	}
	return conf.Volume{}
}

// path resolves a configured path against the data directory.
func (d *Daemon) path(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(d.cfg.Global.DataDir, p)
}

// lunStatePath is where the SCSI layer keeps a LUN's saved WCE and APTPL
// reservations.
func (d *Daemon) lunStatePath(iqn string, lun uint64) string {
	safe := strings.NewReplacer(":", "_", "/", "_").Replace(iqn)
	return filepath.Join(d.cfg.Global.DataDir, "lun-state", fmt.Sprintf("%s.lun%d.json", safe, lun))
}

func iscsiCHAP(c *conf.CHAP) *iscsi.CHAP {
	return &iscsi.CHAP{User: c.User, Secret: c.Secret, MutualUser: c.MutualUser, MutualSecret: c.MutualSecret}
}

// openBacking opens (creating a file of backing_size if absent) the
// backing device and wraps it in the slow throttle when configured.
func openBacking(v conf.Volume, path string) (backend.Device, error) {
	if rbd.IsSpec(v.Backing) {
		return openRBDBacking(v, path+rbdOwnerSuffix)
	}
	opts := backend.FileOptions{Direct: v.Direct, Size: v.BackingSize.Bytes}
	if st, err := os.Stat(path); err == nil && st.Mode().IsRegular() && st.Size() >= opts.Size {
		// backing_size sizes a new file (or extends a smaller one); an
		// existing file is used whole: it may have grown since, and its
		// volume with it (backing_resize.go)
		opts.Size = 0
	} else if errors.Is(err, os.ErrNotExist) {
		if err := checkBackingExists(v, path); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
			return nil, err
		}
		opts.Create = true
	}
	f, err := backend.OpenFile(path, opts)
	if err != nil {
		return nil, fmt.Errorf("backing %s: %w", path, err)
	}
	if f.Size()%int64(v.BlockSize) != 0 {
		f.Close()
		return nil, fmt.Errorf("backing %s: size %d is not a multiple of block_size %d", path, f.Size(), v.BlockSize)
	}
	if v.Slow == "" {
		return f, nil
	}
	so, err := backend.ParseSlowSpec(v.Slow)
	if err != nil {
		f.Close()
		return nil, err
	}
	return backend.NewSlow(f, so), nil
}

// dataDirLockName is the lock file in the data dir: the running daemon
// holds a flock claim on it and its pid is written in it. It is never
// removed (see flock.LockFile).
const dataDirLockName = "cachelun.lock"

// checkCacheSpace refuses a start whose cache files to create do not fit
// in the free space of their file systems (added up per file system), before
// any of them is created: otherwise the first could be created and zero-filled
// and the start still fail on the next.
func checkCacheSpace(caches []conf.Cache, resolve func(string) string) error {
	need := map[[2]int32]int64{}
	for _, c := range caches {
		path := resolve(c.Path)
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) || c.Size.Bytes == 0 {
			continue
		}
		dir := filepath.Dir(path)
		for {
			if _, err := os.Stat(dir); err == nil || filepath.Dir(dir) == dir {
				break
			}
			dir = filepath.Dir(dir) // created by openCache
		}
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err != nil {
			return fmt.Errorf("cache %s: %s: %w", c.Name, dir, err)
		}
		need[st.Fsid.Val] += c.Size.Bytes
		free := int64(st.Bavail) * int64(st.Bsize)
		if n := need[st.Fsid.Val]; n > free {
			also := ""
			if n > c.Size.Bytes {
				also = " with the cache files before it on the same file system"
			}
			return fmt.Errorf("cache %s: creating %s%s needs %s, the file system of %s has %s free: %w",
				c.Name, path, also, conf.FormatSize(n), dir, conf.FormatSize(free), persist.ErrNoSpace)
		}
	}
	return nil
}

// checkBackingExists refuses a backing device that does not exist and that
// no backing_size lets openBacking create.
func checkBackingExists(v conf.Volume, path string) error {
	if rbd.IsSpec(v.Backing) {
		return nil // an image, not a path: checked when it is opened
	}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) && v.BackingSize.Bytes == 0 {
		return fmt.Errorf("backing %s does not exist and no backing_size is set to create it", path)
	}
	return nil
}

// copyManager returns the daemon's one EXTENDED COPY copy manager, shared
// by all its targets so copies can go between LUNs of different targets.
func (d *Daemon) copyManager() *scsi.CopyManager {
	if d.copyMgr == nil {
		d.copyMgr = scsi.NewCopyManager()
	}
	return d.copyMgr
}

// scsiSanitizeRate turns a configured sanitize_max_bytes_per_sec (0: no
// limit) into scsi.LUConfig.SanitizeMaxBytesPerSec (0: the default,
// negative: no limit).
func scsiSanitizeRate(conf int64) int64 {
	if conf == 0 {
		return -1
	}
	return conf
}
