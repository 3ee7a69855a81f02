package cachecore

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/persist"
)

func benchRig(b *testing.B) (*Cache, *Volume, persist.Media) { return benchRigCRC(b, false) }

// benchRigCRC is benchRig on a cache formatted with data CRCs or not.
func benchRigCRC(b *testing.B, dataCRC bool) (*Cache, *Volume, persist.Media) {
	return benchRigBlocks(b, dataCRC, 4096)
}

// benchRigBlocks is benchRigCRC with a volume of blockSize-byte blocks.
func benchRigBlocks(b *testing.B, dataCRC bool, blockSize int) (*Cache, *Volume, persist.Media) {
	path := b.TempDir() + "/cache"
	if dir := os.Getenv("CACHELUN_BENCH_DIR"); dir != "" {
		path = dir + "/cachecore-bench-cache"
		b.Cleanup(func() { os.Remove(path) })
	}
	m, err := persist.OpenFile(path, persist.FileOptions{Create: true, Size: persist.SegmentsOffset + 256*(1<<20)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	st, err := persist.Format(m, persist.FormatOptions{SegmentSize: 1 << 20, DataCRC: dataCRC})
	if err != nil {
		b.Fatal(err)
	}
	c, err := Open(context.Background(), st, Config{JournalFlushInterval: 50 * time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	v, err := c.AddVolume(context.Background(), "v", backend.NewMemory(64<<20), VolumeConfig{BlockSize: blockSize})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close(context.Background()) })
	return c, v, m
}

func BenchmarkInternalWrite4K(b *testing.B) {
	_, v, _ := benchRig(b)
	p := make([]byte, 4096)
	ctx := context.Background()
	b.SetBytes(4096)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := v.WriteAt(ctx, p, int64(i%4096)*4096, false); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkInternalReadHit4K: 4 KiB read hits of 4 KiB keys, on a cache
// without and with data CRCs (a hit then verifies its key's CRC32C), and
// with the sizing advisor's sampler or a no-op one (what the advisor costs
// a hit).
func BenchmarkInternalReadHit4K(b *testing.B) {
	for _, crc := range []bool{false, true} {
		for _, advisor := range []bool{true, false} {
			b.Run(fmt.Sprintf("datacrc=%v/advisor=%v", crc, advisor), func(b *testing.B) {
				_, v, _ := benchRigCRC(b, crc)
				if !advisor {
					v.SetReadSampler(noSampler{})
				}
				p := make([]byte, 4096)
				ctx := context.Background()
				for i := 0; i < 1024; i++ {
					v.WriteAt(ctx, p, int64(i)*4096, false)
				}
				b.SetBytes(4096)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if err := v.ReadAt(ctx, p, int64(i%1024)*4096); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// noSampler is a ReadSampler that does nothing.
type noSampler struct{}

func (noSampler) SampleRead(off, n int64) {}

func BenchmarkInternalMediaCopy4K(b *testing.B) {
	_, _, m := benchRig(b)
	p := make([]byte, 4096)
	b.SetBytes(4096)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m.WriteAt(p, persist.SegmentsOffset+int64(i%4096)*4096)
	}
}

// BenchmarkFUAWrites measures 4 KiB FUA writes from 1, 8 and 32 goroutines
// writing sequential blocks of one stripe (one kset slot), on a file
// media: the case group commit exists for. It reports IOPS and the media
// persists (fdatasync groups) per write.
func BenchmarkFUAWrites(b *testing.B) {
	for _, spread := range []bool{false, true} {
		for _, writers := range []int{1, 8, 32} {
			name := fmt.Sprintf("writers=%d", writers)
			if spread {
				// Random blocks over 64 MiB (16 stripes, most kset
				// slots), as a host's FUA writes to a LUN land.
				name += "/spread"
			}
			b.Run(name, func(b *testing.B) { benchFUA(b, writers, spread) })
		}
	}
}

func benchFUA(b *testing.B, writers int, spread bool) {
	_, v, m := benchRig(b)
	blocks := int64(stripeSize / 4096)
	if spread {
		blocks = v.Size() / 4096
	}
	b.SetBytes(4096)
	runFUAWriters(b, m, writers, func(ctx context.Context, p []byte, i int64) error {
		blk := i % blocks
		if spread {
			blk = (i * 7919) % blocks
		}
		return v.WriteAt(ctx, p, blk*4096, true)
	})
}

// runFUAWriters runs b.N FUA writes, write(ctx, buf, i) for i = 0 ..
// b.N-1, from writers goroutines (each with a 4 KiB buffer of its own),
// and reports IOPS and, on a media that counts them, persists per write.
func runFUAWriters(b *testing.B, m persist.Media, writers int, write func(ctx context.Context, p []byte, i int64) error) {
	flushes, _ := m.(interface{ Flushes() uint64 })
	ctx := context.Background()
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Pointer[error]
	var before uint64
	if flushes != nil {
		before = flushes.Flushes()
	}
	b.ResetTimer()
	start := time.Now()
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, 4096)
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				if err := write(ctx, p, i); err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if e := failed.Load(); e != nil {
		b.Fatal(*e)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "IOPS")
	if flushes != nil {
		b.ReportMetric(float64(flushes.Flushes()-before)/float64(b.N), "persists/write")
	}
}

// BenchmarkFUAWritesMixedSizes: 8 writers alternate 512-byte FUA writes
// (a log: consecutive sectors in the volume's upper half) and 4 KiB FUA
// writes (pages spread over its lower half) on a file media with 512-byte
// blocks, as a database's redo records and page writes land on a LUN. The
// data head puts the sectors at the end of its segment and the pages at
// its start, so a flush of both reaches the device as two runs.
func BenchmarkFUAWritesMixedSizes(b *testing.B) {
	_, v, m := benchRigBlocks(b, false, 512)
	half := v.Size() / 2
	runFUAWriters(b, m, 8, func(ctx context.Context, p []byte, i int64) error {
		if i%2 == 0 {
			return v.WriteAt(ctx, p[:512], half+(i/2*512)%half, true)
		}
		return v.WriteAt(ctx, p, (i*7919*4096)%half, true)
	})
}
