package vm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestResultDiag(t *testing.T) {
	r := &Result{Log: "@@PASS a\n@@FAIL b broke\n@@DIAG begin failed steps\n---- daemon log /tmp/d1.log\nlevel=ERROR msg=x\n@@DIAG end\n" +
		"@@PASS c\n[ 9.1] @@DIAG begin watchdog\n---- dmesg\nINFO: task umount:42 blocked\n", TimedOut: true}
	r.parse()
	if len(r.Passed) != 2 || len(r.Failed) != 1 {
		t.Fatalf("parsed %+v", r)
	}
	want := "@@DIAG begin failed steps\n---- daemon log /tmp/d1.log\nlevel=ERROR msg=x\n@@DIAG end\n" +
		"[ 9.1] @@DIAG begin watchdog\n---- dmesg\nINFO: task umount:42 blocked\n"
	if r.Diag != want {
		t.Fatalf("Diag = %q, want %q", r.Diag, want)
	}
	rep := r.Report(errors.New("guest did not finish"), "/x/tier2-last.log")
	for _, s := range []string{"guest did not finish", "/x/tier2-last.log", "@@FAIL b broke", "level=ERROR msg=x", "task umount:42 blocked"} {
		if !strings.Contains(rep, s) {
			t.Errorf("report lacks %q:\n%s", s, rep)
		}
	}
	none := &Result{Log: "@@PASS a\n", TimedOut: true}
	none.parse()
	if rep := none.Report(errors.New("killed"), "l"); !strings.Contains(rep, "no guest diagnostics") {
		t.Errorf("report without a diagnostics section does not say so:\n%s", rep)
	}
}

// diagInit fails a step with a "daemon" running (the failure path), then
// hangs in a step that never returns (the watchdog path). The "daemon" is a
// Go program started in the background, as the tiers start the real one.
const diagInit = `#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev; mount -t tmpfs tmpfs /tmp
. /etc/vm-diag.sh
VM_LOGS="/tmp/d*.log"
vm_watchdog_start
/bin/fakedaemon > /tmp/d1.log 2>&1 &
echo $! > /tmp/vm-daemon.pid
echo "vmdiag-kernel-marker" > /dev/kmsg
pass booted
fail deliberate "a step that fails on purpose"
vm_diag "failed steps"
t hang
sleep 100000
`

// TestGuestDiagnostics boots a guest whose step fails and which then hangs,
// and checks that the failure report carries the daemon log, the daemon's
// stack dump (watchdog), blocked-task information and the kernel log, both
// for the failed step and for the hang that qemu's timeout would otherwise
// end in silence.
func TestGuestDiagnostics(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("-short: boots a guest under TCG (over a minute); the full run keeps it")
	}
	daemon := filepath.Join(t.TempDir(), "fakedaemon")
	if err := BuildGo("./testdata/fakedaemon", daemon); err != nil {
		t.Fatal(err)
	}
	// The watchdog fires at 25 s of guest uptime and qemu is killed after
	// 5 minutes: the guest's clock may lag the host's twelvefold on a
	// loaded machine and the watchdog still comes first (with 60 s of 80
	// it came after qemu's kill under a load of 18 on 2 cores). The test
	// itself takes the watchdog's time, not the timeout's.
	r, err := bootDiagGuest(t, Initramfs{Init: diagInit, Files: map[string]string{"/bin/fakedaemon": daemon}},
		Boot{CPUs: 1, Timeout: 5 * time.Minute, WatchdogAt: 25 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	rerr := r.Err("booted")
	if rerr == nil {
		t.Fatal("a guest with a failed step and a hang passed")
	}
	rep := r.Report(rerr, "console.log")
	for _, s := range []string{
		"FAIL deliberate",             // the failed step
		"FAIL watchdog",               // the hang, reported before qemu's kill
		"@@DIAG begin failed steps",   // diagnostics of the failure
		"@@DIAG begin watchdog",       // and of the hang
		"msg=fake-daemon-ready",       // the daemon log
		"main.waitForever",            // the daemon's stacks, asked for by the watchdog
		"vmdiag-kernel-marker",        // the kernel log
		"---- tasks in D state",       // blocked tasks
		"sysrq: Show Blocked State",   // their stacks, in the kernel log
		"---- daemon goroutines",      // the stack dump section
		"---- dmesg (last 250 lines)", // the kernel log section
		"qemu wall", "guest timeline", // the timeline
		"console before the diagnostics", // what the guest did before
	} {
		if !strings.Contains(rep, s) {
			t.Errorf("failure report lacks %q", s)
		}
	}
	if r.TimedOut {
		t.Errorf("qemu was killed at its timeout: the watchdog should have powered the guest off first (wall %v)", r.Wall)
	}
	if t.Failed() {
		t.Logf("report:\n%s", rep)
	}
}

// hangInit boots into a hang whose userspace never reports: no watchdog of
// its own, as when the guest kernel is stuck and no script runs. (The CPU
// that takes the keyboard interrupt has a backtrace to show: its own, in
// the SysRq handler.)
const hangInit = `#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
echo "@@T hang"
sleep 100000
`

// TestGuestKernelStacks boots a guest that hangs without a word and checks
// that the report carries what its kernel printed for the magic SysRq keys
// the host sends through qemu's monitor before the timeout: the backtraces
// of the CPUs and the blocked tasks, at a console level that prints them.
func TestGuestKernelStacks(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("-short: boots a guest under TCG for two minutes; the full run keeps it")
	}
	r, err := bootDiagGuest(t, Initramfs{Init: hangInit}, Boot{CPUs: 1, Timeout: 2 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if !r.TimedOut || !r.KernelStacksAsked {
		t.Fatalf("a guest that hangs: timed out %v, kernel stacks asked %v (wall %v)", r.TimedOut, r.KernelStacksAsked, r.Wall)
	}
	rep := r.Report(r.Err(), "console.log")
	for _, s := range []string{
		"---- guest kernel stacks (magic SysRq 9, l, w", // the section
		sysrqBanner, // the level raised first
		"sysrq: Show backtrace of all active CPUs", // l
		"NMI backtrace for cpu",                    // a CPU's stack
		"sysrq: Show Blocked State",                // w
	} {
		if !strings.Contains(rep, s) {
			t.Errorf("failure report lacks %q", s)
		}
	}
	if t.Failed() {
		t.Logf("report:\n%s", rep)
	}
}

// bootDiagGuest boots b (256 MiB) on the kernel assets with an initramfs
// of fs, the console on stdout under -v: the diagnostics tests' guests.
func bootDiagGuest(t *testing.T, fs Initramfs, b Boot) (*Result, error) {
	t.Helper()
	a, err := Prepare(CacheDir())
	if err != nil {
		t.Fatalf("VM test cannot run on this machine: %v", err)
	}
	initrd := filepath.Join(t.TempDir(), "initrd.gz")
	if err := a.Build(fs, initrd); err != nil {
		t.Fatal(err)
	}
	b.Assets, b.Initrd, b.MemoryMB = a, initrd, 256
	if testing.Verbose() {
		b.Console = os.Stdout
	}
	return b.Run(context.Background())
}
