package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// ErrBackendBusy means a read of the backend did not finish within the time
// budget and no earlier snapshot was available.
var ErrBackendBusy = errors.New("admin: backend did not answer in time")

// VolumeInfo is a volume as the API reports it.
type VolumeInfo struct {
	Name      string      `json:"name"`
	Cache     string      `json:"cache,omitempty"`
	Mode      Mode        `json:"mode"`
	Size      int64       `json:"size"`
	BlockSize int         `json:"block_size"`
	Stats     VolumeStats `json:"stats"`
	// ReadHitRatio is hits over all read requests that looked at the cache;
	// ByteHitRatio the same in bytes. Reads that bypassed the cache are
	// counted in Stats.BypassedRequests, so a high hit ratio with a large
	// bypass count is visible as such.
	ReadHitRatio float64 `json:"read_hit_ratio"`
	ByteHitRatio float64 `json:"byte_hit_ratio"`
	// Backing is the backing device's health, when it reports one (RBD).
	Backing *BackingState `json:"backing,omitempty"`
}

// CacheInfo is a cache file as the API reports it.
type CacheInfo struct {
	Name  string     `json:"name"`
	Path  string     `json:"path,omitempty"`
	Stats CacheStats `json:"stats"`
}

// snapshot is one consistent read of the backend. It is immutable once
// published.
type snapshot struct {
	taken    time.Time
	volumes  []VolumeInfo
	caches   []CacheInfo
	sessions []Session
	targets  []Target // nil when the backend is no TargetLister
	// sizing and cacheSizing are the advisor's curves by volume and by
	// cache (advice.go).
	sizing      map[string]SizingCurve
	cacheSizing map[string]SizingCurve
	// handles maps names to the live objects, for jobs and explain.
	volumeHandles map[string]VolumeAPI
	cacheHandles  map[string]CacheAPI
}

func ratio(num, den uint64) float64 {
	if den == 0 {
		return 0
	}
	return float64(num) / float64(den)
}

func readBackend(b Backend, now time.Time) *snapshot {
	snap := &snapshot{
		taken:         now,
		volumeHandles: make(map[string]VolumeAPI),
		cacheHandles:  make(map[string]CacheAPI),
		sizing:        make(map[string]SizingCurve),
		cacheSizing:   make(map[string]SizingCurve),
	}
	for _, v := range b.Volumes() {
		st := v.Stats()
		info := VolumeInfo{
			Name:         v.Name(),
			Cache:        v.Cache(),
			Mode:         v.Mode(),
			Size:         v.Size(),
			BlockSize:    v.BlockSize(),
			Stats:        st,
			ReadHitRatio: ratio(st.ReadHits, st.ReadHits+st.ReadPartialHits+st.ReadMisses),
			ByteHitRatio: ratio(st.ReadHitBytes, st.ReadHitBytes+st.ReadMissBytes),
		}
		if br, ok := v.(BackingReporter); ok {
			info.Backing = br.Backing()
		}
		snap.volumes = append(snap.volumes, info)
		snap.volumeHandles[info.Name] = v
		snap.sizing[info.Name] = v.Sizing()
	}
	for _, c := range b.Caches() {
		info := CacheInfo{Name: c.Name(), Path: c.Path(), Stats: c.Stats()}
		snap.caches = append(snap.caches, info)
		snap.cacheHandles[info.Name] = c
		snap.cacheSizing[info.Name] = c.Sizing()
	}
	snap.sessions = b.Sessions()
	if tl, ok := b.(TargetLister); ok {
		snap.targets = tl.Targets()
	}
	return snap
}

// snapshotter reads the backend on demand, at most one read at a time, and
// never makes a caller wait longer than its budget: a caller whose read does
// not finish in time gets the previous snapshot, marked stale.
//
// Locking: mu guards inflight and last; it is never held while the backend
// is called.
type snapshotter struct {
	backend Backend
	clock   Clock
	logger  *slog.Logger
	budget  time.Duration
	spawn   func(func()) bool // runs f on a tracked goroutine; false when shutting down

	mu       sync.Mutex
	inflight chan struct{} // closed when the running read ends; nil when idle
	last     *snapshot
}

// get returns a snapshot no older than the call, or, if the backend does not
// answer within the budget (or ctx ends first), the newest earlier one with
// stale set. It fails only if no snapshot was ever taken.
func (s *snapshotter) get(ctx context.Context) (snap *snapshot, stale bool, err error) {
	s.mu.Lock()
	done := s.inflight
	if done == nil {
		done = make(chan struct{})
		s.inflight = done
		if !s.spawn(func() { s.refresh(done) }) {
			s.inflight = nil
			close(done)
		}
	}
	s.mu.Unlock()

	timer := time.NewTimer(s.budget)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		stale = true
	case <-ctx.Done():
		stale = true
	}
	s.mu.Lock()
	snap = s.last
	s.mu.Unlock()
	if snap == nil {
		return nil, true, ErrBackendBusy
	}
	return snap, stale, nil
}

// refresh reads the backend once and publishes the result. A panic in the
// backend is logged and leaves the previous snapshot in place.
func (s *snapshotter) refresh(done chan struct{}) {
	defer func() {
		if r := recover(); r != nil {
			s.logger.Error("admin: backend read panicked", "panic", fmt.Sprint(r))
		}
		s.mu.Lock()
		s.inflight = nil
		s.mu.Unlock()
		close(done)
	}()
	snap := readBackend(s.backend, s.clock.Now())
	s.mu.Lock()
	s.last = snap
	s.mu.Unlock()
}
