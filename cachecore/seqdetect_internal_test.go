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

// TestSeqDetectorShuffledStream: a sequential stream that reaches the
// detector shuffled within its queue depth counts as sequential; a piece
// of it written again, a request just before it began and a block read
// again and again are not the stream's, and a short read ending where it
// goes on does not take it over; neither reads of every 32nd block nor
// random reads add up.
func TestSeqDetectorShuffledStream(t *testing.T) {
	clock := time.Unix(1000, 0)
	now := func() time.Time { clock = clock.Add(time.Microsecond); return clock }
	const n, count = 4096, 4096 // 16 MiB
	rng := rand.New(rand.NewPCG(3, 4))
	offs := shuffledStream(rng, 64<<20, n, count, 32)

	inOrder := 0
	for i := 1; i < len(offs); i++ {
		if offs[i] == offs[i-1]+n {
			inOrder++
		}
	}
	if inOrder > count/2 {
		t.Fatalf("%d of %d requests follow the one before: the test does not shuffle", inOrder, count)
	}
	var reads seqDetector
	var gotReads int64
	for _, off := range offs {
		gotReads = max(gotReads, reads.observe("host", off, n, now()))
	}
	// Finished at random from 32 in flight, a request now and then waits
	// longer than the 64 pieces an entry remembers; it is lost to the
	// count, not to the stream.
	if want := int64(count) * n * 7 / 8; gotReads < want {
		t.Errorf("a 16 MiB read stream shuffled within 32 requests counts %d sequential bytes, want at least %d", gotReads, want)
	}
	if gotReads > count*n {
		t.Errorf("a 16 MiB read stream counts %d sequential bytes, more than it has", gotReads)
	}

	var stream seqDetector
	for i := range int64(64) {
		stream.observe("host", 128<<10+i*n, n, now())
	}
	if got := stream.observe("host", 128<<10+10*n, n, now()); got != n {
		t.Errorf("a piece of the stream written again counts %d, want a stream of its own (%d)", got, n)
	}
	if got := stream.observe("host", 0, n, now()); got != n {
		t.Errorf("a request before the stream began counts %d, want a stream of its own (%d)", got, n)
	}
	if got := stream.observe("host", 128<<10+64*n, n, now()); got != 65*n {
		t.Errorf("the stream's next piece counts %d, want %d", got, 65*n)
	}

	// A scan in 64 KiB requests, and a single-block read of its last
	// block, whose stream ends where the scan's next request begins: the
	// scan goes on in its own stream.
	var scan seqDetector
	const piece = 64 << 10
	other := func(k int64) { // reads elsewhere: the scan's entry is not the first one
		for i := range k {
			scan.observe("host", (1000+i*17)*piece, n, now())
		}
	}
	other(seqEntries + 10)
	for i := range int64(64) {
		scan.observe("host", i*piece, piece, now())
	}
	other(seqEntries - 10)
	scan.observe("host", 64*piece-n, n, now())
	if got := scan.observe("host", 64*piece, piece, now()); got != 65*piece {
		t.Errorf("the scan's next request counts %d, want %d: a single-block read took the scan over", got, 65*piece)
	}

	var strided seqDetector
	for i := range int64(10000) { // a block of every 32: no stream
		if got := strided.observe("host", i*32*n, n, now()); got > n {
			t.Fatalf("reads of every 32nd block count %d sequential bytes", got)
		}
	}

	var again seqDetector
	for range 10000 {
		if got := again.observe("host", 0, n, now()); got != n {
			t.Fatalf("a block read again counts %d sequential bytes, want %d", got, n)
		}
	}
	var random seqDetector
	most := int64(0)
	for range 100000 {
		most = max(most, random.observe("host", rng.Int64N(1<<30/n)*n, n, now()))
	}
	if most >= 64<<10 {
		t.Errorf("random 4 KiB reads over 1 GiB counted a stream of %d bytes", most)
	}
}

// atDepth runs a 16 MiB sequential stream of 4 KiB requests through do
// from 32 goroutines at once (a queue of 32), on a fresh volume with the
// default sequential cutoff and no congestion bypass, and returns the bytes
// it bypassed as sequential and the cutoff.
func atDepth(t *testing.T, mode Mode, do func(v *Volume, ctx context.Context, buf []byte, off int64) error) (bypassed, cutoff uint64) {
	t.Helper()
	vc := DefaultVolumeConfig()
	vc.Mode = mode
	vc.BlockSize = 4096
	vc.CongestedReadThreshold, vc.CongestedWriteThreshold = 0, 0
	r := newItRig(t, 64, 64<<20, Config{}, vc)
	ctx := blk.WithStream(context.Background(), "host")
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			buf := make([]byte, 4096)
			for {
				off := next.Add(4096) - 4096
				if off >= depthStream {
					return
				}
				if err := do(r.vol, ctx, buf, off); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	return r.vol.Stats().BypassedBytes["sequential"], uint64(vc.SequentialCutoff)
}

const depthStream = 16 << 20

// TestSequentialReadsAtDepthBypass: a sequential read stream from 32
// readers at once (a queue of 32) is cut off like one from a single
// reader: its fills stop after the cutoff.
func TestSequentialReadsAtDepthBypass(t *testing.T) {
	bypassed, cutoff := atDepth(t, ModeWriteback, func(v *Volume, ctx context.Context, buf []byte, off int64) error {
		return v.ReadAt(ctx, buf, off)
	})
	if want := depthStream - cutoff - 2<<20; bypassed < want {
		t.Errorf("a 16 MiB sequential read at depth 32 bypassed %d bytes, want at least %d (cutoff %d)", bypassed, want, cutoff)
	}
}

// TestSequentialWritesAtDepthBypass: a sequential write stream from 32
// writers at once bypasses past the cutoff like one from a single writer
// (at depth 32 it took the cache and the bypass paths by turns), and the
// same stream written with FUA stays in the cache in the modes that cache
// writes.
func TestSequentialWritesAtDepthBypass(t *testing.T) {
	for _, tc := range []struct {
		mode Mode
		fua  bool
	}{{ModeWriteback, false}, {ModeWriteback, true}, {ModeWriteonly, true}} {
		bypassed, cutoff := atDepth(t, tc.mode, func(v *Volume, ctx context.Context, buf []byte, off int64) error {
			return v.WriteAt(ctx, buf, off, tc.fua)
		})
		if tc.fua {
			if bypassed != 0 {
				t.Errorf("%s: FUA writes of a sequential stream bypassed %d bytes, want none", tc.mode, bypassed)
			}
			continue
		}
		if want := depthStream - cutoff - 2<<20; bypassed < want {
			t.Errorf("a 16 MiB sequential write at depth 32 bypassed %d bytes, want at least %d (cutoff %d)", bypassed, want, cutoff)
		}
	}
}
