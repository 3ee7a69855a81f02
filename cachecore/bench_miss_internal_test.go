package cachecore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/persist"
)

// Cold reads: what a read miss costs when it is filled into the cache,
// against the same misses without a cache, in the same run (issue 16,
// item 5: a miss costs no more than no cache).

const (
	coldBackingSize = 1 << 30 // the quick-start LUN
	coldCacheSize   = 256 << 20
	coldSegSize     = 4 << 20 // the quick-start segment size
	coldQD          = 32
	coldRoundReads  = 16384 // per round: 64 MiB of fills, a quarter of the cache
	coldRounds      = 5
)

// coldBacking writes a backing file of coldBackingSize bytes of data once
// per process (it then sits in the page cache, as the backing file
// does) and returns its path.
func coldBacking(b *testing.B) string {
	b.Helper()
	dir := os.Getenv("CACHELUN_BENCH_DIR")
	if dir == "" {
		dir = b.TempDir()
	}
	path := filepath.Join(dir, fmt.Sprintf("cachecore-cold-backing-%d", os.Getpid()))
	b.Cleanup(func() { os.Remove(path) })
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for off := int64(0); off < coldBackingSize; off += int64(len(buf)) {
		for i := 0; i < len(buf); i += 8 {
			v := rng.Uint64()
			for k := 0; k < 8; k++ {
				buf[i+k] = byte(v >> (8 * k))
			}
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
	return path
}

// coldRig is a fresh quick-start cache (256 MiB file media, 4 MiB
// segments, intent log in tmpfs, default volume settings) over the backing
// file at path.
func coldRig(b *testing.B, backingPath string, mode Mode) (*Cache, *Volume, func()) {
	b.Helper()
	dir := b.TempDir()
	m, err := persist.OpenFile(filepath.Join(dir, "cache"), persist.FileOptions{Create: true, Size: persist.SegmentsOffset + coldCacheSize, ZeroFill: true})
	if err != nil {
		b.Fatal(err)
	}
	st, err := persist.Format(m, persist.FormatOptions{SegmentSize: coldSegSize})
	if err != nil {
		b.Fatal(err)
	}
	ilDir := "/dev/shm"
	if _, err := os.Stat(ilDir); err != nil {
		ilDir = dir
	}
	ilPath := filepath.Join(ilDir, fmt.Sprintf("cachecore-cold-%d-%d.intent", os.Getpid(), time.Now().UnixNano()))
	il, err := OpenIntentFile(ilPath)
	if err != nil {
		b.Fatal(err)
	}
	c, err := OpenWithIntent(context.Background(), st, Config{}, il)
	if err != nil {
		b.Fatal(err)
	}
	dev, err := backend.OpenFile(backingPath, backend.FileOptions{})
	if err != nil {
		b.Fatal(err)
	}
	vc := DefaultVolumeConfig()
	vc.Mode = mode
	vc.BlockSize = 4096
	v, err := c.AddVolume(context.Background(), "v", dev, vc)
	if err != nil {
		b.Fatal(err)
	}
	return c, v, func() {
		c.Close(context.Background())
		dev.Close()
		m.Close()
		os.Remove(ilPath)
	}
}

// coldReads runs n random 4 KiB reads from coldQD goroutines with read and
// returns the IOPS.
func coldReads(b *testing.B, n int, seed uint64, read func(ctx context.Context, p []byte, off int64) error) float64 {
	var next atomic.Int64
	var failed atomic.Pointer[error]
	var wg sync.WaitGroup
	blocks := uint64(coldBackingSize / 4096)
	start := time.Now()
	for w := 0; w < coldQD; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			p := make([]byte, 4096)
			ctx := context.Background()
			for next.Add(1) <= int64(n) {
				if err := read(ctx, p, int64(rng.Uint64N(blocks))*4096); err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	if e := failed.Load(); e != nil {
		b.Fatal(*e)
	}
	return float64(n) / el.Seconds()
}

// BenchmarkColdReadQD32: random 4 KiB reads at QD32 over a fresh
// quick-start cache whose backing file holds data in the page cache: in
// writeback mode (every miss is filled), in passthrough mode (nothing is
// filled: the engine without a cache) and on the backing file alone, in
// alternating rounds on fresh caches. Reports the median IOPS of each and
// fill/passthrough, fill/backing. Each round reads coldRoundReads blocks,
// so the cache never fills up and every round fills throughout.
func BenchmarkColdReadQD32(b *testing.B) {
	path := coldBacking(b)
	// The baseline reads the file with pread, as backend.File does (a
	// second backend.File on it would be refused: the volume claims it).
	raw, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer raw.Close()
	rawRead := func(_ context.Context, p []byte, off int64) error { _, err := raw.ReadAt(p, off); return err }
	perRound := coldRoundReads
	var fill, pass, back []float64
	var fills, dropped uint64
	b.ResetTimer()
	for r := 0; r < coldRounds; r++ {
		seed := uint64(r + 1)
		c, v, done := coldRig(b, path, ModeWriteback)
		fill = append(fill, coldReads(b, perRound, seed, v.ReadAt))
		done() // Close waits for the queued fills
		vs := v.Stats()
		fills += vs.FillBytes / 4096
		dropped += vs.FillsDropped
		_ = c
		_, v, done = coldRig(b, path, ModePassthrough)
		pass = append(pass, coldReads(b, perRound, seed, v.ReadAt))
		done()
		back = append(back, coldReads(b, perRound, seed, rawRead))
	}
	b.StopTimer()
	med := func(xs []float64) float64 { s := slices.Clone(xs); slices.Sort(s); return s[len(s)/2] }
	b.ReportMetric(med(fill), "fill-IOPS")
	b.ReportMetric(med(pass), "passthrough-IOPS")
	b.ReportMetric(med(back), "backing-IOPS")
	b.ReportMetric(med(fill)/med(pass), "fill/pass-x")
	b.ReportMetric(med(fill)/med(back), "fill/backing-x")
	b.ReportMetric(float64(fills)/coldRounds, "fills/round")
	b.ReportMetric(float64(dropped)/coldRounds, "dropped/round")
	b.ReportMetric(0, "ns/op")
}
