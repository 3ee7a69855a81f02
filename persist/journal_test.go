package persist

import (
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
)

// TestStaleKSetAfterTornGroupRejected: a group of two ksets where the
// second survived a crash and the first did not. The next session rewrites
// the first LSN with the same size, which lines the stale second kset up at
// the expected position with the expected LSN; the session chain must stop
// replay there.
func TestStaleKSetAfterTornGroupRejected(t *testing.T) {
	m, s := newTestStore(t, 4, TearDAX, FormatOptions{})
	j := s.OpenJournal(s.KeyTail(), seqAlloc(4))
	first, err := j.Commit(testKeys(3, 1, s), 1)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := j.append(testKeys(5, 2, s), 1, false)
	if err != nil {
		t.Fatal(err)
	}
	k3, err := j.append(testKeys(2, 3, s), 1, false)
	if err != nil {
		t.Fatal(err)
	}
	img := m.CrashImage(m.PersistPoints(), nil) // k2 and k3 lost ...
	stale := make([]byte, ksetSize(2))
	_ = m.ReadAt(stale, s.DataOffset(k3.Pos))
	_ = img.WriteAt(stale, s.DataOffset(k3.Pos)) // ... but k3 survived
	_ = img.Persist(0, img.Size())

	s2, err := Open(img)
	if err != nil {
		t.Fatal(err)
	}
	r := s2.Replay(s2.KeyTail())
	var got []uint64
	for ks, ok := r.Next(); ok; ks, ok = r.Next() {
		got = append(got, ks.LSN)
	}
	if !reflect.DeepEqual(got, []uint64{first.LSN}) || r.Head() != (Tail{Pos: k2.Pos, LSN: 2}) {
		t.Fatalf("replayed %v, head %+v", got, r.Head())
	}
	j2 := s2.OpenJournal(r.Head(), seqAlloc(4))
	other := testKeys(5, 77, s2) // same size as k2, other content
	nk2, err := j2.Commit(other, 2)
	if err != nil {
		t.Fatal(err)
	}
	if nk2.Next.Pos != k3.Pos || nk2.Next.LSN != k3.LSN {
		t.Fatalf("test setup: new kset ends at %+v, stale kset at %+v LSN %d", nk2.Next, k3.Pos, k3.LSN)
	}
	s3, err := Open(img)
	if err != nil {
		t.Fatal(err)
	}
	r = s3.Replay(s3.KeyTail())
	var replayed []KSet
	for ks, ok := r.Next(); ok; ks, ok = r.Next() {
		replayed = append(replayed, ks)
	}
	if len(replayed) != 2 || !reflect.DeepEqual(replayed[1].Keys, other) {
		t.Fatalf("replayed %d ksets: %+v", len(replayed), replayed)
	}
	if !errors.Is(r.StopReason(), ErrChainBreak) {
		t.Fatalf("stop reason %v, want ErrChainBreak", r.StopReason())
	}

	// A journal opened at a head this store has not replayed to walks the
	// log itself to continue the chain.
	s4, err := Open(img)
	if err != nil {
		t.Fatal(err)
	}
	j4 := s4.OpenJournal(nk2.Next, seqAlloc(4))
	if _, err := j4.Commit(testKeys(1, 9, s4), 3); err != nil {
		t.Fatal(err)
	}
	r = s4.Replay(s4.KeyTail())
	n := 0
	for _, ok := r.Next(); ok; _, ok = r.Next() {
		n++
	}
	if n != 3 {
		t.Fatalf("replayed %d ksets after the third session, want 3: %v", n, r.StopReason())
	}
}

// TestConcurrentCommits: committers in parallel; every commit is replayed
// once, in LSN order, with its keys; commits share flushes.
func TestConcurrentCommits(t *testing.T) {
	m, s := newTestStore(t, 16, TearPage, FormatOptions{})
	j := s.OpenJournal(s.KeyTail(), seqAlloc(16))
	const workers, each = 8, 40
	var mu sync.Mutex
	byLSN := map[uint64]KSet{}
	var wg sync.WaitGroup
	for g := 0; g < workers; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				keys := testKeys(1+(g*7+i)%20, uint64(g*1000+i), s)
				ks, err := j.Commit(keys, uint64(g))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				byLSN[ks.LSN] = ks
				mu.Unlock()
			}
		}(g)
	}
	wg.Wait()
	r := s.Replay(s.KeyTail())
	n := 0
	for ks, ok := r.Next(); ok; ks, ok = r.Next() {
		want := byLSN[ks.LSN]
		if ks.LSN != uint64(n+1) || fmt.Sprint(ks) != fmt.Sprint(want) {
			t.Fatalf("replayed %+v, committed %+v", ks, want)
		}
		n++
	}
	if n != workers*each {
		t.Fatalf("replayed %d, committed %d: %v", n, workers*each, r.StopReason())
	}
	st := j.Stats()
	if st.Commits != workers*each || st.Flushes == 0 || st.Flushes > st.Commits {
		t.Fatalf("stats %+v", st)
	}
	t.Logf("%d commits in %d flushes, %d persist points", st.Commits, st.Flushes, m.PersistPoints())
}

// TestCommitErrors: invalid keys are refused before anything is written;
// an allocator error is ErrJournalFull; a media fault is sticky.
func TestCommitErrors(t *testing.T) {
	m, s := newTestStore(t, 3, TearDAX, FormatOptions{})
	full := errors.New("no segment")
	j := s.OpenJournal(s.KeyTail(), func() (uint32, error) { return 0, full })
	bad := []Key{
		{Length: 0, Flags: KeyDirty},
		{Length: 4096, Flags: KeyDirty | KeyClean},
		{Length: 4096, Flags: KeyDirty, Pos: Pos{Seg: 3}},
		{Length: 4096, Flags: KeyDirty, Pos: Pos{Off: s.SegmentDataSize() - 100}},
		{Length: 512, Flags: KeyTombstone, Gen: 1},
		{Length: 512, Flags: KeyDirty, DataCRC: 5}, // store has no DataCRC
		{Offset: ^uint64(0) - 10, Length: 512, Flags: KeyTombstone},
	}
	before := m.PersistPoints()
	for i, k := range bad {
		if _, err := j.Commit([]Key{k}, 0); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("bad key %d: %v", i, err)
		}
	}
	if _, err := j.Commit(nil, 0); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("empty kset: %v", err)
	}
	if _, err := j.Commit(make([]Key, MaxKSetKeys+1), 0); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("oversized kset: %v", err)
	}
	if m.PersistPoints() != before {
		t.Fatal("refused commits persisted something")
	}
	var err error
	for i := 0; err == nil && i < 1000; i++ {
		_, err = j.Commit(testKeys(MaxKSetKeys, uint64(i), s), 0)
	}
	if !errors.Is(err, ErrJournalFull) || !errors.Is(err, full) {
		t.Fatalf("filling the segment: %v", err)
	}
	// Media fault: sticky.
	j2 := s.OpenJournal(j.Head(), seqAlloc(3))
	_ = j2
	m.FailAfter(0, errors.New("boom"))
	if _, err := s.BumpGen(2); !errors.Is(err, ErrMediaFault) {
		t.Fatalf("BumpGen on failing media: %v", err)
	}
	m.FailAfter(-1, nil)
	if g, _ := s.Gen(2); g != 1 {
		t.Fatalf("failed BumpGen changed the generation to %d", g)
	}
	m.FailAfter(1, errors.New("boom")) // the kset write succeeds, its persist fails
	if _, err := j2.Commit(testKeys(1, 1, s), 0); !errors.Is(err, ErrMediaFault) {
		t.Fatalf("commit on failing media: %v", err)
	}
	m.FailAfter(-1, nil)
	if _, err := j2.Commit(testKeys(1, 1, s), 0); !errors.Is(err, ErrMediaFault) {
		t.Fatalf("commit after a failed persist: %v, want the sticky fault", err)
	}
}

// TestAppendThenWaitDurable: Append writes a kset without persisting it;
// one WaitDurable for the last of several appended ksets makes all of them
// durable with one flush, and a crash before it keeps none of them.
func TestAppendThenWaitDurable(t *testing.T) {
	m, s := newTestStore(t, 4, TearPage, FormatOptions{})
	j := s.OpenJournal(s.KeyTail(), seqAlloc(4))
	var lsns []uint64
	for i := range 3 {
		ks, err := j.Append(testKeys(2+i, uint64(10*i), s), 1)
		if err != nil {
			t.Fatal(err)
		}
		lsns = append(lsns, ks.LSN)
	}
	before := m.PersistPoints()
	if st := j.Stats(); st.Commits != 0 || st.Flushes != 0 {
		t.Fatalf("Append persisted or counted a commit: %+v", st)
	}
	if err := j.WaitDurable(lsns[2]); err != nil {
		t.Fatal(err)
	}
	if st := j.Stats(); st.Flushes != 1 {
		t.Fatalf("%d flushes for three appended ksets, want 1", st.Flushes)
	}
	// The earlier ones are durable with it: waiting for them needs no flush.
	if err := j.WaitDurable(lsns[0]); err != nil || j.Stats().Flushes != 1 {
		t.Fatalf("WaitDurable of an earlier kset: %v, stats %+v", err, j.Stats())
	}
	replayed := func(img *CrashMedia) []uint64 {
		s2, err := Open(img)
		if err != nil {
			t.Fatal(err)
		}
		var got []uint64
		r := s2.Replay(s2.KeyTail())
		for ks, ok := r.Next(); ok; ks, ok = r.Next() {
			got = append(got, ks.LSN)
		}
		return got
	}
	if got := replayed(m.CrashImage(before, nil)); len(got) != 0 {
		t.Fatalf("crash before the persist replayed %v", got)
	}
	if got := replayed(m.CrashImage(m.PersistPoints(), nil)); !reflect.DeepEqual(got, lsns) {
		t.Fatalf("crash after WaitDurable replayed %v, want %v", got, lsns)
	}
}
