package scsi

import (
	"context"
	"encoding/binary"
	"testing"

	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/internal/memvol"
)

// atomicVol offers atomic writes through memvol (whose WriteAt holds one
// lock for the whole range) with the given limits.
type atomicVol struct {
	*memvol.Volume
	limits blk.AtomicLimits
	calls  int
	fua    bool
}

func (v *atomicVol) AtomicLimits() blk.AtomicLimits { return v.limits }

func (v *atomicVol) WriteAtomic(ctx context.Context, p []byte, off int64, fua bool) error {
	v.calls++
	v.fua = fua
	return v.Volume.WriteAt(ctx, p, off, fua)
}

func writeAtomicCDB(flags byte, lba uint64, n uint16) []byte {
	c := make([]byte, 16)
	c[0], c[1] = 0x9c, flags
	binary.BigEndian.PutUint64(c[2:], lba)
	binary.BigEndian.PutUint16(c[12:], n)
	return c
}

func TestWriteAtomicNotOfferedWithoutAtomicWriter(t *testing.T) {
	f := newFixture(t, nil)
	f.sense(f.exec(nexusA, writeAtomicCDB(0, 0, 1), pattern(testBS, 1), 0), SenseIllegalRequest, ASCInvalidOpcode)
	r := f.exec(nexusA, []byte{0x12, 1, 0xb0, 0, 64, 0}, nil, 64)
	f.good(r)
	for i := 44; i < 64; i++ {
		if r.Data[i] != 0 {
			t.Fatalf("atomic fields advertised without an AtomicWriter: % x", r.Data[44:64])
		}
	}
	r = f.exec(nexusA, []byte{0xa3, 0x0c, 0x01, 0x9c, 0, 0, 0, 0, 2, 0, 0, 0}, nil, 512)
	f.good(r)
	if r.Data[1]&0x07 != 0x01 {
		t.Fatalf("RSOC reports WRITE ATOMIC(16) support %#x", r.Data[1])
	}
}

func TestWriteAtomic(t *testing.T) {
	var av *atomicVol
	f := newFixture(t, func(c *LUConfig) {
		av = &atomicVol{Volume: c.Volume.(*memvol.Volume), limits: blk.AtomicLimits{MaxBytes: 64 * testBS, Alignment: 4 * testBS, Granularity: 2 * testBS}}
		c.Volume = av
	})
	r := f.exec(nexusA, []byte{0x12, 1, 0xb0, 0, 64, 0}, nil, 64)
	f.good(r)
	if got := [3]uint32{binary.BigEndian.Uint32(r.Data[44:]), binary.BigEndian.Uint32(r.Data[48:]), binary.BigEndian.Uint32(r.Data[52:])}; got != [3]uint32{64, 4, 2} {
		t.Fatalf("max/align/granularity %v", got)
	}
	r = f.exec(nexusA, []byte{0xa3, 0x0c, 0x01, 0x9c, 0, 0, 0, 0, 2, 0, 0, 0}, nil, 512)
	f.good(r)
	if r.Data[1]&0x07 != 0x03 || r.Data[5]&0x18 != 0x18 {
		t.Fatalf("RSOC WRITE ATOMIC(16): % x", r.Data)
	}

	data := pattern(8*testBS, 4)
	f.good(f.exec(nexusA, writeAtomicCDB(0, 8, 8), data, 0))
	f.mustEqual(f.readBack(8, 8), data)
	if av.calls != 1 || av.fua {
		t.Fatalf("calls %d fua %v", av.calls, av.fua)
	}
	f.good(f.exec(nexusA, writeAtomicCDB(flagFUA, 8, 8), data, 0))
	if !av.fua {
		t.Fatal("FUA not passed on")
	}
	// Zero blocks: nothing to do, but the LBA is still checked.
	f.good(f.exec(nexusA, writeAtomicCDB(0, 0, 0), nil, 0))
	f.sense(f.exec(nexusA, writeAtomicCDB(0, testBlocks+4, 0), nil, 0), SenseIllegalRequest, ASCLBAOutOfRange)

	zero := make([]byte, 128*testBS)
	cases := []struct {
		name  string
		cdb   []byte
		out   []byte
		asc   ASC
		field int
	}{
		{"larger than advertised", writeAtomicCDB(0, 0, 66), make([]byte, 66*testBS), ASCInvalidFieldInCDB, 12},
		{"misaligned", writeAtomicCDB(0, 2, 2), make([]byte, 2*testBS), ASCInvalidFieldInCDB, 2},
		{"not a multiple of the granularity", writeAtomicCDB(0, 0, 3), make([]byte, 3*testBS), ASCInvalidFieldInCDB, 12},
		{"beyond end", writeAtomicCDB(0, testBlocks-4, 8), make([]byte, 8*testBS), ASCLBAOutOfRange, -1},
		{"lba wraps", writeAtomicCDB(0, ^uint64(0)-3, 4), make([]byte, 4*testBS), ASCLBAOutOfRange, -1},
		{"wrprotect", writeAtomicCDB(0x20, 0, 2), make([]byte, 2*testBS), ASCInvalidFieldInCDB, 1},
		{"atomic boundary", func() []byte { c := writeAtomicCDB(0, 0, 2); c[11] = 1; return c }(), make([]byte, 2*testBS), ASCInvalidFieldInCDB, 10},
		{"short data-out", writeAtomicCDB(0, 0, 8), make([]byte, 7*testBS), ASCInvalidFieldInCmdIU, -1},
	}
	f.write(0, zero)
	calls := av.calls
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for i := range c.out {
				c.out[i] = 0xee
			}
			r := f.exec(nexusA, c.cdb, c.out, 0)
			checkSense(t, r, SenseIllegalRequest, c.asc)
			if c.field >= 0 && (r.Sense[15]&0xc0 != 0xc0 || int(binary.BigEndian.Uint16(r.Sense[16:])) != c.field) {
				t.Fatalf("field pointer % x, want CDB byte %d", r.Sense[15:18], c.field)
			}
			f.mustEqual(f.readBack(0, 128), zero)
		})
	}
	if av.calls != calls {
		t.Fatal("a refused atomic write reached the volume")
	}
}

func TestWriteAtomicLimitsClamped(t *testing.T) {
	f := newFixture(t, func(c *LUConfig) {
		c.Volume = &atomicVol{Volume: c.Volume.(*memvol.Volume), limits: blk.AtomicLimits{MaxBytes: 1 << 40, Alignment: 100, Granularity: 3 * testBS / 2}}
	})
	a := f.lu.atomic
	if a.maxBlks != f.lu.maxXferBlocks || a.align != 0 || a.gran != 2 {
		t.Fatalf("limits %+v", *a)
	}
	g := newFixture(t, func(c *LUConfig) {
		c.Volume = &atomicVol{Volume: c.Volume.(*memvol.Volume), limits: blk.AtomicLimits{MaxBytes: testBS - 1}}
	})
	if g.lu.atomic != nil {
		t.Fatal("an atomic size below one block is advertised")
	}
}
