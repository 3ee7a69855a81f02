package cachecore

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/cachelun/cachelun/persist"
)

// TestCheckInvariantsCatchesCorruption: CheckInvariants passes on a
// healthy cache and fails, naming the structure, when any one structure it
// checks is corrupted.
func TestCheckInvariantsCatchesCorruption(t *testing.T) {
	ctx := context.Background()
	setup := func(t *testing.T) *itRig {
		r := newItRig(t, 24, 8<<20, Config{}, VolumeConfig{Mode: ModeWriteback})
		for i := range 8 {
			if err := r.vol.WriteAt(ctx, make([]byte, 8192), int64(i)*65536, i%2 == 0); err != nil {
				t.Fatal(err)
			}
		}
		if err := r.vol.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		// Checked and corrupted once closed: CheckInvariants wants a
		// quiescent cache, and writeback could race with the corruption.
		if err := r.cache.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if err := r.cache.CheckInvariants(); err != nil {
			t.Fatalf("healthy closed cache: %v", err)
		}
		return r
	}
	firstExtent := func(r *itRig) (*stripe, int) {
		st := r.vol.st.idx.peek(0)
		if st == nil || len(st.list.ext) == 0 {
			t.Fatal("no extent in stripe 0")
		}
		return st, 0
	}
	cases := []struct {
		name    string
		corrupt func(r *itRig)
		want    string
	}{
		{"segment references", func(r *itRig) {
			st, i := firstExtent(r)
			r.cache.segs.segs[st.list.ext[i].seg].refs.Add(1)
		}, "references"},
		{"dirty bytes", func(r *itRig) { r.vol.st.dirtyBytes.Add(4096) }, "dirty bytes counted"},
		{"overlapping extents", func(r *itRig) {
			st, _ := firstExtent(r)
			st.mu.Lock()
			x := st.list.ext[0]
			x.start++
			st.list.ext = append(st.list.ext[:1], append([]extent{x}, st.list.ext[1:]...)...)
			st.mu.Unlock()
		}, "overlapping or unsorted"},
		{"extent outside the cache", func(r *itRig) {
			st, i := firstExtent(r)
			st.list.ext[i].segOff = r.cache.store.SegmentDataSize()
		}, "outside the cache"},
		{"dirty extent lost its segment", func(r *itRig) {
			st, i := firstExtent(r)
			st.list.ext[i].kind = extDirty
			st.list.ext[i].gen--
			r.vol.st.dirtyBytes.Store(r.vol.st.idx.dirtyBytes())
		}, "lost its data"},
		{"tail order", func(r *itRig) {
			head := r.cache.journal.Head()
			if err := r.cache.store.SetKeyTail(persist.Tail{Pos: head.Pos, LSN: head.LSN + 5}); err != nil {
				t.Fatal(err)
			}
		}, "tail order"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := setup(t)
			tc.corrupt(r)
			err := r.cache.CheckInvariants()
			if !errors.Is(err, ErrInvariant) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("corrupted %s: CheckInvariants = %v, want an ErrInvariant naming %q", tc.name, err, tc.want)
			}
		})
	}
}
