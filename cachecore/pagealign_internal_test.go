package cachecore

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// TestPagePiecesStartOnAPage: after a sector-sized fill (every initiator
// reads sector 0 first), a page-sized write's data still starts on a page of
// the cache file. At a sector past a page, each 4 KiB write split two pages
// and the kernel read both from the cache device before the write.
func TestPagePiecesStartOnAPage(t *testing.T) {
	cfg := Config{JournalFlushInterval: time.Hour}
	r := newItRig(t, 8, 1<<20, cfg, VolumeConfig{})
	ctx := context.Background()
	if err := r.vol.Prefetch(ctx, 0, 512); err != nil {
		t.Fatal(err)
	}
	page := make([]byte, 4096)
	for i := range 32 {
		page[0] = byte(i)
		if err := r.vol.WriteAt(ctx, page, int64(i+1)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.vol.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	rp := r.cache.store.Replay(r.cache.store.KeyTail())
	sectors, pages := 0, 0
	for {
		ks, ok := rp.Next()
		if !ok {
			break
		}
		for _, k := range ks.Keys {
			if k.Length < pageAlign {
				sectors++
				continue
			}
			pages++
			if off := r.cache.store.DataOffset(k.Pos); off%pageAlign != 0 {
				t.Errorf("the key of [%d, +%d) holds its data at cache offset %d, %d bytes into a page",
					k.Offset, k.Length, off, off%pageAlign)
			}
		}
	}
	if sectors != 1 || pages != 32 {
		t.Fatalf("the log holds %d keys under a page and %d of a page or more, want the fill's 1 and the writes' 32", sectors, pages)
	}
}

// TestSubPagePiecesPackAtTheEnd: sector-sized writes between page-sized
// ones take a sector each, from the end of the head's segment, while the
// pages still start on a page from its start: 24 pairs of a 512-byte and a
// 4 KiB write (108 KiB) fit in one segment of 124 KiB of data. Taken from
// one end, each sector cost the rest of its page (3.5 KiB), and the pairs
// took 192 KiB, two segments. Every write reads back, before and after a
// replay.
func TestSubPagePiecesPackAtTheEnd(t *testing.T) {
	cfg := Config{JournalFlushInterval: time.Hour}
	r := newItRig(t, 8, 1<<20, cfg, VolumeConfig{})
	ctx := context.Background()
	const pairs = 24
	sector, page := make([]byte, 512), make([]byte, 4096)
	// pair i: the sector at 512 KiB + i sectors, the page at i pages
	for i := range pairs {
		fillPattern(sector, uint64(1000+i))
		if err := r.vol.WriteAt(ctx, sector, 512<<10+int64(i)*512, false); err != nil {
			t.Fatal(err)
		}
		fillPattern(page, uint64(i))
		if err := r.vol.WriteAt(ctx, page, int64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.vol.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := r.cache.dataSegs.Load(); n != 1 {
		t.Errorf("%d pairs of a sector and a page (%d KiB) took %d data segments of %d KiB, want 1",
			pairs, pairs*(512+4096)>>10, n, r.cache.segs.dataSize>>10)
	}
	check := func(when string) {
		t.Helper()
		got := make([]byte, 4096)
		for i := range pairs {
			fillPattern(sector, uint64(1000+i))
			if err := r.vol.ReadAt(ctx, got[:512], 512<<10+int64(i)*512); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got[:512], sector) {
				t.Fatalf("%s: sector %d reads other data", when, i)
			}
			fillPattern(page, uint64(i))
			if err := r.vol.ReadAt(ctx, got, int64(i)*4096); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, page) {
				t.Fatalf("%s: page %d reads other data", when, i)
			}
		}
	}
	check("before the replay")
	rp := r.cache.store.Replay(r.cache.store.KeyTail())
	for {
		ks, ok := rp.Next()
		if !ok {
			break
		}
		for _, k := range ks.Keys {
			if off := r.cache.store.DataOffset(k.Pos); k.Length >= pageAlign && off%pageAlign != 0 {
				t.Errorf("the key of [%d, +%d) holds its data at cache offset %d, %d bytes into a page", k.Offset, k.Length, off, off%pageAlign)
			}
		}
	}
	r.reopen(nil)
	check("after the replay")
	if err := r.cache.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}
