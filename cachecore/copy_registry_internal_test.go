package cachecore

import "testing"

// TestShareRegistryLineages: a lineage may point at a range of a segment
// generation only once while the registry knows it; the source's lineage
// is recorded with the copy's; ranges of one lineage merge; a new
// generation starts empty, and forget drops a segment.
func TestShareRegistryLineages(t *testing.T) {
	var r shareRegistry
	src := shareLineage{vol: 1, diag: 0}
	a := shareLineage{vol: 1, diag: 1 << 20}
	b := shareLineage{vol: 2, diag: 1 << 20}
	if r.reserve(5, 7, src, src, 0, 4096) {
		t.Fatal("a copy onto its own lineage was reserved")
	}
	if !r.reserve(5, 7, src, a, 0, 16384) {
		t.Fatal("first copy refused")
	}
	if r.reserve(5, 7, src, a, 8192, 24576) {
		t.Fatal("a second key of lineage a over the same data was reserved")
	}
	if !r.reserve(5, 7, src, a, 16384, 32768) {
		t.Fatal("the next range of lineage a was refused")
	}
	if !r.reserve(5, 7, a, b, 0, 4096) {
		t.Fatal("a copy of the copy to another volume was refused")
	}
	if r.reserve(5, 7, a, src, 0, 4096) {
		t.Fatal("a copy back onto the writing key's lineage was reserved")
	}
	if got := len(r.m[5].ranges); got != 3 {
		t.Fatalf("%d ranges recorded, want 3 (src, a merged, b): %+v", got, r.m[5].ranges)
	}
	if !r.reserve(5, 8, src, a, 0, 4096) {
		t.Fatal("a new generation of the segment kept the old lineages")
	}
	r.forget(5)
	if !r.reserve(5, 8, src, a, 0, 4096) {
		t.Fatal("forget kept the segment's lineages")
	}
	if !r.reserve(6, 8, src, a, 0, 4096) {
		t.Fatal("another segment refused")
	}
}
