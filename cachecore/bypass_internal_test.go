package cachecore

import (
	"math/rand/v2"
	"sync"
	"testing"
)

func keyID(i int) dirtyKeyID {
	return dirtyKeyID{seg: uint32(i >> 10), off: uint32(i&1023) * 4096, gen: uint64(i)}
}

// TestDirtyEpochsSequential walks the epoch accounting through adds in
// epoch order, cleans in log order and out of it, and keys of unknown
// epoch.
func TestDirtyEpochsSequential(t *testing.T) {
	var d dirtyEpochs
	if d.olderThan(1) {
		t.Fatal("empty accounting reports older dirty data")
	}
	d.added(5, true, keyID(1))
	d.added(5, true, keyID(2))
	if d.olderThan(5) {
		t.Fatal("keys of the current epoch reported as older")
	}
	if !d.olderThan(6) {
		t.Fatal("keys of epoch 5 not reported older than epoch 6")
	}
	d.added(7, true, keyID(3)) // moves epoch 5's two keys to older
	if !d.olderThan(7) {
		t.Fatal("epoch 5 keys forgotten after an epoch 7 key")
	}
	d.cleaned(7, keyID(3)) // out of log order: epoch 7 written back first
	if !d.olderThan(7) {
		t.Fatal("cleaning an epoch 7 key made epoch 5 keys disappear")
	}
	d.added(6, true, keyID(4)) // a late key of an older epoch
	d.cleaned(5, keyID(1))
	d.cleaned(5, keyID(2))
	if !d.olderThan(7) {
		t.Fatal("the late epoch 6 key is not counted")
	}
	d.cleaned(6, keyID(4))
	if d.olderThan(100) {
		t.Fatalf("all keys clean, still older dirty data: newest %x older %d", d.newest.Load(), d.older.Load())
	}

	d.added(9, false, keyID(5))
	if !d.olderThan(9) || !d.olderThan(1) {
		t.Fatal("a key of unknown epoch must count as older for every epoch")
	}
	d.added(9, true, keyID(6))
	d.cleaned(9, keyID(5)) // found among the unsure keys, not in epoch 9's count
	if d.olderThan(9) {
		t.Fatal("after the unsure key is clean only current-epoch keys remain")
	}
	if !d.olderThan(10) {
		t.Fatal("epoch 9 key lost")
	}
	d.cleaned(9, keyID(6))
	if d.olderThan(10) || d.unsureN.Load() != 0 || d.older.Load() != 0 {
		t.Fatalf("accounting not back to zero: newest %x older %d unsure %d", d.newest.Load(), d.older.Load(), d.unsureN.Load())
	}

	// A volume attached late in a long-lived cache: epochs far from 0
	// still compare correctly against the reset tag.
	const late = 3<<31 + 12345
	d.reset(3, late)
	if !d.olderThan(late) {
		t.Fatal("replayed keys are not older")
	}
	for i := range 3 {
		d.cleaned(late-uint64(1+i), keyID(100+i))
	}
	d.added(late, true, keyID(200))
	if d.olderThan(late) || !d.olderThan(late+1) {
		t.Fatalf("epoch %d key misplaced: newest %x older %d", uint64(late), d.newest.Load(), d.older.Load())
	}
	d.added(late+5, true, keyID(201))
	if !d.olderThan(late + 5) {
		t.Fatal("epoch late key not older than late+5")
	}
}

// TestDirtyEpochsConcurrent adds keys from several goroutines while the
// epoch advances and cleans them in a shuffled order: every key of an epoch
// below the query epoch that is still dirty must be seen, and the counts
// return to zero.
func TestDirtyEpochsConcurrent(t *testing.T) {
	var d dirtyEpochs
	const writers, perWriter = 4, 2000
	var epochMu sync.Mutex
	epoch := uint64(1)
	type rec struct {
		id    dirtyKeyID
		epoch uint64
		exact bool
	}
	recs := make([][]rec, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for i := range perWriter {
				epochMu.Lock()
				if rng.IntN(50) == 0 {
					epoch++
				}
				e := epoch
				epochMu.Unlock()
				exact := rng.IntN(100) != 0
				id := keyID(w*perWriter + i)
				d.added(e, exact, id)
				recs[w] = append(recs[w], rec{id, e, exact})
				if d.olderThan(e) && !d.olderThan(e+1) {
					t.Errorf("olderThan(%d) but not olderThan(%d)", e, e+1)
					return
				}
			}
		}()
	}
	wg.Wait()
	var all []rec
	for _, r := range recs {
		all = append(all, r...)
	}
	rng := rand.New(rand.NewPCG(7, 7))
	// Clean mostly in epoch order with local disorder, as writeback does
	// with ksets of several slots.
	for i := range all {
		j := min(len(all)-1, i+rng.IntN(8))
		all[i], all[j] = all[j], all[i]
	}
	minDirty := func(from int) uint64 {
		m := ^uint64(0)
		for _, r := range all[from:] {
			e := r.epoch
			if !r.exact {
				e = 0 // unknown: older than everything
			}
			m = min(m, e)
		}
		return m
	}
	for i, r := range all {
		if i%97 == 0 {
			m := minDirty(i)
			if !d.olderThan(m + 1) {
				t.Fatalf("after %d cleans a key of epoch %d is dirty but olderThan(%d) is false", i, m, m+1)
			}
		}
		d.cleaned(r.epoch, r.id)
	}
	if d.olderThan(epoch+1) || d.older.Load() != 0 || d.unsureN.Load() != 0 {
		t.Fatalf("accounting not back to zero: newest %x older %d unsure %d", d.newest.Load(), d.older.Load(), d.unsureN.Load())
	}
}
