package cachecore_test

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/persist"
)

// fakeReplicator records shipments; hold makes waits block until released.
type fakeReplicator struct {
	mu      sync.Mutex
	ships   []uint64 // LSNs in Ship order
	recs    []cachecore.MirrorRecord
	trims   []uint64
	hold    chan struct{} // nil: waits return at once
	failure error
}

func (f *fakeReplicator) Ship(lsn uint64, recs []cachecore.MirrorRecord) func(context.Context) error {
	f.mu.Lock()
	f.ships = append(f.ships, lsn)
	f.recs = append(f.recs, recs...)
	hold, failure := f.hold, f.failure
	f.mu.Unlock()
	return func(ctx context.Context) error {
		if hold != nil {
			select {
			case <-hold:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return failure
	}
}

func (f *fakeReplicator) Trim(lsn uint64) {
	f.mu.Lock()
	f.trims = append(f.trims, lsn)
	f.mu.Unlock()
}

func openReplicated(t *testing.T) (*cachecore.Cache, *cachecore.Volume, *fakeReplicator) {
	t.Helper()
	ctx := context.Background()
	m := persist.NewCrashMedia(persist.SegmentsOffset+32*(1<<20), persist.TearDAX)
	st, err := persist.Format(m, persist.FormatOptions{SegmentSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	c, err := cachecore.Open(ctx, st, cachecore.Config{JournalFlushInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(ctx) })
	v, err := c.AddVolume(ctx, "v", backend.NewMemory(64<<20), cachecore.VolumeConfig{Mode: cachecore.ModeWriteback, BlockSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	r := &fakeReplicator{}
	if err := v.SetReplicator(r); err != nil {
		t.Fatal(err)
	}
	return c, v, r
}

// TestReplicatorGetsDirtyDataInLogOrder: every cached write and discard
// is shipped once, in increasing LSN order, with its data; concurrent
// writers included. Writeback trims.
func TestReplicatorGetsDirtyDataInLogOrder(t *testing.T) {
	c, v, r := openReplicated(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			buf := make([]byte, 4096)
			for i := range 50 {
				buf[0], buf[1] = byte(w), byte(i)
				if err := v.WriteAt(ctx, buf, int64(w*50+i)*4096, i%10 == 0); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := v.Discard(ctx, 40<<20, 8192); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	for i := 1; i < len(r.ships); i++ {
		if r.ships[i] <= r.ships[i-1] {
			t.Fatalf("Ship LSNs out of order: %v", r.ships)
		}
	}
	got := map[int64][]byte{}
	for _, rec := range r.recs {
		if rec.Discard {
			got[rec.Off] = make([]byte, rec.Len)
			continue
		}
		if int64(len(rec.Data)) != rec.Len {
			t.Fatalf("record at %d: %d bytes for length %d", rec.Off, len(rec.Data), rec.Len)
		}
		got[rec.Off] = rec.Data
	}
	r.mu.Unlock()
	for w := range 4 {
		for i := range 50 {
			off := int64(w*50+i) * 4096
			d, ok := got[off]
			if !ok || d[0] != byte(w) || d[1] != byte(i) {
				t.Fatalf("write %d/%d at %d not shipped with its data", w, i, off)
			}
		}
	}
	// The discard came while older dirty data was not written back: it
	// is zeroes through the cache, shipped as data.
	if d, ok := got[40<<20]; !ok || !bytes.Equal(d, make([]byte, len(d))) {
		t.Fatal("the discard was not shipped as zeroes")
	}
	if err := v.Drain(ctx, nil); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	if len(r.trims) == 0 || r.trims[len(r.trims)-1] <= r.ships[len(r.ships)-1] {
		t.Fatalf("after a drain, trims %v do not pass the last shipped LSN %d", r.trims, r.ships[len(r.ships)-1])
	}
	n := len(r.recs)
	r.mu.Unlock()
	// With nothing dirty left, a discard of a range never cached is a
	// tombstone on the backing device: journaled all the same, so it is
	// shipped.
	if err := v.Discard(ctx, 48<<20, 8192); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.recs) != n+1 || !r.recs[n].Discard || r.recs[n].Off != 48<<20 || r.recs[n].Len != 8192 {
		t.Fatalf("records after the discard: %+v", r.recs[n:])
	}
	_ = c
}

// TestFUAWaitsForReplicas: a FUA write and a flush return only once the
// Replicator acknowledged; a write without FUA does not wait; a failed
// replication fails the FUA write.
func TestFUAWaitsForReplicas(t *testing.T) {
	_, v, r := openReplicated(t)
	ctx := context.Background()
	r.mu.Lock()
	r.hold = make(chan struct{})
	r.mu.Unlock()
	if err := v.WriteAt(ctx, bytes.Repeat([]byte{1}, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- v.WriteAt(ctx, bytes.Repeat([]byte{2}, 4096), 4096, true) }()
	select {
	case err := <-done:
		t.Fatalf("FUA write returned (%v) before the replica acknowledged", err)
	case <-time.After(100 * time.Millisecond):
	}
	r.mu.Lock()
	close(r.hold)
	r.hold = nil
	r.mu.Unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	boom := errors.New("peer out of sync")
	r.mu.Lock()
	r.failure = boom
	r.mu.Unlock()
	if err := v.WriteAt(ctx, bytes.Repeat([]byte{3}, 4096), 8192, true); !errors.Is(err, boom) {
		t.Fatalf("FUA write with a failing replica: %v, want %v", err, boom)
	}
}

// TestCleanDataIsNotShipped: read-miss fills put clean data in the cache;
// the backing device has it, nothing is shipped. A replicated volume stays
// in writeback mode and its sequential writes do not bypass the cache.
func TestCleanDataIsNotShipped(t *testing.T) {
	c, v, r := openReplicated(t)
	ctx := context.Background()
	buf := make([]byte, 64<<10)
	if err := v.ReadAt(ctx, buf, 1<<20); err != nil {
		t.Fatal(err)
	}
	cachecore.WaitFills(c)
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	if len(r.recs) != 0 {
		t.Fatalf("%d records shipped for clean data", len(r.recs))
	}
	r.mu.Unlock()
	if err := v.SetConfig(cachecore.VolumeConfig{Mode: cachecore.ModeWritethrough}); !errors.Is(err, cachecore.ErrReplicatedMode) {
		t.Fatalf("writethrough on a replicated volume: %v", err)
	}
	if err := v.SetMode(ctx, cachecore.ModeWritearound, nil); !errors.Is(err, cachecore.ErrReplicatedMode) {
		t.Fatalf("writearound on a replicated volume: %v", err)
	}
	if err := v.SetConfig(cachecore.VolumeConfig{Mode: cachecore.ModeWriteback, SequentialCutoff: 64 << 10}); err != nil {
		t.Fatal(err)
	}
	for i := range int64(8) { // 512 KiB sequential: past the cutoff
		if err := v.WriteAt(ctx, buf, 8<<20+i*int64(len(buf)), false); err != nil {
			t.Fatal(err)
		}
	}
	if st := v.Stats(); st.BypassedRequests["sequential"] != 0 {
		t.Fatalf("a replicated volume bypassed %d sequential writes", st.BypassedRequests["sequential"])
	}
}
