package vm

import (
	"context"
	_ "embed"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

var (
	//go:embed testdata/tier3-init.sh
	tier3Init string
	//go:embed testdata/tier3-cachelun.toml
	tier3Config string
)

// secondCPU is the second boot's CPU: the first boot's model without the
// two newer flush instructions, so that the daemon must fall back to
// CLFLUSH as on a CPU older than Skylake, while the guest kernel runs the
// same code as in the first boot: the two boots differ in the flush
// instruction alone. (Not "qemu64": under TCG its guests have hung with
// both vCPUs spinning in the kernel.)
const secondCPU = "max,clwb=off,clflushopt=off"

// TestTier3DAX runs the real daemon with its cache file on a real fsdax
// file system: an emulated NVDIMM (Boot.NVDIMM) switched to fsdax in the
// guest, ext4 mounted with dax=always, so OpenFile gets a MAP_SYNC mapping
// and persists with a cache-line write-back instruction. Two boots on the
// same NVDIMM file (testdata/tier3-init.sh has the steps):
//
//   - "first", -cpu max (CLWB): the media is DAX and the flush instruction
//     the one CPUID offers (log and inspect); patterns through TCMU and
//     tcm_loop, a SIGKILL under write load with nothing acknowledged lost,
//     check clean after a clean stop; the same FUA/commit workload on the
//     DAX cache and on a cache on a plain ext4 virtio disk (the ratio is
//     logged); then a pattern is written and flushed while an unflushed
//     writer runs, and qemu is killed (Boot.PowerOffOn): a power cut.
//   - "second", -cpu max without CLWB and CLFLUSHOPT (secondCPU): check
//     is clean after the power cut, every flushed pattern reads back, the
//     media is DAX with the fallback instruction (CLFLUSH), and the data
//     checks pass again.
func TestTier3DAX(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("-short: the VM tiers boot a kernel under TCG for minutes; the full run keeps them")
	}
	cache := CacheDir()
	start := time.Now()
	a, err := Prepare(cache)
	if err != nil {
		t.Fatalf("VM test cannot run on this machine: %v", err)
	}
	mke2fs, err := GuestMke2fs()
	if err != nil {
		t.Fatalf("VM test cannot run on this machine: %v", err)
	}
	t.Logf("assets ready in %v (download+extract %v), kernel %s", time.Since(start).Round(time.Millisecond), a.PrepareTime.Round(time.Millisecond), a.KernelVersion)

	work := t.TempDir()
	start = time.Now()
	bin := filepath.Join(work, "cachelun")
	if err := BuildDaemon(bin); err != nil {
		t.Fatal(err)
	}
	bench := filepath.Join(work, "fuabench")
	if err := BuildGo("./testdata/fuabench", bench); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{"/bin/cachelun": bin, "/bin/fuabench": bench}
	for guest, host := range mke2fs {
		files[guest] = host
	}
	config := filepath.Join(work, "cachelun.toml")
	if err := os.WriteFile(config, []byte(tier3Config), 0o644); err != nil {
		t.Fatal(err)
	}
	files["/etc/cachelun.toml"] = config
	// The patterns come from the host so that the second boot can compare
	// what the first one flushed.
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
	for name, mib := range map[string]int{"pat1": 4, "pat3": 8, "pat4": 4} {
		p := make([]byte, mib<<20)
		for i := 0; i < len(p); i += 8 {
			v := rng.Uint64()
			for j := range 8 {
				p[i+j] = byte(v >> (8 * j))
			}
		}
		host := filepath.Join(work, name)
		if err := os.WriteFile(host, p, 0o644); err != nil {
			t.Fatal(err)
		}
		files["/etc/"+name] = host
	}
	// The non-DAX file system: ext4 on a virtio disk whose flushes reach
	// the host file (qemu's default cache=writeback: a guest flush is an
	// fdatasync on the host).
	disk := filepath.Join(work, "disk.ext4")
	if _, err := run("", nil, "mkfs.ext4", "-q", "-F", "-L", "disk", disk, "256M"); err != nil {
		t.Fatalf("VM test cannot run on this machine: %v", err)
	}
	initrd := filepath.Join(work, "initrd.gz")
	if err := a.Build(Initramfs{
		Init: tier3Init,
		Modules: []string{"nfit", "nd_pmem", "crc32c_generic", "ext4", "virtio_pci", "virtio_blk",
			"configfs", "target_core_mod", "target_core_user", "tcm_loop", "sd_mod", "uio"},
		Files: files,
	}, initrd); err != nil {
		t.Fatal(err)
	}
	t.Logf("guest binaries and initramfs built in %v", time.Since(start).Round(time.Millisecond))

	nv := &NVDIMM{Path: filepath.Join(work, "PMEM.img"), SizeMB: 512}
	boot := func(phase, cpu string, wantPass ...string) *Result {
		// 5 minutes: each boot took about 2 minutes of qemu wall time
		// under a load of 10-20 on 2 cores (guest uptime about 90 s).
		b := Boot{Assets: a, Initrd: initrd, Timeout: 5 * time.Minute, CPU: cpu, NVDIMM: nv,
			Append:    "cachelun.phase=" + phase,
			ExtraArgs: []string{"-drive", "file=" + disk + ",format=raw,if=virtio"}}
		if phase == "first" {
			b.PowerOffOn = "@@POWEROFF"
		}
		if testing.Verbose() {
			b.Console = os.Stdout
		}
		r, err := b.Run(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		logPath := filepath.Join(cache, "tier3-"+phase+"-last.log")
		if err := r.SaveLog(logPath); err != nil {
			t.Log(err)
		}
		t.Logf("boot %s (-cpu %s): qemu wall %v; guest timeline: %v", phase, cpu, r.Wall.Round(time.Millisecond), r.Marks)
		for _, p := range r.Passed {
			t.Logf("PASS %s", p)
		}
		if err := r.Err(wantPass...); err != nil {
			t.Fatal(r.Report(err, logPath))
		}
		return r
	}
	r1 := boot("first", "max", "pmem-raw", "fsdax", "mkfs", "dax-mount", "disk-mount", "media-dax", "flush-instruction",
		"media-nondax", "disks", "readback", "restart-under-io", "replayed-from-dax", "restart-old", "bench-dax", "bench-nondax",
		"daemon-flush-dax", "daemon-flush-nondax",
		"clean-stop", "inspect-dax", "check-clean", "flushed-before-poweroff")
	if !r1.PoweredOff {
		t.Fatalf("the first boot ended without the power cut (qemu wall %v)", r1.Wall)
	}
	if got := flushOf(r1); got != "clwb" {
		t.Errorf("-cpu max (CLWB) persisted with %q", got)
	}
	r2 := boot("second", secondCPU, "fsdax-kept", "dax-mount", "inspect-dax-after-poweroff", "check-clean-after-poweroff",
		"media-dax-fallback", "flush-instruction-fallback", "replayed-after-poweroff", "poweroff-flushed-intact",
		"restart-under-io-fallback", "replayed-from-dax-fallback",
		"readback-fallback", "clean-stop-fallback", "inspect-dax-fallback", "check-clean-fallback")
	if got := flushOf(r2); got != "clflush" {
		t.Errorf("-cpu %s (no CLWB, no CLFLUSHOPT) persisted with %q, want clflush", secondCPU, got)
	}
	t.Logf("flush instruction: -cpu max %s, -cpu %s %s", flushOf(r1), secondCPU, flushOf(r2))

	dax, err := benchFigures(r1, "bench-dax", "fua_writes", "fua_us", "commits", "commit_us")
	if err != nil {
		t.Fatal(err)
	}
	nondax, err := benchFigures(r1, "bench-nondax", "fua_writes", "fua_us", "commits", "commit_us")
	if err != nil {
		t.Fatal(err)
	}
	dflush, err := benchFigures(r1, "daemon-flush-dax", "flushes", "flush_mean_us")
	if err != nil {
		t.Fatal(err)
	}
	nflush, err := benchFigures(r1, "daemon-flush-nondax", "flushes", "flush_mean_us")
	if err != nil {
		t.Fatal(err)
	}
	rate := func(f map[string]float64) float64 { return f["fua_writes"] / f["fua_us"] * 1e6 }
	commit := func(f map[string]float64) float64 { return f["commit_us"] / f["commits"] }
	// Emulated (TCG), both disks behind the same SCSI, TCMU and
	// daemon path, and the host's load shared: only the ratios say
	// something, and no threshold is asserted on them.
	t.Logf("DAX vs pwrite+fdatasync cache, same guest, same QD1 4 KiB workload in alternating rounds: "+
		"O_DSYNC (FUA) writes %.1f/s vs %.1f/s (%.2fx the rate); write+flush commit %.0f vs %.0f µs (%.2fx the latency) through the disk; "+
		"SYNCHRONIZE CACHE in the daemon %.0f vs %.0f µs (%.2fx; %.0f and %.0f flushes)",
		rate(dax), rate(nondax), rate(dax)/rate(nondax), commit(dax), commit(nondax), commit(dax)/commit(nondax),
		dflush["flush_mean_us"], nflush["flush_mean_us"], dflush["flush_mean_us"]/nflush["flush_mean_us"],
		dflush["flushes"], nflush["flushes"])
}

// flushOf is the instruction of the guest's "media-dax" PASS line (the
// daemon's cache media log line, flush=...).
func flushOf(r *Result) string {
	re := regexp.MustCompile(`cache media: DAX mapping.* flush=([a-z]+)`)
	for _, p := range r.Passed {
		if strings.HasPrefix(p, "media-dax") {
			if m := re.FindStringSubmatch(p); m != nil {
				return m[1]
			}
		}
	}
	return ""
}

// benchFigures adds up the numeric key=value pairs of every PASS line of
// step (one per round); each of need must be there and positive.
func benchFigures(r *Result, step string, need ...string) (map[string]float64, error) {
	out := map[string]float64{}
	lines := 0
	for _, p := range r.Passed {
		f := strings.Fields(p)
		if len(f) == 0 || f[0] != step {
			continue
		}
		lines++
		for _, kv := range f[1:] {
			k, v, ok := strings.Cut(kv, "=")
			if x, err := strconv.ParseFloat(v, 64); ok && err == nil {
				out[k] += x
			}
		}
	}
	if lines == 0 {
		return nil, fmt.Errorf("no %s line", step)
	}
	for _, k := range need {
		if out[k] <= 0 {
			return nil, fmt.Errorf("%s: no %s", step, k)
		}
	}
	return out, nil
}
