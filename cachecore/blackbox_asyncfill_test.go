package cachecore_test

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/persist"
)

// Read misses are filled asynchronously: the host gets its data when the
// backing read returns, and the fill worker writes and journals it later
// (C7 is checked when it installs).

// gatedMedia holds every write to the cache media that carries a given
// payload (the data of one block: a fill of that block) until released.
type gatedMedia struct {
	persist.Media
	payload []byte
	entered chan struct{} // closed when the first gated write arrives
	release chan struct{} // closed by the test
	once    sync.Once
	// timedOut: the gate opened by itself (see WriteAt).
	mu       sync.Mutex
	timedOut bool
}

func newGatedMedia(m persist.Media, payload []byte) *gatedMedia {
	return &gatedMedia{Media: m, payload: payload, entered: make(chan struct{}), release: make(chan struct{})}
}

func (g *gatedMedia) WriteAt(p []byte, off int64) error {
	if bytes.Contains(p, g.payload) {
		g.once.Do(func() { close(g.entered) })
		select {
		case <-g.release:
		case <-time.After(20 * time.Second):
			// Only reached when the read waits for its fill's media write
			// (a synchronous fill): open, so the test fails instead of
			// hanging.
			g.mu.Lock()
			g.timedOut = true
			g.mu.Unlock()
		}
	}
	return g.Media.WriteAt(p, off)
}

func (g *gatedMedia) open() { close(g.release) }

func (g *gatedMedia) gaveUp() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.timedOut
}

// gatedFillRig is a cache on a gated media with one volume whose backing
// device holds write oldID at block blk.
func gatedFillRig(t *testing.T, mode cachecore.Mode, blk int64, oldID uint64) (*gatedMedia, *cachecore.Cache, *cachecore.Volume) {
	t.Helper()
	const bs = 4096
	o := rigOptions{BackingSize: 16 << 20, VC: cachecore.VolumeConfig{Mode: mode, BlockSize: bs}}
	o.fill()
	crash := persist.NewCrashMedia(cacheMediaSize(o.Segments), o.Unit)
	g := newGatedMedia(crash, tagged(oldID, blk, bs))
	store, err := persist.Format(g, persist.FormatOptions{SegmentSize: testSegSize, BlockSize: o.CacheBlock})
	mustOK(t, "format", err)
	ctx := context.Background()
	c, err := cachecore.Open(ctx, store, o.Cfg)
	mustOK(t, "open", err)
	t.Cleanup(func() {
		if !g.gaveUp() {
			select {
			case <-g.release:
			default:
				g.open()
			}
		}
		c.Close(context.Background())
	})
	v, err := c.AddVolume(ctx, testVolName, backingWith(o.BackingSize, map[int64]uint64{blk: oldID}, bs), o.VC)
	mustOK(t, "add volume", err)
	return g, c, v
}

// TestBlackboxReadMissReturnsBeforeFill: a read miss returns its data
// while the write of its fill into the cache media is held; the range is a
// placeholder until the fill is installed, then a hit.
func TestBlackboxReadMissReturnsBeforeFill(t *testing.T) {
	const blk, bs = int64(1 << 20), int64(4096)
	g, c, v := gatedFillRig(t, cachecore.ModeWriteback, blk, 7)
	if id := readID(t, v, blk, bs); id != 7 {
		t.Fatalf("miss read write %d, want 7", id)
	}
	if g.gaveUp() {
		t.Fatal("the read miss returned only after its fill was written to the cache media")
	}
	if e := v.Explain(blk); e.State != "placeholder" {
		t.Fatalf("while the fill is held: %+v, want the placeholder", e)
	}
	<-g.entered // the fill worker is writing it
	g.open()
	cachecore.WaitFills(c)
	if e := v.Explain(blk); e.State != "hit" || e.Dirty {
		t.Fatalf("after the fill: %+v, want a clean hit", e)
	}
	if s := v.Stats(); s.FillBytes != uint64(bs) || s.FillsDropped != 0 {
		t.Fatalf("fill bytes %d dropped %d, want %d and 0", s.FillBytes, s.FillsDropped, bs)
	}
	if id := readID(t, v, blk, bs); id != 7 {
		t.Fatalf("hit read write %d, want 7", id)
	}
	if s := v.Stats(); s.ReadHits != 1 {
		t.Fatalf("%d read hits after the fill, want 1", s.ReadHits)
	}
}

// TestBlackboxWriteBeatsLateFill: a write that lands while the fill of an
// earlier read miss of the same block is still on its way (held at the
// media) wins: the late fill finds its placeholder gone and is dropped,
// whether the write was cached (writeback) or bypassed the cache to the
// backing device (writearound: tombstone, backing write), and reads return
// the new data, also after a restart from the cache file.
func TestBlackboxWriteBeatsLateFill(t *testing.T) {
	for _, mode := range []cachecore.Mode{cachecore.ModeWriteback, cachecore.ModeWritearound} {
		t.Run(string(mode), func(t *testing.T) {
			const blk, bs = int64(1 << 20), int64(4096)
			ctx := context.Background()
			g, c, v := gatedFillRig(t, mode, blk, 7)
			if id := readID(t, v, blk, bs); id != 7 {
				t.Fatalf("miss read write %d, want 7", id)
			}
			mustOK(t, "write", v.WriteAt(ctx, tagged(9, blk, int(bs)), blk, false))
			<-g.entered
			g.open()
			cachecore.WaitFills(c)
			if s := v.Stats(); s.FillBytes != 0 {
				t.Fatalf("the late fill was installed (%d bytes)", s.FillBytes)
			}
			if id := readID(t, v, blk, bs); id != 9 {
				t.Fatalf("read after the late fill: write %d, want 9", id)
			}
			cachecore.WaitFills(c)
			mustOK(t, "flush", v.Flush(ctx))
			if id := readID(t, v, blk, bs); id != 9 {
				t.Fatalf("read after the flush: write %d, want 9", id)
			}
			closeAndCheck(t, c)
		})
	}
}

// TestBlackboxFillQueueFullDropsFills: when the fill worker is behind
// (held here) and its queue is full, read misses return their data anyway
// and their fills are dropped (counted) with their placeholders removed;
// once the worker goes on, the queued fills are installed.
func TestBlackboxFillQueueFullDropsFills(t *testing.T) {
	const blk, bs = int64(0), int64(4096)
	ctx := context.Background()
	g, c, v := gatedFillRig(t, cachecore.ModeWriteback, blk, 7)
	readID(t, v, blk, bs)
	<-g.entered // the worker is held with the first fill
	// Twelve 1 MiB misses: the queue takes 8 MiB, the last four are
	// dropped.
	p := make([]byte, 1<<20)
	for i := int64(1); i <= 12; i++ {
		mustOK(t, "read", v.ReadAt(ctx, p, i<<20))
	}
	if s := v.Stats(); s.FillsDropped != 4 {
		t.Fatalf("%d fills dropped, want 4", s.FillsDropped)
	}
	if e := v.Explain(12 << 20); e.State != "miss" {
		t.Fatalf("a dropped fill's range: %+v, want a miss (no placeholder left)", e)
	}
	if e := v.Explain(1 << 20); e.State != "placeholder" {
		t.Fatalf("a queued fill's range: %+v, want its placeholder", e)
	}
	g.open()
	cachecore.WaitFills(c)
	if s := v.Stats(); s.FillBytes == 0 {
		t.Fatalf("no fill installed: %+v", s)
	}
	closeAndCheck(t, c)
}

// closeAndCheck closes the cache and checks its structures (only a closed
// cache: background commits would race with the check).
func closeAndCheck(t *testing.T, c *cachecore.Cache) {
	t.Helper()
	mustOK(t, "close", c.Close(context.Background()))
	if err := c.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}
