package persist

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkSustained (CACHELUN_LONG=1; run with -benchtime=1x): 60 s of
// random 4 KiB data writes into a 4 GiB cache file on the disk, each batch
// of 8 persisted and then committed as a kset, from 32 writers. Reports the
// write rate of the first and the last 10 s and their ratio (goal >= 0.8).
func BenchmarkSustained(b *testing.B) {
	if os.Getenv("CACHELUN_LONG") != "1" {
		b.Skip("set CACHELUN_LONG=1 to run the 60 s sustained benchmark")
	}
	const (
		fileSize = 4 << 30
		segSize  = 16 << 20
		logSegs  = 8
		writers  = 32
		batch    = 8
		duration = 60 * time.Second
	)
	dir := os.Getenv("CACHELUN_BENCH_DIR")
	if dir == "" {
		dir = b.TempDir()
	}
	path := filepath.Join(dir, "sustained.cache")
	os.Remove(path)
	defer os.Remove(path)
	m, err := OpenFile(path, FileOptions{Create: true, Size: fileSize})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	s, err := Format(m, FormatOptions{SegmentSize: segSize, Force: true})
	if err != nil {
		b.Fatal(err)
	}
	var allocMu sync.Mutex
	nextLog := uint32(0)
	j := s.OpenJournal(s.KeyTail(), func() (uint32, error) {
		allocMu.Lock()
		defer allocMu.Unlock()
		nextLog = (nextLog + 1) % logSegs
		return nextLog, nil
	})
	seconds := int(duration / time.Second)
	perSecond := make([]atomic.Int64, seconds+1)
	start := time.Now()
	deadline := start.Add(duration)
	dataBlocks := int64(s.SegmentDataSize() / 4096)
	var wg sync.WaitGroup
	b.ResetTimer()
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 11))
			buf := make([]byte, 4096)
			keys := make([]Key, batch)
			for time.Now().Before(deadline) {
				for i := range keys {
					seg := logSegs + uint32(rng.IntN(int(s.SegmentCount()-logSegs)))
					pos := Pos{Seg: seg, Off: uint32(rng.Int64N(dataBlocks)) * 4096}
					buf[0], buf[1] = byte(w), byte(i)
					off := s.DataOffset(pos)
					if err := m.WriteAt(buf, off); err != nil {
						b.Error(err)
						return
					}
					if err := m.Persist(off, 4096); err != nil {
						b.Error(err)
						return
					}
					keys[i] = Key{Volume: 1, Offset: rng.Uint64N(1<<40) &^ 4095, Length: 4096, Pos: pos, Gen: 1, Flags: KeyDirty}
				}
				if _, err := j.Commit(keys, 0); err != nil {
					b.Error(err)
					return
				}
				sec := int(time.Since(start) / time.Second)
				perSecond[min(sec, seconds)].Add(batch)
			}
		}(w)
	}
	wg.Wait()
	b.StopTimer()
	sum := func(from, to int) float64 {
		var n int64
		for i := from; i < to; i++ {
			n += perSecond[i].Load()
		}
		return float64(n) / float64(to-from)
	}
	first, last := sum(0, 10), sum(seconds-10, seconds)
	var total int64
	for i := range perSecond {
		total += perSecond[i].Load()
	}
	st := j.Stats()
	b.ReportMetric(first, "first10s-writes/s")
	b.ReportMetric(last, "last10s-writes/s")
	b.ReportMetric(last/first, "last/first")
	b.ReportMetric(float64(total)/duration.Seconds(), "writes/s")
	b.ReportMetric(float64(st.Commits)/float64(max(st.Flushes, 1)), "commits/flush")
	rates := make([]int64, seconds)
	for i := range rates {
		rates[i] = perSecond[i].Load()
	}
	b.Logf("media %s, per-second writes: %v", m.Kind(), rates)
}
