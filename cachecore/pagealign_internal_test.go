package cachecore

import (
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
