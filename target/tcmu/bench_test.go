package tcmu

import (
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/memvol"
	"github.com/cachelun/cachelun/internal/testkit"
)

// benchmarkRing pushes commands through the simulated kernel ring, the
// device loop and target/scsi onto an in-memory volume, keeping depth
// commands queued, and reports commands and bytes per second.
func benchmarkRing(b *testing.B, write bool, blocks uint16, depth int) {
	vol, _ := memvol.New(64<<20, 512)
	r := newRig(b, vol, 64<<20, mbFlagOOOC|mbFlagReadLen)
	r.clearUA()
	size := int(blocks) * 512
	payload := make([]byte, size)
	b.SetBytes(int64(size))
	b.ResetTimer()
	start := time.Now()
	queued, done := 0, 0
	for done < b.N {
		for queued-done < depth && queued < b.N {
			lba := uint32(queued*int(blocks)) % (60 << 20 / 512)
			var err error
			if write {
				_, err = r.k.queue(testkit.Write10(lba, blocks), payload, 0)
			} else {
				_, err = r.k.queue(testkit.Read10(lba, blocks), nil, size)
			}
			if err != nil {
				break
			}
			queued++
		}
		r.port.interrupt()
		<-r.port.kicks
		got, err := r.k.reap()
		if err != nil {
			b.Fatal(err)
		}
		for _, c := range got {
			if c.status != 0 {
				b.Fatalf("status %#x", c.status)
			}
		}
		done += len(got)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "cmds/s")
}

func BenchmarkRingRead4KDepth32(b *testing.B)   { benchmarkRing(b, false, 8, 32) }
func BenchmarkRingWrite4KDepth32(b *testing.B)  { benchmarkRing(b, true, 8, 32) }
func BenchmarkRingRead64KDepth16(b *testing.B)  { benchmarkRing(b, false, 128, 16) }
func BenchmarkRingWrite64KDepth16(b *testing.B) { benchmarkRing(b, true, 128, 16) }
func BenchmarkRingRead4KDepth1(b *testing.B)    { benchmarkRing(b, false, 8, 1) }
