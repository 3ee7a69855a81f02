package persist

import (
	"errors"
	"slices"
	"testing"
)

// unfencedRig is a store with unfenced ksets on a whole-flush crash media
// and three ksets, each with one dirty key whose data was written just
// before it: k1 is durable (committed), k2 and k3 are only appended.
type unfencedRig struct {
	m          *CrashMedia
	s          *Store
	ks         [3]KSet
	dataOffset [3]int64
}

func newUnfencedRig(t *testing.T) *unfencedRig {
	t.Helper()
	m := NewCrashMedia(SegmentsOffset+4*testSeg, TearPage)
	m.SetWholeFlush(true)
	s, err := Format(m, FormatOptions{SegmentSize: testSeg, DataCRC: true})
	if err != nil {
		t.Fatal(err)
	}
	if !s.UnfencedCommits() {
		t.Fatal("UnfencedCommits false on a data-CRC store on whole-flush media")
	}
	r := &unfencedRig{m: m, s: s}
	j := s.OpenJournal(s.KeyTail(), seqAlloc(4))
	for i := range 3 {
		data := make([]byte, 4096)
		for b := range data {
			data[b] = byte(i*7 + b)
		}
		pos := Pos{Seg: 2, Off: uint32(i) * 4096}
		r.dataOffset[i] = s.DataOffset(pos)
		if err := m.WriteAt(data, r.dataOffset[i]); err != nil {
			t.Fatal(err)
		}
		k := Key{Volume: 1, Offset: uint64(i) << 12, Length: 4096, Pos: pos, Gen: 1, Flags: KeyDirty, DataCRC: DataCRC32C(data)}
		ks, err := j.AppendUnfenced([]Key{k}, 1)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if err := j.WaitDurable(ks.LSN); err != nil {
				t.Fatal(err)
			}
		}
		r.ks[i] = ks
	}
	if got := []uint32{r.ks[0].Unconfirmed, r.ks[1].Unconfirmed, r.ks[2].Unconfirmed}; got[0] != 0 || got[1] != 0 || got[2] != 1 {
		t.Fatalf("unconfirmed counts %v, want [0 0 1] (k1 durable before k2 was written, k2 not before k3)", got)
	}
	return r
}

// image returns the current content (as if everything written survived)
// with the data of the ksets in lose replaced by zeroes (it did not reach
// the media), opened as a store.
func (r *unfencedRig) image(t *testing.T, lose ...int) (*CrashMedia, *Store) {
	t.Helper()
	b := r.m.Bytes()
	for _, i := range lose {
		clear(b[r.dataOffset[i] : r.dataOffset[i]+4096])
	}
	img := NewCrashMediaFrom(b, TearPage)
	img.SetWholeFlush(true)
	s, err := Open(img)
	if err != nil {
		t.Fatal(err)
	}
	return img, s
}

func replayLSNs(t *testing.T, r *Replayer) []uint64 {
	t.Helper()
	var lsns []uint64
	for {
		ks, ok := r.Next()
		if !ok {
			return lsns
		}
		lsns = append(lsns, ks.LSN)
	}
}

func TestReplayVerifiedEndsAtTornUnfencedKSet(t *testing.T) {
	r := newUnfencedRig(t)
	l1, l2, l3 := r.ks[0].LSN, r.ks[1].LSN, r.ks[2].LSN
	for _, c := range []struct {
		name string
		lose []int
		want []uint64
		torn bool
	}{
		{"all data present", nil, []uint64{l1, l2, l3}, false},
		// k1 is confirmed by k2 (written after k1 was durable): a bad CRC
		// there is corruption, not a torn tail, and the log goes on.
		{"confirmed kset's data lost", []int{0}, []uint64{l1, l2, l3}, false},
		{"middle kset's data lost", []int{1}, []uint64{l1}, true},
		{"last kset's data lost", []int{2}, []uint64{l1, l2}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, s := r.image(t, c.lose...)
			rp := s.ReplayVerified(s.KeyTail())
			got := replayLSNs(t, rp)
			if !slices.Equal(got, c.want) {
				t.Fatalf("replayed LSNs %v, want %v (stop: %v)", got, c.want, rp.StopReason())
			}
			if torn := errors.Is(rp.StopReason(), ErrTornData); torn != c.torn {
				t.Fatalf("stop reason %v, torn %v, want %v", rp.StopReason(), torn, c.torn)
			}
			if !c.torn {
				return
			}
			// A plain walk (the runtime's walks are bounded by LSN) does
			// not verify data and sees every kset.
			if got := replayLSNs(t, s.Replay(s.KeyTail())); len(got) != 3 {
				t.Fatalf("plain replay saw %v, want all three ksets", got)
			}
			// The head is the torn kset: a journal opened there rewrites
			// its LSN, and the stale ksets after it never come back.
			head := rp.Head()
			if head.LSN != c.want[len(c.want)-1]+1 {
				t.Fatalf("head LSN %d after %v", head.LSN, c.want)
			}
			j := s.OpenJournal(head, seqAlloc(4))
			nk, err := j.Commit([]Key{{Volume: 2, Offset: 0, Length: 512, Flags: KeyTombstone}}, 2)
			if err != nil {
				t.Fatal(err)
			}
			if nk.LSN != head.LSN {
				t.Fatalf("new kset LSN %d, want %d", nk.LSN, head.LSN)
			}
			// The first kset of the new session confirms only what the
			// replayed log proved durable (the ksets below the last
			// replayed kset's LSN-Unconfirmed), not the replayed tail:
			// after a process crash that tail may be in the page cache
			// only.
			last := r.ks[len(c.want)-1]
			if want := uint32(head.LSN - (last.LSN - uint64(last.Unconfirmed))); nk.Unconfirmed != want || want == 0 {
				t.Fatalf("new kset's unconfirmed count %d, want %d", nk.Unconfirmed, want)
			}
			again := replayLSNs(t, s.ReplayVerified(s.KeyTail()))
			if want := append(append([]uint64(nil), c.want...), head.LSN); !slices.Equal(again, want) {
				t.Fatalf("after the new session's kset, replay %v, want %v", again, want)
			}
		})
	}
}

// TestCheckReportsTornTailAsEnd: check ends the journal where replay does
// and reports no problem for a torn unfenced tail, but does for a
// confirmed kset whose data fails its CRC.
func TestCheckReportsTornTailAsEnd(t *testing.T) {
	r := newUnfencedRig(t)
	_, s := r.image(t, 2)
	rep, problems, err := walk(s, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) != 0 {
		t.Fatalf("problems %v for a torn tail", problems)
	}
	if rep.Journal.KSets != 2 || rep.Journal.LastLSN != r.ks[1].LSN {
		t.Fatalf("check walked %d ksets to LSN %d, want 2 to %d (stop %s)", rep.Journal.KSets, rep.Journal.LastLSN, r.ks[1].LSN, rep.Journal.StopReason)
	}
	_, s = r.image(t, 0)
	if problems, err = Check(s); err != nil || len(problems) != 1 {
		t.Fatalf("confirmed kset with lost data: problems %v, err %v; want one CRC problem", problems, err)
	}
}

func TestUnfencedNeedsFeatureAndWholeFlush(t *testing.T) {
	data := make([]byte, 4096)
	k := Key{Volume: 1, Length: 4096, Pos: Pos{Seg: 2}, Gen: 1, Flags: KeyDirty, DataCRC: DataCRC32C(data)}
	for _, c := range []struct {
		name  string
		whole bool
		crc   bool
	}{{"range flush", false, true}, {"no data crc", true, false}} {
		m := NewCrashMedia(SegmentsOffset+4*testSeg, TearPage)
		m.SetWholeFlush(c.whole)
		s, err := Format(m, FormatOptions{SegmentSize: testSeg, DataCRC: c.crc})
		if err != nil {
			t.Fatal(err)
		}
		if s.UnfencedCommits() {
			t.Fatalf("%s: UnfencedCommits true", c.name)
		}
		kk := k
		if !c.crc {
			kk.DataCRC = 0
		}
		if _, err := s.OpenJournal(s.KeyTail(), seqAlloc(4)).AppendUnfenced([]Key{kk}, 1); !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("%s: AppendUnfenced: %v, want ErrInvalidArgument", c.name, err)
		}
	}
	// A kset marked unfenced on a store without the feature is refused at
	// replay (a store's feature bits are fixed at format, so the kset is
	// foreign to it).
	r := newUnfencedRig(t)
	b := r.m.Bytes()
	img := NewCrashMediaFrom(b, TearPage)
	s, err := Open(img)
	if err != nil {
		t.Fatal(err)
	}
	s.unfenced = false
	rp := s.Replay(s.KeyTail())
	if got := replayLSNs(t, rp); len(got) != 0 || !errors.Is(rp.StopReason(), ErrBounds) {
		t.Fatalf("replayed %v, stop %v; want nothing and ErrBounds", got, rp.StopReason())
	}
}
