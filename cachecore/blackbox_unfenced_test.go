package cachecore_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/persist"
)

// TestFUAWritePersistsOnce: on a media whose flush covers every earlier
// write (a pwrite-fdatasync file) and a store with data CRCs, a FUA write
// costs one media persist (its kset's, which also persists its data); on
// any other media two (its data, then its kset). After a crash right after
// it returns, the write is there in both cases.
func TestFUAWritePersistsOnce(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name         string
		whole, crc   bool
		wantPersists int
	}{
		{"whole-flush-crc", true, true, 1},
		{"whole-flush-no-crc", true, false, 2},
		{"range-flush-crc", false, true, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := rigOptions{Unit: persist.TearPage, DataCRC: c.crc, WholeFlush: c.whole,
				Cfg: cachecore.Config{JournalFlushInterval: time.Hour, Writeback: cachecore.WritebackConfig{IdleAfter: time.Hour}}}
			r := newRig(t, o, nil)
			defer r.close()
			p := make([]byte, 4096)
			// A write may also open a segment (a generation persist), so
			// the fewest persists any of them took is the commit's cost.
			fewest := 1 << 30
			for i := range 8 {
				tagSector(p[:sector], uint64(i+1), 0)
				copy(p[sector:], bytes.Repeat([]byte{byte(i + 1)}, len(p)-sector))
				before := r.media.PersistPoints()
				mustOK(t, "FUA write", r.vol.WriteAt(ctx, p, int64(i)*4096, true))
				fewest = min(fewest, r.media.PersistPoints()-before)
			}
			if fewest != c.wantPersists {
				t.Fatalf("the cheapest of 8 FUA writes took %d media persists, want %d", fewest, c.wantPersists)
			}
			img := r.media.CrashImage(r.media.PersistPoints(), nil)
			r.close()
			c2, v2, err := openImage(ctx, img, r.mem, r.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer c2.Close(ctx)
			got := make([]byte, 4096)
			for i := range 8 {
				mustOK(t, "read", v2.ReadAt(ctx, got, int64(i)*4096))
				if got[sector] != byte(i+1) {
					t.Fatalf("block %d lost after a crash: byte %d", i, got[sector])
				}
			}
		})
	}
}
