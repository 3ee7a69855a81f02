package cachecore_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/internal/memvol"
)

// Tests of Volume.CopyFrom (blk.Copier): copies in the cache share cached
// data (new keys, no data moved) and read and write the rest.

// wrapped is a volume wrapper that adds nothing (as admin's latency
// instrumentation): CopyFrom finds the engine's volume behind it.
type wrapped struct{ blk.Volume }

func (w wrapped) Unwrap() blk.Volume { return w.Volume }

// readAll returns the whole content of v.
func readAll(t testing.TB, v blk.Volume) []byte {
	t.Helper()
	p := make([]byte, v.Size())
	mustOK(t, "read all", v.ReadAt(context.Background(), p, 0))
	return p
}

// wantRange fails unless [off, off+len(want)) of v holds want.
func wantRange(t testing.TB, what string, v blk.Volume, off int64, want []byte) {
	t.Helper()
	got := make([]byte, len(want))
	mustOK(t, what+": read", v.ReadAt(context.Background(), got, off))
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: [%d,+%d) differs: %s", what, off, len(want), describeCopyDiff(got, want))
	}
}

// describeCopyDiff names the first differing sector with the tags
// (write id, sector written) both sides hold.
func describeCopyDiff(got, want []byte) string {
	for i := 0; i+sector <= len(got); i += sector {
		if !bytes.Equal(got[i:i+sector], want[i:i+sector]) {
			g := [2]uint64{binary.LittleEndian.Uint64(got[i:]), binary.LittleEndian.Uint64(got[i+8:])}
			w := [2]uint64{binary.LittleEndian.Uint64(want[i:]), binary.LittleEndian.Uint64(want[i+8:])}
			return fmt.Sprintf("first difference at byte %d: got tag (write, sector) %v, want %v", i, g, w)
		}
	}
	return "lengths differ"
}

func copyRig(t *testing.T, dataCRC bool, segments int) *rig {
	o := rigOptions{Segments: segments, BackingSize: 8 << 20, DataCRC: dataCRC,
		VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback}}
	return newRig(t, o, nil)
}

// TestCopySharesCachedData copies cached dirty data and cached clean data
// (written back), within a volume and to another volume, through a
// wrapper: everything is shared, the destination reads the source's data,
// and later overwrites of either side leave the other alone.
func TestCopySharesCachedData(t *testing.T) {
	for _, crc := range []bool{false, true} {
		t.Run(fmt.Sprintf("datacrc=%v", crc), func(t *testing.T) {
			ctx := context.Background()
			r := copyRig(t, crc, 64)
			defer r.close()
			mem1 := backend.NewMemory(4 << 20)
			v1, err := r.cache.AddVolume(ctx, "vol1", mem1, r.opts.VC)
			mustOK(t, "AddVolume", err)
			const n = 1 << 20
			src := tagged(1, 0, n)
			mustOK(t, "write", r.vol.WriteAt(ctx, src, 0, false))

			// Dirty source, same volume.
			mustOK(t, "copy dirty", r.vol.CopyFrom(ctx, wrapped{r.vol}, 0, 2<<20, n, false))
			wantRange(t, "copy of dirty data", r.vol, 2<<20, src)
			if s := r.vol.Stats(); s.CopySharedBytes != n || s.CopyMovedBytes != 0 {
				t.Fatalf("copy of cached data: shared %d moved %d, want all %d shared", s.CopySharedBytes, s.CopyMovedBytes, n)
			}
			// Clean source, other volume.
			mustOK(t, "drain", r.vol.Drain(ctx, nil))
			mustOK(t, "copy clean", v1.CopyFrom(ctx, r.vol, 0, 512<<10, n, true))
			wantRange(t, "copy of clean data", v1, 512<<10, src)
			if s := v1.Stats(); s.CopySharedBytes != n || s.CopyMovedBytes != 0 {
				t.Fatalf("copy of clean data: shared %d moved %d, want all %d shared", s.CopySharedBytes, s.CopyMovedBytes, n)
			}
			// Overwrite the source: both copies keep the old data.
			src2 := tagged(2, 0, n)
			mustOK(t, "overwrite source", r.vol.WriteAt(ctx, src2, 0, false))
			wantRange(t, "source after overwrite", r.vol, 0, src2)
			wantRange(t, "copy after source overwrite", r.vol, 2<<20, src)
			wantRange(t, "copy in vol1 after source overwrite", v1, 512<<10, src)
			// Overwrite part of a copy: the source and the other copy keep
			// theirs.
			d := tagged(3, 2<<20+64<<10, 64<<10)
			mustOK(t, "overwrite copy", r.vol.WriteAt(ctx, d, 2<<20+64<<10, false))
			want := append([]byte{}, src...)
			copy(want[64<<10:], d)
			wantRange(t, "copy after its overwrite", r.vol, 2<<20, want)
			wantRange(t, "source after the copy's overwrite", r.vol, 0, src2)
			wantRange(t, "vol1 after the copy's overwrite", v1, 512<<10, src)
			mustOK(t, "drain", r.vol.Drain(ctx, nil))
			mustOK(t, "drain vol1", v1.Drain(ctx, nil))
			// Writeback wrote each copy to its own backing device.
			got := make([]byte, n)
			mustOK(t, "backing read", r.mem.ReadAt(ctx, got, 2<<20))
			if !bytes.Equal(got, want) {
				t.Fatalf("vol0 backing after drain: %s", describeCopyDiff(got, want))
			}
			mustOK(t, "backing read", mem1.ReadAt(ctx, got, 512<<10))
			if !bytes.Equal(got, src) {
				t.Fatalf("vol1 backing after drain: %s", describeCopyDiff(got, src))
			}
		})
	}
}

// TestCopyPartlyCachedAndUncached copies ranges whose source is partly
// cached (a fill of part of it, partial extents of keys), and not cached
// at all: the cached parts are shared, the rest read and written.
func TestCopyPartlyCachedAndUncached(t *testing.T) {
	for _, crc := range []bool{false, true} {
		t.Run(fmt.Sprintf("datacrc=%v", crc), func(t *testing.T) {
			ctx := context.Background()
			initial := backend.NewMemory(8 << 20)
			base := tagged(1, 0, 8<<20)
			mustOK(t, "prefill", initial.WriteAt(ctx, base, 0))
			o := rigOptions{Segments: 64, BackingSize: 8 << 20, DataCRC: crc, VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback}}
			r := newRig(t, o, initial)
			defer r.close()
			ref := append([]byte{}, base...)
			// Cache [256K, 512K) by a read (a fill) and write [600K, 700K).
			mustOK(t, "read", r.vol.ReadAt(ctx, make([]byte, 256<<10), 256<<10))
			cachecore.WaitFills(r.cache)
			w := tagged(2, 600<<10, 100<<10)
			mustOK(t, "write", r.vol.WriteAt(ctx, w, 600<<10, false))
			copy(ref[600<<10:], w)
			// Copy [100K, 1M) (partly cached, key pieces cut at both ends)
			// to 3 MiB + 4K.
			mustOK(t, "copy", r.vol.CopyFrom(ctx, r.vol, 100<<10, 3<<20+4096, 924<<10, false))
			copy(ref[3<<20+4096:], ref[100<<10:1<<20])
			s := r.vol.Stats()
			if s.CopySharedBytes == 0 || s.CopyMovedBytes == 0 || s.CopySharedBytes+s.CopyMovedBytes != 924<<10 {
				t.Fatalf("partly cached copy: shared %d moved %d of %d", s.CopySharedBytes, s.CopyMovedBytes, 924<<10)
			}
			// An uncached range.
			mustOK(t, "copy uncached", r.vol.CopyFrom(ctx, r.vol, 6<<20, 5<<20, 512<<10, true))
			copy(ref[5<<20:], ref[6<<20:6<<20+512<<10])
			if !bytes.Equal(readAll(t, r.vol), ref) {
				t.Fatalf("volume differs: %s", describeCopyDiff(readAll(t, r.vol), ref))
			}
			mustOK(t, "drain", r.vol.Drain(ctx, nil))
			got := make([]byte, 8<<20)
			mustOK(t, "backing", r.mem.ReadAt(ctx, got, 0))
			if !bytes.Equal(got, ref) {
				t.Fatalf("backing after drain: %s", describeCopyDiff(got, ref))
			}
		})
	}
}

// TestCopyOverlapping copies overlapping ranges of one volume forward and
// backward by various shifts, with cached and uncached parts: the result
// is that of reading the whole source first (memmove).
func TestCopyOverlapping(t *testing.T) {
	ctx := context.Background()
	initial := backend.NewMemory(16 << 20)
	mustOK(t, "prefill", initial.WriteAt(ctx, tagged(1, 0, 16<<20), 0))
	o := rigOptions{Segments: 96, BackingSize: 16 << 20, DataCRC: true, VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback}}
	r := newRig(t, o, initial)
	defer r.close()
	ref := readAll(t, r.vol)
	id := uint64(10)
	for _, c := range []struct{ src, dst, n int64 }{
		{1 << 20, 1<<20 + 4096, 3 << 20},             // backward by one block
		{5 << 20, 5<<20 - 8192, 3 << 20},             // forward by two blocks
		{2 << 20, 4<<20 + 12<<10, 5 << 20},           // across stripes, backward
		{9<<20 + 4096, 7<<20 + 64<<10, 6<<20 + 4096}, // forward, unaligned to stripes
		{0, 2 << 20, 1 << 20},                        // adjacent, no overlap
	} {
		// Make part of the source dirty and part clean-cached first.
		third := c.n / 3 / 4096 * 4096
		w := tagged(id, c.src+third, int(third))
		id++
		mustOK(t, "write", r.vol.WriteAt(ctx, w, c.src+third, false))
		copy(ref[c.src+third:], w)
		mustOK(t, "copy", r.vol.CopyFrom(ctx, r.vol, c.src, c.dst, c.n, false))
		copy(ref[c.dst:c.dst+c.n], append([]byte{}, ref[c.src:c.src+c.n]...))
		if got := readAll(t, r.vol); !bytes.Equal(got, ref) {
			t.Fatalf("copy %+v: %s", c, describeCopyDiff(got, ref))
		}
	}
	mustOK(t, "drain", r.vol.Drain(ctx, nil))
	got := make([]byte, 16<<20)
	mustOK(t, "backing", r.mem.ReadAt(ctx, got, 0))
	if !bytes.Equal(got, ref) {
		t.Fatalf("backing after drain: %s", describeCopyDiff(got, ref))
	}
}

// TestCopyTwiceSameLineage copies the same cached source to the same
// destination twice, and back to where it came from, with writes between:
// a key of the same volume mapping the same offsets to the same cache data
// while an older one is live would let writeback's clean marking and GC's
// eviction take it for the older one, so those copies move their data.
// Writeback, GC and bypass writes then must keep every byte right.
func TestCopyTwiceSameLineage(t *testing.T) {
	ctx := context.Background()
	o := rigOptions{Segments: 24, BackingSize: 4 << 20, DataCRC: true,
		VC:  cachecore.VolumeConfig{Mode: cachecore.ModeWriteback, SequentialCutoff: 512 << 10},
		Cfg: cachecore.Config{GCPercent: 10}}
	r := newRig(t, o, nil)
	defer r.close()
	ref := make([]byte, 4<<20)
	write := func(id uint64, off, n int64) {
		p := tagged(id, off, int(n))
		mustOK(t, "write", r.vol.WriteAt(ctx, p, off, false))
		copy(ref[off:], p)
	}
	cp := func(src, dst, n int64) {
		mustOK(t, "copy", r.vol.CopyFrom(ctx, r.vol, src, dst, n, false))
		copy(ref[dst:dst+n], append([]byte{}, ref[src:src+n]...))
	}
	write(1, 0, 256<<10)
	cp(0, 1<<20, 256<<10)
	if s := r.vol.Stats(); s.CopySharedBytes != 256<<10 {
		t.Fatalf("first copy shared %d bytes, want all", s.CopySharedBytes)
	}
	// Back to where the data was written: the lineage of the writing
	// key, which is still live.
	cp(1<<20, 0, 256<<10)
	if s := r.vol.Stats(); s.CopyMovedBytes != 256<<10 {
		t.Fatalf("copy back to the data's own place moved %d bytes, want all", s.CopyMovedBytes)
	}
	write(2, 1<<20, 64<<10)
	cp(0, 1<<20, 256<<10) // from the moved data: a new lineage, shared
	write(3, 1<<20+128<<10, 64<<10)
	cp(0, 1<<20, 256<<10) // the same lineage as the copy before: moved
	if s := r.vol.Stats(); s.CopySharedBytes != 512<<10 || s.CopyMovedBytes != 512<<10 {
		t.Fatalf("after four copies: shared %d moved %d, want 512 KiB each", s.CopySharedBytes, s.CopyMovedBytes)
	}
	write(4, 0, 64<<10)
	cp(1<<20+64<<10, 64<<10, 64<<10)
	check := func(what string) {
		t.Helper()
		if got := readAll(t, r.vol); !bytes.Equal(got, ref) {
			t.Fatalf("%s: %s", what, describeCopyDiff(got, ref))
		}
	}
	check("after the copies")
	mustOK(t, "drain", r.vol.Drain(ctx, nil))
	check("after drain")
	// Churn: GC passes every key above; sequential writes bypass.
	for i := range 200 {
		off := (int64(i%48)*64<<10 + 2<<20) % (4 << 20)
		if off >= 1<<20 && off < 2<<20 {
			continue
		}
		write(uint64(100+i), off, 64<<10)
	}
	check("after churn")
	mustOK(t, "drain", r.vol.Drain(ctx, nil))
	got := make([]byte, 4<<20)
	mustOK(t, "backing", r.mem.ReadAt(ctx, got, 0))
	if !bytes.Equal(got, ref) {
		t.Fatalf("backing after drain: %s", describeCopyDiff(got, ref))
	}
	if s := r.cache.Stats(); s.GCRuns == 0 {
		t.Fatal("GC never ran")
	}
}

// TestCopyUnsupported: copies the engine must not do itself return
// blk.ErrUnsupported and write nothing.
func TestCopyUnsupported(t *testing.T) {
	ctx := context.Background()
	r := copyRig(t, true, 32)
	defer r.close()
	other := newRig(t, rigOptions{Segments: 32, BackingSize: 8 << 20, VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback}}, nil)
	defer other.close()
	mustOK(t, "write", r.vol.WriteAt(ctx, tagged(1, 0, 64<<10), 0, false))
	if err := other.vol.CopyFrom(ctx, r.vol, 0, 0, 64<<10, false); !errors.Is(err, blk.ErrUnsupported) {
		t.Fatalf("copy between caches: %v, want ErrUnsupported", err)
	}
	mv, err := memvol.New(8<<20, 4096)
	mustOK(t, "memvol", err)
	if err := r.vol.CopyFrom(ctx, mv, 0, 0, 64<<10, false); !errors.Is(err, blk.ErrUnsupported) {
		t.Fatalf("copy from a foreign volume: %v, want ErrUnsupported", err)
	}
	for _, m := range []cachecore.Mode{cachecore.ModeWritethrough, cachecore.ModeWritearound, cachecore.ModePassthrough} {
		mustOK(t, "set mode", r.vol.SetMode(ctx, m, nil))
		if err := r.vol.CopyFrom(ctx, r.vol, 0, 1<<20, 64<<10, false); !errors.Is(err, blk.ErrUnsupported) {
			t.Fatalf("copy into a %s volume: %v, want ErrUnsupported", m, err)
		}
	}
	wantRange(t, "destination", r.vol, 1<<20, make([]byte, 64<<10))
	mustOK(t, "set mode", r.vol.SetMode(ctx, cachecore.ModeWriteonly, nil))
	mustOK(t, "copy into writeonly", r.vol.CopyFrom(ctx, r.vol, 0, 1<<20, 64<<10, false))
	wantRange(t, "writeonly destination", r.vol, 1<<20, tagged(1, 0, 64<<10))
	if err := r.vol.CopyFrom(ctx, r.vol, 0, 8<<20-4096, 8192, false); !errors.Is(err, blk.ErrOutOfRange) {
		t.Fatalf("copy beyond the end: %v, want ErrOutOfRange", err)
	}
	if err := r.vol.CopyFrom(ctx, r.vol, 512, 0, 4096, false); !errors.Is(err, blk.ErrMisaligned) {
		t.Fatalf("misaligned copy: %v, want ErrMisaligned", err)
	}
}

// TestCopyGCPassesSourceKeys copies cached data, writes the source back,
// overwrites it and churns the cache until GC has passed the source's
// keys many times over: the shared segments stay alive for the
// destination, which keeps reading the copied data, also after a restart.
func TestCopyGCPassesSourceKeys(t *testing.T) {
	ctx := context.Background()
	o := rigOptions{Segments: 20, BackingSize: 4 << 20, DataCRC: true,
		VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback}, Cfg: cachecore.Config{GCPercent: 20}}
	r := newRig(t, o, nil)
	defer r.close()
	mem1 := backend.NewMemory(1 << 20)
	v1, err := r.cache.AddVolume(ctx, "vol1", mem1, r.opts.VC)
	mustOK(t, "AddVolume", err)
	src := tagged(1, 0, 512<<10)
	mustOK(t, "write", r.vol.WriteAt(ctx, src, 0, false))
	mustOK(t, "copy", v1.CopyFrom(ctx, r.vol, 0, 0, 512<<10, false))
	if s := v1.Stats(); s.CopySharedBytes != 512<<10 {
		t.Fatalf("shared %d", s.CopySharedBytes)
	}
	before := r.cache.Stats().GCSegmentsFreed
	for i := range 400 {
		off := int64(i%64) * 64 << 10
		mustOK(t, "churn", r.vol.WriteAt(ctx, tagged(uint64(10+i), off, 64<<10), off, false))
	}
	mustOK(t, "drain", r.vol.Drain(ctx, nil))
	for i := range 200 {
		off := int64(i%64) * 64 << 10
		mustOK(t, "churn", r.vol.WriteAt(ctx, tagged(uint64(1000+i), off, 64<<10), off, false))
	}
	if freed := r.cache.Stats().GCSegmentsFreed - before; freed < 20 {
		t.Fatalf("GC freed only %d segments", freed)
	}
	wantRange(t, "copy after GC passed the source", v1, 0, src)
	mustOK(t, "flush", v1.Flush(ctx))
	r.close()
	c, v0, err := openImage(ctx, r.media, r.backing, r.opts)
	mustOK(t, "reopen", err)
	r.cache, r.vol = c, v0
	v1, err = c.AddVolume(ctx, "vol1", mem1, r.opts.VC)
	mustOK(t, "re-add vol1", err)
	wantRange(t, "copy after restart", v1, 0, src)
	mustOK(t, "drain vol1", v1.Drain(ctx, nil))
	got := make([]byte, 512<<10)
	mustOK(t, "backing", mem1.ReadAt(ctx, got, 0))
	if !bytes.Equal(got, src) {
		t.Fatalf("vol1 backing: %s", describeCopyDiff(got, src))
	}
}

// TestCopyNoOpAndFUA: a copy of a range onto itself changes nothing and
// with FUA leaves everything durable.
func TestCopyNoOpAndFUA(t *testing.T) {
	ctx := context.Background()
	r := copyRig(t, true, 32)
	defer r.close()
	p := tagged(1, 0, 64<<10)
	mustOK(t, "write", r.vol.WriteAt(ctx, p, 0, false))
	mustOK(t, "self copy", r.vol.CopyFrom(ctx, r.vol, 0, 0, 64<<10, true))
	wantRange(t, "self copy", r.vol, 0, p)
	if s := r.vol.Stats(); s.CopySharedBytes+s.CopyMovedBytes != 0 {
		t.Fatalf("a copy onto itself copied %d bytes", s.CopySharedBytes+s.CopyMovedBytes)
	}
}

// TestCopyRottenSource (C9): a shared key carries the CRC of the data it
// points at, so rot stays visible: a copy of a whole rotten key shares it
// with the key's own CRC (the destination's read fails as the source's
// does); a copy of part of a rotten key verifies the whole key first and
// goes through the source's read path instead: rotten dirty data fails the
// copy, rotten clean data is read from the backing device.
func TestCopyRottenSource(t *testing.T) {
	ctx := context.Background()
	r := copyRig(t, true, 32)
	defer r.close()
	clean := tagged(2, 64<<10, 64<<10)
	mustOK(t, "write clean", r.vol.WriteAt(ctx, clean, 64<<10, false))
	mustOK(t, "drain", r.vol.Drain(ctx, nil))
	// The dirty data stays dirty: writeback has read it (good) and waits
	// at the gate, so it reads nothing while the test runs.
	gate := r.backing.Gate(backend.OpWrite, backend.Range{Off: 0, Len: r.vol.Size()})
	dirty := tagged(1, 0, 64<<10)
	mustOK(t, "write dirty", r.vol.WriteAt(ctx, dirty, 0, true))
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	mustOK(t, "writeback at the gate", gate.WaitArrived(wctx, 1))
	r.rot(4096)
	r.rot(64<<10 + 4096)

	// The whole rotten dirty key [0, 16K): shared, and still rotten.
	mustOK(t, "copy whole key", r.vol.CopyFrom(ctx, r.vol, 0, 1<<20, 16<<10, false))
	if err := r.vol.ReadAt(ctx, make([]byte, 4096), 1<<20); !errors.Is(err, cachecore.ErrDataCRC) || !errors.Is(err, blk.ErrMedium) {
		t.Fatalf("read of a copy of rotten dirty data: %v, want ErrDataCRC and ErrMedium", err)
	}
	// Part of it: the copy fails as a read would.
	if err := r.vol.CopyFrom(ctx, r.vol, 4096, 2<<20, 4096, false); !errors.Is(err, blk.ErrMedium) {
		t.Fatalf("copy of part of a rotten dirty key: %v, want ErrMedium", err)
	}
	// Part of a rotten clean key: the backing device's data.
	mustOK(t, "copy part of rotten clean key", r.vol.CopyFrom(ctx, r.vol, 64<<10+4096, 3<<20, 8192, false))
	wantRange(t, "copy of rotten clean data", r.vol, 3<<20, clean[4096:4096+8192])
	// Writeback would now find the rotten dirty data and retire the
	// cache (C9): close it without the end-of-test checks.
	gate.Release()
	c := r.cache
	r.cache = nil
	c.Close(ctx)
}

// TestCopySharesAfterRestart: data cached before a restart is shared by
// copies made after it, as in the session that wrote it (Open rebuilds
// the share registry from the log), and the lineage rule still holds for
// it: copying a pre-restart copy back to where its data was written moves
// the data, also where that data was overwritten before the restart (the
// index no longer holds the key that wrote it, but the log does, and
// writeback's clean marking of that key scans its whole range). A segment
// of scattered small writes stays move-only. Every range reads what it
// should, before and after its writeback and another restart.
func TestCopySharesAfterRestart(t *testing.T) {
	for _, crc := range []bool{false, true} {
		t.Run(fmt.Sprintf("datacrc=%v", crc), func(t *testing.T) {
			ctx := context.Background()
			r := newRig(t, rigOptions{Segments: 64, BackingSize: 8 << 20, DataCRC: crc, CacheBlock: sector,
				VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback, BlockSize: sector}}, nil)
			defer r.close()
			const n = 512 << 10
			src := tagged(1, 0, n)
			mustOK(t, "write", r.vol.WriteAt(ctx, src, 0, false))
			mustOK(t, "copy before the restart", r.vol.CopyFrom(ctx, r.vol, 0, 1<<20, n, false))
			// a key whose first 64 KiB is overwritten before the restart,
			// after a copy shared it
			src2 := tagged(2, 3<<20, 128<<10)
			mustOK(t, "write", r.vol.WriteAt(ctx, src2, 3<<20, false))
			mustOK(t, "copy before the restart", r.vol.CopyFrom(ctx, r.vol, 3<<20, 3<<20+512<<10, 128<<10, false))
			mustOK(t, "overwrite", r.vol.WriteAt(ctx, tagged(3, 3<<20, 64<<10), 3<<20, false))
			mustOK(t, "flush", r.vol.Flush(ctx))
			reopen := func() {
				t.Helper()
				r.close()
				c, v, err := openImage(ctx, r.media, r.backing, r.opts)
				mustOK(t, "reopen", err)
				r.cache, r.vol = c, v
			}
			reopen()

			before := r.vol.Stats()
			mustOK(t, "copy of pre-restart data", r.vol.CopyFrom(ctx, r.vol, 0, 2<<20, n, false))
			s := r.vol.Stats()
			if shared := s.CopySharedBytes - before.CopySharedBytes; shared != n {
				t.Fatalf("a copy of data cached before the restart shared %d bytes, want %d (moved %d)",
					shared, n, s.CopyMovedBytes-before.CopyMovedBytes)
			}
			// the pre-restart copy at 1 MiB back to 0, where its data was
			// written: the key would repeat the lineage of the key at 0
			before = s
			mustOK(t, "copy back to where the data was written", r.vol.CopyFrom(ctx, r.vol, 1<<20, 0, n, false))
			s = r.vol.Stats()
			if moved := s.CopyMovedBytes - before.CopyMovedBytes; moved != n {
				t.Fatalf("a copy back onto the data's own lineage moved %d bytes, want %d (shared %d)",
					moved, n, s.CopySharedBytes-before.CopySharedBytes)
			}

			// the copy of the overwritten part back to where it was
			// written: its key would repeat the lineage of the key that
			// wrote it, which only the log holds now
			before = s
			mustOK(t, "copy back over the overwrite", r.vol.CopyFrom(ctx, r.vol, 3<<20+512<<10, 3<<20, 64<<10, false))
			s = r.vol.Stats()
			if moved := s.CopyMovedBytes - before.CopyMovedBytes; moved != 64<<10 {
				t.Fatalf("a copy back onto the lineage of an overwritten key moved %d bytes, want %d (shared %d)",
					moved, 64<<10, s.CopySharedBytes-before.CopySharedBytes)
			}

			// 512-byte writes one sector apart: hundreds of ranges per
			// segment, in segments of their own (a new session's data
			// heads take free segments)
			scattered := make(map[int64][]byte)
			for i := range 600 {
				off := 4<<20 + int64(i)*2*sector
				p := tagged(uint64(100+i), off, sector)
				scattered[off] = p
				mustOK(t, "scattered write", r.vol.WriteAt(ctx, p, off, false))
			}
			mustOK(t, "flush", r.vol.Flush(ctx))
			reopen()
			before = r.vol.Stats()
			mustOK(t, "copy of scattered data", r.vol.CopyFrom(ctx, r.vol, 4<<20, 6<<20, 1200*sector, false))
			s = r.vol.Stats()
			if moved := s.CopyMovedBytes - before.CopyMovedBytes; moved == 0 {
				t.Fatalf("a copy of scattered pre-restart data moved nothing: its segments were adopted whole (shared %d)",
					s.CopySharedBytes-before.CopySharedBytes)
			}
			// overwrites of either side leave the other alone
			over := tagged(7, 0, 64<<10)
			mustOK(t, "overwrite the source", r.vol.WriteAt(ctx, over, 0, false))
			check := func(what string) {
				t.Helper()
				want := append(append([]byte(nil), over...), src[64<<10:]...)
				wantRange(t, what+": source", r.vol, 0, want)
				wantRange(t, what+": pre-restart copy", r.vol, 1<<20, src)
				wantRange(t, what+": post-restart copy", r.vol, 2<<20, src)
				wantRange(t, what+": copied back over the overwrite", r.vol, 3<<20, src2)
				for off, p := range scattered {
					wantRange(t, what+": scattered copy", r.vol, off+2<<20, p)
				}
			}
			check("in the cache")
			mustOK(t, "drain", r.vol.Drain(ctx, nil))
			check("written back")
			mustOK(t, "flush", r.vol.Flush(ctx))
			reopen()
			check("after another restart")
			if err := r.cache.CheckInvariants(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
