package cachecore_test

import (
	"context"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/persist"
)

// BenchmarkCopy1GiB copies 1 GiB within a cached volume (issue 19: the
// goal is 20 times the host copy for cached data, and no slower than it
// for data that is not cached): CopyFrom against a host copy, which reads
// and writes 1 MiB at a time through the volume (what target/scsi does
// without a Copier). Each of the four copies goes to its own destination.
// Run it with
//
//	go test -run '^$' -bench Copy1GiB -benchtime 1x ./cachecore/
//
// on a cache file without and with data CRCs (16 KiB keys: 64 times more
// keys to share). Metrics: cached-host-MB/s, cached-copy-MB/s, cached-ratio-x (CopyFrom
// over the host copy), and the same for a source only on the backing
// device (uncached-*).
func BenchmarkCopy1GiB(b *testing.B) {
	for _, crc := range []bool{false, true} {
		b.Run(fmt.Sprintf("datacrc=%v", crc), func(b *testing.B) { benchCopy1GiB(b, crc) })
	}
}

// benchCopyCache formats a cache file (with data CRCs if asked) in a
// temporary directory and opens it.
func benchCopyCache(b *testing.B, size int64, dataCRC bool) (persist.Media, *cachecore.Cache) {
	m, err := persist.OpenFile(filepath.Join(b.TempDir(), "cache"), persist.FileOptions{Create: true, Size: size})
	if err != nil {
		b.Fatal(err)
	}
	// Closed after the caller's cache (its deferred Close runs first) and
	// before the directory goes: a file removed while open keeps its
	// reserved blocks, and a benchmark calls this once per round.
	b.Cleanup(func() { m.Close() })
	store, err := persist.Format(m, persist.FormatOptions{SegmentSize: benchSegSize, BlockSize: 4096, DataCRC: dataCRC})
	if err != nil {
		b.Fatal(err)
	}
	c, err := cachecore.Open(context.Background(), store, cachecore.Config{})
	if err != nil {
		b.Fatal(err)
	}
	return m, c
}

func benchCopy1GiB(b *testing.B, dataCRC bool) {
	const (
		gib   = int64(1) << 30
		chunk = 1 << 20
	)
	ctx := context.Background()
	for range b.N {
		b.StopTimer()
		m, c := benchCopyCache(b, 6*gib+256<<20, dataCRC)
		mem := backend.NewMemory(6 * gib)
		// The uncached source [5 GiB, 6 GiB) is on the backing device only.
		buf := make([]byte, chunk)
		for off := 5 * gib; off < 6*gib; off += chunk {
			copy(buf, tagged(uint64(off/chunk), off, 4096))
			if err := mem.WriteAt(ctx, buf, off); err != nil {
				b.Fatal(err)
			}
		}
		v, err := c.AddVolume(ctx, "bench", mem, cachecore.VolumeConfig{Mode: cachecore.ModeWriteback})
		if err != nil {
			b.Fatal(err)
		}
		// The cached source [0, 1 GiB): written, then written back (clean).
		for off := int64(0); off < gib; off += chunk {
			copy(buf, tagged(uint64(off/chunk), off, 4096))
			if err := v.WriteAt(ctx, buf, off, false); err != nil {
				b.Fatal(err)
			}
		}
		if err := v.Drain(ctx, nil); err != nil {
			b.Fatal(err)
		}
		// Each copy starts with no dirty data (writeback does not compete)
		// and the timer stopped meanwhile.
		settle := func() {
			b.StopTimer()
			if err := v.Drain(ctx, nil); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		var cpu [4]time.Duration // process CPU time of each copy (host, copy, host, copy)
		ncpu := 0
		host := func(src, dst int64) time.Duration {
			settle()
			t0, c0 := time.Now(), processCPU()
			if err := hostCopy(ctx, v, src, dst, gib, chunk); err != nil {
				b.Fatal(err)
			}
			cpu[ncpu] = processCPU() - c0
			ncpu++
			return time.Since(t0)
		}
		offload := func(src, dst int64) time.Duration {
			settle()
			t0, c0 := time.Now(), processCPU()
			if err := v.CopyFrom(ctx, v, src, dst, gib, false); err != nil {
				b.Fatal(err)
			}
			cpu[ncpu] = processCPU() - c0
			ncpu++
			return time.Since(t0)
		}
		b.StartTimer()
		hc := host(0, 1*gib)
		cc := offload(0, 2*gib)
		st := v.Stats()
		if st.CopySharedBytes != uint64(gib) {
			b.Fatalf("cached copy shared %d bytes of %d", st.CopySharedBytes, gib)
		}
		// CopyFrom first: its reads do not fill the cache, the host
		// copy's do.
		cu := offload(5*gib, 4*gib)
		if moved := v.Stats().CopyMovedBytes; moved != uint64(gib) {
			b.Fatalf("uncached copy moved %d bytes of %d", moved, gib)
		}
		hu := host(5*gib, 3*gib)
		b.StopTimer()
		mbps := func(d time.Duration) float64 { return float64(gib) / 1e6 / d.Seconds() }
		b.ReportMetric(mbps(hc), "cached-host-MB/s")
		b.ReportMetric(mbps(cc), "cached-copy-MB/s")
		b.ReportMetric(hc.Seconds()/cc.Seconds(), "cached-ratio-x")
		b.ReportMetric(mbps(hu), "uncached-host-MB/s")
		b.ReportMetric(mbps(cu), "uncached-copy-MB/s")
		b.ReportMetric(hu.Seconds()/cu.Seconds(), "uncached-ratio-x")
		// CPU time, less sensitive than wall time to other load on the
		// machine (background writeback and GC included).
		b.ReportMetric(cpu[0].Seconds()/cpu[1].Seconds(), "cached-cpu-ratio-x")
		if err := c.Close(ctx); err != nil {
			b.Fatal(err)
		}
		m.Close() // its 6 GiB back before the next round
	}
}

// processCPU returns the CPU time (user and system) the process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// hostCopy reads and writes through the volume, chunk bytes at a time.
func hostCopy(ctx context.Context, v blk.Volume, src, dst, n, chunk int64) error {
	buf := make([]byte, chunk)
	for done := int64(0); done < n; done += chunk {
		if err := v.ReadAt(ctx, buf, src+done); err != nil {
			return err
		}
		if err := v.WriteAt(ctx, buf, dst+done, false); err != nil {
			return err
		}
	}
	return nil
}
