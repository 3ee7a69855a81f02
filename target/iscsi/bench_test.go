package iscsi

import (
	"testing"

	"github.com/cachelun/cachelun/internal/testkit"
)

// benchReads keeps qd READ(10)s of blocks 512-byte blocks in flight over
// one session on loopback and reports IOPS. Client and server share the
// machine's cores, as iscsi-perf does.
func benchReads(b *testing.B, qd int, blocks uint16) { benchIO(b, qd, blocks, false) }

// benchWrites is benchReads with WRITE(10)s, their data sent as immediate
// data.
func benchWrites(b *testing.B, qd int, blocks uint16) { benchIO(b, qd, blocks, true) }

func benchIO(b *testing.B, qd int, blocks uint16, write bool) {
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
	var data []byte
	if write {
		data = make([]byte, edtl)
	}
	for done := 0; done < b.N; {
		for inflight < qd && issued < b.N {
			if write {
				ti.scsiCmd(0, testkit.Write10(lba, blocks), false, edtl, data, true)
			} else {
				ti.scsiCmd(0, testkit.Read10(lba, blocks), true, edtl, nil, true)
			}
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
func BenchmarkWrite4KQD32(b *testing.B) { benchWrites(b, 32, 8) }
