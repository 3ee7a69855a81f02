package cachecore

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/persist"
)

// TestMediaFailureAutoPolicy: after a cache media fault, a volume without
// dirty data continues on its backing device, one with dirty data fails
// with ErrMedium, the goroutines exit and Close returns (invariant 7).
func TestMediaFailureAutoPolicy(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ctx := context.Background()
	r := newItRig(t, 16, 8<<20, Config{}, VolumeConfig{})
	// Writeback to the writeback volume parks at a gate, so its data stays
	// dirty.
	faulty := backend.NewFaulty(r.dev)
	faulty.Gate(backend.OpWrite, backend.Range{Off: 0, Len: 8 << 20})
	r.vol.dev = faulty
	clean, err := r.cache.AddVolume(ctx, "clean", backend.NewMemory(4<<20), VolumeConfig{Mode: ModeWritethrough})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{7}, 8192)
	if err := r.vol.WriteAt(ctx, data, 0, true); err != nil {
		t.Fatal(err)
	}
	if err := clean.WriteAt(ctx, data, 0, true); err != nil {
		t.Fatal(err)
	}
	if r.vol.Stats().DirtyBytes == 0 {
		t.Fatal("writeback volume has no dirty data")
	}
	r.media.FailAfter(0, errors.New("injected"))
	// The next commit hits the fault and retires the cache.
	err = r.vol.WriteAt(ctx, data, 8192, true)
	if !errors.Is(err, blk.ErrMedium) {
		t.Fatalf("write on failing media: %v, want ErrMedium", err)
	}
	if r.cache.Err() == nil || !r.cache.Stats().Failed {
		t.Fatal("cache not retired after a media fault")
	}
	if err := r.vol.ReadAt(ctx, make([]byte, 4096), 0); !errors.Is(err, blk.ErrMedium) {
		t.Fatalf("read of a volume with dirty data in a failed cache: %v, want ErrMedium", err)
	}
	got := make([]byte, 8192)
	if err := clean.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("clean volume read after failure: %v", err)
	}
	if err := clean.WriteAt(ctx, bytes.Repeat([]byte{9}, 4096), 0, false); err != nil {
		t.Fatalf("clean volume write after failure: %v", err)
	}
	if err := clean.Flush(ctx); err != nil {
		t.Fatalf("clean volume flush after failure: %v", err)
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r.cache.Close(cctx)
}

func TestMediaFailureFailPolicy(t *testing.T) {
	ctx := context.Background()
	r := newItRig(t, 16, 8<<20, Config{OnCacheFailure: FailFail}, VolumeConfig{Mode: ModeWritearound})
	r.media.FailAfter(0, errors.New("injected"))
	r.cache.fail("test", persist.ErrMediaFault)
	if err := r.vol.ReadAt(ctx, make([]byte, 4096), 0); !errors.Is(err, blk.ErrMedium) {
		t.Fatalf("read with policy fail: %v", err)
	}
}

// TestRemoveVolumeDrainsAndForgets: RemoveVolume writes back dirty data
// (progress reaches zero) and a new volume never sees the old cache data.
func TestRemoveVolumeDrainsAndForgets(t *testing.T) {
	ctx := context.Background()
	r := newItRig(t, 32, 8<<20, Config{Writeback: WritebackConfig{IdleAfter: time.Hour}}, VolumeConfig{})
	data := bytes.Repeat([]byte{5}, 64<<10)
	for i := int64(0); i < 16; i++ {
		if err := r.vol.WriteAt(ctx, data, i*(64<<10), false); err != nil {
			t.Fatal(err)
		}
	}
	var last Progress
	calls := 0
	if err := r.cache.RemoveVolume(ctx, "v", func(p Progress) { last = p; calls++ }); err != nil {
		t.Fatal(err)
	}
	if calls == 0 || last.DirtyBytes != 0 || last.StartDirtyBytes == 0 {
		t.Fatalf("progress %d calls, last %+v", calls, last)
	}
	got := make([]byte, len(data))
	r.dev.ReadAt(ctx, got, 15*(64<<10))
	if !bytes.Equal(got, data) {
		t.Fatal("dirty data not written back by RemoveVolume")
	}
	if err := r.vol.ReadAt(ctx, got, 0); !errors.Is(err, blk.ErrNotReady) {
		t.Fatalf("I/O on a removed volume: %v", err)
	}
	dev2 := backend.NewMemory(8 << 20)
	v2, err := r.cache.AddVolume(ctx, "w", dev2, VolumeConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if v2.st.id == r.vol.st.id {
		t.Fatal("volume id reused while its keys are still in the log")
	}
	if err := v2.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, make([]byte, len(got))) {
		t.Fatal("new volume sees data of the removed one")
	}
}

func TestAddVolumeRefusesSmallerDevice(t *testing.T) {
	ctx := context.Background()
	r := newItRig(t, 16, 8<<20, Config{}, VolumeConfig{})
	if err := r.vol.WriteAt(ctx, make([]byte, 4096), 0, true); err != nil {
		t.Fatal(err)
	}
	r.cache.Close(ctx)
	st, err := persist.Open(r.media)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Open(ctx, st, Config{})
	if err != nil {
		t.Fatal(err)
	}
	r.cache = c
	if _, err := c.AddVolume(ctx, "v", backend.NewMemory(4<<20), VolumeConfig{}); err == nil {
		t.Fatal("a backing device smaller than the recorded size was accepted")
	}
	if _, err := c.AddVolume(ctx, "v", backend.NewMemory(8<<20), VolumeConfig{}); err != nil {
		t.Fatalf("the right device was refused: %v", err)
	}
}

// TestFullCacheBackPressure: a tiny cache with slow writeback takes more
// dirty data than it holds; writes wait for writeback and GC instead of
// failing, and everything reads back.
func TestFullCacheBackPressure(t *testing.T) {
	ctx := context.Background()
	r := newItRig(t, 8, 16<<20, Config{Writeback: WritebackConfig{IdleAfter: time.Hour}}, VolumeConfig{})
	ref := backend.NewMemory(16 << 20)
	data := make([]byte, 256<<10)
	for i := int64(0); i < 32; i++ { // 8 MiB of dirty writes into a 1 MiB cache
		fillPattern(data, uint64(i))
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		if err := r.vol.WriteAt(wctx, data, i*int64(len(data)), false); err != nil {
			cancel()
			t.Fatalf("write %d: %v", i, err)
		}
		cancel()
		ref.WriteAt(ctx, data, i*int64(len(data)))
	}
	got := make([]byte, 16<<20)
	want := make([]byte, 16<<20)
	if err := r.vol.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	ref.ReadAt(ctx, want, 0)
	if !bytes.Equal(got, want) {
		t.Fatal("data differs after back-pressure")
	}
	vs := r.vol.Stats()
	if r.cache.Stats().DeferredWrites == 0 && vs.BypassedRequests["full"] == 0 {
		t.Fatal("the cache never reported being full")
	}
	// Overwrites of dirty data must take the cache path: with writeback
	// slower than the writes, they wait for space.
	for i := 0; i < 24; i++ {
		fillPattern(data, uint64(100+i))
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		if err := r.vol.WriteAt(wctx, data, 0, false); err != nil {
			cancel()
			t.Fatalf("overwrite %d: %v", i, err)
		}
		cancel()
		ref.WriteAt(ctx, data, 0)
	}
	if err := r.vol.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	ref.ReadAt(ctx, want, 0)
	if !bytes.Equal(got, want) {
		t.Fatal("data differs after overwrites in a full cache")
	}
}

// TestRetiredCacheDropsCleanOnReopen: a clean volume that continued on its
// backing device after a media failure must not see the old clean cache
// contents when the cache file is opened again.
func TestRetiredCacheDropsCleanOnReopen(t *testing.T) {
	ctx := context.Background()
	r := newItRig(t, 16, 8<<20, Config{}, VolumeConfig{Mode: ModeWritethrough})
	a := bytes.Repeat([]byte{0xA}, 4096)
	b := bytes.Repeat([]byte{0xB}, 4096)
	if err := r.vol.WriteAt(ctx, a, 0, true); err != nil {
		t.Fatal(err)
	}
	if err := r.vol.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if e := r.vol.Explain(0); e.State != "hit" || e.Dirty {
		t.Fatalf("writethrough block not cached clean: %+v", e)
	}
	r.cache.fail("test", persist.ErrMediaFault) // records the retirement while the media still works
	if err := r.vol.WriteAt(ctx, b, 0, true); err != nil {
		t.Fatalf("clean volume write after failure: %v", err)
	}
	r.reopen(nil)
	got := make([]byte, 4096)
	if err := r.vol.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, b) {
		t.Fatal("stale clean data from the retired cache returned after reopen")
	}
}

// TestCloseStopsEverything: after a workload with writeback, GC and kset
// commits in flight, Close leaves no goroutine behind.
func TestCloseStopsEverything(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	r := newItRig(t, 16, 8<<20, Config{GCPercent: 20}, VolumeConfig{})
	ref := backend.NewMemory(8 << 20)
	randomWorkload(t, r, ref, newTestRand(7), 150)
	cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.cache.Close(cctx); err != nil {
		t.Fatal(err)
	}
	if err := r.vol.WriteAt(context.Background(), make([]byte, 4096), 0, false); !errors.Is(err, blk.ErrNotReady) {
		t.Fatalf("write after Close: %v, want ErrNotReady", err)
	}
}

func TestPrefetchPromotes(t *testing.T) {
	ctx := context.Background()
	r := newItRig(t, 16, 8<<20, Config{}, VolumeConfig{})
	data := bytes.Repeat([]byte{0x5a}, 64<<10)
	r.dev.WriteAt(ctx, data, 1<<20)
	if e := r.vol.Explain(1 << 20); e.State != "miss" {
		t.Fatalf("before prefetch: %+v", e)
	}
	if err := r.vol.Prefetch(ctx, 1<<20, 64<<10); err != nil {
		t.Fatal(err)
	}
	for off := int64(1 << 20); off < 1<<20+64<<10; off += 4096 {
		if e := r.vol.Explain(off); e.State != "hit" || e.Dirty {
			t.Fatalf("after prefetch at %d: %+v", off, e)
		}
	}
	got := make([]byte, len(data))
	if err := r.vol.ReadAt(ctx, got, 1<<20); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read after prefetch: %v", err)
	}
	if s := r.vol.Stats(); s.ReadHits != 1 {
		t.Fatalf("read after prefetch not a full hit: %+v", s)
	}
	if err := r.vol.Prefetch(ctx, 1, 512); !errors.Is(err, blk.ErrMisaligned) {
		t.Fatalf("misaligned prefetch: %v", err)
	}
}

// TestBadInputs: out-of-range and misaligned requests return the right
// sentinel errors and never panic.
func TestBadInputs(t *testing.T) {
	ctx := context.Background()
	r := newItRig(t, 16, 8<<20, Config{}, VolumeConfig{BlockSize: 4096})
	v := r.vol
	size := v.Size()
	type call struct {
		name string
		err  error
		want error
	}
	huge := int64(1) << 62
	calls := []call{
		{"read negative", v.ReadAt(ctx, make([]byte, 4096), -4096), blk.ErrOutOfRange},
		{"read past end", v.ReadAt(ctx, make([]byte, 4096), size), blk.ErrOutOfRange},
		{"read misaligned", v.ReadAt(ctx, make([]byte, 512), 0), blk.ErrMisaligned},
		{"write misaligned off", v.WriteAt(ctx, make([]byte, 4096), 512, false), blk.ErrMisaligned},
		{"write huge off", v.WriteAt(ctx, make([]byte, 4096), huge, true), blk.ErrOutOfRange},
		{"discard overflow", v.Discard(ctx, 4096, huge), blk.ErrOutOfRange},
		{"discard negative", v.Discard(ctx, 0, -4096), blk.ErrOutOfRange},
		{"prefetch past end", v.Prefetch(ctx, size-4096, 8192), blk.ErrOutOfRange},
		{"caw lengths", v.CompareAndWrite(ctx, 0, make([]byte, 4096), make([]byte, 8192), false), blk.ErrMisaligned},
		{"caw past end", v.CompareAndWrite(ctx, size, make([]byte, 4096), make([]byte, 4096), false), blk.ErrOutOfRange},
	}
	for _, c := range calls {
		if !errors.Is(c.err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, c.err, c.want)
		}
	}
	if err := v.ReadAt(ctx, nil, size); err != nil {
		t.Errorf("empty read at the end: %v", err)
	}
	if err := v.SetConfig(VolumeConfig{BlockSize: 512}); err == nil {
		t.Error("block size changed live")
	}
	if err := v.SetMode(ctx, "bogus", nil); err == nil {
		t.Error("bogus mode accepted")
	}
	if _, err := r.cache.AddVolume(ctx, "v", backend.NewMemory(1<<20), VolumeConfig{}); err == nil {
		t.Error("duplicate volume name accepted")
	}
	if _, err := r.cache.AddVolume(ctx, "tiny", backend.NewMemory(100), VolumeConfig{}); err == nil {
		t.Error("device smaller than a block accepted")
	}
	if err := r.cache.SetConfig(Config{GCPercent: 95}); err == nil {
		t.Error("gc percent 95 accepted")
	}
}

// TestReplayDropsCorruptCleanData: with DataCRC, a clean key whose cache
// data was corrupted is dropped at replay; the read then comes from the
// backing device.
func TestReplayDropsCorruptCleanData(t *testing.T) {
	ctx := context.Background()
	m := persist.NewCrashMedia(persist.SegmentsOffset+16*itSegSize, persist.TearDAX)
	st, err := persist.Format(m, persist.FormatOptions{SegmentSize: itSegSize, DataCRC: true})
	if err != nil {
		t.Fatal(err)
	}
	c, err := Open(ctx, st, Config{})
	if err != nil {
		t.Fatal(err)
	}
	dev := backend.NewMemory(4 << 20)
	good := bytes.Repeat([]byte{0x33}, 4096)
	dev.WriteAt(ctx, good, 8192)
	v, err := c.AddVolume(ctx, "v", dev, VolumeConfig{})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if err := v.ReadAt(ctx, got, 8192); err != nil { // miss: fills a clean key
		t.Fatal(err)
	}
	c.waitFills()
	e := v.Explain(8192)
	if e.State != "hit" || e.Dirty {
		t.Fatalf("fill did not cache: %+v", e)
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	off := st.DataOffset(e.Pos)
	if err := m.WriteAt(bytes.Repeat([]byte{0xEE}, 512), off); err != nil {
		t.Fatal(err)
	}
	if err := m.Persist(off, 512); err != nil {
		t.Fatal(err)
	}
	st2, err := persist.Open(m)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := Open(ctx, st2, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close(ctx)
	v2, err := c2.AddVolume(ctx, "v", dev, VolumeConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if e := v2.Explain(8192); e.State != "miss" {
		t.Fatalf("corrupt clean key replayed: %+v", e)
	}
	if err := v2.ReadAt(ctx, got, 8192); err != nil || !bytes.Equal(got, good) {
		t.Fatalf("read after dropping the corrupt key: %v", err)
	}
}
