package cachecore

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
)

// runDirtyAccounting applies the replace operations encoded in b (5 bytes
// each: kind, start, length) and checks after each that the dirty bytes
// replaceDirty reports dropped, plus the dirty bytes it inserted, equal
// the change of the list's dirty bytes: the running count then always
// equals the dirty bytes in the list.
func runDirtyAccounting(b []byte) error {
	const size = 1024
	var l extentList
	var count int64
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
		before := l.dirtyBytes()
		_, dropped := l.replaceDirty(s, e, x)
		if x != nil && x.kind == extDirty {
			count += int64(x.length)
		}
		count -= dropped
		if got := l.dirtyBytes(); got != count {
			return fmt.Errorf("after op %d [%d,%d): list holds %d dirty bytes (was %d), running count %d (dropped %d)", op%4, s, e, got, before, count, dropped)
		}
	}
	return nil
}

func FuzzExtentDirtyAccounting(f *testing.F) {
	f.Add([]byte{0, 0, 0, 100, 0, 0, 50, 0, 100, 0, 3, 20, 0, 10, 0, 1, 0, 0, 255, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := runDirtyAccounting(b); err != nil {
			t.Fatal(err)
		}
	})
}

func TestExtentDirtyAccountingRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 200 {
		b := make([]byte, 5*200)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		if err := runDirtyAccounting(b); err != nil {
			t.Fatal(err)
		}
	}
}
