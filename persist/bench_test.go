package persist

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// benchDirs are the file systems benchmarks run on: tmpfs and the disk
// (the temp dir; on the build machines /tmp and /work are the same ext4).
func benchDirs(b *testing.B) map[string]string {
	dirs := map[string]string{"disk": b.TempDir()}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		d, err := os.MkdirTemp("/dev/shm", "cachelun-bench")
		if err == nil {
			b.Cleanup(func() { os.RemoveAll(d) })
			dirs["tmpfs"] = d
		}
	}
	return dirs
}

func openBenchFile(b *testing.B, dir string, kind MediaKind, size int64) *fileMedia {
	b.Helper()
	path := filepath.Join(dir, fmt.Sprintf("bench-%s.cache", kind))
	os.Remove(path)
	m, err := OpenFile(path, FileOptions{Create: true, Size: size, Kind: kind})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close(); os.Remove(path) })
	return m.(*fileMedia)
}

// rawFlushRate measures sequential write-4KiB-then-persist cycles on m for
// about d: the flush rate of the file without any coalescing.
func rawFlushRate(b *testing.B, m Media, d time.Duration) float64 {
	buf := make([]byte, 4096)
	rng := rand.New(rand.NewPCG(1, 2))
	start := time.Now()
	n := 0
	for time.Since(start) < d && n < 20000 {
		off := rng.Int64N(m.Size()/4096) * 4096
		if err := m.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
		if err := m.Persist(off, 4096); err != nil {
			b.Fatal(err)
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds()
}

// BenchmarkMediaWritePersist: random 4 KiB write + Persist of it from P
// goroutines; the basis of the mmap-msync vs pwrite-fdatasync choice.
func BenchmarkMediaWritePersist(b *testing.B) {
	for fs, dir := range benchDirs(b) {
		for _, kind := range []MediaKind{KindMmapMsync, KindPwriteFdatasync} {
			for _, par := range []int{1, 8, 32} {
				b.Run(fmt.Sprintf("%s/%s/P%d", fs, kind, par), func(b *testing.B) {
					m := openBenchFile(b, dir, kind, 1<<30)
					f0 := m.Flushes()
					b.ResetTimer()
					runParallel(b, par, func(rng *rand.Rand, buf []byte) {
						off := rng.Int64N(m.Size()/4096) * 4096
						if err := m.WriteAt(buf, off); err != nil {
							b.Error(err)
						}
						if err := m.Persist(off, 4096); err != nil {
							b.Error(err)
						}
					})
					el := b.Elapsed().Seconds()
					b.ReportMetric(float64(b.N)/el, "writes/s")
					b.ReportMetric(float64(b.N)/float64(max(m.Flushes()-f0, 1)), "writes/flush")
				})
			}
		}
	}
}

func runParallel(b *testing.B, par int, op func(rng *rand.Rand, buf []byte)) {
	var wg sync.WaitGroup
	per := (b.N + par - 1) / par
	for g := 0; g < par; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			buf := make([]byte, 4096)
			for i := 0; i < per; i++ {
				op(rng, buf)
			}
		}(g)
	}
	wg.Wait()
}

// BenchmarkJournalCommit: kset commits (8 keys each) from 1, 8 and 32
// concurrent committers on tmpfs and disk, beside the raw flush rate of the
// same file measured in the same run.
func BenchmarkJournalCommit(b *testing.B) {
	for fs, dir := range benchDirs(b) {
		for _, par := range []int{1, 8, 32} {
			b.Run(fmt.Sprintf("%s/%s/C%d", fs, DefaultFileKind, par), func(b *testing.B) {
				m := openBenchFile(b, dir, DefaultFileKind, 256<<20)
				s, err := Format(m, FormatOptions{SegmentSize: 16 << 20, Force: true})
				if err != nil {
					b.Fatal(err)
				}
				raw := rawFlushRate(b, m, 300*time.Millisecond)
				j := s.OpenJournal(s.KeyTail(), seqAlloc(s.SegmentCount()))
				keys := testKeys(8, 1, s)
				var mu sync.Mutex
				var lat time.Duration
				b.ResetTimer()
				runParallel(b, par, func(*rand.Rand, []byte) {
					t0 := time.Now()
					if _, err := j.Commit(keys, 1); err != nil {
						b.Error(err)
					}
					d := time.Since(t0)
					mu.Lock()
					lat += d
					mu.Unlock()
				})
				el := b.Elapsed().Seconds()
				st := j.Stats()
				b.ReportMetric(float64(b.N)/el, "commits/s")
				b.ReportMetric(float64(lat.Microseconds())/float64(b.N), "µs/commit")
				b.ReportMetric(float64(st.Commits)/float64(max(st.Flushes, 1)), "commits/flush")
				b.ReportMetric(raw, "raw-flushes/s")
			})
		}
	}
}

// BenchmarkReplayDecode: replay of full ksets (128 keys) from memory; the
// target is >= 10 M keys/s on one core.
func BenchmarkReplayDecode(b *testing.B) {
	m := NewCrashMedia(SegmentsOffset+64*(1<<20), TearDAX)
	s, err := Format(m, FormatOptions{SegmentSize: 1 << 20})
	if err != nil {
		b.Fatal(err)
	}
	j := s.OpenJournal(s.KeyTail(), seqAlloc(s.SegmentCount()))
	keys := testKeys(MaxKSetKeys, 3, s)
	total := 0
	for i := 0; i < 2000; i++ {
		if _, err := j.Commit(keys, uint64(i)); err != nil {
			b.Fatal(err)
		}
		total += len(keys)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r := s.Replay(s.KeyTail())
		n := 0
		for {
			ks, ok := r.Next()
			if !ok {
				break
			}
			n += len(ks.Keys)
		}
		if n != total {
			b.Fatalf("replayed %d keys, want %d: %v", n, total, r.StopReason())
		}
	}
	b.ReportMetric(float64(total)*float64(b.N)/b.Elapsed().Seconds(), "keys/s")
}
