package cachecore

import "testing"

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
