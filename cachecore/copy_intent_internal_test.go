package cachecore

import (
	"bytes"
	"context"
	"testing"

	"github.com/cachelun/cachelun/persist"
)

// TestCopyKeysRecoveredAfterKill: keys a copy made share their source
// key's cache position and generation. A process killed while they are
// only in open ksets (recorded in the intent log) recovers them at the
// next Open, also when the source key itself is in the log: recovery
// tells journaled keys by their volume offset too, not by the position
// alone (which would take the copy for its journaled source and drop it).
func TestCopyKeysRecoveredAfterKill(t *testing.T) {
	ctx := context.Background()
	r := newKillRig(t)
	src := bytes.Repeat(blockData(1, 1), 64)
	if err := r.vol.WriteAt(ctx, src, 0, true); err != nil { // journaled
		t.Fatal(err)
	}
	// Same volume and to a later stripe; both only in open ksets.
	if err := r.vol.CopyFrom(ctx, r.vol, 0, 1<<20, int64(len(src)), false); err != nil {
		t.Fatal(err)
	}
	if err := r.vol.CopyFrom(ctx, r.vol, 0, 9<<20, int64(len(src)), false); err != nil {
		t.Fatal(err)
	}
	if s := r.vol.Stats(); s.CopySharedBytes != 2*uint64(len(src)) {
		t.Fatalf("shared %d bytes, want %d", s.CopySharedBytes, 2*len(src))
	}
	img := r.kill()
	r.restart(img, &r.boot)
	if r.cache.stats.intentRecovered.Load() == 0 {
		t.Fatal("nothing recovered from the intent log")
	}
	for _, off := range []int64{0, 1 << 20, 9 << 20} {
		got := make([]byte, len(src))
		if err := r.vol.ReadAt(ctx, got, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, src) {
			t.Fatalf("after the kill, [%d,+%d) lost the copied data", off, len(src))
		}
	}
	// CheckInvariants wants a quiescent cache: the journal timer commits
	// in the background otherwise.
	if err := r.cache.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.cache.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}

// TestDirtyEpochsCopyKeys: two dirty keys of one volume that share cache
// data (a copy within the volume) and whose epochs are unknown are counted
// and uncounted each by itself.
func TestDirtyEpochsCopyKeys(t *testing.T) {
	var d dirtyEpochs
	d.reset(0, 5)
	src := persist.Key{Offset: 0, Length: 4096, Pos: persist.Pos{Seg: 3, Off: 8192}, Gen: 2, Flags: persist.KeyDirty}
	cp := src
	cp.Offset = 1 << 20
	d.added(5, false, dirtyKeyIDOf(&src))
	d.added(5, false, dirtyKeyIDOf(&cp))
	d.cleaned(5, dirtyKeyIDOf(&src))
	if !d.olderThan(9) {
		t.Fatal("the copy's key was uncounted with its source's")
	}
	d.cleaned(5, dirtyKeyIDOf(&cp))
	if d.olderThan(9) || d.unsureN.Load() != 0 || d.older.Load() != 0 {
		t.Fatalf("after both keys were cleaned: unsure %d, older %d", d.unsureN.Load(), d.older.Load())
	}
}
