package cachecore_test

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
)

// BenchmarkSequentialStream: a 1 MiB-per-write sequential stream beyond
// the sequential cutoff on a volume over a backing device with 200µs
// latency. "clean": the volume holds no dirty data, so the stream bypasses
// the cache. "older-dirty": 8 MiB of random dirty writes and a flush come
// first, so the stream is held back into the cache (C6) until
// writeback (at full speed meanwhile) has caught up. Metrics: MB/s of the
// stream and the share of its bytes that bypassed.
func BenchmarkSequentialStream(b *testing.B) {
	for _, older := range []bool{false, true} {
		name := "clean"
		if older {
			name = "older-dirty"
		}
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			const volSize = 1 << 30
			_, c := benchCache(b, 512<<20, 4096, cachecore.Config{})
			defer c.Close(ctx)
			dev := backend.NewSlow(backend.NewMemory(volSize), backend.SlowOptions{Latency: 200 * time.Microsecond})
			v, err := c.AddVolume(ctx, "bench", dev, cachecore.VolumeConfig{Mode: cachecore.ModeWriteback, BlockSize: 4096, SequentialCutoff: 4 << 20})
			if err != nil {
				b.Fatal(err)
			}
			p := make([]byte, 1<<20)
			if older {
				rng := rand.New(rand.NewPCG(1, 2))
				for range 2048 {
					if err := v.WriteAt(ctx, p[:4096], rng.Int64N(volSize/2/4096)*4096, false); err != nil {
						b.Fatal(err)
					}
				}
				if err := v.Flush(ctx); err != nil {
					b.Fatal(err)
				}
			}
			before := v.Stats()
			b.SetBytes(int64(len(p)))
			b.ResetTimer()
			off := int64(volSize / 2)
			start := time.Now()
			for range b.N {
				if off+int64(len(p)) > volSize {
					off = volSize / 2
				}
				if err := v.WriteAt(ctx, p, off, false); err != nil {
					b.Fatal(err)
				}
				off += int64(len(p))
			}
			el := time.Since(start)
			b.StopTimer()
			after := v.Stats()
			total := float64(b.N) * float64(len(p))
			bypassed := float64(after.BypassedBytes["sequential"] - before.BypassedBytes["sequential"])
			b.ReportMetric(total/el.Seconds()/1e6, "MB/s")
			b.ReportMetric(bypassed/total, "bypassed-share")
			b.ReportMetric(float64(after.HeldBack-before.HeldBack), "held-back-writes")
		})
	}
}
