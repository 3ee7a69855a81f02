package persist

import (
	"errors"
	"fmt"
	"testing"
)

const testSeg = 128 << 10

func newTestStore(t testing.TB, segs int, unit TearUnit, opts FormatOptions) (*CrashMedia, *Store) {
	t.Helper()
	m := NewCrashMedia(SegmentsOffset+int64(segs)*testSeg, unit)
	if opts.SegmentSize == 0 {
		opts.SegmentSize = testSeg
	}
	s, err := Format(m, opts)
	if err != nil {
		t.Fatalf("Format: %v", err)
	}
	return m, s
}

// seqAlloc hands out segments 1, 2, ... wrapping over count (skipping 0
// which holds the start of the log).
func seqAlloc(count uint32) func() (uint32, error) {
	next := uint32(0)
	return func() (uint32, error) {
		next++
		if next >= count {
			next = 1
		}
		return next, nil
	}
}

func testKeys(n int, lsnHint uint64, s *Store) []Key {
	keys := make([]Key, n)
	for i := range keys {
		keys[i] = Key{Volume: uint32(i % 3), Offset: lsnHint<<20 | uint64(i)<<12, Length: 4096, Pos: Pos{Seg: uint32(i) % s.SegmentCount(), Off: uint32(i) * 4096 % (s.SegmentDataSize() - 4096)}, Gen: 1, Flags: KeyDirty}
		if i%5 == 4 {
			keys[i] = Key{Volume: 1, Offset: lsnHint, Length: 512, Flags: KeyTombstone}
		}
	}
	return keys
}

func TestFormatOpenRoundTrip(t *testing.T) {
	m, s := newTestStore(t, 8, TearDAX, FormatOptions{DataCRC: true})
	if got := s.SegmentCount(); got != 8 {
		t.Fatalf("segment count %d, want 8", got)
	}
	if err := s.SetVolumes([]VolumeRecord{{ID: 7, Name: "db1", Size: 1 << 30, Flags: 3}}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetInfo(CacheInfo{GCPercent: 55, Flags: 9}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.BumpGen(3); err != nil {
		t.Fatal(err)
	}
	j := s.OpenJournal(s.KeyTail(), seqAlloc(8))
	var committed []KSet
	for i := 0; i < 200; i++ {
		ks, err := j.Commit(testKeys(1+i%MaxKSetKeys, uint64(i), s), uint64(i/10))
		if err != nil {
			t.Fatalf("commit %d: %v", i, err)
		}
		committed = append(committed, ks)
	}
	if err := s.SetDirtyTail(committed[10].Pos.tail(committed[10].LSN)); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(m)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	if s2.Superblock() != s.Superblock() {
		t.Fatalf("superblock %+v != %+v", s2.Superblock(), s.Superblock())
	}
	if v := s2.Volumes(); len(v) != 1 || v[0] != (VolumeRecord{ID: 7, Name: "db1", Size: 1 << 30, Flags: 3}) {
		t.Fatalf("volumes %+v", v)
	}
	if ci := s2.Info(); ci != (CacheInfo{GCPercent: 55, Flags: 9}) {
		t.Fatalf("info %+v", ci)
	}
	if g, err := s2.Gen(3); err != nil || g != 2 {
		t.Fatalf("gen 3 = %d, %v; want 2", g, err)
	}
	if dt := s2.DirtyTail(); dt != committed[10].Pos.tail(committed[10].LSN) {
		t.Fatalf("dirty tail %+v", dt)
	}
	r := s2.Replay(s2.KeyTail())
	n := 0
	for {
		ks, ok := r.Next()
		if !ok {
			break
		}
		if fmt.Sprint(ks) != fmt.Sprint(committed[n]) {
			t.Fatalf("replayed kset %d = %+v, committed %+v", n, ks, committed[n])
		}
		n++
	}
	if n != len(committed) {
		t.Fatalf("replayed %d ksets, want %d (stop: %v)", n, len(committed), r.StopReason())
	}
	if !errors.Is(r.StopReason(), ErrEndOfLog) && !errors.Is(r.StopReason(), ErrLSNGap) {
		t.Fatalf("stop reason %v", r.StopReason())
	}
	if r.Head() != j.Head() {
		t.Fatalf("replay head %+v, journal head %+v", r.Head(), j.Head())
	}
	if len(r.LogSegments()) < 3 {
		t.Fatalf("log segments %v: expected several segment switches", r.LogSegments())
	}
}

func (p Pos) tail(lsn uint64) Tail { return Tail{Pos: p, LSN: lsn} }
