package vm

import (
	"context"
	_ "embed"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

var (
	//go:embed testdata/switchroot-init.sh
	switchrootInit string
	//go:embed testdata/tier2-guest.sh
	tier2Guest string
	//go:embed testdata/tier2-cachelun.toml
	tier2Config string
)

// TestTier2TargetcliISCSI boots a Debian rootfs with targetcli-fb,
// open-iscsi and the system bus, and runs the real daemon (cachelun serve
// with [tcmu] on the system bus and its own iSCSI target). Through LIO:
// targetcli lists user:cachelun over D-Bus, refuses an unknown cfgstring
// through CheckConfig, creates the backstore and exports it through the
// kernel iSCSI target on 127.0.0.1:3260; open-iscsi logs in inside the
// guest, and an ext4 file system made on the LUN keeps its checksums across
// unmount and remount. Through cachelun's own target on 127.0.0.1:3261: the
// same round trip, then the daemon is restarted (SIGTERM, start) while
// open-iscsi is logged in, the file system mounted and a writer running;
// the session reconnects, files verify, and no I/O error reaches the kernel
// log. Last, EXTENDED COPY from the guest: sg_xcopy copies within a LUN and
// between two LUNs of the daemon (target iqn.2026-11.io.cachelun:xcopy), the
// data is checked with dd and cmp in the guest, and a copy past the end of a
// LUN fails without changing it.
func TestTier2TargetcliISCSI(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("-short: the VM tiers boot a kernel under TCG for minutes; the full run keeps them")
	}
	if os.Getenv("CACHELUN_VM_TIER2") == "0" {
		t.Skip("CACHELUN_VM_TIER2=0: tier-2 (Debian rootfs, targetcli, iSCSI) switched off explicitly")
	}
	a, rfs := prepareDebian(t)

	work := t.TempDir()
	start := time.Now()
	bin := filepath.Join(work, "cachelun")
	if err := BuildDaemon(bin); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(work, "cachelun.toml")
	if err := os.WriteFile(config, []byte(tier2Config), 0o644); err != nil {
		t.Fatal(err)
	}
	guest := filepath.Join(work, "guest-test.sh")
	if err := os.WriteFile(guest, []byte(tier2Guest), 0o755); err != nil {
		t.Fatal(err)
	}
	_, self, _, _ := runtime.Caller(0)
	policy := filepath.Join(filepath.Dir(self), "..", "..", "contrib", "dbus", "org.kernel.TCMUService1.conf")
	disk := filepath.Join(work, "root.ext4")
	if err := a.BuildRootDisk(rfs, RootDisk{
		Modules: []string{"configfs", "target_core_mod", "target_core_user", "target_core_file", "target_core_iblock",
			"target_core_pscsi", "iscsi_target_mod", "iscsi_tcp", "sd_mod", "uio", "crc32c_generic"},
		Files: map[string]string{
			"/usr/local/bin/cachelun":                           bin,
			"/etc/cachelun.toml":                                config,
			"/root/guest-test.sh":                               guest,
			"/etc/dbus-1/system.d/org.kernel.TCMUService1.conf": policy,
		},
	}, disk); err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(work, "initrd.gz")
	if err := a.Build(Initramfs{Init: switchrootInit, Modules: []string{"virtio_pci", "virtio_blk", "crc32c_generic", "ext4"}}, initrd); err != nil {
		t.Fatal(err)
	}
	t.Logf("root disk and initramfs built in %v", time.Since(start).Round(time.Millisecond))

	b := Boot{Assets: a, Initrd: initrd, MemoryMB: 2048, Timeout: 6 * time.Minute,
		ExtraArgs: []string{"-drive", "file=" + disk + ",format=raw,if=virtio,cache=unsafe"}}
	if testing.Verbose() {
		b.Console = os.Stdout
	}
	r, err := b.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(CacheDir(), "tier2-last.log")
	if err := r.SaveLog(logPath); err != nil {
		t.Log(err)
	}
	t.Logf("qemu wall %v; guest timeline: %v", r.Wall.Round(time.Millisecond), r.Marks)
	for _, p := range r.Passed {
		t.Logf("PASS %s", p)
	}
	if err := r.Err("daemon-dbus", "targetcli-lists", "checkconfig-refuses", "backstore-create", "iscsi-export",
		"discovery", "login", "iscsi-disk", "lio-mkfs", "lio-mount", "lio-umount", "lio-remount-verify", "logout",
		"clearconfig", "tcmu-removed",
		"own-discovery", "own-login", "own-disk", "own-mkfs", "own-mount", "own-umount", "own-remount-verify",
		"own-daemon-stopped", "own-relogin", "own-io-across-restart", "own-reconnected", "own-verify-after-restart",
		"own-umount2", "own-remount-verify2", "own-relogin-after-kill", "own-io-across-kill", "own-files-after-kill",
		"own-fsck-after-kill", "own-no-io-errors",
		"xcopy-login", "xcopy-disks", "xcopy-3pc", "xcopy-patterns", "xcopy-within", "xcopy-between", "xcopy-past-end",
		"xcopy-written-back", "xcopy-no-io-errors", "xcopy-logout",
		"own-logout", "own-clean-stop"); err != nil {
		t.Fatal(r.Report(err, logPath))
	}
}

// prepareDebian gets the kernel assets and the Debian rootfs the tiers
// that boot a full Debian guest (2 and 4) share, from the cache.
func prepareDebian(t *testing.T) (*Assets, *Rootfs) {
	t.Helper()
	cache := CacheDir()
	start := time.Now()
	a, err := Prepare(cache)
	if err != nil {
		t.Fatalf("VM test cannot run on this machine: %v", err)
	}
	rfs, err := PrepareRootfs(cache)
	if err != nil {
		t.Fatalf("VM test cannot run on this machine: %v", err)
	}
	t.Logf("assets ready in %v (kernel %v, rootfs build %v)", time.Since(start).Round(time.Millisecond),
		a.PrepareTime.Round(time.Millisecond), rfs.BuildTime.Round(time.Millisecond))
	return a, rfs
}
