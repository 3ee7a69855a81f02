package admin

import (
	"context"
	"errors"
	"time"
)

// Clock is the time source; nil in Config means the real clock.
type Clock interface{ Now() time.Time }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// Mode is a volume's cache mode as the engine names it ("writeback",
// "writethrough", "writearound", "writeonly", "passthrough"). The admin
// package passes it through verbatim; the engine validates it.
type Mode string

// Progress reports how far a drain (or a mode switch that drains first, or
// a detach) has come in writing back dirty data.
type Progress struct {
	// WrittenBytes reached the backing device since the job started.
	WrittenBytes int64 `json:"written_bytes"`
	// DirtyBytes are still to be written back.
	DirtyBytes      int64 `json:"dirty_bytes"`
	StartDirtyBytes int64 `json:"start_dirty_bytes"`
	// RateBytesPerSec is the writeback rate over the last few seconds (0:
	// not measured yet); Remaining is DirtyBytes at that rate (0: unknown).
	RateBytesPerSec int64         `json:"rate_bytes_per_sec"`
	Remaining       time.Duration `json:"remaining_ns"`
	// Done: the work is complete (the job may still be finishing).
	Done bool `json:"done,omitempty"`
}

// Fraction is the share written back, in [0, 1]: WrittenBytes over
// WrittenBytes + DirtyBytes, 1 only once Done. A report without
// WrittenBytes (nothing written yet, or an older daemon) counts the drop
// of DirtyBytes since the start; a drain that started clean is complete.
func (p Progress) Fraction() float64 {
	if p.Done {
		return 1
	}
	if p.WrittenBytes > 0 {
		return min(float64(p.WrittenBytes)/float64(p.WrittenBytes+max(p.DirtyBytes, 0)), 0.999)
	}
	if p.StartDirtyBytes <= 0 {
		return 1
	}
	done := float64(p.StartDirtyBytes-p.DirtyBytes) / float64(p.StartDirtyBytes)
	return min(max(done, 0), 1)
}

// VolumeStats are a volume's counters since the engine opened it. Counters
// only grow; DirtyBytes and WritebackLag are gauges.
type VolumeStats struct {
	ReadHits         uint64            `json:"read_hits"`
	ReadPartialHits  uint64            `json:"read_partial_hits"`
	ReadMisses       uint64            `json:"read_misses"`
	WriteHits        uint64            `json:"write_hits"`
	ReadHitBytes     uint64            `json:"read_hit_bytes"`
	ReadMissBytes    uint64            `json:"read_miss_bytes"`
	WriteBytes       uint64            `json:"write_bytes"`
	BypassedRequests map[string]uint64 `json:"bypassed_requests,omitempty"` // by reason
	BypassedBytes    map[string]uint64 `json:"bypassed_bytes,omitempty"`    // by reason
	ReadBypassRaces  uint64            `json:"read_bypass_races"`
	// HeldBackWrites would have gone to the backing device (bypass,
	// writethrough) but took the cache path because older dirty data was
	// not yet written back (ordered writeback).
	HeldBackWrites uint64 `json:"held_back_writes"`
	// FillBytes were installed by read-miss fills; the cache policy
	// (2q) refused AdmissionsRefused misses (the ghost set did not know
	// the block), admitted GhostAdmits because it did, and appended
	// ReappendBytes of hit clean data again instead of evicting them.
	FillBytes         uint64            `json:"fill_bytes"`
	AdmissionsRefused uint64            `json:"admissions_refused"`
	GhostAdmits       uint64            `json:"ghost_admits"`
	ReappendBytes     uint64            `json:"reappend_bytes"`
	DirtyBytes        int64             `json:"dirty_bytes"`
	WritebackBytes    uint64            `json:"writeback_bytes"`
	WritebackLag      time.Duration     `json:"writeback_lag_ns"`
	Errors            map[string]uint64 `json:"errors,omitempty"` // by kind
}

// BackingState is the health of a volume's backing device, for backings
// that report it (Ceph RBD images; files and block devices only when they
// shrank below the volume, their failures show in VolumeStats.Errors).
type BackingState struct {
	Device string `json:"device"` // the configured backing, e.g. "rbd:pool/image"
	// State is BackingOK, BackingDegraded (the last request to the
	// backing failed: Reason says why; writeback retries, read misses
	// fail), BackingFenced (the image's exclusive lock was lost to
	// another client: the volume fails all I/O) or BackingShrunk.
	State    string    `json:"state"`
	Reason   string    `json:"reason,omitempty"`
	Since    time.Time `json:"since,omitzero"`   // when the last failure happened (degraded, fenced)
	LastOK   time.Time `json:"last_ok,omitzero"` // the last request that succeeded
	InFlight int64     `json:"in_flight"`        // requests the backing has not answered yet
	Timeouts uint64    `json:"timeouts"`         // requests that got no answer in time
	Fenced   uint64    `json:"fenced"`           // requests refused because the lock was lost
	Failures uint64    `json:"failures"`         // other failed requests
	// Size is the backing's size as last seen. A device that grew is
	// followed live (the volume grows, hosts get CAPACITY DATA HAS
	// CHANGED); one smaller than the volume is BackingShrunk.
	Size int64 `json:"size"`
}

// Backing states.
const (
	BackingOK       = "ok"
	BackingDegraded = "degraded"
	BackingFenced   = "fenced"
	// BackingShrunk: the backing device is smaller than the volume (it
	// was shrunk under the daemon). The volume keeps its size and its
	// cached data; requests past the device's end fail.
	BackingShrunk = "shrunk"
)

// BackingReporter is a VolumeAPI whose backing device reports its health.
// Backing must not wait for the backing device.
type BackingReporter interface {
	Backing() *BackingState
}

// JournalPos is a position in a cache file's kset journal.
type JournalPos struct {
	Segment uint32 `json:"segment"`
	Offset  uint32 `json:"offset"`
	LSN     uint64 `json:"lsn"`
}

// CacheStats describe one cache file.
type CacheStats struct {
	Segments            uint32     `json:"segments"`
	SegmentsUsed        uint32     `json:"segments_used"`
	SegmentsFree        uint32     `json:"segments_free"`
	SegmentsQuarantined uint32     `json:"segments_quarantined"`
	KeyHead             JournalPos `json:"key_head"`
	DirtyTail           JournalPos `json:"dirty_tail"`
	KeyTail             JournalPos `json:"key_tail"`
	GCRuns              uint64     `json:"gc_runs"`
	GCSegmentsFreed     uint64     `json:"gc_segments_freed"`
	GCSegmentsKept      uint64     `json:"gc_segments_kept"` // passed by GC and kept in place (2q)
	DeferredWrites      uint64     `json:"deferred_writes"`
	// WritebackCarriedKeys: keys of volumes not attached that writeback
	// journaled again to move on; IntentRecoveredKeys: keys of writes a
	// crashed process acknowledged, recovered at start.
	WritebackCarriedKeys uint64 `json:"writeback_carried_keys"`
	IntentRecoveredKeys  uint64 `json:"intent_recovered_keys"`
	DirtyBytes           int64  `json:"dirty_bytes"`
	Failed               bool   `json:"failed"`
	FailureReason        string `json:"failure_reason,omitempty"`
	// Detached: taken out of service (cache detach); its volumes run on
	// their backing devices.
	Detached bool `json:"detached,omitempty"`
	// GhostWindowBlocks: how many of the latest refused or evicted blocks
	// the 2q ghost set remembers at least; ReappendCreditBytes: data GC
	// may still append again rather than evict (2q's second chance).
	GhostWindowBlocks   int64 `json:"ghost_window_blocks"`
	ReappendCreditBytes int64 `json:"reappend_credit_bytes"`
}

// Explanation says why a read of one block would hit or miss and where the
// block's data lives.
type Explanation struct {
	Offset int64  `json:"offset"`
	State  string `json:"state"` // hit, miss, placeholder, tombstone, ... as the engine names it
	Dirty  bool   `json:"dirty"`
	// Segment and SegmentOffset locate the data in the cache file when the
	// block is cached.
	Segment       uint32 `json:"segment"`
	SegmentOffset uint32 `json:"segment_offset"`
	// Gen is the generation of that segment when the key was written.
	// (The engine does not track which kset wrote a block, so there is no
	// per-block LSN.)
	Gen uint64 `json:"gen"`
	// Checksum, on a cache with data CRCs and a cached block: "ok", or why
	// the data of its key fails its CRC32C (checked when asked).
	Checksum string `json:"checksum,omitempty"`
}

// Session is one initiator session on a front end. A TCMU device (kernel
// LIO backstore) is reported as one session: Transport "tcmu", Target the
// device's configfs name (e.g. "user_0/db1"), Volume the volume it serves
// and no initiator (LIO's fabrics own those).
type Session struct {
	Transport string   `json:"transport"` // "iscsi" or "tcmu"
	Initiator string   `json:"initiator"`
	Target    string   `json:"target"`
	Volume    string   `json:"volume,omitempty"` // the volume a TCMU device serves
	Portal    string   `json:"portal,omitempty"` // local address the session came in on
	Remote    string   `json:"remote,omitempty"` // initiator's address
	ID        string   `json:"id,omitempty"`     // e.g. ISID/TSIH
	LUNs      []uint64 `json:"luns"`
	InFlight  int      `json:"in_flight"` // commands being executed
}

// Target is a front-end target that exists, whether or not a session is
// logged in to it.
type Target struct {
	Transport string // "iscsi"
	Name      string // the target's IQN
}

// TargetLister is an optional method of a Backend: the targets it serves.
// The session metrics then have a series (zero) for every target from the
// start, not only once a host logged in.
type TargetLister interface {
	Targets() []Target
}

// VolumeAPI is what the admin server needs from one cached volume. The
// read-only methods (Name, Mode, Stats, Explain, Size, BlockSize) must not
// wait for data-path work; the server still calls them under a time budget
// and falls back to its last snapshot. SetMode, Drain and Flush may block
// for a long time; the server runs them as cancellable jobs.
type VolumeAPI interface {
	Name() string
	Cache() string // name of the cache file the volume lives on
	Mode() Mode
	Size() int64
	BlockSize() int
	Stats() VolumeStats
	Explain(off int64) Explanation
	SetMode(ctx context.Context, m Mode, progress func(Progress)) error
	Drain(ctx context.Context, progress func(Progress)) error
	Flush(ctx context.Context) error
	// Sizing is the sizing advisor's curve for the volume (advice.go).
	Sizing() SizingCurve
}

// CacheAPI is what the admin server needs from one cache file.
type CacheAPI interface {
	Name() string
	Path() string
	Stats() CacheStats
	// Detach removes the cache from service: its volumes keep serving
	// I/O directly on their backing devices (passthrough). A healthy
	// cache first writes back all dirty data (reporting progress) and
	// refuses if it cannot; a failed one refuses while a volume still has
	// dirty data in it. force detaches anyway, abandoning that data.
	Detach(ctx context.Context, force bool, progress func(Progress)) error
	// Sizing is the sizing advisor's curve for all the cache's volumes.
	Sizing() SizingCurve
}

// Backend is the daemon as seen by the admin server.
type Backend interface {
	Volumes() []VolumeAPI
	Caches() []CacheAPI
	Sessions() []Session
	// Reload re-reads the configuration and applies the difference (or,
	// with dryRun, only describes it). plan is a human-readable description
	// of the changes.
	Reload(ctx context.Context, dryRun bool) (plan string, err error)
}

// ErrReloadUnsupported is what BackendFuncs.Reload returns without a
// ReloadFunc.
var ErrReloadUnsupported = errors.New("admin: reload is not supported by this daemon")

// BackendFuncs is a Backend built from functions; nil functions report
// nothing (and Reload fails with ErrReloadUnsupported).
type BackendFuncs struct {
	VolumesFunc  func() []VolumeAPI
	CachesFunc   func() []CacheAPI
	SessionsFunc func() []Session
	ReloadFunc   func(ctx context.Context, dryRun bool) (string, error)
}

// Volumes implements Backend.
func (b BackendFuncs) Volumes() []VolumeAPI {
	if b.VolumesFunc == nil {
		return nil
	}
	return b.VolumesFunc()
}

// Caches implements Backend.
func (b BackendFuncs) Caches() []CacheAPI {
	if b.CachesFunc == nil {
		return nil
	}
	return b.CachesFunc()
}

// Sessions implements Backend.
func (b BackendFuncs) Sessions() []Session {
	if b.SessionsFunc == nil {
		return nil
	}
	return b.SessionsFunc()
}

// Reload implements Backend.
func (b BackendFuncs) Reload(ctx context.Context, dryRun bool) (string, error) {
	if b.ReloadFunc == nil {
		return "", ErrReloadUnsupported
	}
	return b.ReloadFunc(ctx, dryRun)
}
