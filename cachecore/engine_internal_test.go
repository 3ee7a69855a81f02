package cachecore

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/persist"
)

const itSegSize = 128 << 10

type itRig struct {
	t     *testing.T
	media *persist.CrashMedia
	cache *Cache
	dev   *backend.Memory
	vol   *Volume
	cfg   Config
	vc    VolumeConfig
}

func newItRig(t *testing.T, segments int, devSize int64, cfg Config, vc VolumeConfig) *itRig {
	t.Helper()
	return newItRigFormat(t, segments, devSize, cfg, vc, false)
}

// newItRigCRC is newItRig on a cache formatted with data CRCs.
func newItRigCRC(t *testing.T, segments int, devSize int64, cfg Config, vc VolumeConfig) *itRig {
	t.Helper()
	return newItRigFormat(t, segments, devSize, cfg, vc, true)
}

func newItRigFormat(t *testing.T, segments int, devSize int64, cfg Config, vc VolumeConfig, dataCRC bool) *itRig {
	t.Helper()
	m := persist.NewCrashMedia(persist.SegmentsOffset+int64(segments)*itSegSize, persist.TearDAX)
	st, err := persist.Format(m, persist.FormatOptions{SegmentSize: itSegSize, DataCRC: dataCRC})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.JournalFlushInterval == 0 {
		cfg.JournalFlushInterval = 5 * time.Millisecond
	}
	c, err := Open(context.Background(), st, cfg)
	if err != nil {
		t.Fatal(err)
	}
	dev := backend.NewMemory(devSize)
	v, err := c.AddVolume(context.Background(), "v", dev, vc)
	if err != nil {
		t.Fatal(err)
	}
	r := &itRig{t: t, media: m, cache: c, dev: dev, vol: v, cfg: cfg, vc: vc}
	t.Cleanup(func() { r.cache.Close(context.Background()) })
	return r
}

// reopen closes the cache and opens the same media again. inspect (if not
// nil) sees the replayed state of the volume right after replay, before
// the background goroutines start (GC could otherwise evict clean keys
// first) and before the volume is attached.
func (r *itRig) reopen(inspect func(vs *volState)) {
	r.t.Helper()
	if err := r.cache.Close(context.Background()); err != nil {
		r.t.Fatal(err)
	}
	st, err := persist.Open(r.media)
	if err != nil {
		r.t.Fatal(err)
	}
	var replayed func(*Cache)
	if inspect != nil {
		replayed = func(c *Cache) { inspect(c.vols[r.vol.st.id].Load()) }
	}
	c, err := open(context.Background(), st, r.cfg, replayed)
	if err != nil {
		r.t.Fatal(err)
	}
	v, err := c.AddVolume(context.Background(), "v", r.dev, r.vc)
	if err != nil {
		r.t.Fatal(err)
	}
	r.cache, r.vol = c, v
}

// snapshotIndex renders a volume's index (without the in-memory hit
// marks, which a replay does not restore).
func snapshotIndex(vs *volState) map[uint64][]extent {
	out := make(map[uint64][]extent)
	vs.idx.each(func(n uint64, s *stripe) {
		s.mu.Lock()
		if len(s.list.ext) > 0 {
			out[n] = append([]extent(nil), s.list.ext...)
			for i := range out[n] {
				out[n][i].hits = 0
			}
		}
		s.mu.Unlock()
	})
	return out
}

func fillPattern(p []byte, id uint64) {
	for i := range p {
		p[i] = byte(id*131 + uint64(i/512)*7)
	}
}

// randomWorkload runs writes, discards, reads, flushes and mode changes
// against the rig and a reference device, checking every read.
func randomWorkload(t *testing.T, r *itRig, ref *backend.Memory, rng *rand.Rand, ops int) {
	ctx := context.Background()
	size := r.vol.Size()
	bs := int64(r.vol.BlockSize())
	modes := []Mode{ModeWriteback, ModeWriteback, ModeWritethrough, ModeWritearound, ModeWriteonly, ModePassthrough}
	for i := 0; i < ops; i++ {
		off := rng.Int64N(size/bs) * bs
		n := min((1+rng.Int64N(32))*bs, size-off)
		switch k := rng.IntN(100); {
		case k < 45:
			p := make([]byte, n)
			fillPattern(p, uint64(i))
			if err := r.vol.WriteAt(ctx, p, off, rng.IntN(8) == 0); err != nil {
				t.Fatalf("op %d write: %v", i, err)
			}
			ref.WriteAt(ctx, p, off)
		case k < 75:
			got := make([]byte, n)
			if err := r.vol.ReadAt(ctx, got, off); err != nil {
				t.Fatalf("op %d read: %v", i, err)
			}
			want := make([]byte, n)
			ref.ReadAt(ctx, want, off)
			if !bytes.Equal(got, want) {
				t.Fatalf("op %d read [%d,+%d) differs from the reference", i, off, n)
			}
		case k < 85:
			if err := r.vol.Discard(ctx, off, n); err != nil {
				t.Fatalf("op %d discard: %v", i, err)
			}
			ref.Discard(ctx, off, n)
		case k < 95:
			if err := r.vol.Flush(ctx); err != nil {
				t.Fatalf("op %d flush: %v", i, err)
			}
		default:
			m := modes[rng.IntN(len(modes))]
			if err := r.vol.SetMode(ctx, m, nil); err != nil {
				t.Fatalf("op %d set mode %s: %v", i, m, err)
			}
		}
	}
}

// TestReplayRebuildsIndex: after a workload (with GC and writeback
// running) and a clean close, replay must rebuild exactly the index that
// was in memory (invariant 6).
func TestReplayRebuildsIndex(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := newItRig(t, 24, 8<<20, Config{GCPercent: 30}, VolumeConfig{})
			ref := backend.NewMemory(8 << 20)
			rng := rand.New(rand.NewPCG(seed, 99))
			randomWorkload(t, r, ref, rng, 400)
			if err := r.cache.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			before := snapshotIndex(r.vol.st)
			for n, l := range before {
				for _, x := range l {
					if x.kind == extEmpty {
						t.Fatalf("placeholder left in stripe %d after close: %+v", n, x)
					}
				}
			}
			dirtyBefore := r.vol.st.dirtyKeys.Load()
			r.reopen(func(vs *volState) {
				after := snapshotIndex(vs)
				if fmt.Sprint(before) != fmt.Sprint(after) {
					t.Fatalf("replayed index differs\nmemory: %v\nreplay: %v", before, after)
				}
				if got := vs.dirtyKeys.Load(); got != dirtyBefore {
					t.Fatalf("dirty keys %d after replay, %d before", got, dirtyBefore)
				}
			})
			// And the data is still right.
			got := make([]byte, 8<<20)
			want := make([]byte, 8<<20)
			if err := r.vol.ReadAt(context.Background(), got, 0); err != nil {
				t.Fatal(err)
			}
			ref.ReadAt(context.Background(), want, 0)
			if !bytes.Equal(got, want) {
				t.Fatal("data differs after reopen")
			}
		})
	}
}

func TestBypassTracker(t *testing.T) {
	const size = 10 << 40 // 10 TiB: pages only where used
	tr := newBypassTracker(size)
	if tr.pages.len() > 400 {
		t.Fatalf("%d page pointers for 10 TiB", tr.pages.len())
	}
	first, last := chunkRange(3<<40, 96<<20) // 3 chunks
	if last-first != 2 {
		t.Fatalf("chunk range %d..%d", first, last)
	}
	if tr.active(first, last) {
		t.Fatal("fresh tracker active")
	}
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 1000; j++ {
				tr.inc(first, last)
				if !tr.active(first, first) {
					t.Error("chunk inactive while a write is counted on it")
					return
				}
				tr.dec(first, last)
			}
		}()
	}
	wg.Wait()
	for c := first; c <= last; c++ {
		if n := tr.count(c); n != 0 {
			t.Fatalf("chunk %d count %d after balanced inc/dec", c, n)
		}
	}
	allocated := 0
	for i := range tr.pages.len() {
		if tr.pages.page(uint64(i), false) != nil {
			allocated++
		}
	}
	if allocated != 1 {
		t.Fatalf("%d pages allocated, want 1", allocated)
	}
	tr.inc(last, last)
	if !tr.active(first, last) || tr.active(first, first) {
		t.Fatal("activity not limited to the counted chunk")
	}
}

// TestReadMissBypassRace: a read miss whose backing read returns old data
// while a bypass write is in flight must not cache it (invariant 4).
func TestReadMissBypassRace(t *testing.T) {
	r := newItRig(t, 16, 8<<20, Config{}, VolumeConfig{Mode: ModeWritearound})
	ctx := context.Background()
	old := bytes.Repeat([]byte{1}, 4096)
	r.dev.WriteAt(ctx, old, 0)
	gate := &gatedDevice{Device: r.dev, readStarted: make(chan struct{}), release: make(chan struct{})}
	r.vol.dev = gate
	readDone := make(chan []byte)
	go func() {
		p := make([]byte, 4096)
		if err := r.vol.ReadAt(ctx, p, 0); err != nil {
			t.Error(err)
		}
		readDone <- p
	}()
	<-gate.readStarted // the miss holds a placeholder and has read old data
	newData := bytes.Repeat([]byte{2}, 4096)
	if err := r.vol.WriteAt(ctx, newData, 0, false); err != nil {
		t.Fatal(err)
	}
	close(gate.release)
	if p := <-readDone; !bytes.Equal(p, old) && !bytes.Equal(p, newData) {
		t.Fatal("read returned neither value")
	}
	p := make([]byte, 4096)
	if err := r.vol.ReadAt(ctx, p, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, newData) {
		t.Fatal("stale data cached by a miss that raced a bypass write")
	}

	// Fills are installed by a worker: the first order's must be done
	// before the count below is taken, or it may count itself late.
	r.cache.waitFills()

	// Second order: the bypass write is in flight (counted) when the miss
	// starts: the miss must cache nothing.
	gate2 := &gatedDevice{Device: r.dev, writeStarted: make(chan struct{}), release: make(chan struct{})}
	r.vol.dev = gate2
	wdone := make(chan struct{})
	go func() {
		defer close(wdone)
		if err := r.vol.WriteAt(ctx, bytes.Repeat([]byte{3}, 4096), 8192, false); err != nil {
			t.Error(err)
		}
	}()
	<-gate2.writeStarted
	// On a failure below the gated write must still end, or the rig's
	// Close waits for it forever.
	released := false
	defer func() {
		if !released {
			close(gate2.release)
		}
	}()
	races := r.vol.Stats().ReadBypassRaces
	r.vol.dev = r.dev
	if err := r.vol.ReadAt(ctx, p, 16384); err != nil {
		t.Fatal(err)
	}
	if r.vol.Stats().ReadBypassRaces != races+1 {
		t.Fatal("read miss during an in-flight bypass write was not counted as a race")
	}
	if e := r.vol.Explain(16384); e.State != "miss" {
		t.Fatalf("read miss during a bypass write cached data: %+v", e)
	}
	close(gate2.release)
	released = true
	<-wdone
}

type gatedDevice struct {
	backend.Device
	once         sync.Once
	readStarted  chan struct{}
	writeStarted chan struct{}
	release      chan struct{}
}

func (g *gatedDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := g.Device.ReadAt(ctx, p, off); err != nil {
		return err
	}
	if g.readStarted != nil {
		g.once.Do(func() { close(g.readStarted); <-g.release })
	}
	return nil
}

func (g *gatedDevice) WriteAt(ctx context.Context, p []byte, off int64) error {
	if g.writeStarted != nil {
		g.once.Do(func() { close(g.writeStarted); <-g.release })
	}
	return g.Device.WriteAt(ctx, p, off)
}

// TestLazyIndexLargeVolume: a 10 TiB volume allocates stripes only where
// it is written.
func TestLazyIndexLargeVolume(t *testing.T) {
	x := newVolIndex(10 << 40)
	if x.pages.len() != 2560 {
		t.Fatalf("%d pages", x.pages.len())
	}
	x.get(2_600_000)
	n := 0
	x.each(func(uint64, *stripe) { n++ })
	if n != 1 {
		t.Fatalf("%d stripes allocated", n)
	}
}

func newTestRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 1)) }

// TestReadCountsHitsOnceAfterStaleRetry: a read whose later hit finds its
// segment reclaimed (the generation moved) drops the stale entry and tries
// again; the hits it copied before the stale one must not be counted twice.
func TestReadCountsHitsOnceAfterStaleRetry(t *testing.T) {
	vc := DefaultVolumeConfig()
	vc.Mode = ModeWritethrough
	r := newItRig(t, 16, 1<<20, Config{}, vc)
	ctx := context.Background()
	buf := make([]byte, 8192)
	fillPattern(buf, 1)
	if err := r.vol.WriteAt(ctx, buf, 0, false); err != nil {
		t.Fatal(err)
	}
	st := r.vol.st.idx.peek(0)
	st.mu.Lock()
	moved := false
	for k := range st.list.ext {
		x := &st.list.ext[k]
		if x.hasData() && x.end() > 4096 && x.start < 8192 {
			if x.start < 4096 {
				// one extent for both blocks: split it so the first block
				// stays a good hit
				second := *x
				second.start, second.length, second.segOff = 4096, x.end()-4096, x.segOff+(4096-x.start)
				x.length = 4096 - x.start
				st.list.replace(second.start, second.end(), &second)
				x = &st.list.ext[k+1]
			}
			// Older than its segment, as if GC had reclaimed and
			// reused the segment (a state the live checks accept for
			// clean data).
			if x.gen == 0 {
				t.Fatal("extent of generation 0")
			}
			x.gen--
			moved = true
			break
		}
	}
	st.mu.Unlock()
	if !moved {
		t.Fatal("no extent cached for the second block")
	}
	before := r.vol.Stats()
	got := make([]byte, 8192)
	if err := r.vol.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, buf) {
		t.Fatal("read returned wrong data")
	}
	after := r.vol.Stats()
	hit, miss := after.ReadHitBytes-before.ReadHitBytes, after.ReadMissBytes-before.ReadMissBytes
	if hit != 4096 || miss != 4096 {
		t.Fatalf("read of 8 KiB counted %d hit bytes and %d miss bytes, want 4096 and 4096", hit, miss)
	}
}

// TestGCWaitsForCleanMarking: between writeback persisting dirty_tail and
// marking the written-back keys clean in the index, GC must not pass those
// keys: it would free segments that extents still marked dirty point at.
func TestGCWaitsForCleanMarking(t *testing.T) {
	vc := DefaultVolumeConfig()
	vc.SequentialCutoff = 0
	r := newItRig(t, 32, 8<<20, Config{GCPercent: 90}, vc)
	ctx := context.Background()
	buf := make([]byte, 4096)
	// 256 blocks at a stride: eight segments' worth of data, so the data
	// heads move on and the first segments hold only keys' references.
	for i := range 256 {
		fillPattern(buf, uint64(i))
		if err := r.vol.WriteAt(ctx, buf, int64(i)*3*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.vol.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	var violations []string
	passed, ran := false, false
	// A background writeback pass may run the hook rather than Drain's:
	// it runs between dirty_tail and the clean marking all the same, and
	// Drain waits for that pass.
	hook := func() {
		once.Do(func() {
			ran = true
			for r.cache.gcStep() {
			}
			// cleanLSN is still the previous pass's end (or where the
			// cache opened): this pass's keys are not marked clean yet.
			passed = r.cache.store.KeyTail().LSN > r.cache.cleanLSN.Load()
			r.cache.checkIndexLive(func(f string, a ...any) { violations = append(violations, fmt.Sprintf(f, a...)) }, false)
		})
	}
	r.cache.knobs.afterDirtyTail.Store(&hook)
	if err := r.vol.Drain(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if !ran {
		t.Fatal("no writeback pass ran the hook: the dirty data was written back before it was set")
	}
	if len(violations) > 0 {
		t.Fatalf("GC ran between dirty_tail and the clean marking (key_tail moved: %v):\n%s", passed, strings.Join(violations, "\n"))
	}
	if passed {
		t.Fatal("GC passed keys writeback had not marked clean yet")
	}
	for i := range 256 {
		got := make([]byte, 4096)
		if err := r.vol.ReadAt(ctx, got, int64(i)*3*4096); err != nil {
			t.Fatal(err)
		}
		fillPattern(buf, uint64(i))
		if !bytes.Equal(got, buf) {
			t.Fatalf("block %d reads back wrong", i)
		}
	}
	// Closed, so quiescent: the reads above may have filled what GC
	// evicted, and the fills' ksets commit in the background.
	if err := r.cache.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.cache.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}
