package scsi

import (
	"context"
	"encoding/binary"
	"testing"

	"github.com/cachelun/cachelun/internal/blk"
)

// provVol is a volume whose blocks [10, 20) are deallocated.
type provVol struct{ blk.Volume }

func (p provVol) Unwrap() blk.Volume { return p.Volume }

func (p provVol) Provisioning(_ context.Context, off, n int64) (bool, int64, error) {
	b := off / testBS
	switch {
	case b < 10:
		return true, min(n, (10-b)*testBS), nil
	case b < 20:
		return false, min(n, (20-b)*testBS), nil
	}
	return true, n, nil
}

// TestGetLBAStatusThin: a thin unit reports the volume's runs, one
// descriptor per run, as many as the allocation length holds; a thick unit
// reports everything mapped.
func TestGetLBAStatusThin(t *testing.T) {
	type desc struct {
		lba    uint64
		blocks uint32
		status byte
	}
	parse := func(r Response) []desc {
		t.Helper()
		if r.Status != StatusGood {
			t.Fatalf("status %#x sense % x", r.Status, r.Sense)
		}
		var out []desc
		for p := r.Data[8:]; len(p) >= 16; p = p[16:] {
			out = append(out, desc{binary.BigEndian.Uint64(p), binary.BigEndian.Uint32(p[8:]), p[12] & 0x0f})
		}
		return out
	}
	getLBAStatus := func(f *fixture, lba uint64, alloc uint32) Response {
		cdb := make([]byte, 16)
		cdb[0], cdb[1] = 0x9e, 0x12
		binary.BigEndian.PutUint64(cdb[2:], lba)
		binary.BigEndian.PutUint32(cdb[10:], alloc)
		return f.exec(nexusA, cdb, nil, alloc)
	}
	thin := newFixture(t, func(c *LUConfig) { c.Thin = true; c.Volume = provVol{c.Volume} })
	got := parse(getLBAStatus(thin, 0, 1024))
	want := []desc{{0, 10, 0}, {10, 10, 1}, {20, testBlocks - 20, 0}}
	if len(got) != len(want) {
		t.Fatalf("descriptors %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("descriptors %v, want %v", got, want)
		}
	}
	if got := parse(getLBAStatus(thin, 15, 24)); len(got) != 1 || got[0] != (desc{15, 5, 1}) {
		t.Fatalf("from LBA 15 with room for one descriptor: %v", got)
	}
	r := getLBAStatus(thin, 15, 1024)
	if n := binary.BigEndian.Uint32(r.Data[0:4]); int(n) != len(r.Data)-4 {
		t.Fatalf("parameter data length %d for %d bytes", n, len(r.Data))
	}
	thick := newFixture(t, func(c *LUConfig) { c.Volume = provVol{c.Volume} })
	if got := parse(getLBAStatus(thick, 12, 1024)); len(got) != 1 || got[0] != (desc{12, testBlocks - 12, 0}) {
		t.Fatalf("thick unit: %v", got)
	}
}
