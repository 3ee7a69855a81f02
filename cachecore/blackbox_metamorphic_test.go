package cachecore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/internal/testkit"
)

var allModes = []cachecore.Mode{
	cachecore.ModeWriteback, cachecore.ModeWritethrough, cachecore.ModeWritearound,
	cachecore.ModeWriteonly, cachecore.ModePassthrough,
}

// opLog records what a randomized test did, for the failure report.
type opLog struct {
	t     testing.TB
	name  string
	mu    sync.Mutex
	lines []string
}

func newOpLog(t *testing.T, name string, seed uint64) *opLog {
	l := &opLog{t: t, name: name}
	t.Logf("seed %d (rerun with CACHELUN_SEED=%d)", seed, seed)
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		path := filepath.Join(t.ArtifactDir(), name+".oplog")
		if err := os.WriteFile(path, []byte(strings.Join(l.lines, "\n")+"\n"), 0o644); err != nil {
			t.Logf("writing the operation log: %v", err)
		} else {
			t.Logf("operation log (%d ops): %s (kept with -artifacts)", len(l.lines), path)
		}
		tail := l.lines[max(0, len(l.lines)-25):]
		t.Logf("last operations:\n  %s", strings.Join(tail, "\n  "))
	})
	return l
}

func (l *opLog) add(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	l.mu.Lock()
	l.lines = append(l.lines, fmt.Sprintf("%5d ", len(l.lines))+line)
	l.mu.Unlock()
}

// testSeed returns CACHELUN_SEED if set, else a random seed.
func testSeed() uint64 {
	if s := os.Getenv("CACHELUN_SEED"); s != "" {
		var v uint64
		fmt.Sscan(s, &v)
		return v
	}
	return rand.Uint64()
}

// TestBlackboxMetamorphic runs random operations on a cached volume and on a
// plain backend.Memory reference and requires every read to agree, across
// cache modes, block sizes, bypass settings, cache sizes (GC pressure), live
// mode switches and clean restarts. At the end the volume is drained and
// the backing device alone must equal the reference.
func TestBlackboxMetamorphic(t *testing.T) {
	type tc struct {
		name string
		o    rigOptions
	}
	cases := []tc{
		{"writeback-4k", rigOptions{VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback}}},
		{"writeback-4k-2q", rigOptions{VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback, Policy: cachecore.Policy2Q}}},
		{"writeback-512-datacrc", rigOptions{DataCRC: true, VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback, BlockSize: 512}}},
		{"writethrough-2q", rigOptions{VC: cachecore.VolumeConfig{Mode: cachecore.ModeWritethrough, Policy: cachecore.Policy2Q}}},
		{"writearound-512", rigOptions{VC: cachecore.VolumeConfig{Mode: cachecore.ModeWritearound, BlockSize: 512}}},
		{"writeonly", rigOptions{VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteonly}}},
		{"passthrough", rigOptions{VC: cachecore.VolumeConfig{Mode: cachecore.ModePassthrough}}},
		{"sequential-bypass", rigOptions{VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback, SequentialCutoff: 64 << 10}}},
		{"congestion-bypass", rigOptions{VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback,
			CongestedReadThreshold: time.Nanosecond, CongestedWriteThreshold: time.Nanosecond}}},
		{"tiny-cache-gc", rigOptions{Segments: 16, BackingSize: 8 << 20, Cfg: cachecore.Config{GCPercent: 40},
			VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback}}},
		// Writeback lags, so bypass writes are often held back into the
		// cache behind older dirty data (C6) and reads must still
		// see them.
		{"held-back-bypass", rigOptions{Cfg: cachecore.Config{Writeback: cachecore.WritebackConfig{
			IdleAfter: time.Hour, TargetDirtyPercent: 50, HighWatermarkPercent: 90, MaxBytesPerSec: 64 << 10}},
			VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback, SequentialCutoff: 16 << 10}}},
		{"held-back-full-cache", rigOptions{Segments: 6, BackingSize: 8 << 20, Cfg: cachecore.Config{GCPercent: 20, Writeback: cachecore.WritebackConfig{
			IdleAfter: time.Hour, TargetDirtyPercent: 90, HighWatermarkPercent: 95, MaxBytesPerSec: 256 << 10}},
			VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback, SequentialCutoff: 32 << 10}}},
	}
	ops := 300
	if testkit.RaceEnabled {
		ops = 150
	}
	if longRun() {
		ops = 5000
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			runMetamorphic(t, c.name, c.o, testSeed(), ops)
		})
	}
}

func runMetamorphic(t *testing.T, name string, o rigOptions, seed uint64, ops int) {
	ctx := context.Background()
	log := newOpLog(t, name, seed)
	rng := rand.New(rand.NewPCG(seed, 0x6d657461))
	r := newRig(t, o, nil)
	defer r.close()
	ref := backend.NewMemory(r.opts.BackingSize)
	bs := int64(r.opts.VC.BlockSize)
	size := r.vol.Size()
	if size != r.opts.BackingSize {
		t.Fatalf("volume size %d, backing %d", size, r.opts.BackingSize)
	}
	if r.vol.BlockSize() != int(bs) {
		t.Fatalf("volume block size %d, want %d", r.vol.BlockSize(), bs)
	}
	blocks := size / bs
	mode := r.opts.VC.Mode
	nextID := uint64(1)
	seqNext := int64(-1) // next offset of a sequential run, or -1

	// Errors on bad requests, before anything else.
	if err := r.vol.WriteAt(ctx, make([]byte, bs), size, false); !errors.Is(err, blk.ErrOutOfRange) {
		t.Errorf("write past the end: %v, want ErrOutOfRange", err)
	}
	if err := r.vol.ReadAt(ctx, make([]byte, bs), size-bs/2); !errors.Is(err, blk.ErrOutOfRange) && !errors.Is(err, blk.ErrMisaligned) {
		t.Errorf("read straddling the end: %v", err)
	}
	if err := r.vol.WriteAt(ctx, make([]byte, bs), 1, false); !errors.Is(err, blk.ErrMisaligned) {
		t.Errorf("misaligned write: %v, want ErrMisaligned", err)
	}
	if err := r.vol.ReadAt(ctx, make([]byte, bs+1), 0); !errors.Is(err, blk.ErrMisaligned) {
		t.Errorf("misaligned read length: %v, want ErrMisaligned", err)
	}

	readCompare := func(off, n int64, what string) {
		t.Helper()
		got := make([]byte, n)
		if err := r.vol.ReadAt(ctx, got, off); err != nil {
			t.Fatalf("%s: ReadAt(%d,+%d): %v", what, off, n, err)
		}
		want := make([]byte, n)
		mustOK(t, "reference read", ref.ReadAt(ctx, want, off))
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: ReadAt(%d,+%d) differs from the reference: %s", what, off, n, describeDiff(got, want, off))
		}
	}

	randRange := func(maxBlocks int64) (int64, int64) {
		n := 1 + rng.Int64N(maxBlocks)
		off := rng.Int64N(blocks) * bs
		n = min(n*bs, size-off)
		return off, n
	}

	for i := range ops {
		switch k := rng.IntN(100); {
		case k < 30: // write
			var off, n int64
			if seqNext >= 0 && rng.IntN(4) != 0 {
				off, n = seqNext, min(16*bs, size-seqNext)
			} else {
				off, n = randRange(16)
				if rng.IntN(10) == 0 {
					seqNext = off // start a sequential run
				}
			}
			if seqNext >= 0 {
				seqNext = off + n
				if seqNext >= size {
					seqNext = -1
				}
			}
			fua := rng.IntN(4) == 0
			id := nextID
			nextID++
			p := tagged(id, off, int(n))
			log.add("write id=%d off=%d n=%d fua=%v", id, off, n, fua)
			mustOK(t, fmt.Sprintf("op %d write", i), r.vol.WriteAt(ctx, p, off, fua))
			mustOK(t, "reference write", ref.WriteAt(ctx, p, off))
		case k < 55: // read
			off, n := randRange(32)
			log.add("read off=%d n=%d", off, n)
			readCompare(off, n, fmt.Sprintf("op %d read", i))
		case k < 62: // discard
			off, n := randRange(64)
			log.add("discard off=%d n=%d", off, n)
			mustOK(t, fmt.Sprintf("op %d discard", i), r.vol.Discard(ctx, off, n))
			mustOK(t, "reference discard", ref.Discard(ctx, off, n))
		case k < 68:
			log.add("flush")
			mustOK(t, fmt.Sprintf("op %d flush", i), r.vol.Flush(ctx))
		case k < 76: // compare and write
			off, n := randRange(2)
			cur := make([]byte, n)
			mustOK(t, "reference read", ref.ReadAt(ctx, cur, off))
			id := nextID
			nextID++
			data := tagged(id, off, int(n))
			fua := rng.IntN(2) == 0
			if rng.IntN(2) == 0 {
				log.add("caw-match id=%d off=%d n=%d fua=%v", id, off, n, fua)
				mustOK(t, fmt.Sprintf("op %d compare-and-write (matching)", i), r.vol.CompareAndWrite(ctx, off, cur, data, fua))
				mustOK(t, "reference write", ref.WriteAt(ctx, data, off))
			} else {
				bad := bytes.Clone(cur)
				at := rng.Int64N(n)
				bad[at] ^= 0x40
				log.add("caw-mismatch id=%d off=%d n=%d at=%d", id, off, n, at)
				err := r.vol.CompareAndWrite(ctx, off, bad, data, fua)
				var me *blk.MiscompareError
				if !errors.As(err, &me) || !errors.Is(err, blk.ErrMiscompare) {
					t.Fatalf("op %d compare-and-write with a wrong compare buffer: %v, want *blk.MiscompareError", i, err)
				}
				if me.Offset != at {
					t.Fatalf("op %d miscompare reported at byte %d, first difference is at %d", i, me.Offset, at)
				}
			}
		case k < 80: // mode switch
			m := allModes[rng.IntN(len(allModes))]
			log.add("set-mode %s -> %s", mode, m)
			mustOK(t, fmt.Sprintf("op %d SetMode(%s)", i, m), r.vol.SetMode(ctx, m, nil))
			if got := r.vol.Mode(); got != m {
				t.Fatalf("op %d: Mode() = %s after SetMode(%s)", i, got, m)
			}
			mode = m
		case k < 83:
			log.add("drain")
			mustOK(t, fmt.Sprintf("op %d Drain", i), r.vol.Drain(ctx, nil))
			if st := r.vol.Stats(); st.DirtyBytes != 0 {
				t.Fatalf("op %d: %d dirty bytes after Drain", i, st.DirtyBytes)
			}
		case k < 86:
			off, n := randRange(64)
			log.add("prefetch off=%d n=%d", off, n)
			mustOK(t, fmt.Sprintf("op %d Prefetch", i), r.vol.Prefetch(ctx, off, n))
		case k < 89:
			gc := 10 + rng.IntN(80)
			cfg := r.opts.Cfg
			cfg.GCPercent = gc
			log.add("cache-config gc=%d", gc)
			mustOK(t, fmt.Sprintf("op %d Cache.SetConfig", i), r.cache.SetConfig(cfg))
		case k < 91:
			vc := r.opts.VC
			vc.Mode = mode
			vc.SequentialCutoff = []int64{0, 32 << 10, 1 << 20}[rng.IntN(3)]
			log.add("volume-config seqcutoff=%d", vc.SequentialCutoff)
			mustOK(t, fmt.Sprintf("op %d Volume.SetConfig", i), r.vol.SetConfig(vc))
		case k < 93: // clean restart
			log.add("restart (mode %s)", mode)
			r.close()
			o := r.opts
			o.VC.Mode = mode
			c, v, err := openImage(ctx, r.media, r.backing, o)
			if err != nil {
				t.Fatalf("op %d restart: %v", i, err)
			}
			r.cache, r.vol = c, v
		default: // whole-volume read now and then
			log.add("read-all")
			readCompare(0, size, fmt.Sprintf("op %d read-all", i))
		}
	}
	readCompare(0, size, "final read")
	log.add("final drain")
	mustOK(t, "final Drain", r.vol.Drain(ctx, nil))
	got := make([]byte, size)
	want := make([]byte, size)
	mustOK(t, "backing read", r.mem.ReadAt(ctx, got, 0))
	mustOK(t, "reference read", ref.ReadAt(ctx, want, 0))
	if !bytes.Equal(got, want) {
		t.Fatalf("after Drain the backing device differs from the reference: %s", describeDiff(got, want, 0))
	}
	st := r.vol.Stats()
	t.Logf("stats: hits %d partial %d misses %d write-hits %d bypassed %v dirty %d writeback %d B",
		st.ReadHits, st.ReadPartialHits, st.ReadMisses, st.WriteHits, st.BypassedRequests, st.DirtyBytes, st.WritebackBytes)
}

// describeDiff names the first differing sector and which writes the two
// sides hold there.
func describeDiff(got, want []byte, base int64) string {
	for i := 0; i+sector <= len(got); i += sector {
		if bytes.Equal(got[i:i+sector], want[i:i+sector]) {
			continue
		}
		s := (base + int64(i)) / sector
		gid, gerr := decodeSector(got[i:i+sector], s)
		wid, _ := decodeSector(want[i:i+sector], s)
		if gerr != nil {
			return fmt.Sprintf("first difference at byte %d (sector %d): want write %d, got: %v", base+int64(i), s, wid, gerr)
		}
		return fmt.Sprintf("first difference at byte %d (sector %d): got write %d, want write %d", base+int64(i), s, gid, wid)
	}
	return "lengths or a trailing partial sector differ"
}
