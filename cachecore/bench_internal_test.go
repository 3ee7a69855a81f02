package cachecore

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/persist"
)

func benchRig(b *testing.B) (*Cache, *Volume, persist.Media) {
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
	st, err := persist.Format(m, persist.FormatOptions{SegmentSize: 1 << 20})
	if err != nil {
		b.Fatal(err)
	}
	c, err := Open(context.Background(), st, Config{JournalFlushInterval: 50 * time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	v, err := c.AddVolume(context.Background(), "v", backend.NewMemory(64<<20), VolumeConfig{BlockSize: 4096})
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

func BenchmarkInternalReadHit4K(b *testing.B) {
	_, v, _ := benchRig(b)
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
}

func BenchmarkInternalMediaCopy4K(b *testing.B) {
	_, _, m := benchRig(b)
	p := make([]byte, 4096)
	b.SetBytes(4096)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m.WriteAt(p, persist.SegmentsOffset+int64(i%4096)*4096)
	}
}
