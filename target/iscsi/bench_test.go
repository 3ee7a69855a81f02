package iscsi

import (
	"testing"
)

// benchReads keeps qd READ(10)s of blocks 512-byte blocks in flight over
// one session on loopback and reports IOPS. Client and server share the
// machine's cores, as iscsi-perf does.
func benchReads(b *testing.B, qd int, blocks uint16) {
	env := startServer(b, Config{NOPInterval: -1}, nil)
	ti := dialInitiator(b, env.addr)
	ti.login(env.iqn, "MaxRecvDataSegmentLength", "262144")
	edtl := uint32(blocks) * 512
	b.SetBytes(int64(edtl))
	b.ReportAllocs()
	b.ResetTimer()
	inflight := 0
	issued := 0
	lba := uint32(0)
	for done := 0; done < b.N; {
		for inflight < qd && issued < b.N {
			ti.scsiCmd(0, read10(lba, blocks), true, edtl, nil, true)
			lba = (lba + uint32(blocks)) % 16384
			inflight++
			issued++
		}
		ti.bw.Flush()
		h, _, err := ti.readPDU()
		if err != nil {
			b.Fatal(err)
		}
		if (h.opcode() == opDataIn && h[1]&1 != 0) || h.opcode() == opSCSIResp {
			if h[3] != 0 {
				b.Fatalf("status %#x", h[3])
			}
			inflight--
			done++
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "IOPS")
}

func BenchmarkRead4KQD1(b *testing.B)   { benchReads(b, 1, 8) }
func BenchmarkRead4KQD32(b *testing.B)  { benchReads(b, 32, 8) }
func BenchmarkRead256KQD8(b *testing.B) { benchReads(b, 8, 512) }
