package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cachelun/cachelun/admin"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/conf"
	"github.com/cachelun/cachelun/persist"
)

// errReloadNotLive is returned by a non-dry-run reload: this version
// computes the plan but applies configuration changes only at restart.
var errReloadNotLive = errors.New("live reload is not supported by this version; restart to apply")

// startAdmin starts the admin API (unix socket) and /metrics as
// configured. It returns when they listen, or with the error that kept
// them from it.
func (d *daemon) startAdmin() error {
	g := d.cfg.Global
	if g.AdminSocket == conf.Off && g.MetricsListen == conf.Off {
		return nil
	}
	cfg := admin.Config{
		Backend:  &adminBackend{d: d},
		Registry: prometheus.NewRegistry(),
		Logger:   d.log.With("component", "admin"),
		Version:  "cachelun",
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
		d.log.Info("admin API ready", "socket", cfg.SocketPath, "metrics", cfg.MetricsListen)
		return nil
	case err := <-errc:
		return fmt.Errorf("admin: %w", err)
	}
}

func (d *daemon) stopAdmin() {
	if d.adminCancel == nil {
		return
	}
	d.adminCancel()
	<-d.adminDone
}

// adminBackend shows the running daemon to the admin server.
type adminBackend struct{ d *daemon }

func (b *adminBackend) Volumes() []admin.VolumeAPI {
	var out []admin.VolumeAPI
	for _, v := range b.d.cfg.Volumes {
		if vol, ok := b.d.eng.volumes[v.Name]; ok {
			out = append(out, adminVolume{vol: vol, cache: v.Cache})
		}
	}
	return out
}

func (b *adminBackend) Caches() []admin.CacheAPI {
	var out []admin.CacheAPI
	for _, c := range b.d.cfg.Caches {
		if oc, ok := b.d.eng.caches[c.Name]; ok {
			out = append(out, adminCache{name: c.Name, path: b.d.path(c.Path), cache: oc.cache})
		}
	}
	return out
}

func (b *adminBackend) Sessions() []admin.Session {
	var out []admin.Session
	for _, s := range b.d.iscsi.Sessions() {
		out = append(out, admin.Session{
			Transport: "iscsi",
			Initiator: s.Initiator,
			Target:    s.Target,
			Portal:    s.Portal,
			Remote:    s.Remote,
			ID:        fmt.Sprintf("%s/%d", s.ISID, s.TSIH),
			LUNs:      s.LUNs,
			InFlight:  s.InFlight,
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Reload loads the configuration file again and describes what changed.
// Applying the changes live is not supported yet: a non-dry run with
// changes fails and leaves everything as it is.
func (b *adminBackend) Reload(ctx context.Context, dryRun bool) (string, error) {
	src := b.d.cfg.Source
	if src == "" || strings.HasPrefix(src, "<") {
		return "", errors.New("the daemon runs the embedded default configuration: nothing to reload")
	}
	next, err := conf.Load(src)
	if err != nil {
		return "", err
	}
	// the daemon's own overrides are not part of the file
	next.Global.DataDir = b.d.cfg.Global.DataDir
	for i := range next.Targets {
		for j := range b.d.cfg.Targets {
			if b.d.cfg.Targets[j].IQN == next.Targets[i].IQN && b.d.listenOverride != "" {
				next.Targets[i].Portals = b.d.cfg.Targets[j].Portals
			}
		}
	}
	plan := conf.Diff(b.d.cfg, next)
	if dryRun || plan.Empty() {
		return plan.String(), nil
	}
	return plan.String(), errReloadNotLive
}

type adminVolume struct {
	vol   *cachecore.Volume
	cache string
}

func (v adminVolume) Name() string     { return v.vol.Name() }
func (v adminVolume) Cache() string    { return v.cache }
func (v adminVolume) Mode() admin.Mode { return admin.Mode(v.vol.Mode()) }
func (v adminVolume) Size() int64      { return v.vol.Size() }
func (v adminVolume) BlockSize() int   { return v.vol.BlockSize() }

func (v adminVolume) Stats() admin.VolumeStats {
	s := v.vol.Stats()
	return admin.VolumeStats{
		ReadHits: s.ReadHits, ReadPartialHits: s.ReadPartialHits, ReadMisses: s.ReadMisses, WriteHits: s.WriteHits,
		ReadHitBytes: s.ReadHitBytes, ReadMissBytes: s.ReadMissBytes, WriteBytes: s.WriteBytes,
		BypassedRequests: s.BypassedRequests, BypassedBytes: s.BypassedBytes,
		ReadBypassRaces: s.ReadBypassRaces, DirtyBytes: s.DirtyBytes,
		WritebackBytes: s.WritebackBytes, WritebackLag: s.WritebackLag, Errors: s.Errors,
	}
}

func (v adminVolume) Explain(off int64) admin.Explanation {
	e := v.vol.Explain(off)
	return admin.Explanation{Offset: e.Offset, State: e.State, Dirty: e.Dirty,
		Segment: e.Pos.Seg, SegmentOffset: e.Pos.Off, Gen: e.Gen, LSN: e.LSN}
}

func (v adminVolume) SetMode(ctx context.Context, m admin.Mode, progress func(admin.Progress)) error {
	mode, err := cachecore.ParseMode(string(m))
	if err != nil {
		return err
	}
	return v.vol.SetMode(ctx, mode, adminProgress(progress))
}

func (v adminVolume) Drain(ctx context.Context, progress func(admin.Progress)) error {
	return v.vol.Drain(ctx, adminProgress(progress))
}

func (v adminVolume) Flush(ctx context.Context) error { return v.vol.Flush(ctx) }

func adminProgress(f func(admin.Progress)) func(cachecore.Progress) {
	if f == nil {
		return nil
	}
	return func(p cachecore.Progress) {
		f(admin.Progress{DirtyBytes: p.DirtyBytes, StartDirtyBytes: p.StartDirtyBytes})
	}
}

type adminCache struct {
	name, path string
	cache      *cachecore.Cache
}

func (c adminCache) Name() string { return c.name }
func (c adminCache) Path() string { return c.path }

func (c adminCache) Stats() admin.CacheStats {
	s := c.cache.Stats()
	return admin.CacheStats{
		Segments: s.Segments, SegmentsUsed: s.SegmentsUsed, SegmentsFree: s.SegmentsFree,
		SegmentsQuarantined: s.SegmentsQuarantined,
		KeyHead:             journalPos(s.KeyHead), DirtyTail: journalPos(s.DirtyTail), KeyTail: journalPos(s.KeyTail),
		GCRuns: s.GCRuns, GCSegmentsFreed: s.GCSegmentsFreed, DeferredWrites: s.DeferredWrites,
		DirtyBytes: s.DirtyBytes, Failed: s.Failed, FailureReason: s.FailureReason,
	}
}

// Detach is not offered by the engine yet: a failed cache stays attached
// (its volumes follow on_cache_failure) until the daemon restarts.
func (c adminCache) Detach(ctx context.Context) error {
	return errors.New("detaching a failed cache is not supported by this version; restart the daemon")
}

func journalPos(t persist.Tail) admin.JournalPos {
	return admin.JournalPos{Segment: t.Pos.Seg, Offset: t.Pos.Off, LSN: t.LSN}
}
