package cachecore_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/internal/testkit"
	"github.com/cachelun/cachelun/persist"
)

// rot flips four bytes of the cached data of the block at volume offset off.
func (r *rig) rot(off int64) {
	r.t.Helper()
	r.rotted = true
	e := r.vol.Explain(off)
	if e.State != "hit" {
		r.t.Fatalf("block at %d is not cached: %+v", off, e)
	}
	at := r.store.DataOffset(e.Pos) + 100
	b := make([]byte, 4)
	mustOK(r.t, "read media", r.media.ReadAt(b, at))
	for i := range b {
		b[i] ^= 0xa5
	}
	mustOK(r.t, "write media", r.media.WriteAt(b, at))
}

// TestDataCRCOnReadHit: with data CRCs, rotten dirty data fails the read
// with MEDIUM ERROR (never served), is counted and shown by Explain;
// rotten clean data is read from the backing device instead (it holds the
// same data), also counted.
func TestDataCRCOnReadHit(t *testing.T) {
	ctx := context.Background()
	t.Run("dirty", func(t *testing.T) {
		r := newRig(t, rigOptions{DataCRC: true}, nil)
		defer r.close()
		// The data stays dirty: writeback cannot write it back.
		gate := r.backing.Gate(backend.OpWrite, backend.Range{Off: 0, Len: 16384})
		defer gate.Release()
		data := tagged(1, 0, 16384)
		mustOK(t, "write", r.vol.WriteAt(ctx, data, 0, true))
		// Writeback has read the (good) data and waits at the gate: it
		// does not read the range again while the test runs.
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		mustOK(t, "writeback at the gate", gate.WaitArrived(wctx, 1))
		r.rot(4096)
		buf := make([]byte, 16384)
		err := r.vol.ReadAt(ctx, buf, 0)
		if !errors.Is(err, blk.ErrMedium) || !errors.Is(err, cachecore.ErrDataCRC) {
			t.Fatalf("read of rotten dirty data: %v, want MEDIUM ERROR (ErrDataCRC)", err)
		}
		// A block of another key is unaffected.
		mustOK(t, "write 2", r.vol.WriteAt(ctx, tagged(2, 65536, 4096), 65536, false))
		mustOK(t, "read other block", r.vol.ReadAt(ctx, buf[:4096], 65536))
		if e := r.vol.Explain(4096); !strings.HasPrefix(e.Checksum, "bad: ") {
			t.Fatalf("explain of the rotten block: %+v", e)
		}
		if e := r.vol.Explain(65536); e.Checksum != "ok" {
			t.Fatalf("explain of a good block: %+v", e)
		}
		if n := r.cache.Stats().DataCRCErrors; n != 1 {
			t.Fatalf("DataCRCErrors = %d, want 1", n)
		}
		if bad := r.cache.BadData(); len(bad) != 1 || bad[0].Volume != testVolName || bad[0].Op != "read" {
			t.Fatalf("BadData = %+v", bad)
		}
	})
	t.Run("clean", func(t *testing.T) {
		o := rigOptions{DataCRC: true}
		o.VC.Mode = cachecore.ModeWritethrough
		r := newRig(t, o, nil)
		defer r.close()
		data := tagged(3, 0, 16384)
		mustOK(t, "write", r.vol.WriteAt(ctx, data, 0, true))
		r.rot(8192)
		buf := make([]byte, 16384)
		mustOK(t, "read of rotten clean data", r.vol.ReadAt(ctx, buf, 0))
		if !bytes.Equal(buf, data) {
			t.Fatal("read of rotten clean data returned wrong data")
		}
		if n := r.cache.Stats().DataCRCErrors; n != 1 {
			t.Fatalf("DataCRCErrors = %d, want 1", n)
		}
		// The rotten copy is gone: the block is a miss, or cached again
		// from the backing device by the read that healed it.
		if e := r.vol.Explain(8192); e.State == "hit" && e.Checksum != "ok" {
			t.Fatalf("rotten clean block still cached: %+v", e)
		}
	})
}

// TestDataCRCInWriteback: rotten dirty data is never written back: the
// backing device keeps its older data and the cache is retired (the
// failure policy then fails the volume's I/O, the dirty data stays in the
// cache file). The data rots while the cache is closed, so the replay's
// own check has seen it too (it keeps dirty data, which has no other copy).
func TestDataCRCInWriteback(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, rigOptions{DataCRC: true}, nil)
	gate := r.backing.Gate(backend.OpWrite, backend.Range{Off: 0, Len: 16384})
	mustOK(t, "write", r.vol.WriteAt(ctx, tagged(4, 0, 16384), 0, true))
	e := r.vol.Explain(0)
	if e.State != "hit" || !e.Dirty {
		t.Fatalf("block 0 not dirty in the cache: %+v", e)
	}
	// Closed with writeback held at the gate: the data stays dirty.
	r.cache.Close(ctx)
	r.cache = nil
	gate.Release()
	at := r.store.DataOffset(e.Pos) + 100
	b := make([]byte, 4)
	mustOK(t, "read media", r.media.ReadAt(b, at))
	for i := range b {
		b[i] ^= 0xa5
	}
	mustOK(t, "write media", r.media.WriteAt(b, at))

	c, _, err := openImage(ctx, r.media, backend.NewFaulty(r.mem), r.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	testkit.WaitFor(t, 20*time.Second, "the cache to fail on the rotten data", func() bool { return c.Err() != nil })
	if err := c.Err(); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("cache error after writeback met rotten data: %v", err)
	}
	got := make([]byte, 16384)
	mustOK(t, "read backing", r.mem.ReadAt(ctx, got, 0))
	if !bytes.Equal(got, make([]byte, 16384)) {
		t.Fatal("rotten dirty data reached the backing device")
	}
	if bad := c.BadData(); len(bad) == 0 || bad[len(bad)-1].Op != "writeback" {
		t.Fatalf("BadData = %+v", bad)
	}
}

// TestDataCRCKeysBounded: with data CRCs no key is longer than 16 KiB, so
// a 4 KiB read hit of data written in one large request verifies (reads)
// at most 16 KiB, not the whole request.
func TestDataCRCKeysBounded(t *testing.T) {
	ctx := context.Background()
	r := newRig(t, rigOptions{DataCRC: true}, nil)
	defer r.close()
	data := tagged(7, 0, 1<<20)
	mustOK(t, "write", r.vol.WriteAt(ctx, data, 0, true))
	buf := make([]byte, 4096)
	mustOK(t, "read", r.vol.ReadAt(ctx, buf, 512<<10))
	if !bytes.Equal(buf, data[512<<10:512<<10+4096]) {
		t.Fatal("read back wrong data")
	}
	s, err := persist.Open(r.media)
	mustOK(t, "open", err)
	rp := s.Replay(s.KeyTail())
	keys := 0
	for ks, ok := rp.Next(); ok; ks, ok = rp.Next() {
		for _, k := range ks.Keys {
			keys++
			if k.Length > 16<<10 {
				t.Fatalf("key of %d bytes at %d: keys of a data-CRC cache are at most 16 KiB", k.Length, k.Offset)
			}
		}
	}
	if keys < 64 {
		t.Fatalf("%d keys for a 1 MiB write", keys)
	}
}
