package admin

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
)

// The sizing advisor: how the read hit ratio of a volume (or of all the
// volumes of a cache) would change with the cache's size. The engine
// estimates an LRU miss-ratio curve from every read request (SHARDS
// sampling, package mrc); the server reads it in its snapshots like every
// other figure and answers GET /v1/advice, GET /v1/volumes/{name}/advice,
// the cachelun_advisor_* metrics and the status page's plot from it.

// SizingCurve is what the engine's advisor knows about one volume or
// cache. The functions must not wait for data-path work; they are called
// on the snapshot's copy of the curve.
type SizingCurve struct {
	CapacityBytes int64   // the data the cache holds today
	BlockSize     int     // the curve's block (the cache block size)
	References    uint64  // block references the curve was built from
	SampleRate    float64 // the share of blocks sampled
	SampledBlocks int     // the distinct blocks sampled (mrc.Curve.Tracked)
	// HitRatio is the estimated read hit ratio of an LRU cache of that
	// many bytes; nil when there is no advisor.
	HitRatio func(bytes int64) float64
	// SizeFor is the smallest cache size in bytes whose hit ratio reaches
	// target; false when no size does.
	SizeFor func(target float64) (int64, bool)
}

// minSampledBlocks: a figure resting on fewer sampled blocks is rough: an
// estimate from fewer distinct sampled blocks at every size
// (Advice.SampledBlocks), and sizes below this many sampled blocks of
// stack distance (Advice.ResolvedFromBytes).
const minSampledBlocks = 100

// Rough reports whether the estimate rests on too few sampled blocks to
// be more than rough at any size.
func (a Advice) Rough() bool { return a.References > 0 && a.SampledBlocks < minSampledBlocks }

// SampledBlocksText is "1 block" or "N blocks".
func (a Advice) SampledBlocksText() string {
	if a.SampledBlocks == 1 {
		return "1 block"
	}
	return fmt.Sprintf("%d blocks", a.SampledBlocks)
}

// AdviceFactors returns the sizes, relative to today's, that every answer
// reports (Advice.Points).
func AdviceFactors() []float64 { return []float64{0.25, 0.5, 1, 2, 4} }

// DefaultAdviceTarget is the target hit ratio when none is asked for.
const DefaultAdviceTarget = 0.9

// AdvicePoint is the estimated hit ratio at one cache size.
type AdvicePoint struct {
	SizeFactor float64 `json:"size_factor"` // the size over today's
	Bytes      int64   `json:"bytes"`
	HitRatio   float64 `json:"hit_ratio"`
}

// Advice is the advisor's answer for a volume (Volume set) or a cache.
type Advice struct {
	Volume     string  `json:"volume,omitempty"`
	Cache      string  `json:"cache"`
	CacheBytes int64   `json:"cache_bytes"` // today's size: the data the cache holds
	BlockSize  int     `json:"block_size"`
	References uint64  `json:"references"`  // read block references seen
	SampleRate float64 `json:"sample_rate"` // share of blocks sampled
	// SampledBlocks is the distinct blocks the estimate rests on; under
	// minSampledBlocks every figure is rough (the standard error of a hit
	// ratio h from S blocks is about sqrt(h(1-h)/S): 0.05 at S = 100).
	SampledBlocks int `json:"sampled_blocks"`
	// ResolvedFromBytes: sizes below this rest on fewer than 100 sampled
	// blocks of distance (100 / SampleRate blocks); their figures are
	// rough.
	ResolvedFromBytes int64 `json:"resolved_from_bytes"`
	// Points are the hit ratios at 0.25×, 0.5×, 1×, 2× and 4× today's
	// size.
	Points []AdvicePoint `json:"points"`
	// Target is the hit ratio asked for; TargetBytes the smallest cache
	// reaching it, when TargetReachable (no size reaches a hit ratio
	// above the share of re-references: first references always miss).
	Target          float64 `json:"target"`
	TargetBytes     int64   `json:"target_bytes,omitempty"`
	TargetReachable bool    `json:"target_reachable"`
	// Curve is the hit ratio from 1/8 to 8 times today's size in 25 steps
	// (a factor of 2^(1/4) apart), for plots.
	Curve []AdvicePoint `json:"curve"`
}

// AdviceResponse is GET /v1/advice: every volume's and every cache's.
type AdviceResponse struct {
	SnapshotMeta
	Volumes []Advice `json:"volumes"`
	Caches  []Advice `json:"caches"`
}

// VolumeAdviceResponse is GET /v1/volumes/{name}/advice.
type VolumeAdviceResponse struct {
	SnapshotMeta
	Advice Advice `json:"advice"`
}

// makeAdvice evaluates a curve at the standard sizes and for target.
func makeAdvice(sc SizingCurve, target float64) Advice {
	a := Advice{CacheBytes: sc.CapacityBytes, BlockSize: sc.BlockSize, References: sc.References, SampleRate: sc.SampleRate,
		SampledBlocks: sc.SampledBlocks, Target: target, Points: []AdvicePoint{}, Curve: []AdvicePoint{}}
	at := func(f float64) AdvicePoint {
		p := AdvicePoint{SizeFactor: f, Bytes: int64(math.Round(f * float64(sc.CapacityBytes)))}
		if sc.HitRatio != nil {
			p.HitRatio = sc.HitRatio(p.Bytes)
		}
		return p
	}
	for _, f := range AdviceFactors() {
		a.Points = append(a.Points, at(f))
	}
	for i := -12; i <= 12; i++ {
		a.Curve = append(a.Curve, at(math.Exp2(float64(i)/4)))
	}
	if sc.SizeFor != nil {
		a.TargetBytes, a.TargetReachable = sc.SizeFor(target)
	}
	if sc.SampleRate > 0 {
		a.ResolvedFromBytes = int64(math.Ceil(minSampledBlocks/sc.SampleRate)) * int64(sc.BlockSize)
	}
	return a
}

// adviceTarget parses ?target= (default 0.9).
func adviceTarget(r *http.Request) (float64, error) {
	s := r.URL.Query().Get("target")
	if s == "" {
		return DefaultAdviceTarget, nil
	}
	t, err := strconv.ParseFloat(s, 64)
	if err != nil || !(t > 0 && t < 1) {
		return 0, fmt.Errorf("bad target %q: want a hit ratio between 0 and 1 (e.g. 0.9)", s)
	}
	return t, nil
}

// volumeAdvice and cacheAdvice build the answers from a snapshot.
func (snap *snapshot) volumeAdvice(v VolumeInfo, target float64) Advice {
	a := makeAdvice(snap.sizing[v.Name], target)
	a.Volume, a.Cache = v.Name, v.Cache
	return a
}

func (snap *snapshot) cacheAdvice(c CacheInfo, target float64) Advice {
	a := makeAdvice(snap.cacheSizing[c.Name], target)
	a.Cache = c.Name
	return a
}

func (s *Server) handleAdvice(w http.ResponseWriter, r *http.Request) {
	target, err := adviceTarget(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	snap, meta, ok := s.snapshot(w, r)
	if !ok {
		return
	}
	resp := AdviceResponse{SnapshotMeta: meta, Volumes: []Advice{}, Caches: []Advice{}}
	for _, v := range snap.volumes {
		resp.Volumes = append(resp.Volumes, snap.volumeAdvice(v, target))
	}
	for _, c := range snap.caches {
		resp.Caches = append(resp.Caches, snap.cacheAdvice(c, target))
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) handleVolumeAdvice(w http.ResponseWriter, r *http.Request) {
	target, err := adviceTarget(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	snap, meta, _, info, ok := s.findVolume(w, r)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, VolumeAdviceResponse{SnapshotMeta: meta, Advice: snap.volumeAdvice(info, target)})
}
