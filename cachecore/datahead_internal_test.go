package cachecore

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cachelun/cachelun/persist"
)

// TestWholeFlushMediaAllocatesContiguously: where a flush writes back the
// whole file, data allocated together (by concurrent writers, as the writes
// that share a flush are) lies side by side in one segment, so that the
// flush writes it in one device request. With range flushes (DAX) the
// allocator is sharded over several segments (one head per 64 segments:
// this cache has 192).
func TestWholeFlushMediaAllocatesContiguously(t *testing.T) {
	for _, whole := range []bool{true, false} {
		m := persist.NewCrashMedia(persist.SegmentsOffset+192*itSegSize, persist.TearDAX)
		m.SetWholeFlush(whole)
		st, err := persist.Format(m, persist.FormatOptions{SegmentSize: itSegSize})
		if err != nil {
			t.Fatal(err)
		}
		c, err := Open(context.Background(), st, Config{JournalFlushInterval: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		const writers, each = 8, 2
		got := make(chan allocation, writers*each)
		var wg sync.WaitGroup
		for range writers {
			wg.Go(func() {
				for range each {
					a, err := c.allocData(4096)
					if err != nil {
						t.Error(err)
						return
					}
					got <- a
				}
			})
		}
		wg.Wait()
		close(got)
		segs := map[uint32]bool{}
		var offs []uint32
		for a := range got {
			segs[a.pos.Seg] = true
			offs = append(offs, a.pos.Off)
			c.putRef(a.pos.Seg)
		}
		slices.Sort(offs)
		contiguous := len(segs) == 1
		for i := 1; i < len(offs) && contiguous; i++ {
			contiguous = offs[i] == offs[i-1]+4096
		}
		if whole && !contiguous {
			t.Errorf("whole-file flush: %d allocations of 4 KiB spread over %d segments at %v, want one contiguous run", len(offs), len(segs), offs)
		}
		if !whole && len(segs) < 2 {
			t.Errorf("range flush: allocations in %d segment, want them sharded", len(segs))
		}
		if err := c.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}
