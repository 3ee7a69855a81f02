// Package coreadapter adapts the engine (cachecore) and the iSCSI target to
// the interfaces the admin server consumes, so that package admin itself
// never imports them. It holds no state beyond the wrapped objects and adds
// no locking: every call goes straight to the engine, whose read methods
// (Stats, Mode, Explain) are cheap and whose long ones (Drain, SetMode,
// Flush) the admin server runs as jobs.
package coreadapter

import (
	"context"
	"errors"
	"fmt"
	"maps"

	"github.com/cachelun/cachelun/admin"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/persist"
	"github.com/cachelun/cachelun/target/iscsi"
)

// ErrDetachUnsupported is returned by Detach of a cache adapted without a
// detach function.
var ErrDetachUnsupported = errors.New("coreadapter: detaching this cache is not supported")

type volume struct {
	v     *cachecore.Volume
	cache string
}

// Volume adapts an engine volume living on the named cache.
func Volume(v *cachecore.Volume, cache string) admin.VolumeAPI { return &volume{v: v, cache: cache} }

func (a *volume) Name() string     { return a.v.Name() }
func (a *volume) Cache() string    { return a.cache }
func (a *volume) Mode() admin.Mode { return admin.Mode(a.v.Mode()) }
func (a *volume) Size() int64      { return a.v.Size() }
func (a *volume) BlockSize() int   { return a.v.BlockSize() }

func (a *volume) Stats() admin.VolumeStats { return VolumeStats(a.v.Stats()) }

func (a *volume) Explain(off int64) admin.Explanation { return Explanation(a.v.Explain(off)) }

func (a *volume) SetMode(ctx context.Context, m admin.Mode, progress func(admin.Progress)) error {
	mode, err := cachecore.ParseMode(string(m))
	if err != nil {
		return err
	}
	return a.v.SetMode(ctx, mode, progressFunc(progress))
}

func (a *volume) Drain(ctx context.Context, progress func(admin.Progress)) error {
	return a.v.Drain(ctx, progressFunc(progress))
}

func (a *volume) Flush(ctx context.Context) error { return a.v.Flush(ctx) }

func (a *volume) Sizing() admin.SizingCurve { return Sizing(a.v.Advice()) }

// Sizing converts the engine's advice (a miss-ratio curve in cache blocks)
// to the admin server's curve in bytes. The curve is a copy: evaluating it
// takes no engine lock.
func Sizing(ad cachecore.Advice) admin.SizingCurve {
	bs := int64(max(ad.BlockSize, 1))
	c := ad.Curve
	return admin.SizingCurve{
		CapacityBytes: int64(ad.CapacityBlocks) * bs,
		BlockSize:     ad.BlockSize,
		References:    c.References,
		SampleRate:    c.Rate,
		SampledBlocks: c.Tracked,
		HitRatio:      func(n int64) float64 { return c.HitRatio(uint64(max(n, 0) / bs)) },
		SizeFor: func(target float64) (int64, bool) {
			blocks, ok := c.SizeFor(target)
			return int64(blocks) * bs, ok
		},
	}
}

func progressFunc(f func(admin.Progress)) func(cachecore.Progress) {
	if f == nil {
		return nil
	}
	return func(p cachecore.Progress) {
		f(admin.Progress{WrittenBytes: p.WrittenBytes, DirtyBytes: p.DirtyBytes, StartDirtyBytes: p.StartDirtyBytes,
			RateBytesPerSec: p.Rate, Remaining: p.Remaining, Done: p.Done})
	}
}

// VolumeStats converts engine volume statistics. Every error kind the
// engine counts is present, at zero until its first error.
func VolumeStats(st cachecore.VolumeStats) admin.VolumeStats {
	errs := maps.Clone(st.Errors)
	if errs == nil {
		errs = make(map[string]uint64)
	}
	for _, k := range cachecore.ErrorKinds() {
		errs[k] += 0
	}
	return admin.VolumeStats{
		ReadHits:          st.ReadHits,
		ReadPartialHits:   st.ReadPartialHits,
		ReadMisses:        st.ReadMisses,
		WriteHits:         st.WriteHits,
		ReadHitBytes:      st.ReadHitBytes,
		ReadMissBytes:     st.ReadMissBytes,
		WriteBytes:        st.WriteBytes,
		BypassedRequests:  maps.Clone(st.BypassedRequests),
		BypassedBytes:     maps.Clone(st.BypassedBytes),
		ReadBypassRaces:   st.ReadBypassRaces,
		HeldBackWrites:    st.HeldBack,
		FillBytes:         st.FillBytes,
		AdmissionsRefused: st.AdmissionsRefused,
		GhostAdmits:       st.GhostAdmits,
		ReappendBytes:     st.ReappendBytes,
		DirtyBytes:        st.DirtyBytes,
		WritebackBytes:    st.WritebackBytes,
		WritebackLag:      st.WritebackLag,
		Errors:            errs,
	}
}

// Explanation converts an engine explanation.
func Explanation(e cachecore.Explanation) admin.Explanation {
	return admin.Explanation{
		Offset:        e.Offset,
		State:         e.State,
		Dirty:         e.Dirty,
		Segment:       e.Pos.Seg,
		SegmentOffset: e.Pos.Off,
		Gen:           e.Gen,
		Checksum:      e.Checksum,
	}
}

type cache struct {
	name, path string
	c          *cachecore.Cache
	detach     func(ctx context.Context, force bool, progress func(cachecore.Progress)) error
}

// Cache adapts an engine cache. detach, if not nil, is what Detach does
// (the daemon decides how a failed cache leaves service); nil makes Detach
// fail with ErrDetachUnsupported.
func Cache(name, path string, c *cachecore.Cache, detach func(ctx context.Context, force bool, progress func(cachecore.Progress)) error) admin.CacheAPI {
	return &cache{name: name, path: path, c: c, detach: detach}
}

func (a *cache) Name() string { return a.name }
func (a *cache) Path() string { return a.path }

func (a *cache) Stats() admin.CacheStats { return CacheStats(a.c.Stats()) }

func (a *cache) Sizing() admin.SizingCurve { return Sizing(a.c.Advice()) }

func (a *cache) Detach(ctx context.Context, force bool, progress func(admin.Progress)) error {
	if a.detach == nil {
		return fmt.Errorf("%w: %s", ErrDetachUnsupported, a.name)
	}
	return a.detach(ctx, force, progressFunc(progress))
}

// CacheStats converts engine cache statistics.
func CacheStats(st cachecore.CacheStats) admin.CacheStats {
	return admin.CacheStats{
		Segments:             st.Segments,
		SegmentsUsed:         st.SegmentsUsed,
		SegmentsFree:         st.SegmentsFree,
		SegmentsQuarantined:  st.SegmentsQuarantined,
		KeyHead:              journalPos(st.KeyHead),
		DirtyTail:            journalPos(st.DirtyTail),
		KeyTail:              journalPos(st.KeyTail),
		GCRuns:               st.GCRuns,
		WritebackCarriedKeys: st.WritebackCarriedKeys,
		IntentRecoveredKeys:  st.IntentRecoveredKeys,
		GCSegmentsFreed:      st.GCSegmentsFreed,
		GCSegmentsKept:       st.GCSegmentsKept,
		DeferredWrites:       st.DeferredWrites,
		DirtyBytes:           st.DirtyBytes,
		Failed:               st.Failed,
		Detached:             st.Detached,
		FailureReason:        st.FailureReason,
		GhostWindowBlocks:    st.GhostWindowBlocks,
		ReappendCreditBytes:  st.ReappendCreditBytes,
	}
}

func journalPos(t persist.Tail) admin.JournalPos {
	return admin.JournalPos{Segment: t.Pos.Seg, Offset: t.Pos.Off, LSN: t.LSN}
}

// ISCSISessions converts the iSCSI server's session list. Discovery
// sessions are reported with target "(discovery)".
func ISCSISessions(infos []iscsi.SessionInfo) []admin.Session {
	out := make([]admin.Session, 0, len(infos))
	for _, s := range infos {
		target := s.Target
		if s.Discovery {
			target = "(discovery)"
		}
		out = append(out, admin.Session{
			Transport: "iscsi",
			Initiator: s.Initiator,
			Target:    target,
			Portal:    s.Portal,
			Remote:    s.Remote,
			ID:        fmt.Sprintf("isid=0x%s,tsih=%d", s.ISID, s.TSIH),
			LUNs:      append([]uint64(nil), s.LUNs...),
			InFlight:  s.InFlight,
		})
	}
	return out
}
