package persist

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"sync"
	"testing"

	"github.com/cachelun/cachelun/internal/testkit"
)

// crashWorkload drives a journal on a crash media through commits of varied
// sizes across many segment switches, key/dirty tail moves with segment
// reuse (generation bump before reuse), and generation bumps, while the
// persist hook takes crash images at every persist point and checks them.
type crashWorkload struct {
	t    *testing.T
	m    *CrashMedia
	s    *Store
	j    *Journal
	rng  *rand.Rand
	free []uint32

	committed []KSet          // in LSN order
	expected  map[uint64]KSet // by LSN, recorded before Commit is called
	written   map[uint64]int  // LSN -> persist points before its Commit started
	durableAt map[uint64]int  // LSN -> persist points when its Commit returned
	tails     map[Tail]bool   // every key tail ever set or being set
	dtails    map[Tail]bool
	logSegs   []uint32 // segments of the live log, in order

	results  []crashResult
	variants int
	images   int
	damaged  int // damaged images checked (checkDamage)
}

type crashResult struct {
	point   int
	exact   bool   // image without torn survivors
	lastLSN uint64 // last LSN replayed (tail LSN - 1 if none)
}

func newCrashWorkload(t *testing.T, unit TearUnit, seed uint64) *crashWorkload {
	const segs = 10
	m := NewCrashMedia(SegmentsOffset+segs*testSeg, unit)
	// A previous format of the same file with a journal of its own: none of
	// its ksets may ever be replayed.
	old, err := Format(m, FormatOptions{SegmentSize: testSeg})
	if err != nil {
		t.Fatal(err)
	}
	oj := old.OpenJournal(old.KeyTail(), seqAlloc(segs))
	for i := 0; i < 60; i++ {
		if _, err := oj.Commit(testKeys(1+i%40, uint64(i), old), 0); err != nil {
			t.Fatal(err)
		}
	}
	s, err := Format(m, FormatOptions{SegmentSize: testSeg, Force: true})
	if err != nil {
		t.Fatal(err)
	}
	w := &crashWorkload{t: t, m: m, s: s, rng: rand.New(rand.NewPCG(seed, 99)), variants: 3,
		expected: map[uint64]KSet{}, written: map[uint64]int{}, durableAt: map[uint64]int{},
		tails: map[Tail]bool{s.KeyTail(): true}, dtails: map[Tail]bool{s.DirtyTail(): true}, logSegs: []uint32{0}}
	for seg := uint32(1); seg < segs; seg++ {
		w.free = append(w.free, seg)
	}
	w.j = s.OpenJournal(s.KeyTail(), func() (uint32, error) {
		if len(w.free) == 0 {
			return 0, errors.New("no free segment")
		}
		seg := w.free[0]
		w.free = w.free[1:]
		w.logSegs = append(w.logSegs, seg)
		return seg, nil
	})
	m.SetPersistHook(w.check)
	return w
}

// check runs at every persist point: the image with unpersisted writes
// dropped, and w.variants images where each unpersisted tear unit survives
// at random.
func (w *crashWorkload) check(point int) {
	for v := 0; v <= w.variants; v++ {
		var rng *rand.Rand
		if v > 0 {
			rng = rand.New(rand.NewPCG(uint64(point), uint64(v)))
		}
		img := w.m.CrashImage(point, rng)
		w.images++
		s, err := Open(img)
		if err != nil {
			w.t.Fatalf("point %d variant %d: open: %v", point, v, err)
		}
		if q := s.Quarantined(); len(q) != 0 {
			w.t.Fatalf("point %d variant %d: quarantined %v", point, v, q)
		}
		kt, dt := s.KeyTail(), s.DirtyTail()
		if !w.tails[kt] || !w.dtails[dt] {
			w.t.Fatalf("point %d variant %d: tails %+v / %+v never set", point, v, kt, dt)
		}
		r := s.ReplayVerified(kt)
		last := kt.LSN - 1
		var replayed []KSet
		for {
			ks, ok := r.Next()
			if !ok {
				break
			}
			replayed = append(replayed, ks)
			want, known := w.expected[ks.LSN]
			if ks.LSN != last+1 || !known {
				w.t.Fatalf("point %d variant %d: replayed LSN %d after %d (known %v)", point, v, ks.LSN, last, known)
			}
			if ks.Pos != want.Pos || ks.Epoch != want.Epoch || !reflect.DeepEqual(ks.Keys, want.Keys) {
				w.t.Fatalf("point %d variant %d: LSN %d replayed %+v, committed %+v", point, v, ks.LSN, ks, want)
			}
			last = ks.LSN
		}
		if errors.Is(r.StopReason(), ErrBounds) || errors.Is(r.StopReason(), ErrMediaFault) || errors.Is(r.StopReason(), ErrJournalDamaged) {
			w.t.Fatalf("point %d variant %d: replay stopped: %v", point, v, r.StopReason())
		}
		w.results = append(w.results, crashResult{point: point, exact: rng == nil, lastLSN: last})
		if rng == nil {
			w.checkDamage(point, img, replayed)
		}
	}
}

// checkDamage damages, in copies of a crash image, ksets of its log that
// were durable at the point and that a later durable kset (or the durable
// mark) proves durable, and expects replay to report ErrJournalDamaged at
// exactly that kset, never to end the log there silently. Every kset
// whose Commit had returned is covered except the newest one, which only
// the durable mark covers (the workload sets it now and then).
func (w *crashWorkload) checkDamage(point int, img *CrashMedia, replayed []KSet) {
	var proven []KSet
	mark := uint64(0)
	if s, err := Open(img); err == nil {
		mark = s.DurableMark()
	}
	for i, ks := range replayed {
		if _, durable := w.durableAt[ks.LSN]; !durable {
			break
		}
		laterDurable := i+1 < len(replayed) && w.durableAt[replayed[i+1].LSN] > 0
		if laterDurable || ks.LSN <= mark {
			proven = append(proven, ks)
		}
	}
	if len(proven) == 0 {
		return
	}
	// Bounded work per point: the first, the last and one random proven
	// kset; over all points every kset is damaged many times.
	picks := []KSet{proven[0], proven[len(proven)-1], proven[w.rng.IntN(len(proven))]}
	for _, ks := range picks {
		b := img.Bytes()
		n := int(ksetSize(len(ks.Keys)))
		at := w.s.DataOffset(ks.Pos) + int64(w.rng.IntN(n-4))
		for i := range int64(4) {
			b[at+i] ^= 0x5a
		}
		s, err := Open(NewCrashMediaFrom(b, TearUnit(img.unit)))
		if err != nil {
			w.t.Fatalf("point %d: damaged image: open: %v", point, err)
		}
		r := s.ReplayVerified(s.KeyTail())
		for {
			got, ok := r.Next()
			if !ok {
				break
			}
			if got.LSN >= ks.LSN {
				w.t.Fatalf("point %d: damage in kset LSN %d (bytes %d..%d): replay returned LSN %d", point, ks.LSN, at, at+4, got.LSN)
			}
		}
		var de *DamageError
		if !errors.As(r.StopReason(), &de) || de.Stop.LSN != ks.LSN || de.Evidence == "" {
			w.t.Fatalf("point %d: damage in durable kset LSN %d at %+v (bytes %d..%d, mark %d): replay stopped with %v, want ErrJournalDamaged there",
				point, ks.LSN, ks.Pos, at, at+4, mark, r.StopReason())
		}
		w.damaged++
	}
}

func (w *crashWorkload) commit() {
	n := 1 + w.rng.IntN(16)
	if w.rng.IntN(4) != 0 {
		n = MaxKSetKeys/2 + w.rng.IntN(MaxKSetKeys/2+1)
	}
	head := w.j.Head()
	keys := testKeys(n, head.LSN, w.s)
	for i := range keys {
		if keys[i].Flags != KeyTombstone && w.rng.IntN(3) == 0 {
			keys[i].Flags = KeyClean
		}
	}
	epoch := head.LSN / 7
	w.written[head.LSN] = w.m.PersistPoints()
	// Position is known only after the commit; the hook checks it through
	// a provisional entry filled in below (keys and epoch are checked).
	w.expected[head.LSN] = KSet{LSN: head.LSN, Epoch: epoch, Keys: keys, Pos: w.predictPos(head, n)}
	ks, err := w.j.Commit(keys, epoch)
	if errors.Is(err, ErrJournalFull) {
		delete(w.expected, head.LSN)
		delete(w.written, head.LSN)
		w.gc(true)
		return
	}
	if err != nil {
		w.t.Fatal(err)
	}
	if ks.Pos != w.expected[ks.LSN].Pos {
		w.t.Fatalf("kset at %+v, predicted %+v", ks.Pos, w.expected[ks.LSN].Pos)
	}
	w.durableAt[ks.LSN] = w.m.PersistPoints()
	w.committed = append(w.committed, ks)
	// The engine sets the durable mark now and then (when the log is
	// idle, and at close); so does the workload.
	if w.rng.IntN(8) == 0 {
		if err := w.s.SetDurableMark(ks.LSN); err != nil {
			w.t.Fatal(err)
		}
	}
}

// predictPos is where the journal will put a kset of n keys at head.
func (w *crashWorkload) predictPos(head Tail, n int) Pos {
	if uint64(head.Pos.Off)+uint64(ksetSize(n))+ksetHeaderSize > uint64(w.s.SegmentDataSize()) {
		if len(w.free) == 0 {
			return Pos{}
		}
		return Pos{Seg: w.free[0]}
	}
	return head.Pos
}

// gc moves the key tail forward to a committed kset (past at least one
// segment when force), bumps the generations of the segments left behind
// and frees them, in the order the engine must use: tail persisted, then
// generation bumped, then reuse.
func (w *crashWorkload) gc(force bool) {
	tail := w.s.KeyTail()
	var idx int
	for idx = 0; idx < len(w.committed) && w.committed[idx].LSN < tail.LSN; idx++ {
	}
	live := w.committed[idx:]
	if len(live) < 2 {
		if force {
			w.t.Fatal("journal full with nothing to collect")
		}
		return
	}
	target := live[1+w.rng.IntN(len(live)-1)]
	if force {
		// The first kset outside the tail's segment.
		for _, ks := range live {
			if ks.Pos.Seg != tail.Pos.Seg {
				target = ks
				break
			}
		}
	}
	nt := Tail{Pos: target.Pos, LSN: target.LSN}
	w.tails[nt] = true
	// The dirty tail must never be behind the key tail.
	if dt := w.s.DirtyTail(); dt.LSN < nt.LSN {
		w.dtails[nt] = true
		if err := w.s.SetDirtyTail(nt); err != nil {
			w.t.Fatal(err)
		}
	}
	if err := w.s.SetKeyTail(nt); err != nil {
		w.t.Fatal(err)
	}
	for len(w.logSegs) > 0 && w.logSegs[0] != nt.Pos.Seg {
		seg := w.logSegs[0]
		w.logSegs = w.logSegs[1:]
		if _, err := w.s.BumpGen(seg); err != nil {
			w.t.Fatal(err)
		}
		w.free = append(w.free, seg)
	}
}

func (w *crashWorkload) run(ops int) {
	for i := 0; i < ops; i++ {
		switch x := w.rng.IntN(100); {
		case x < 88:
			w.commit()
		case x < 94:
			w.gc(false)
		case x < 97:
			// Dirty tail moves forward (writeback).
			if len(w.committed) > 0 {
				ks := w.committed[len(w.committed)-1-w.rng.IntN(min(len(w.committed), 5))]
				if ks.LSN >= w.s.KeyTail().LSN && ks.LSN > w.s.DirtyTail().LSN {
					dt := Tail{Pos: ks.Pos, LSN: ks.LSN}
					w.dtails[dt] = true
					if err := w.s.SetDirtyTail(dt); err != nil {
						w.t.Fatal(err)
					}
				}
			}
		default:
			// Generation bump of a free segment (data segment reuse).
			if len(w.free) > 0 {
				if _, err := w.s.BumpGen(w.free[w.rng.IntN(len(w.free))]); err != nil {
					w.t.Fatal(err)
				}
			}
		}
	}
}

// verify checks each image's replay against what was durable at its point:
// every kset whose Commit returned by the point is replayed; nothing not yet
// written; exactly the durable ones when no torn write survives.
func (w *crashWorkload) verify() {
	lsns := make([]uint64, 0, len(w.durableAt))
	for l := range w.durableAt {
		lsns = append(lsns, l)
	}
	slices.Sort(lsns)
	for _, r := range w.results {
		var lower, upper uint64
		for _, l := range lsns {
			if w.durableAt[l] <= r.point {
				lower = l
			}
			if w.written[l] <= r.point {
				upper = l
			}
		}
		if r.lastLSN < lower || r.lastLSN > upper || (r.exact && r.lastLSN != lower) {
			w.t.Fatalf("point %d (exact %v): replay reached LSN %d; committed by then %d, written by then %d", r.point, r.exact, r.lastLSN, lower, upper)
		}
	}
}

func TestCrashEveryPersistPoint(t *testing.T) {
	ops, variants := 500, 3
	if testing.Short() || testkit.RaceEnabled {
		ops, variants = 250, 1
	}
	total := 0
	for _, unit := range []TearUnit{TearDAX, TearPage} {
		t.Run(fmt.Sprintf("unit%d", unit), func(t *testing.T) {
			w := newCrashWorkload(t, unit, uint64(unit))
			w.variants = variants
			w.run(ops)
			w.m.SetPersistHook(nil)
			w.verify()
			switches := 0
			for i := 1; i < len(w.committed); i++ {
				if w.committed[i].Pos.Seg != w.committed[i-1].Pos.Seg {
					switches++
				}
			}
			if switches < ops/80 || len(w.committed) < ops/2 {
				t.Fatalf("workload too small: %d commits, %d segment switches", len(w.committed), switches)
			}
			if w.damaged < ops {
				t.Fatalf("only %d damaged images checked", w.damaged)
			}
			t.Logf("tear unit %d: %d ksets committed, %d segment switches, %d persist points, %d crash images checked, %d of them damaged",
				unit, len(w.committed), switches, w.m.PersistPoints(), w.images, w.damaged)
			total += w.images
		})
	}
	t.Logf("%d crash images checked in total", total)
}

// TestCrashConcurrentCommits: committers in parallel (group commit: one
// persist covers several ksets, LAST records included); at every persist
// point the crash images replay a contiguous LSN prefix that includes every
// kset whose Commit had returned, with exactly the committed content.
func TestCrashConcurrentCommits(t *testing.T) {
	for _, unit := range []TearUnit{TearDAX, TearPage} {
		t.Run(fmt.Sprintf("unit%d", unit), func(t *testing.T) {
			const segs, workers = 12, 6
			each := 40
			if testkit.RaceEnabled {
				each = 20
			}
			m := NewCrashMedia(SegmentsOffset+segs*testSeg, unit)
			s, err := Format(m, FormatOptions{SegmentSize: testSeg})
			if err != nil {
				t.Fatal(err)
			}
			j := s.OpenJournal(s.KeyTail(), seqAlloc(segs))
			var mu sync.Mutex
			var maxReturned uint64
			ident := map[uint64]uint64{} // LSN -> first key offset (unique per commit)
			type seen struct {
				point    int
				lsns     []uint64
				idents   []uint64
				returned uint64
			}
			var images []seen
			m.SetPersistHook(func(point int) {
				mu.Lock()
				returned := maxReturned
				mu.Unlock()
				for v := 0; v < 2; v++ {
					var rng *rand.Rand
					if v == 1 {
						rng = rand.New(rand.NewPCG(uint64(point), 5))
					}
					s2, err := Open(m.CrashImage(point, rng))
					if err != nil {
						t.Errorf("point %d: %v", point, err)
						return
					}
					r := s2.ReplayVerified(s2.KeyTail())
					sn := seen{point: point, returned: returned}
					for ks, ok := r.Next(); ok; ks, ok = r.Next() {
						sn.lsns = append(sn.lsns, ks.LSN)
						sn.idents = append(sn.idents, ks.Keys[0].Offset)
					}
					// A torn group commit (later ksets of the group durable,
					// an earlier one not) is the end of the log, not damage.
					if errors.Is(r.StopReason(), ErrJournalDamaged) {
						t.Errorf("point %d variant %d: torn tail reported as damage: %v", point, v, r.StopReason())
					}
					images = append(images, sn) // hooks run one at a time: persists are serialized by the leader
				}
			})
			var wg sync.WaitGroup
			for g := 0; g < workers; g++ {
				wg.Add(1)
				go func(g int) {
					defer wg.Done()
					for i := 0; i < each; i++ {
						keys := testKeys(1+(g*13+i*7)%40, 0, s)
						keys[0].Offset = uint64(g)<<32 | uint64(i)<<12
						ks, err := j.Commit(keys, uint64(i))
						if err != nil {
							t.Error(err)
							return
						}
						mu.Lock()
						ident[ks.LSN] = keys[0].Offset
						maxReturned = max(maxReturned, ks.LSN)
						mu.Unlock()
					}
				}(g)
			}
			wg.Wait()
			m.SetPersistHook(nil)
			st := j.Stats()
			for _, sn := range images {
				for i, l := range sn.lsns {
					if l != uint64(i+1) || ident[l] != sn.idents[i] {
						t.Fatalf("point %d: replayed LSN %d (index %d) with key %#x, committed %#x", sn.point, l, i, sn.idents[i], ident[l])
					}
				}
				if uint64(len(sn.lsns)) < sn.returned {
					t.Fatalf("point %d: replayed %d ksets, but %d had been acknowledged", sn.point, len(sn.lsns), sn.returned)
				}
			}
			if st.Commits != uint64(workers*each) {
				t.Fatalf("stats %+v", st)
			}
			t.Logf("%d commits in %d flushes; %d crash images checked", st.Commits, st.Flushes, len(images))
		})
	}
}
