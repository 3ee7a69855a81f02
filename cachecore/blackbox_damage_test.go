package cachecore_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/persist"
)

// TestDamagedJournalRefusedThenRepaired: four flipped bytes inside one kset
// in the middle of a journal of flushed writes. Open refuses the cache
// (C9: never the end of the log, never older data served); check
// names the damage and the range whose newest data is lost; Repair keeps
// every other write, and the one lost range reads the backing device's
// (older) data, as the report said.
func TestDamagedJournalRefusedThenRepaired(t *testing.T) {
	for _, dataCRC := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "datacrc"}[dataCRC], func(t *testing.T) {
			ctx := context.Background()
			o := rigOptions{DataCRC: dataCRC}
			o.Cfg.Writeback.MaxBytesPerSec = 1 // keep the data dirty: the damage lies after the dirty tail
			r := newRig(t, o, nil)
			const writes = 24
			for i := range writes {
				mustOK(t, "write", r.vol.WriteAt(ctx, tagged(uint64(i+1), int64(i)*8192, 4096), int64(i)*8192, true))
			}
			r.close()
			img := r.media.Bytes()

			// The ksets of the log, in order.
			s, err := persist.Open(persist.NewCrashMediaFrom(img, r.opts.Unit))
			if err != nil {
				t.Fatal(err)
			}
			var ksets []persist.KSet
			rp := s.ReplayVerified(s.KeyTail())
			for ks, ok := rp.Next(); ok; ks, ok = rp.Next() {
				ksets = append(ksets, ks)
			}
			if len(ksets) < 8 {
				t.Fatalf("only %d ksets for %d FUA writes", len(ksets), writes)
			}
			victim := ksets[len(ksets)/2]
			var lost []int // write indexes recorded in the victim
			for _, k := range victim.Keys {
				if k.Flags == persist.KeyDirty {
					lost = append(lost, int(k.Offset/8192))
				}
			}
			if len(lost) == 0 {
				t.Fatalf("victim kset LSN %d holds no dirty key: %+v", victim.LSN, victim.Keys)
			}
			at := s.DataOffset(victim.Pos) + 40 // its flush epoch: the keys stay readable for the report
			for i := range int64(4) {
				img[at+i] ^= 0xff
			}
			damaged := persist.NewCrashMediaFrom(img, r.opts.Unit)

			_, _, err = openImage(ctx, damaged, backend.NewMemory(r.opts.BackingSize), r.opts)
			if !errors.Is(err, cachecore.ErrJournalDamaged) || !errors.Is(err, persist.ErrJournalDamaged) {
				t.Fatalf("open of a cache with a damaged durable kset: %v, want ErrJournalDamaged", err)
			}

			s, err = persist.Open(damaged)
			if err != nil {
				t.Fatal(err)
			}
			problems, err := persist.Check(s)
			if err != nil {
				t.Fatal(err)
			}
			report := strings.Join(problems, "\n")
			if !strings.Contains(report, "journal damaged") || !strings.Contains(report, "volume "+testVolName+": bytes [") {
				t.Fatalf("check did not name the damage and the lost range:\n%s", report)
			}

			rp = s.ReplayVerified(s.KeyTail())
			for _, ok := rp.Next(); ok; _, ok = rp.Next() {
			}
			var d *persist.DamageError
			if !errors.As(rp.StopReason(), &d) || d.Resume.LSN != victim.LSN+1 {
				t.Fatalf("stop %v, want damage at LSN %d resuming at %d", rp.StopReason(), victim.LSN, victim.LSN+1)
			}
			if truncated, err := s.Repair(d); err != nil || truncated {
				t.Fatalf("Repair: truncated %v, %v", truncated, err)
			}
			if problems, err := persist.Check(s); err != nil || len(problems) != 0 {
				t.Fatalf("after repair: %v %v", problems, err)
			}
			c, v, err := openImage(ctx, damaged, backend.NewMemory(r.opts.BackingSize), r.opts)
			if err != nil {
				t.Fatalf("open after repair: %v", err)
			}
			defer c.Close(ctx)
			buf := make([]byte, 4096)
			for i := range writes {
				mustOK(t, "read", v.ReadAt(ctx, buf, int64(i)*8192))
				want := tagged(uint64(i+1), int64(i)*8192, 4096)
				isLost := false
				for _, l := range lost {
					isLost = isLost || l == i
				}
				if isLost {
					want = make([]byte, 4096) // the backing device's older data
				}
				if !bytes.Equal(buf, want) {
					t.Fatalf("write %d (lost %v) read back wrong after repair", i, isLost)
				}
			}
		})
	}
}
