package cachecore

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// cell is the byte-map model of one byte of a stripe.
type cell struct {
	kind extKind // 0: nothing cached
	seg  uint32
	data uint32 // cache offset of this byte (data kinds)
	gen  uint64 // generation, or placeholder token
}

type extentModel struct {
	cells     []cell
	origStart map[uint64]uint32 // placeholder token → start it was created with
}

func newExtentModel(n int) *extentModel {
	return &extentModel{cells: make([]cell, n), origStart: make(map[uint64]uint32)}
}

// apply is the specification of extentList.replace: data bytes in [s, e)
// are replaced; a placeholder overlapping the range loses every byte from
// s on (it is only ever cut at its end); n (if any) then covers [s, e).
func (m *extentModel) apply(s, e uint32, n *extent) {
	for i := s; i < e; i++ {
		if m.cells[i].kind != extEmpty {
			m.cells[i] = cell{}
		}
	}
	for _, tok := range m.placeholdersIn(s, e) {
		for i := s; i < uint32(len(m.cells)); i++ {
			if m.cells[i].kind == extEmpty && m.cells[i].gen == tok {
				m.cells[i] = cell{}
			}
		}
	}
	if n == nil {
		return
	}
	for i := s; i < e; i++ {
		c := cell{kind: n.kind, seg: n.seg, gen: n.gen}
		if n.hasData() {
			c.data = n.segOff + (i - s)
		}
		m.cells[i] = c
	}
	if n.kind == extEmpty {
		m.origStart[n.gen] = s
	}
}

func (m *extentModel) placeholdersIn(s, e uint32) []uint64 {
	var out []uint64
	seen := map[uint64]bool{}
	for i := s; i < e; i++ {
		if c := m.cells[i]; c.kind == extEmpty && !seen[c.gen] {
			seen[c.gen] = true
			out = append(out, c.gen)
		}
	}
	return out
}

// check compares the list with the model byte by byte.
func (m *extentModel) check(l *extentList) error {
	if msg := l.checkInvariants(uint32(len(m.cells))); msg != "" {
		return fmt.Errorf("invariant: %s: %+v", msg, l.ext)
	}
	got := make([]cell, len(m.cells))
	for _, x := range l.ext {
		if x.kind == extEmpty && m.origStart[x.gen] != x.start {
			return fmt.Errorf("placeholder %d starts at %d, created at %d", x.gen, x.start, m.origStart[x.gen])
		}
		for i := x.start; i < x.end(); i++ {
			c := cell{kind: x.kind, seg: x.seg, gen: x.gen}
			if x.hasData() {
				c.data = x.segOff + (i - x.start)
			}
			got[i] = c
		}
	}
	for i := range got {
		if got[i] != m.cells[i] {
			return fmt.Errorf("byte %d: list has %+v, model %+v (list %+v)", i, got[i], m.cells[i], l.ext)
		}
	}
	return nil
}

func TestExtentOverlapCases(t *testing.T) {
	data := func(s, e, segOff uint32, gen uint64) *extent {
		return &extent{start: s, length: e - s, seg: 1, segOff: segOff, gen: gen, kind: extDirty}
	}
	ph := func(s, e uint32, tok uint64) *extent {
		return &extent{start: s, length: e - s, gen: tok, kind: extEmpty}
	}
	cases := []struct {
		name     string
		existing *extent
		s, e     uint32
		n        *extent
		want     []extent
	}{
		{"before", data(0, 10, 100, 1), 20, 30, data(20, 30, 500, 2),
			[]extent{*data(0, 10, 100, 1), *data(20, 30, 500, 2)}},
		{"head: cut back", data(0, 20, 100, 1), 10, 30, data(10, 30, 500, 2),
			[]extent{*data(0, 10, 100, 1), *data(10, 30, 500, 2)}},
		{"tail: front cut advances pos", data(10, 40, 100, 1), 0, 20, data(0, 20, 500, 2),
			[]extent{*data(0, 20, 500, 2), *data(20, 40, 110, 1)}},
		{"contain: delete", data(10, 20, 100, 1), 0, 30, data(0, 30, 500, 2),
			[]extent{*data(0, 30, 500, 2)}},
		{"contained: split", data(0, 40, 100, 1), 10, 20, data(10, 20, 500, 2),
			[]extent{*data(0, 10, 100, 1), *data(10, 20, 500, 2), *data(20, 40, 120, 1)}},
		{"contained placeholder: cut at end, no split", ph(0, 40, 7), 10, 20, data(10, 20, 500, 2),
			[]extent{*ph(0, 10, 7), *data(10, 20, 500, 2)}},
		{"tail placeholder: deleted", ph(10, 40, 7), 0, 20, data(0, 20, 500, 2),
			[]extent{*data(0, 20, 500, 2)}},
		{"tombstone split", data(0, 40, 100, 1), 10, 20, nil,
			[]extent{*data(0, 10, 100, 1), *data(20, 40, 120, 1)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var l extentList
			l.replace(tc.existing.start, tc.existing.end(), tc.existing)
			l.replace(tc.s, tc.e, tc.n)
			if fmt.Sprint(l.ext) != fmt.Sprint(tc.want) {
				t.Fatalf("got %+v\nwant %+v", l.ext, tc.want)
			}
		})
	}
}

// runExtentOps interprets b as a sequence of operations on a 1 KiB stripe
// and checks the list against the byte-map model after each one.
func runExtentOps(b []byte) error {
	const size = 1024
	var l extentList
	m := newExtentModel(size)
	token := uint64(0)
	for len(b) >= 5 {
		op := b[0]
		s := uint32(binary.LittleEndian.Uint16(b[1:])) % size
		n := uint32(binary.LittleEndian.Uint16(b[3:]))%256 + 1
		b = b[5:]
		e := min(s+n, size)
		token++
		var x *extent
		switch op % 4 {
		case 0:
			x = &extent{start: s, length: e - s, seg: uint32(op >> 2), segOff: uint32(token * 8192), gen: token, kind: extDirty}
		case 1:
			x = &extent{start: s, length: e - s, seg: uint32(op >> 2), segOff: uint32(token * 8192), gen: token, kind: extClean}
		case 2:
			x = &extent{start: s, length: e - s, gen: token, kind: extEmpty}
		}
		l.replace(s, e, x)
		m.apply(s, e, x)
		if err := m.check(&l); err != nil {
			return fmt.Errorf("after op %d [%d,%d): %w", op%4, s, e, err)
		}
	}
	return nil
}

func FuzzExtentList(f *testing.F) {
	f.Add([]byte{0, 0, 0, 100, 0, 2, 10, 0, 20, 0, 0, 5, 0, 10, 0})
	f.Add([]byte{2, 0, 0, 255, 1, 0, 16, 0, 16, 0, 3, 200, 0, 5, 0, 1, 0, 1, 255, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := runExtentOps(b); err != nil {
			t.Fatal(err)
		}
	})
}

func TestExtentListRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for iter := 0; iter < 40; iter++ {
		b := make([]byte, 5*200)
		for i := range b {
			b[i] = byte(rng.UintN(256))
		}
		if err := runExtentOps(b); err != nil {
			t.Fatalf("iteration %d: %v", iter, err)
		}
	}
}

func TestExtentDirtySpan(t *testing.T) {
	var l extentList
	l.replace(0, 10, &extent{start: 0, length: 10, kind: extClean, gen: 1})
	l.replace(20, 30, &extent{start: 20, length: 10, kind: extDirty, gen: 1})
	l.replace(40, 50, &extent{start: 40, length: 10, kind: extDirty, gen: 1})
	if _, _, ok := l.dirtySpan(0, 15); ok {
		t.Fatal("clean range reported dirty")
	}
	if s, e, ok := l.dirtySpan(25, 45); !ok || s != 25 || e != 45 {
		t.Fatalf("dirtySpan(25,45) = %d,%d,%v", s, e, ok)
	}
	if !l.anyDirty(29, 41) || l.anyDirty(30, 40) {
		t.Fatal("anyDirty wrong at the edges")
	}
}

// TestRemoveIndexes: removing a set of indexes in one pass leaves what
// removing them one at a time (highest first) leaves, repeats and order
// of the set notwithstanding.
func TestRemoveIndexes(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for range 500 {
		n := rng.IntN(40)
		var l extentList
		for i := range n {
			l.ext = append(l.ext, extent{start: uint32(i) * 8, length: 8, kind: extClean})
		}
		var idx []int
		for range rng.IntN(n + 1) {
			idx = append(idx, rng.IntN(max(n, 1)))
		}
		if n == 0 {
			idx = nil
		}
		want := extentList{ext: slices.Clone(l.ext)}
		uniq := slices.Clone(idx)
		slices.Sort(uniq)
		uniq = slices.Compact(uniq)
		for k := len(uniq) - 1; k >= 0; k-- {
			want.removeAt(uniq[k])
		}
		l.removeIndexes(slices.Clone(idx))
		if !slices.Equal(l.ext, want.ext) {
			t.Fatalf("n %d, removing %v: got %v, want %v", n, idx, l.ext, want.ext)
		}
	}
}
