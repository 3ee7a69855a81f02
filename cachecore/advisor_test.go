package cachecore_test

import (
	"context"
	"testing"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/persist"
)

type countingSampler struct{ calls, bytes int64 }

func (s *countingSampler) SampleRead(off, n int64) { s.calls++; s.bytes += n }

// Every read request reaches the advisor once, hits and misses alike, in
// cache blocks; the cache's curve has the references of all its volumes;
// a sampler set with SetReadSampler gets the calls instead.
func TestAdviceCountsEveryRead(t *testing.T) {
	ctx := context.Background()
	store, err := persist.Format(persist.NewCrashMedia(8<<20, persist.TearPage), persist.FormatOptions{SegmentSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	c, err := cachecore.Open(ctx, store, cachecore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	a, err := c.AddVolume(ctx, "a", backend.NewMemory(1<<20), cachecore.VolumeConfig{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.AddVolume(ctx, "b", backend.NewMemory(1<<20), cachecore.VolumeConfig{})
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 8192)
	for range 3 {
		// 512-byte aligned, spanning blocks 0, 1 and 2 of 4 KiB
		if err := a.ReadAt(ctx, p, 2048); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.ReadAt(ctx, p[:512], 0); err != nil {
		t.Fatal(err)
	}
	if got := a.Advice().Curve.References; got != 9 {
		t.Errorf("volume a: %d references, want 9 (3 reads of 3 blocks)", got)
	}
	if got := b.Advice().Curve.References; got != 1 {
		t.Errorf("volume b: %d references, want 1", got)
	}
	ad := c.Advice()
	if ad.Curve.References != 10 || ad.BlockSize != 4096 {
		t.Errorf("cache: %d references in blocks of %d, want 10 of 4096", ad.Curve.References, ad.BlockSize)
	}
	// GC lets 70 % of the segments fill, one of them the journal's.
	st := c.Stats()
	if want := uint64(int(st.Segments)*70/100-1) * uint64(store.SegmentDataSize()) / 4096; ad.CapacityBlocks != want || want == 0 {
		t.Errorf("capacity %d blocks, want %d", ad.CapacityBlocks, want)
	}
	s := &countingSampler{}
	a.SetReadSampler(s)
	if err := a.ReadAt(ctx, p, 0); err != nil {
		t.Fatal(err)
	}
	if s.calls != 1 || s.bytes != 8192 || a.Advice().Curve.References != 9 {
		t.Errorf("sampler got %d calls of %d bytes, advisor %d references", s.calls, s.bytes, a.Advice().Curve.References)
	}
}

// Reads from several goroutines feed the advisor while Advice is read
// (run with -race): every reference is counted once.
func TestAdviceConcurrentReads(t *testing.T) {
	ctx := context.Background()
	store, err := persist.Format(persist.NewCrashMedia(8<<20, persist.TearPage), persist.FormatOptions{SegmentSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	c, err := cachecore.Open(ctx, store, cachecore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	v, err := c.AddVolume(ctx, "a", backend.NewMemory(4<<20), cachecore.VolumeConfig{BlockSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	const readers, reads = 4, 300
	done := make(chan error, readers)
	for g := range readers {
		go func() {
			p := make([]byte, 4096)
			for i := range reads {
				if err := v.ReadAt(ctx, p, int64((g*reads+i)%1024)*4096); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	for range 20 {
		_ = v.Advice().Curve.HitRatio(100)
		_ = c.Advice().Curve.HitRatio(100)
	}
	for range readers {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if got := v.Advice().Curve.References; got != readers*reads {
		t.Errorf("%d references, want %d", got, readers*reads)
	}
}
