package cachecore

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/blk"
)

// shuffledStream returns the offsets of a sequential stream of count
// requests of n bytes from base, in the order a target serving depth of
// them at a time finishes them: each time, one of the depth requests in
// flight at random, and the next one takes its place.
func shuffledStream(rng *rand.Rand, base, n int64, count, depth int) []int64 {
	var inFlight []int64
	next := 0
	offs := make([]int64, 0, count)
	for len(offs) < count {
		for len(inFlight) < depth && next < count {
			inFlight = append(inFlight, base+int64(next)*n)
			next++
		}
		i := rng.IntN(len(inFlight))
		offs = append(offs, inFlight[i])
		inFlight = append(inFlight[:i], inFlight[i+1:]...)
	}
	return offs
}

// TestSeqDetectorShuffledReads: a sequential read stream that reaches the
// detector shuffled within its queue depth counts as sequential (the
// exact rule, kept for writes, loses it); a block read again and again
// counts once; neither reads of every 32nd block nor random reads add up.
func TestSeqDetectorShuffledReads(t *testing.T) {
	clock := time.Unix(1000, 0)
	now := func() time.Time { clock = clock.Add(time.Microsecond); return clock }
	const n, count = 4096, 4096 // 16 MiB
	rng := rand.New(rand.NewPCG(3, 4))
	offs := shuffledStream(rng, 64<<20, n, count, 32)

	var reads, exact seqDetector
	var gotReads, gotExact int64
	for _, off := range offs {
		gotReads = max(gotReads, reads.observe("host", off, n, readReorder(n), now()))
		gotExact = max(gotExact, exact.observe("host", off, n, 0, now()))
	}
	if want := int64(count-32) * n; gotReads < want {
		t.Errorf("a 16 MiB read stream shuffled within 32 requests counts %d sequential bytes, want at least %d", gotReads, want)
	}
	if gotReads > count*n {
		t.Errorf("a 16 MiB read stream counts %d sequential bytes, more than it has", gotReads)
	}
	if gotExact >= 4<<20 {
		t.Errorf("the exact rule counted %d bytes of the shuffled stream: the test does not shuffle", gotExact)
	}

	var strided seqDetector
	for i := range int64(10000) { // a block of every 32: no stream
		if got := strided.observe("host", i*32*n, n, readReorder(n), now()); got > n {
			t.Fatalf("reads of every 32nd block count %d sequential bytes", got)
		}
	}

	var again seqDetector
	for range 10000 {
		if got := again.observe("host", 0, n, readReorder(n), now()); got != n {
			t.Fatalf("a block read again counts %d sequential bytes, want %d", got, n)
		}
	}
	var random seqDetector
	most := int64(0)
	for range 100000 {
		most = max(most, random.observe("host", rng.Int64N(1<<30/n)*n, n, readReorder(n), now()))
	}
	if most >= 64<<10 {
		t.Errorf("random 4 KiB reads over 1 GiB counted a stream of %d bytes", most)
	}
}

// TestSequentialReadsAtDepthBypass: a sequential read stream from 32
// readers at once (a queue of 32) is cut off like one from a single
// reader: its fills stop after the cutoff.
func TestSequentialReadsAtDepthBypass(t *testing.T) {
	vc := DefaultVolumeConfig()
	vc.BlockSize = 4096
	vc.CongestedReadThreshold = 0
	r := newItRig(t, 64, 64<<20, Config{}, vc)
	ctx := blk.WithStream(context.Background(), "host")
	const n, total = 4096, 16 << 20
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			buf := make([]byte, n)
			for {
				off := next.Add(n) - n
				if off >= total {
					return
				}
				if err := r.vol.ReadAt(ctx, buf, off); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	bypassed := r.vol.Stats().BypassedBytes["sequential"]
	if want := uint64(total - vc.SequentialCutoff - 2<<20); bypassed < want {
		t.Errorf("a 16 MiB sequential read at depth 32 bypassed %d bytes, want at least %d (cutoff %d)", bypassed, want, vc.SequentialCutoff)
	}
}
