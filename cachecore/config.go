package cachecore

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"
)

// Mode is a volume's cache mode.
type Mode string

// Cache modes.
const (
	ModeWriteback    Mode = "writeback"    // writes are cached dirty and written back in log order
	ModeWritethrough Mode = "writethrough" // writes go to the backing device and are cached clean
	ModeWritearound  Mode = "writearound"  // writes bypass the cache (tombstone + backing write); reads fill
	ModeWriteonly    Mode = "writeonly"    // writes cached (writeback), reads never fill
	ModePassthrough  Mode = "passthrough"  // nothing new is cached; the cache only serves what it holds
)

// Modes lists every cache mode: the one owner of their names. conf (which
// must not import the engine) and admin restate them; a test in
// admin/coreadapter ties the copies to this list.
func Modes() []Mode {
	return []Mode{ModeWriteback, ModeWritethrough, ModeWritearound, ModeWriteonly, ModePassthrough}
}

// ParseMode parses a mode name (case-insensitive).
func ParseMode(s string) (Mode, error) {
	m := Mode(strings.ToLower(strings.TrimSpace(s)))
	if slices.Contains(Modes(), m) {
		return m, nil
	}
	return "", fmt.Errorf("cachecore: unknown cache mode %q (want writeback, writethrough, writearound, writeonly or passthrough)", s)
}

// FailurePolicies lists every failure policy (restated by conf; tied by a
// test in admin/coreadapter).
func FailurePolicies() []FailurePolicy { return []FailurePolicy{FailAuto, FailFail, FailPassthrough} }

// cachesWrites reports whether a healthy write in this mode lands in the
// cache as dirty data.
func (m Mode) cachesWrites() bool { return m == ModeWriteback || m == ModeWriteonly }

// fillsReads reports whether read misses in this mode are installed in the
// cache.
func (m Mode) fillsReads() bool {
	return m == ModeWriteback || m == ModeWritethrough || m == ModeWritearound
}

// FailurePolicy says what happens to volumes once the cache media failed.
type FailurePolicy string

// Failure policies.
const (
	// FailAuto: volumes without dirty data continue in passthrough on the
	// backing device; volumes with dirty data fail I/O with blk.ErrMedium
	// and keep the dirty data on the media.
	FailAuto FailurePolicy = "auto"
	// FailFail: every volume fails I/O with blk.ErrMedium.
	FailFail FailurePolicy = "fail"
	// FailPassthrough: every volume continues on its backing device, even
	// one whose newest data is still dirty in the failed cache: reads may
	// then return data older than acknowledged writes. Only for operators
	// who prefer availability over consistency.
	FailPassthrough FailurePolicy = "passthrough"
)

func (p FailurePolicy) valid() bool {
	return p == FailAuto || p == FailFail || p == FailPassthrough
}

// Clock supplies the time; nil in Config means the real clock.
type Clock interface{ Now() time.Time }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// WritebackConfig tunes the ordered writeback worker.
type WritebackConfig struct {
	TargetDirtyPercent   int           // controller target, default 10
	HighWatermarkPercent int           // above it writeback runs flat out, default 50
	IdleAfter            time.Duration // no host I/O for this long: write back at full speed, default 1s
	MaxBytesPerSec       int64         // 0 = unlimited
}

// Config configures a Cache. Zero fields take their defaults.
type Config struct {
	Logger *slog.Logger // nil: discard
	Clock  Clock        // nil: real clock
	// GCPercent: GC reclaims clean log while more than this share of the
	// segments is in use, 1..90. The zero value is GCPercentStored, not a
	// percentage: Open keeps the value stored in the cache file (70 on a
	// fresh cache) and SetConfig keeps the current one. There is no 0 %
	// setting; a caller whose own configuration allows 0 must map it
	// (Cache.GCPercent reports the value in force).
	GCPercent            int
	JournalFlushInterval time.Duration // default 1s: an acked write's key waits at most this long in an open kset
	OnCacheFailure       FailurePolicy // default "auto"
	Writeback            WritebackConfig

	// noCarryGrace lets writeback carry keys of volumes that are not
	// attached right after Open (tests); see carryGrace.
	noCarryGrace bool
	// noKeepInPlace: GC never keeps a segment in place (tests of the
	// second chance's re-appends).
	noKeepInPlace bool
	// wbPassKsets, when set, replaces wbMaxKsets (tests: small writeback
	// passes).
	wbPassKsets int
	// discardZeroLimit, when set, replaces discardZeroLimit (tests: the
	// small discards of a crash workload take the paths of large ones).
	discardZeroLimit int64
}

// VolumeConfig configures one volume.
type VolumeConfig struct {
	Mode                    Mode          // default writeback
	BlockSize               int           // 512 or 4096, default 512
	SequentialCutoff        int64         // bytes, 0 disables (DefaultVolumeConfig: 4 MiB)
	CongestedReadThreshold  time.Duration // 0 disables latency-based congestion bypass (default 2ms)
	CongestedWriteThreshold time.Duration // 0 disables (default 20ms)
	Policy                  Policy        // admission and eviction (policy.go); "" is fifo, DefaultVolumeConfig 2q
	// Replicated records in the cache file that the volume's journal is
	// shipped to other nodes (SetReplicator): its dirty data there has
	// copies elsewhere, so a node that takes the volume over later may
	// drop it (PurgeReplica) instead of writing it back.
	Replicated bool
}

// DefaultVolumeConfig returns the recommended settings: writeback, 512-byte
// blocks, 4 MiB sequential cutoff, 2ms/20ms congestion thresholds, the 2q
// policy. The zero VolumeConfig differs: it disables sequential and
// congestion bypass and admits every miss (fifo).
func DefaultVolumeConfig() VolumeConfig {
	return VolumeConfig{
		Mode:                    ModeWriteback,
		BlockSize:               defaultVolumeBlockSize,
		SequentialCutoff:        defaultSeqCutoff,
		CongestedReadThreshold:  defaultCongestedRead,
		CongestedWriteThreshold: defaultCongestedWrite,
		Policy:                  Policy2Q,
	}
}

// GCPercentStored is the zero value of Config.GCPercent: "unset", keep
// the value stored in the cache file (Open) or in force (SetConfig).
const GCPercentStored = 0

const (
	defaultGCPercent       = 70
	maxGCPercent           = 90
	defaultFlushInterval   = time.Second
	defaultSeqCutoff       = 4 << 20
	defaultCongestedRead   = 2 * time.Millisecond
	defaultCongestedWrite  = 20 * time.Millisecond
	defaultTargetDirty     = 10
	defaultHighWatermark   = 50
	defaultIdleAfter       = time.Second
	defaultVolumeBlockSize = 512
)

func (c Config) withDefaults(stored uint8) (Config, error) {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Clock == nil {
		c.Clock = realClock{}
	}
	if c.GCPercent < 0 || c.GCPercent > maxGCPercent {
		return c, fmt.Errorf("cachecore: gc percent %d outside 1..%d (or %d: keep the stored value)", c.GCPercent, maxGCPercent, GCPercentStored)
	}
	if c.GCPercent == GCPercentStored {
		c.GCPercent = int(stored)
		if c.GCPercent == 0 || c.GCPercent > maxGCPercent {
			c.GCPercent = defaultGCPercent
		}
	}
	if c.JournalFlushInterval < 0 {
		return c, fmt.Errorf("cachecore: negative journal flush interval %v", c.JournalFlushInterval)
	}
	if c.JournalFlushInterval == 0 {
		c.JournalFlushInterval = defaultFlushInterval
	}
	if c.OnCacheFailure == "" {
		c.OnCacheFailure = FailAuto
	}
	if !c.OnCacheFailure.valid() {
		return c, fmt.Errorf("cachecore: unknown failure policy %q (want auto, fail or passthrough)", c.OnCacheFailure)
	}
	wb := &c.Writeback
	if wb.TargetDirtyPercent == 0 {
		wb.TargetDirtyPercent = defaultTargetDirty
	}
	if wb.HighWatermarkPercent == 0 {
		wb.HighWatermarkPercent = defaultHighWatermark
	}
	if wb.TargetDirtyPercent < 0 || wb.TargetDirtyPercent > 100 || wb.HighWatermarkPercent < 0 || wb.HighWatermarkPercent > 100 {
		return c, fmt.Errorf("cachecore: writeback percentages %d/%d outside 0..100", wb.TargetDirtyPercent, wb.HighWatermarkPercent)
	}
	if wb.HighWatermarkPercent < wb.TargetDirtyPercent {
		wb.HighWatermarkPercent = wb.TargetDirtyPercent
	}
	if wb.IdleAfter == 0 {
		wb.IdleAfter = defaultIdleAfter
	}
	if wb.MaxBytesPerSec < 0 {
		return c, fmt.Errorf("cachecore: negative writeback rate %d", wb.MaxBytesPerSec)
	}
	return c, nil
}

func (vc VolumeConfig) withDefaults() (VolumeConfig, error) {
	if vc.Mode == "" {
		vc.Mode = ModeWriteback
	}
	m, err := ParseMode(string(vc.Mode))
	if err != nil {
		return vc, err
	}
	vc.Mode = m
	if vc.BlockSize == 0 {
		vc.BlockSize = defaultVolumeBlockSize
	}
	if vc.BlockSize != 512 && vc.BlockSize != 4096 {
		return vc, fmt.Errorf("cachecore: block size %d, want 512 or 4096", vc.BlockSize)
	}
	p, err := ParsePolicy(string(vc.Policy))
	if err != nil {
		return vc, err
	}
	vc.Policy = p
	if vc.SequentialCutoff < 0 || vc.CongestedReadThreshold < 0 || vc.CongestedWriteThreshold < 0 {
		return vc, fmt.Errorf("cachecore: negative sequential cutoff or congestion threshold")
	}
	return vc, nil
}

// GCPercent returns the gc percent in force (Config.GCPercent resolved
// against the value stored in the cache file).
func (c *Cache) GCPercent() int { return c.config().GCPercent }
