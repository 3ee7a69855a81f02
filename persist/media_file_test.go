//go:build linux

package persist

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
)

func TestOpenFileKinds(t *testing.T) {
	dir := t.TempDir()
	for _, kind := range []MediaKind{"", KindMmapMsync, KindPwriteFdatasync} {
		name := string(kind)
		if name == "" {
			name = "auto"
		}
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, fmt.Sprintf("k-%s.cache", kind))
			m, err := OpenFile(path, FileOptions{Create: true, Size: 1 << 20, Kind: kind})
			if err != nil {
				t.Fatal(err)
			}
			want := kind
			if kind == "" {
				// No DAX on ext4/tmpfs: MAP_SYNC fails and the default is used.
				want = DefaultFileKind
			}
			if m.Kind() != want {
				t.Fatalf("kind %q, want %q", m.Kind(), want)
			}
			data := bytes.Repeat([]byte("cachelun"), 1024)
			if err := m.WriteAt(data, 12345); err != nil {
				t.Fatal(err)
			}
			if err := m.Persist(12345, int64(len(data))); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(data))
			if err := m.ReadAt(got, 12345); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read back: %v", err)
			}
			if err := m.ReadAt(got, 1<<20-10); !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("read past the end: %v", err)
			}
			if err := m.Close(); err != nil {
				t.Fatal(err)
			}
			if err := m.ReadAt(got, 0); !errors.Is(err, ErrClosed) {
				t.Fatalf("read after close: %v", err)
			}
			// The data is in the file.
			raw, _ := os.ReadFile(path)
			if !bytes.Equal(raw[12345:12345+len(data)], data) {
				t.Fatal("file does not hold the written data")
			}
			ro, err := OpenFile(path, FileOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer ro.Close()
			if err := ro.WriteAt(data, 0); !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("write to a read-only media: %v", err)
			}
		})
	}
	if _, err := OpenFile(filepath.Join(dir, "x"), FileOptions{Create: true, Size: 1 << 20, Kind: KindDAX}); err == nil {
		t.Fatal("forced DAX on a non-DAX file system succeeded")
	}
}

// TestMediaFaultOnTruncation: the file is truncated under a live mapping;
// accesses return ErrMediaFault instead of crashing the process.
func TestMediaFaultOnTruncation(t *testing.T) {
	for _, kind := range []MediaKind{KindMmapMsync, KindPwriteFdatasync} {
		t.Run(string(kind), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "trunc.cache")
			m, err := OpenFile(path, FileOptions{Create: true, Size: 1 << 20, Kind: kind})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			buf := bytes.Repeat([]byte{0xab}, 8192)
			if err := m.WriteAt(buf, 512<<10); err != nil {
				t.Fatal(err)
			}
			if err := m.Persist(512<<10, 8192); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(path, 4096); err != nil {
				t.Fatal(err)
			}
			err = m.ReadAt(buf, 512<<10)
			if !errors.Is(err, ErrMediaFault) {
				t.Fatalf("read of a truncated mapping: %v, want ErrMediaFault", err)
			}
			t.Logf("read: %v", err)
			if kind == KindMmapMsync {
				if err := m.WriteAt(buf, 600<<10); !errors.Is(err, ErrMediaFault) {
					t.Fatalf("write to a truncated mapping: %v, want ErrMediaFault", err)
				}
			}
			// The part still backed by the file keeps working.
			if err := m.ReadAt(buf[:100], 0); err != nil {
				t.Fatalf("read within the file: %v", err)
			}
		})
	}
}

// TestFileGroupCommit: concurrent persists on a real file share flushes and
// every persisted write is in the file.
func TestFileGroupCommit(t *testing.T) {
	for _, kind := range []MediaKind{KindMmapMsync, KindPwriteFdatasync} {
		t.Run(string(kind), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "gc.cache")
			mi, err := OpenFile(path, FileOptions{Create: true, Size: 4 << 20, Kind: kind})
			if err != nil {
				t.Fatal(err)
			}
			m := mi.(*fileMedia)
			defer m.Close()
			const workers, each = 16, 20
			var wg sync.WaitGroup
			for g := 0; g < workers; g++ {
				wg.Add(1)
				go func(g int) {
					defer wg.Done()
					for i := 0; i < each; i++ {
						off := int64((g*each + i) * 4096)
						b := bytes.Repeat([]byte{byte(g + 1)}, 4096)
						if err := m.WriteAt(b, off); err != nil {
							t.Error(err)
							return
						}
						if err := m.Persist(off, 4096); err != nil {
							t.Error(err)
							return
						}
					}
				}(g)
			}
			wg.Wait()
			if f := m.Flushes(); f == 0 || f > workers*each {
				t.Fatalf("%d flushes for %d persists", f, workers*each)
			}
			t.Logf("%d persists, %d flushes", workers*each, m.Flushes())
			raw, _ := os.ReadFile(path)
			for g := 0; g < workers; g++ {
				for i := 0; i < each; i++ {
					off := (g*each + i) * 4096
					if raw[off] != byte(g+1) || raw[off+4095] != byte(g+1) {
						t.Fatalf("block %d not in the file", off/4096)
					}
				}
			}
		})
	}
}

// TestFlusherCoalesces: with a slow flush, persists that arrive while it
// runs are all served by one following flush.
func TestFlusherCoalesces(t *testing.T) {
	var f flusher
	f.init()
	gate := make(chan struct{})
	var mu sync.Mutex
	var ranges [][2]int64
	flush := func(lo, hi int64) error {
		mu.Lock()
		ranges = append(ranges, [2]int64{lo, hi})
		first := len(ranges) == 1
		mu.Unlock()
		if first {
			<-gate
		}
		return nil
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = f.persist(0, 10, flush) }()
	for { // wait until the first flush is running
		f.mu.Lock()
		running := f.running
		f.mu.Unlock()
		if running {
			break
		}
		runtime.Gosched()
	}
	for i := 1; i <= 10; i++ {
		wg.Add(1)
		go func(i int) { defer wg.Done(); _ = f.persist(int64(i*100), 10, flush) }(i)
	}
	for { // all ten are queued behind the running flush
		f.mu.Lock()
		queued := f.pending == 10
		f.mu.Unlock()
		if queued {
			break
		}
		runtime.Gosched()
	}
	close(gate)
	wg.Wait()
	if len(ranges) != 2 || ranges[1] != [2]int64{100, 1010} {
		t.Fatalf("flushes %v, want the first and one covering [100,1010)", ranges)
	}
	// A failed flush is sticky.
	boom := errors.New("EIO")
	if err := f.persist(0, 1, func(lo, hi int64) error { return boom }); !errors.Is(err, boom) {
		t.Fatal(err)
	}
	if err := f.persist(0, 1, func(lo, hi int64) error { return nil }); !errors.Is(err, boom) {
		t.Fatalf("persist after a failed flush: %v", err)
	}
}

// TestDAXPathOnSharedMapping runs the DAX code path (writes into the
// mapping, persist by CPU cache write-back) over an ordinary shared
// mapping: MAP_SYNC is unavailable here, so only the flag differs from a
// real DAX open. Data written and persisted is in the file; a truncated
// file gives ErrMediaFault, not a crash.
func TestDAXPathOnSharedMapping(t *testing.T) {
	if !daxSupported {
		t.Skip("no CPU cache write-back primitive on this architecture")
	}
	path := filepath.Join(t.TempDir(), "dax.cache")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	const size = 1 << 20
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	b, err := syscall.Mmap(int(f.Fd()), 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	m := &fileMedia{f: f, fd: int(f.Fd()), size: size, kind: KindDAX, mapping: b}
	m.flushCPU, _ = cacheFlusher()
	m.fl.init()
	defer m.Close()
	s, err := Format(m, FormatOptions{SegmentSize: 128 << 10})
	if err != nil {
		t.Fatal(err)
	}
	j := s.OpenJournal(s.KeyTail(), seqAlloc(s.SegmentCount()))
	for i := 0; i < 50; i++ {
		if _, err := j.Commit(testKeys(1+i%30, uint64(i), s), 0); err != nil {
			t.Fatal(err)
		}
	}
	// Another view of the same file sees everything.
	raw, _ := os.ReadFile(path)
	s2, err := Open(NewCrashMediaFrom(raw, TearDAX))
	if err != nil {
		t.Fatal(err)
	}
	r := s2.Replay(s2.KeyTail())
	n := 0
	for _, ok := r.Next(); ok; _, ok = r.Next() {
		n++
	}
	if n != 50 {
		t.Fatalf("replayed %d of 50 ksets: %v", n, r.StopReason())
	}
	if err := os.Truncate(path, 4096); err != nil {
		t.Fatal(err)
	}
	if err := m.WriteAt([]byte{1}, 900<<10); !errors.Is(err, ErrMediaFault) {
		t.Fatalf("write past the truncated end: %v", err)
	}
	if err := m.Persist(900<<10, 64); err != nil && !errors.Is(err, ErrMediaFault) {
		t.Fatalf("persist past the truncated end: %v", err)
	}
}

// TestPersistRangesOneFlush: on a pwrite-fdatasync file, PersistRanges of
// scattered spans costs one flush (Persist of each would cost one per span,
// since each needs a flush that starts after it); on msync it flushes each
// span; a span outside the media fails before anything is flushed.
func TestPersistRangesOneFlush(t *testing.T) {
	for _, kind := range []MediaKind{KindPwriteFdatasync, KindMmapMsync} {
		t.Run(string(kind), func(t *testing.T) {
			m, err := OpenFile(filepath.Join(t.TempDir(), "c"), FileOptions{Create: true, Size: 4 << 20, Kind: kind})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			fm := m.(*fileMedia)
			spans := []Span{{0, 4096}, {1 << 20, 4096}, {3 << 20, 512}}
			for _, sp := range spans {
				if err := m.WriteAt(make([]byte, sp.N), sp.Off); err != nil {
					t.Fatal(err)
				}
			}
			before := fm.Flushes()
			if err := PersistRanges(m, spans); err != nil {
				t.Fatal(err)
			}
			want := uint64(1)
			if kind == KindMmapMsync {
				want = uint64(len(spans))
			}
			if got := fm.Flushes() - before; got != want {
				t.Fatalf("%d flushes for %d spans, want %d", got, len(spans), want)
			}
			before = fm.Flushes()
			if err := PersistRanges(m, []Span{{0, 4096}, {4 << 20, 4096}}); err == nil {
				t.Fatal("a span past the end was accepted")
			}
			if kind == KindPwriteFdatasync && fm.Flushes() != before {
				t.Fatal("flushed although a span was invalid")
			}
		})
	}
}

// firstHole is where the first hole of the file at path starts: its size
// when every block is allocated and written. ext4 reports fallocated
// (unwritten) blocks as a hole.
func firstHole(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const seekHole = 4
	off, err := f.Seek(0, seekHole)
	if err != nil {
		t.Fatal(err)
	}
	return off
}

func TestOpenFileZeroFill(t *testing.T) {
	dir := t.TempDir()
	const size = 9<<20 + 4096 // more than two fill chunks, not a multiple of one
	control := filepath.Join(dir, "reserved.cache")
	m, err := OpenFile(control, FileOptions{Create: true, Size: size})
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	if h := firstHole(t, control); h == size {
		t.Skipf("%s: this file system reports reserved blocks as written, so zero-filled and reserved files look alike", dir)
	}

	for _, tc := range []struct {
		name    string
		initial int64 // existing size before the file is grown
	}{
		{"new file", 0},
		{"grown from an aligned size", 1 << 20},
		{"grown from an unaligned size", 1<<20 + 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, fmt.Sprintf("z%d.cache", tc.initial))
			if tc.initial > 0 {
				if err := os.WriteFile(path, bytes.Repeat([]byte{0xa5}, int(tc.initial)), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			m, err := OpenFile(path, FileOptions{Create: true, Size: size, ZeroFill: true})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if h := firstHole(t, path); h != size {
				t.Fatalf("first hole at %d of %d: the zero-filled file still has unwritten blocks", h, size)
			}
			got := make([]byte, size)
			if err := m.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			for i := range got {
				want := byte(0)
				if int64(i) < tc.initial {
					want = 0xa5
				}
				if got[i] != want {
					t.Fatalf("byte %d is %#x, want %#x (the fill must start where the old file ended)", i, got[i], want)
				}
			}
		})
	}
}
