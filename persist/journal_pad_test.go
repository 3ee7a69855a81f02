package persist

import (
	"errors"
	"testing"
)

// writeLog is a whole-flush crash media that records the byte ranges of
// every write.
type writeLog struct {
	*CrashMedia
	writes []span
}

func (w *writeLog) WriteAt(p []byte, off int64) error {
	w.writes = append(w.writes, span{off, int64(len(p))})
	return w.CrashMedia.WriteAt(p, off)
}

// TestJournalNeverWritesPartOfAFreshPage: on whole-flush (page cache) media
// the journal never writes part of a log page that no earlier write has
// covered in full, which would make the kernel read that page from the
// device before the write could go on. On range-flush media it writes each
// kset's bytes only. Either way the log replays in full and ends cleanly.
func TestJournalNeverWritesPartOfAFreshPage(t *testing.T) {
	for _, whole := range []bool{true, false} {
		m := NewCrashMedia(SegmentsOffset+6*testSeg, TearPage)
		m.SetWholeFlush(whole)
		w := &writeLog{CrashMedia: m}
		s, err := Format(w, FormatOptions{SegmentSize: testSeg})
		if err != nil {
			t.Fatal(err)
		}
		// Segments 1..5 hold the log; fill them with old bytes, as a cache
		// file that has been written before would hold.
		old := make([]byte, 5*testSeg)
		for i := range old {
			old[i] = 0xa5
		}
		if err := m.WriteAt(old, s.segBase(1)); err != nil {
			t.Fatal(err)
		}
		first := len(w.writes)
		j := s.OpenJournal(s.KeyTail(), seqAlloc(6))
		var want []uint64
		for i := range 200 { // about 250 KiB of ksets: the log crosses segments
			keys := make([]Key, 1+(i*7)%60)
			for k := range keys {
				keys[k] = Key{Volume: 1, Offset: uint64(i*64+k) << 12, Length: 4096, Pos: Pos{Seg: 5, Off: uint32(k%16) * 4096}, Gen: 1, Flags: KeyDirty}
			}
			ks, err := j.Append(keys, 1)
			if err != nil {
				t.Fatal(err)
			}
			want = append(want, ks.LSN)
		}

		full := map[int64]bool{} // pages some write has covered in full
		for _, wr := range w.writes[first:] {
			lo, hi := wr.off, wr.off+wr.n
			if whole {
				for p := lo &^ (pageSize - 1); p < hi; p += pageSize {
					if (lo > p || hi < p+pageSize) && !full[p] {
						t.Fatalf("whole-flush media: write [%d, %d) covers part of page %d, which no earlier write covered in full", lo, hi, p)
					}
				}
			}
			for p := (lo + pageSize - 1) &^ (pageSize - 1); p+pageSize <= hi; p += pageSize {
				full[p] = true
			}
		}
		if !whole {
			var padded int
			for _, wr := range w.writes[first:] {
				if (wr.n-ksetHeaderSize)%keySize != 0 {
					padded++
				}
			}
			if padded != 0 {
				t.Fatalf("range-flush media: %d journal writes are not a whole kset", padded)
			}
		}

		r := s.Replay(s.KeyTail())
		var got []uint64
		for {
			ks, more := r.Next()
			if !more {
				break
			}
			got = append(got, ks.LSN)
		}
		if !errors.Is(r.StopReason(), ErrEndOfLog) {
			t.Fatalf("whole=%v: replay stopped with %v, want the end of the log", whole, r.StopReason())
		}
		if len(got) != len(want) || got[0] != want[0] || got[len(got)-1] != want[len(want)-1] {
			t.Fatalf("whole=%v: replayed %d ksets (LSN %v..), want %d", whole, len(got), got[:min(len(got), 3)], len(want))
		}
		if len(r.LogSegments()) < 2 {
			t.Fatalf("whole=%v: log spans segments %v; the test needs it to cross segments", whole, r.LogSegments())
		}
	}
}
