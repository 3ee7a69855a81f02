//go:build ceph

package rbd

import (
	"context"
	"math/rand/v2"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var opsPerSec = regexp.MustCompile(`ops/sec:\s*([0-9.]+)`)

// rbdBench runs `rbd bench` with the same pattern (4 KiB random, 32 in
// flight, librbd cache off like the Device) and returns its ops/s.
func rbdBench(b *testing.B, spec Spec, mode string, ops int) float64 {
	out, err := cluster.Run(context.Background(), "rbd", "bench", "--rbd-cache=false", "--io-type", mode,
		"--io-size", "4K", "--io-threads", "32", "--io-pattern", "rand",
		"--io-total", strconv.Itoa(ops*4096), spec.Pool+"/"+spec.Image)
	if err != nil {
		b.Fatal(err)
	}
	m := opsPerSec.FindAllStringSubmatch(out, -1)
	if m == nil {
		b.Fatalf("no ops/sec in rbd bench output: %s", out)
	}
	v, _ := strconv.ParseFloat(m[len(m)-1][1], 64)
	return v
}

// BenchmarkRandom4KQD32 measures 4 KiB random reads and writes with 32
// requests in flight through the Device over a 256 MiB image written in
// full first (reads of unwritten objects cost the OSD nothing), and the
// same pattern with rbd bench on the same image, reported as rbd-bench-iops
// and the ratio device/rbd-bench. Run with a fixed count, e.g.
// -bench Random4K -benchtime 20000x.
func BenchmarkRandom4KQD32(b *testing.B) {
	const size = 256 << 20
	spec := newImage(b, size)
	if _, err := cluster.Run(context.Background(), "rbd", "bench", "--rbd-cache=false", "--io-type", "write",
		"--io-size", "4M", "--io-threads", "8", "--io-pattern", "seq", "--io-total", strconv.Itoa(size),
		spec.Pool+"/"+spec.Image); err != nil {
		b.Fatal(err)
	}
	for _, mode := range []string{"read", "write"} {
		b.Run(mode, func(b *testing.B) {
			// rbd bench first, while no Device holds the image's lock.
			rbdIOPS := rbdBench(b, spec, mode, max(b.N, 2000))
			opts := testOptions(b)
			opts.Logger = nil
			d := openT(b, spec, opts)
			var next atomic.Int64
			var wg sync.WaitGroup
			ctx := context.Background()
			b.ResetTimer()
			start := time.Now()
			for w := range 32 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := rand.New(rand.NewPCG(uint64(w), 5))
					p := make([]byte, 4096)
					for next.Add(1) <= int64(b.N) {
						off := r.Int64N(size/4096) * 4096
						var err error
						if mode == "read" {
							err = d.ReadAt(ctx, p, off)
						} else {
							err = d.WriteAt(ctx, p, off)
						}
						if err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			iops := float64(b.N) / time.Since(start).Seconds()
			b.StopTimer()
			d.Close()
			b.ReportMetric(iops, "iops")
			b.ReportMetric(rbdIOPS, "rbd-bench-iops")
			b.ReportMetric(iops/rbdIOPS, "ratio")
		})
	}
}
