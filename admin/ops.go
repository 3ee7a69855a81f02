package admin

import (
	"context"
	"maps"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// ConfigSource is an optional method of a Backend: the running
// configuration as a TOML file (GET /v1/config, `cachelun config show`).
// With secrets false every secret (CHAP) is replaced by a placeholder that
// the configuration loader refuses, so a saved dump can never run with a
// wrong secret silently.
type ConfigSource interface {
	RunningConfig(secrets bool) ([]byte, error)
}

// ConfigResponse is GET /v1/config[?secrets=1].
type ConfigResponse struct {
	// TOML is the running configuration: the file's settings with every
	// default filled in and the command line's overrides (--data-dir,
	// --listen, --metrics) applied.
	TOML            string `json:"toml"`
	SecretsRedacted bool   `json:"secrets_redacted"`
}

func (s *Server) handleConfig(w http.ResponseWriter, r *http.Request) {
	src, ok := s.cfg.Backend.(ConfigSource)
	if !ok {
		writeError(w, http.StatusNotFound, "not_found", "this daemon does not report its configuration")
		return
	}
	secrets := r.URL.Query().Get("secrets")
	if secrets != "" && secrets != "1" && secrets != "true" {
		writeError(w, http.StatusBadRequest, "bad_request", "secrets must be 1 or true")
		return
	}
	b, err := src.RunningConfig(secrets != "")
	if err != nil {
		writeError(w, http.StatusInternalServerError, "internal", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, ConfigResponse{TOML: string(b), SecretsRedacted: secrets == ""})
}

// Config returns the daemon's running configuration as TOML; with secrets
// the CHAP secrets are included.
func (c *Client) Config(ctx context.Context, secrets bool) (ConfigResponse, error) {
	var r ConfigResponse
	path := "/v1/config"
	if secrets {
		path += "?" + url.Values{"secrets": {"1"}}.Encode()
	}
	err := c.do(ctx, http.MethodGet, path, nil, &r)
	return r, err
}

// StatsResetResponse is POST /v1/stats/reset.
type StatsResetResponse struct {
	ResetAt time.Time `json:"reset_at"`
	Volumes int       `json:"volumes"`
	Caches  int       `json:"caches"`
}

// StatsReset starts the counters the API shows from zero (see baseline).
func (c *Client) StatsReset(ctx context.Context) (StatsResetResponse, error) {
	var r StatsResetResponse
	err := c.do(ctx, http.MethodPost, "/v1/stats/reset", nil, &r)
	return r, err
}

func (s *Server) handleStatsReset(w http.ResponseWriter, r *http.Request) {
	snap, stale, err := s.snaps.get(r.Context())
	if err == nil && stale {
		err = ErrBackendBusy
	}
	if err != nil {
		// a baseline from an old snapshot would hide what happened since
		writeError(w, http.StatusServiceUnavailable, "backend_busy", err.Error()+"; nothing was reset")
		return
	}
	at := s.clock.Now()
	s.base.set(snap, at)
	s.logger.Info("admin: statistics reset", "volumes", len(snap.volumes), "caches", len(snap.caches))
	writeJSON(w, http.StatusOK, StatsResetResponse{ResetAt: at, Volumes: len(snap.volumes), Caches: len(snap.caches)})
}

// baseline implements `cachelun stats reset` (casadm --reset-counters)
// in the admin layer: the counters at the reset are kept and subtracted
// from every answer of the API (status, volume and cache lists and
// details, the status page), which then count from the reset. The engine
// and /metrics are untouched: Prometheus counters must stay monotonic
// (rate() reads a drop as a restart), and a reset that changed the
// engine would race with its data path. Gauges (dirty bytes, writeback
// lag, segments, journal positions) are states, not counters, and are
// never adjusted. A counter below its baseline (a volume removed and
// added again by a reload starts at zero) is shown as it is.
type baseline struct {
	mu      sync.Mutex
	at      time.Time // zero until the first reset
	volumes map[string]VolumeStats
	caches  map[string]CacheStats
}

func (b *baseline) set(snap *snapshot, at time.Time) {
	vols := make(map[string]VolumeStats, len(snap.volumes))
	for _, v := range snap.volumes {
		vols[v.Name] = v.Stats
	}
	caches := make(map[string]CacheStats, len(snap.caches))
	for _, c := range snap.caches {
		caches[c.Name] = c.Stats
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.at, b.volumes, b.caches = at, vols, caches
}

// apply returns snap with its counters counted from the last reset (snap
// itself when there was none) and the time they count from (zero: since
// the daemon started).
func (b *baseline) apply(snap *snapshot) (*snapshot, time.Time) {
	b.mu.Lock()
	at, vols, caches := b.at, b.volumes, b.caches
	b.mu.Unlock()
	if at.IsZero() {
		return snap, at
	}
	out := *snap
	out.volumes = make([]VolumeInfo, len(snap.volumes))
	for i, v := range snap.volumes {
		if base, ok := vols[v.Name]; ok {
			v.Stats = subVolumeStats(v.Stats, base)
			v.ReadHitRatio = ratio(v.Stats.ReadHits, v.Stats.ReadHits+v.Stats.ReadPartialHits+v.Stats.ReadMisses)
			v.ByteHitRatio = ratio(v.Stats.ReadHitBytes, v.Stats.ReadHitBytes+v.Stats.ReadMissBytes)
		}
		out.volumes[i] = v
	}
	out.caches = make([]CacheInfo, len(snap.caches))
	for i, c := range snap.caches {
		if base, ok := caches[c.Name]; ok {
			st := &c.Stats
			st.GCRuns = sub(st.GCRuns, base.GCRuns)
			st.GCSegmentsFreed = sub(st.GCSegmentsFreed, base.GCSegmentsFreed)
			st.GCSegmentsKept = sub(st.GCSegmentsKept, base.GCSegmentsKept)
			st.DeferredWrites = sub(st.DeferredWrites, base.DeferredWrites)
			st.WritebackCarriedKeys = sub(st.WritebackCarriedKeys, base.WritebackCarriedKeys)
			st.IntentRecoveredKeys = sub(st.IntentRecoveredKeys, base.IntentRecoveredKeys)
		}
		out.caches[i] = c
	}
	return &out, at
}

func subVolumeStats(st, base VolumeStats) VolumeStats {
	st.ReadHits = sub(st.ReadHits, base.ReadHits)
	st.ReadPartialHits = sub(st.ReadPartialHits, base.ReadPartialHits)
	st.ReadMisses = sub(st.ReadMisses, base.ReadMisses)
	st.WriteHits = sub(st.WriteHits, base.WriteHits)
	st.ReadHitBytes = sub(st.ReadHitBytes, base.ReadHitBytes)
	st.ReadMissBytes = sub(st.ReadMissBytes, base.ReadMissBytes)
	st.WriteBytes = sub(st.WriteBytes, base.WriteBytes)
	st.ReadBypassRaces = sub(st.ReadBypassRaces, base.ReadBypassRaces)
	st.HeldBackWrites = sub(st.HeldBackWrites, base.HeldBackWrites)
	st.FillBytes = sub(st.FillBytes, base.FillBytes)
	st.AdmissionsRefused = sub(st.AdmissionsRefused, base.AdmissionsRefused)
	st.GhostAdmits = sub(st.GhostAdmits, base.GhostAdmits)
	st.ReappendBytes = sub(st.ReappendBytes, base.ReappendBytes)
	st.WritebackBytes = sub(st.WritebackBytes, base.WritebackBytes)
	st.BypassedRequests = subMap(st.BypassedRequests, base.BypassedRequests)
	st.BypassedBytes = subMap(st.BypassedBytes, base.BypassedBytes)
	st.Errors = subMap(st.Errors, base.Errors)
	return st
}

// sub is v counted from base; a counter that restarted below its base
// counts from its restart.
func sub(v, base uint64) uint64 {
	if v < base {
		return v
	}
	return v - base
}

func subMap(m, base map[string]uint64) map[string]uint64 {
	out := maps.Clone(m)
	for k, v := range out {
		out[k] = sub(v, base[k])
	}
	return out
}
