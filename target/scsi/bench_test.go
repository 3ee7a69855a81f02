package scsi

import (
	"context"
	"testing"

	"github.com/cachelun/cachelun/internal/memvol"
	"github.com/cachelun/cachelun/internal/testkit"
)

func benchTarget(b *testing.B) *Target {
	vol, err := memvol.New(64<<20, 512)
	if err != nil {
		b.Fatal(err)
	}
	tgt := NewTarget(TargetConfig{Name: "iqn.bench:t"})
	if _, err := tgt.AddLU(0, LUConfig{Volume: vol, WriteCache: true}); err != nil {
		b.Fatal(err)
	}
	// Consume the power-on unit attention.
	tgt.Execute(context.Background(), &Command{Nexus: nexusA, CDB: []byte{0, 0, 0, 0, 0, 0}})
	return tgt
}

// BenchmarkRead measures the device-server cost of a READ(16) into a
// transport-provided buffer, per I/O size, serial and parallel.
func BenchmarkRead(b *testing.B) {
	for _, size := range []int{4 << 10, 64 << 10, 1 << 20} {
		blocks := uint32(size / 512)
		b.Run(sizeName(size), func(b *testing.B) {
			tgt := benchTarget(b)
			buf := make([]byte, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				lba := uint64(i*int(blocks)) % (64<<20/512 - uint64(blocks))
				r := tgt.Execute(context.Background(), &Command{Nexus: nexusA, CDB: testkit.CDB16(0x88, 0, lba, blocks), DataInLen: uint32(size), DataIn: buf})
				if r.Status != StatusGood {
					b.Fatalf("status %#x", r.Status)
				}
			}
		})
		b.Run(sizeName(size)+"-parallel", func(b *testing.B) {
			tgt := benchTarget(b)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				buf := make([]byte, size)
				cmd := &Command{Nexus: nexusA, CDB: testkit.CDB16(0x88, 0, 0, blocks), DataInLen: uint32(size), DataIn: buf}
				for pb.Next() {
					if r := tgt.Execute(context.Background(), cmd); r.Status != StatusGood {
						b.Errorf("status %#x", r.Status)
						return
					}
				}
			})
		})
	}
}

// BenchmarkWrite measures WRITE(16) without FUA.
func BenchmarkWrite(b *testing.B) {
	for _, size := range []int{4 << 10, 64 << 10} {
		blocks := uint32(size / 512)
		b.Run(sizeName(size), func(b *testing.B) {
			tgt := benchTarget(b)
			data := make([]byte, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				lba := uint64(i*int(blocks)) % (64<<20/512 - uint64(blocks))
				r := tgt.Execute(context.Background(), &Command{Nexus: nexusA, CDB: testkit.CDB16(0x8a, 0, lba, blocks), DataOut: data})
				if r.Status != StatusGood {
					b.Fatalf("status %#x", r.Status)
				}
			}
		})
	}
}

// BenchmarkDispatch measures the fixed per-command cost (TEST UNIT READY).
func BenchmarkDispatch(b *testing.B) {
	tgt := benchTarget(b)
	cmd := &Command{Nexus: nexusA, CDB: []byte{0, 0, 0, 0, 0, 0}}
	b.ReportAllocs()
	for b.Loop() {
		if r := tgt.Execute(context.Background(), cmd); r.Status != StatusGood {
			b.Fatalf("status %#x", r.Status)
		}
	}
}

func sizeName(n int) string {
	switch {
	case n >= 1<<20:
		return itoa(n>>20) + "MiB"
	default:
		return itoa(n>>10) + "KiB"
	}
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}
