package vm

import (
	"context"
	_ "embed"
	"os"
	"path/filepath"
	"testing"
	"time"
)

var (
	//go:embed testdata/tier1-init.sh
	tier1Init string
	//go:embed testdata/tier1-cachelun.toml
	tier1Config string
)

// TestTier1TCMU boots the Debian kernel with a busybox initramfs and runs
// the real daemon (cachelun serve with [tcmu] enabled, no D-Bus, cache and
// backing files on tmpfs) against the real LIO/TCMU/tcm_loop path: device
// creation through configfs and netlink with cfgstring naming a volume,
// data through a SCSI disk, re-adoption after the daemon is killed (idle and
// under I/O), refusals (unknown volume, volume in use, foreign subtype, too
// large), live reconfiguration, the volume growing under the device (the
// daemon resizes it through dev_size; sd sees CAPACITY DATA HAS CHANGED),
// removal and a clean stop.
func TestTier1TCMU(t *testing.T) {
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
	t.Logf("assets ready in %v (download+extract %v), kernel %s", time.Since(start).Round(time.Millisecond), a.PrepareTime.Round(time.Millisecond), a.KernelVersion)

	work := t.TempDir()
	bin := filepath.Join(work, "cachelun")
	start = time.Now()
	if err := BuildDaemon(bin); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(work, "cachelun.toml")
	if err := os.WriteFile(config, []byte(tier1Config), 0o644); err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(work, "initrd.gz")
	if err := a.Build(Initramfs{
		Init:    tier1Init,
		Modules: []string{"configfs", "target_core_mod", "target_core_user", "tcm_loop", "sd_mod", "uio"},
		Files:   map[string]string{"/bin/cachelun": bin, "/etc/cachelun.toml": config},
	}, initrd); err != nil {
		t.Fatal(err)
	}
	t.Logf("guest binary and initramfs built in %v", time.Since(start).Round(time.Millisecond))

	var console *os.File
	if testing.Verbose() {
		console = os.Stdout
	}
	b := Boot{Assets: a, Initrd: initrd, Timeout: 4 * time.Minute}
	if console != nil {
		b.Console = console
	}
	r, err := b.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(cache, "tier1-last.log")
	if err := r.SaveLog(logPath); err != nil {
		t.Log(err)
	}
	t.Logf("qemu wall %v; guest timeline: %v", r.Wall.Round(time.Millisecond), r.Marks)
	for _, p := range r.Passed {
		t.Logf("PASS %s", p)
	}
	if err := r.Err("daemon-tcmu", "enable", "disk", "capacity", "readback", "in-cache", "readopt", "restart-readback",
		"restart-under-io-dd", "restart-under-io", "restart-under-io-old",
		"unknown-refused", "unknown-reason", "in-use-refused", "foreign-refused", "too-large-refused",
		"grow-refused", "resize", "write-cache", "reconfig-data",
		"volume-grow", "volume-grow-ua", "volume-grow-disk", "volume-grow-data", "remove", "clean-stop"); err != nil {
		t.Fatal(r.Report(err, logPath))
	}
}
