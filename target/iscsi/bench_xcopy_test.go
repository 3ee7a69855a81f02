package iscsi

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/internal/testkit"
	"github.com/cachelun/cachelun/persist"
	"github.com/cachelun/cachelun/target/scsi"
)

// BenchmarkXCopy1GiB is issue 19's copy benchmark through the iSCSI
// target: a 1 GiB EXTENDED COPY (LID1, block to block within one LUN) of a
// cache engine volume against the same copy done by the host, which reads
// and writes 1 MiB at a time through the target over TCP (as dd bs=1M
// would, one command at a time), for a cached source (written and written
// back before) and for a source only on the backing device. The goal: the
// EXTENDED COPY at least 20 times faster than the host copy when the
// source is cached, and no slower when it is not. Run it with
//
//	go test -run '^$' -bench XCopy1GiB -benchtime 1x ./target/iscsi/
//
// (bench/copy_offload.sh runs it with the engine-level BenchmarkCopy1GiB).
// The cache file (6.25 GiB) goes to a temporary directory, the backing
// device is in memory. Metrics as BenchmarkCopy1GiB's: cached-host-MB/s,
// cached-xcopy-MB/s, cached-ratio-x (host time over EXTENDED COPY time),
// and the same for the uncached source.
func BenchmarkXCopy1GiB(b *testing.B) {
	for _, crc := range []bool{false, true} {
		b.Run(fmt.Sprintf("datacrc=%v", crc), func(b *testing.B) { benchXCopy1GiB(b, crc) })
	}
}

func benchXCopy1GiB(b *testing.B, dataCRC bool) {
	const (
		gib   = int64(1) << 30
		chunk = 1 << 20
		bs    = 4096
	)
	ctx := context.Background()
	for range b.N {
		b.StopTimer()
		m, err := persist.OpenFile(filepath.Join(b.TempDir(), "cache"), persist.FileOptions{Create: true, Size: 6*gib + 256<<20})
		if err != nil {
			b.Fatal(err)
		}
		store, err := persist.Format(m, persist.FormatOptions{SegmentSize: 16 << 20, BlockSize: 4096, DataCRC: dataCRC})
		if err != nil {
			b.Fatal(err)
		}
		c, err := cachecore.Open(ctx, store, cachecore.Config{})
		if err != nil {
			b.Fatal(err)
		}
		mem := backend.NewMemory(6 * gib)
		buf := make([]byte, chunk)
		pattern := func(off int64) []byte {
			for i := 0; i < chunk; i += bs {
				binary.LittleEndian.PutUint64(buf[i:], uint64(off)+uint64(i))
			}
			return buf
		}
		// The uncached source [5 GiB, 6 GiB) is on the backing device only.
		for off := 5 * gib; off < 6*gib; off += chunk {
			if err := mem.WriteAt(ctx, pattern(off), off); err != nil {
				b.Fatal(err)
			}
		}
		v, err := c.AddVolume(ctx, "bench", mem, cachecore.VolumeConfig{Mode: cachecore.ModeWriteback, BlockSize: bs})
		if err != nil {
			b.Fatal(err)
		}
		// The cached source [0, 1 GiB): written, then written back (clean).
		for off := int64(0); off < gib; off += chunk {
			if err := v.WriteAt(ctx, pattern(off), off, false); err != nil {
				b.Fatal(err)
			}
		}
		if err := v.Drain(ctx, nil); err != nil {
			b.Fatal(err)
		}

		tgt := scsi.NewTarget(scsi.TargetConfig{Name: testIQN})
		if _, err := tgt.AddLU(0, scsi.LUConfig{Volume: v, WriteCache: true}); err != nil {
			b.Fatal(err)
		}
		srv := NewServer(Config{})
		if err := srv.AddTarget(TargetConfig{Name: testIQN, SCSI: tgt, TPGT: 1}); err != nil {
			b.Fatal(err)
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		sctx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			srv.Serve(sctx, l)
		}()
		ti := dialInitiator(b, l.Addr().String())
		ti.login(testIQN, "MaxRecvDataSegmentLength", "262144", "MaxBurstLength", "1048576",
			"FirstBurstLength", "262144", "ImmediateData", "Yes")
		ti.nc.SetDeadline(time.Now().Add(30 * time.Minute))
		naa := benchNAA(b, ti)

		// Each copy starts with no dirty data (writeback does not compete)
		// and the timer stopped meanwhile.
		settle := func() {
			b.StopTimer()
			if err := v.Drain(ctx, nil); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		host := func(src, dst int64) time.Duration {
			settle()
			t0 := time.Now()
			imm := min(chunk, 262144, int(ti.maxSeg()))
			for done := int64(0); done < gib; done += chunk {
				r := ti.do(testkit.CDB16(0x88, 0, uint64((src+done)/bs), chunk/bs), true, chunk, nil)
				if r.status != 0 || len(r.data) != chunk {
					b.Fatalf("READ(16) at %d: status %#x, %d bytes", src+done, r.status, len(r.data))
				}
				itt := ti.scsiCmd(0, testkit.CDB16(0x8a, 0, uint64((dst+done)/bs), chunk/bs), false, chunk, r.data[:imm], true)
				res := map[uint32]*result{itt: {}}
				if err := ti.collect(res, map[uint32][]byte{itt: r.data}); err != nil || res[itt].status != 0 {
					b.Fatalf("WRITE(16) at %d: %v, status %#x", dst+done, err, res[itt].status)
				}
			}
			return time.Since(t0)
		}
		xcopy := func(src, dst int64) time.Duration {
			settle()
			p := benchXCopyList(naa, bs, uint64(src/bs), uint64(dst/bs), uint64(gib/bs))
			cdb := make([]byte, 16)
			cdb[0] = 0x83
			binary.BigEndian.PutUint32(cdb[10:], uint32(len(p)))
			t0 := time.Now()
			if r := ti.do(cdb, false, uint32(len(p)), p); r.status != 0 {
				b.Fatalf("EXTENDED COPY: status %#x sense % x", r.status, r.sense)
			}
			return time.Since(t0)
		}
		b.StartTimer()
		hc := host(0, 1*gib)
		cc := xcopy(0, 2*gib)
		if st := v.Stats(); st.CopySharedBytes != uint64(gib) {
			b.Fatalf("cached EXTENDED COPY shared %d bytes of %d", st.CopySharedBytes, gib)
		}
		// EXTENDED COPY first: its reads do not fill the cache, the host
		// copy's do.
		cu := xcopy(5*gib, 4*gib)
		hu := host(5*gib, 3*gib)
		b.StopTimer()
		mbps := func(d time.Duration) float64 { return float64(gib) / 1e6 / d.Seconds() }
		b.ReportMetric(mbps(hc), "cached-host-MB/s")
		b.ReportMetric(mbps(cc), "cached-xcopy-MB/s")
		b.ReportMetric(hc.Seconds()/cc.Seconds(), "cached-ratio-x")
		b.ReportMetric(mbps(hu), "uncached-host-MB/s")
		b.ReportMetric(mbps(cu), "uncached-xcopy-MB/s")
		b.ReportMetric(hu.Seconds()/cu.Seconds(), "uncached-ratio-x")

		// Every copy landed: spot-check the first and last MiB of each.
		for _, cp := range []struct{ src, dst int64 }{{0, 1 * gib}, {0, 2 * gib}, {5 * gib, 4 * gib}, {5 * gib, 3 * gib}} {
			for _, o := range []int64{0, gib - chunk} {
				r := ti.do(testkit.CDB16(0x88, 0, uint64((cp.dst+o)/bs), chunk/bs), true, chunk, nil)
				want := pattern(cp.src + o)
				if r.status != 0 || string(r.data) != string(want) {
					b.Fatalf("copy %d → %d: MiB at %d differs", cp.src, cp.dst, o)
				}
			}
		}
		ti.nc.Close()
		stop()
		wg.Wait()
		if err := c.Close(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// benchNAA returns the logical unit's NAA designator from VPD 83h.
func benchNAA(b *testing.B, ti *testInitiator) []byte {
	b.Helper()
	r := ti.do([]byte{0x12, 1, 0x83, 0x10, 0, 0}, true, 4096, nil)
	if r.status != 0 || len(r.data) < 4 {
		b.Fatalf("INQUIRY VPD 83h: status %#x", r.status)
	}
	for p := r.data[4:]; len(p) >= 4 && len(p) >= 4+int(p[3]); p = p[4+int(p[3]):] {
		if p[1]&0x0f == 3 && p[1]&0x30 == 0 && p[3] == 16 {
			return append([]byte(nil), p[4:20]...)
		}
	}
	b.Fatalf("VPD 83h has no 16-byte NAA designator of the LU: % x", r.data)
	return nil
}

// benchXCopyList is an EXTENDED COPY (LID1) parameter list copying n
// blocks from slba to dlba within the logical unit named by naa, in
// segments of at most 65535 blocks.
func benchXCopyList(naa []byte, bs int, slba, dlba, n uint64) []byte {
	cscd := make([]byte, 32)
	cscd[0] = 0xe4 // identification descriptor
	cscd[4] = 0x01 // binary code set
	cscd[5] = 0x03 // associated with the LU, NAA
	cscd[7] = 16
	copy(cscd[8:], naa)
	cscd[29], cscd[30], cscd[31] = byte(bs>>16), byte(bs>>8), byte(bs)
	var segs []byte
	for done := uint64(0); done < n; {
		k := min(n-done, 0xffff)
		d := make([]byte, 28)
		d[0] = 0x02 // block to block
		binary.BigEndian.PutUint16(d[2:], 0x18)
		binary.BigEndian.PutUint16(d[4:], 0) // source CSCD 0
		binary.BigEndian.PutUint16(d[6:], 0) // destination CSCD 0
		binary.BigEndian.PutUint16(d[10:], uint16(k))
		binary.BigEndian.PutUint64(d[12:], slba+done)
		binary.BigEndian.PutUint64(d[20:], dlba+done)
		segs = append(segs, d...)
		done += k
	}
	h := make([]byte, 16)
	h[1] = 0x18 // LIST ID USAGE 11b: no list identifier
	binary.BigEndian.PutUint16(h[2:], uint16(len(cscd)))
	binary.BigEndian.PutUint32(h[8:], uint32(len(segs)))
	return append(append(h, cscd...), segs...)
}
