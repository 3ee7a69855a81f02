package cachecore

import (
	"testing"
	"unsafe"

	"github.com/cachelun/cachelun/persist"
)

// TestGhostSet: what was added is found; after twice its limit of newer
// inserts it is forgotten; blocks never added are rarely found (the Bloom
// filters' false positives stay near their design rate).
func TestGhostSet(t *testing.T) {
	const limit = 4096
	g := newGhostSet(limit)
	for b := range int64(limit / 2) {
		g.add(ghostKey(1, b<<ghostBlockShift))
	}
	for b := range int64(limit / 2) {
		if !g.has(ghostKey(1, b<<ghostBlockShift)) {
			t.Fatalf("block %d added and not found", b)
		}
	}
	false1 := 0
	for b := range int64(10000) {
		if g.has(ghostKey(2, b<<ghostBlockShift)) { // another volume
			false1++
		}
	}
	if false1 > 300 {
		t.Errorf("%d of 10000 blocks never added found (want about 1 %%)", false1)
	}
	for b := range int64(2 * limit) {
		g.add(ghostKey(3, b<<ghostBlockShift))
	}
	forgotten := 0
	for b := range int64(limit / 2) {
		if !g.has(ghostKey(1, b<<ghostBlockShift)) {
			forgotten++
		}
	}
	if forgotten < limit/2*9/10 {
		t.Errorf("only %d of %d old blocks forgotten after %d newer inserts", forgotten, limit/2, 2*limit)
	}
}

// TestParsePolicy: every listed policy parses; "" is fifo; others fail.
func TestParsePolicy(t *testing.T) {
	for _, p := range Policies() {
		if got, err := ParsePolicy(string(p)); err != nil || got != p {
			t.Errorf("ParsePolicy(%q) = %q, %v", p, got, err)
		}
	}
	if got, err := ParsePolicy(""); err != nil || got != PolicyFIFO {
		t.Errorf(`ParsePolicy("") = %q, %v`, got, err)
	}
	if _, err := ParsePolicy("lru"); err == nil {
		t.Error("ParsePolicy(lru) accepted")
	}
}

// TestMetadataPerExtent: the index costs 40 bytes of memory per cached
// extent (one per key, 4 KiB to 1 MiB of data) and the policy's hit mark
// lives in its padding; the ghost set (sized for half the cached blocks
// per filter, two filters, rounded up to a power of two) adds at most 20
// bits per cached 4 KiB block. docs/yardstick.md reports these; a change
// shows here.
func TestMetadataPerExtent(t *testing.T) {
	if s := unsafe.Sizeof(extent{}); s != 40 {
		t.Errorf("an index extent takes %d bytes, docs/yardstick.md says 40", s)
	}
	if persist.KeySize != 40 {
		t.Errorf("a key takes %d bytes of journal, docs/yardstick.md says 40", persist.KeySize)
	}
	for _, cached := range []int64{3 << 20, 4 << 20, 5 << 20} {
		g := newGhostSet(cached / 2) // as Open sizes it
		bits := len(g.filters) * len(g.filters[0]) * 64
		if per := float64(bits) / float64(cached); per > 2*ghostBitsPerEntry {
			t.Errorf("ghost set for %d cached blocks: %.1f bits per block", cached, per)
		}
	}
}
