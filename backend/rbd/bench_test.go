//go:build ceph

package rbd

import (
	"context"
	"math/rand/v2"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

var opsPerSec = regexp.MustCompile(`ops/sec:\s*([0-9.]+)`)

// rbdBench runs `rbd bench` with the same pattern (4 KiB random, qd in
// flight, librbd cache off like the Device) and returns its ops/s and the
// CPU time it used per op.
func rbdBench(b *testing.B, spec Spec, mode string, qd, ops int) (iops float64, cpuPerOp time.Duration) {
	cmd := cluster.Command(context.Background(), "rbd", "bench", "--rbd-cache=false", "--io-type", mode,
		"--io-size", "4K", "--io-threads", strconv.Itoa(qd), "--io-pattern", "rand",
		"--io-total", strconv.Itoa(ops*4096), spec.Pool+"/"+spec.Image)
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("rbd bench: %v", err)
	}
	m := opsPerSec.FindAllStringSubmatch(string(out), -1)
	if m == nil {
		b.Fatalf("no ops/sec in rbd bench output: %s", out)
	}
	iops, _ = strconv.ParseFloat(m[len(m)-1][1], 64)
	cpu := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	return iops, cpu / time.Duration(ops)
}

// cpuTime is the CPU time this process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkRandom4KQD32 measures 4 KiB random reads and writes with 32
// requests in flight through the Device over a 256 MiB image written in
// full first (reads of unwritten objects cost the OSD nothing), and the
// same pattern with rbd bench on the same image, reported as rbd-bench-iops
// and the ratio device/rbd-bench, and the CPU time per op of each (of the
// whole test process, librados' threads included). Run with a fixed count,
// e.g. -bench Random4KQD32 -benchtime 20000x.
func BenchmarkRandom4KQD32(b *testing.B) { benchRandom4K(b, 32) }

// BenchmarkRandom4KQD1 is the same one request at a time: the latency the
// Device adds to librbd's.
func BenchmarkRandom4KQD1(b *testing.B) { benchRandom4K(b, 1) }

func benchRandom4K(b *testing.B, qd int) {
	const size = 256 << 20
	spec := newImage(b, size)
	if _, err := cluster.Run(context.Background(), "rbd", "bench", "--rbd-cache=false", "--io-type", "write",
		"--io-size", "4M", "--io-threads", "8", "--io-pattern", "seq", "--io-total", strconv.Itoa(size),
		spec.Pool+"/"+spec.Image); err != nil {
		b.Fatal(err)
	}
	for _, mode := range []string{"read", "write"} {
		b.Run(mode, func(b *testing.B) {
			// rbd bench first, while no Device holds the image's lock.
			ops := max(b.N, 200)
			rbdIOPS, rbdCPU := rbdBench(b, spec, mode, qd, ops)
			opts := testOptions(b)
			opts.Logger = nil
			d := openT(b, spec, opts)
			var next atomic.Int64
			var wg sync.WaitGroup
			ctx := context.Background()
			b.ResetTimer()
			start, cpu0 := time.Now(), cpuTime()
			for w := range qd {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := rand.New(rand.NewPCG(uint64(w), 5))
					p := make([]byte, 4096)
					for next.Add(1) <= int64(b.N) {
						off := r.Int64N(size/4096) * 4096
						var err error
						if mode == "read" {
							err = d.ReadAt(ctx, p, off)
						} else {
							err = d.WriteAt(ctx, p, off)
						}
						if err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			iops := float64(b.N) / time.Since(start).Seconds()
			cpu := (cpuTime() - cpu0) / time.Duration(b.N)
			b.StopTimer()
			d.Close()
			b.ReportMetric(iops, "iops")
			b.ReportMetric(rbdIOPS, "rbd-bench-iops")
			b.ReportMetric(iops/rbdIOPS, "ratio")
			b.ReportMetric(float64(cpu.Microseconds()), "cpu-us/op")
			b.ReportMetric(float64(rbdCPU.Microseconds()), "rbd-bench-cpu-us/op")
		})
	}
}
