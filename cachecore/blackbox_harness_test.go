package cachecore_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/persist"
)

// The black-box tests drive a cachecore.Cache only through its exported API,
// on a persist.CrashMedia cache file and a backend.Faulty(backend.Memory)
// backing device, and compare what the volume returns with a model.

const (
	testSegSize = 128 << 10 // the smallest segment persist allows: GC and segment switches happen often
	testVolName = "vol0"
	sector      = 512 // granularity of the data tags (every volume block size is a multiple)
)

// longRun reports whether the long variants were asked for (CACHELUN_LONG=1).
func longRun() bool { return os.Getenv("CACHELUN_LONG") == "1" }

// rigOptions describes one cache + one volume.
type rigOptions struct {
	Segments    int   // cache segments (default 48)
	BackingSize int64 // bytes (default 4 MiB)
	Unit        persist.TearUnit
	DataCRC     bool
	// WholeFlush: a persist of the cache media persists every write before
	// it (a pwrite-fdatasync file); with DataCRC the engine then commits
	// unfenced.
	WholeFlush bool
	CacheBlock uint32 // persist block size (default 4096)
	Cfg        cachecore.Config
	VC         cachecore.VolumeConfig
	// AtomicWrites makes half of the crash workload's plain writes
	// atomic (WriteAtomic), up to the volume's limit, and the crash
	// check verify that none is ever half visible.
	AtomicWrites bool
	// OvertakenPersistHook makes the crash workload's persist hook, at
	// every other persist point, wait (up to 20 ms) for two more persist
	// points before it takes the backing device's image: the hook runs
	// after the persist, unlocked, and later persists may come first.
	OvertakenPersistHook bool
}

func (o *rigOptions) fill() {
	if o.Segments == 0 {
		o.Segments = 48
	}
	if o.BackingSize == 0 {
		o.BackingSize = 4 << 20
	}
	if o.Unit == 0 {
		o.Unit = persist.TearDAX
	}
	if o.CacheBlock == 0 {
		o.CacheBlock = 4096
	}
	if o.Cfg.JournalFlushInterval == 0 {
		o.Cfg.JournalFlushInterval = 2 * time.Millisecond
	}
	if o.Cfg.Writeback.IdleAfter == 0 {
		o.Cfg.Writeback.IdleAfter = 5 * time.Millisecond
	}
	if o.VC.BlockSize == 0 {
		o.VC.BlockSize = 4096
	}
}

// rig is a running cache with one volume.
type rig struct {
	t       testing.TB
	opts    rigOptions
	media   *persist.CrashMedia
	store   *persist.Store
	cache   *cachecore.Cache
	mem     *backend.Memory
	backing *backend.Faulty
	vol     *cachecore.Volume
	// rotted: the test damaged cache data on purpose (persist.Check would
	// report it).
	rotted bool
}

func cacheMediaSize(segments int) int64 {
	return persist.SegmentsOffset + int64(segments)*testSegSize
}

// newRig formats a fresh cache and adds one volume. The backing device
// starts with the content of initial (nil: zeroes).
func newRig(t testing.TB, o rigOptions, initial *backend.Memory) *rig {
	t.Helper()
	o.fill()
	r := &rig{t: t, opts: o}
	r.media, r.store = newStore(t, o)
	var err error
	if initial == nil {
		initial = backend.NewMemory(o.BackingSize)
	}
	r.mem = initial
	r.backing = backend.NewFaulty(r.mem)
	ctx := context.Background()
	r.cache, err = cachecore.Open(ctx, r.store, o.Cfg)
	if err != nil {
		t.Fatalf("cachecore.Open: %v", err)
	}
	r.vol, err = r.cache.AddVolume(ctx, testVolName, r.backing, o.VC)
	if err != nil {
		r.cache.Close(ctx)
		t.Fatalf("AddVolume: %v", err)
	}
	return r
}

// newStore formats a crash media for o (o must be filled).
func newStore(t testing.TB, o rigOptions) (*persist.CrashMedia, *persist.Store) {
	t.Helper()
	media := persist.NewCrashMedia(cacheMediaSize(o.Segments), o.Unit)
	media.SetWholeFlush(o.WholeFlush)
	store, err := persist.Format(media, persist.FormatOptions{SegmentSize: testSegSize, BlockSize: o.CacheBlock, DataCRC: o.DataCRC})
	if err != nil {
		t.Fatalf("persist.Format: %v", err)
	}
	return media, store
}

// close closes the cache (idempotent).
func (r *rig) close() {
	if r.cache == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.cache.Close(ctx); err != nil {
		r.t.Errorf("Cache.Close: %v", err)
	}
	// Every test ends with a check of the whole structure: the engine's
	// in-memory state against itself and the log, and the cache file.
	if err := r.cache.CheckInvariants(); err != nil {
		r.t.Errorf("after Close: %v", err)
	}
	if r.cache.Err() == nil && !r.rotted {
		// A fresh store: r.store is the one formatted first, and a test
		// may have reopened the media since.
		s, err := persist.Open(r.media)
		if err != nil {
			r.t.Errorf("after Close: persist.Open: %v", err)
		} else if problems, err := persist.Check(s); err != nil || len(problems) != 0 {
			r.t.Errorf("after Close: persist.Check: %v %q", err, problems)
		}
	}
	r.cache = nil
}

// openImage opens a cache file image with a backing device image, as after a
// restart, and returns the volume.
func openImage(ctx context.Context, media persist.Media, backing backend.Device, o rigOptions) (*cachecore.Cache, *cachecore.Volume, error) {
	store, err := persist.Open(media)
	if err != nil {
		return nil, nil, fmt.Errorf("persist.Open: %w", err)
	}
	c, err := cachecore.Open(ctx, store, o.Cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("cachecore.Open: %w", err)
	}
	v, err := c.AddVolume(ctx, testVolName, backing, o.VC)
	if err != nil {
		c.Close(ctx)
		return nil, nil, fmt.Errorf("AddVolume: %w", err)
	}
	return c, v, nil
}

// ---- tagged data ----
//
// Every 512-byte sector a test writes carries its write id and its own
// sector number in the first 16 bytes, followed by bytes derived from both.
// So a read tells which write a sector came from and whether it belongs to
// this sector at all; id 0 is reserved for "all zeroes" (never written or
// discarded).

func splitmix(x uint64) uint64 {
	x += 0x9E3779B97F4A7C15
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
	x = (x ^ (x >> 27)) * 0x94D049BB133111EB
	return x ^ (x >> 31)
}

// tagSector fills one sector with the tag of write id at sector s.
func tagSector(p []byte, id uint64, s int64) {
	binary.LittleEndian.PutUint64(p[0:], id)
	binary.LittleEndian.PutUint64(p[8:], uint64(s))
	x := id*0x100000001B3 ^ uint64(s)
	for i := 16; i < sector; i += 8 {
		x = splitmix(x)
		binary.LittleEndian.PutUint64(p[i:], x)
	}
}

// tagged returns n bytes at off tagged with write id.
func tagged(id uint64, off int64, n int) []byte {
	p := make([]byte, n)
	for i := 0; i < n; i += sector {
		tagSector(p[i:i+sector], id, (off+int64(i))/sector)
	}
	return p
}

var zeroSector = make([]byte, sector)

// decodeSector returns the write id a sector at sector number s holds: 0 for
// zeroes, or an error when the bytes are no write's data for this sector.
func decodeSector(p []byte, s int64) (uint64, error) {
	if bytes.Equal(p, zeroSector) {
		return 0, nil
	}
	id := binary.LittleEndian.Uint64(p)
	if got := int64(binary.LittleEndian.Uint64(p[8:])); got != s {
		return 0, fmt.Errorf("sector %d holds data of sector %d (write %d)", s, got, id)
	}
	want := make([]byte, sector)
	tagSector(want, id, s)
	if !bytes.Equal(p, want) {
		return 0, fmt.Errorf("sector %d: bytes are neither zero nor write %d's data (torn or corrupt)", s, id)
	}
	return id, nil
}

// mustOK fails the test on err.
func mustOK(t testing.TB, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}
