package vm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Boot describes one qemu run.
type Boot struct {
	Assets *Assets
	// Initrd is the initramfs built with Assets.Build.
	Initrd string
	// Append is added to the kernel command line.
	Append string
	// MemoryMB and CPUs default to 1024 and 2.
	MemoryMB, CPUs int
	// Timeout is the hard limit for the whole boot; qemu is killed after
	// it. Default 5 minutes. The guest's watchdog (vm_watchdog_start in
	// guestdiag.sh) fires WatchdogMargin(Timeout) earlier, so a guest that
	// hangs still prints its diagnostics; a guest still running
	// KernelDumpLead(Timeout) before it (its userspace did not run: its
	// kernel hung) is asked for its kernel's stacks.
	Timeout time.Duration
	// WatchdogAt, if set, is the guest uptime at which its watchdog fires
	// instead of WatchdogMargin(Timeout) before the timeout. A test that
	// waits for the watchdog sets it well below the timeout: under a
	// loaded host the guest's clock lags the host's, and the watchdog
	// must still fire before qemu is killed.
	WatchdogAt time.Duration
	// ExtraArgs are passed to qemu (e.g. -drive for a root disk).
	ExtraArgs []string
	// Console, if set, receives the serial console as it arrives.
	Console io.Writer
	// CPU is qemu's -cpu model; default "max" (every feature TCG
	// emulates, CLWB and CLFLUSHOPT included); features go after it as
	// qemu takes them ("max,clwb=off,clflushopt=off": a CPU whose only
	// cache-line flush is CLFLUSH).
	CPU string
	// NVDIMM, if set, gives the guest an emulated NVDIMM (a /dev/pmem0).
	NVDIMM *NVDIMM
	// PowerOffOn, if set, is a console marker: when the guest prints it,
	// qemu is killed (SIGKILL) at once, a power cut with no guest sync
	// (Result.PoweredOff).
	PowerOffOn string
	// UserNet gives the guest a virtio network card (virtio_net) on qemu's
	// user-mode network: the guest is 10.0.2.15/24 and reaches the host's
	// 127.0.0.1 as 10.0.2.2, so an initiator in the guest logs in to
	// portals the test runs on the host's loopback. Without it the guest
	// has no network device at all.
	UserNet bool
	// OnMarker maps console markers to host actions: the first time the
	// guest prints a marker, its function runs, in a goroutine of its own
	// so that the console keeps flowing while it works (the guest goes on
	// as a real client would while a server dies). Run returns only after
	// every action it started has returned.
	OnMarker map[string]func()
}

// NVDIMM is an emulated NVDIMM backed by a host file (memory-backend-file,
// share=on): what the guest stores in it is in the file, and a later boot
// on the same file sees it, as after a power cycle. The guest's namespace
// comes up in raw mode the first time (qemu's NVDIMM has no label area);
// the switch to fsdax the guest then makes through sysfs (see
// testdata/tier3-init.sh) is stored in the file's first bytes, so later
// boots come up in fsdax.
type NVDIMM struct {
	// Path is the backing file; created sparse if missing.
	Path string
	// SizeMB is its size, a multiple of 2; default 512.
	SizeMB int
}

// Result is what a guest reported.
type Result struct {
	// Log is the whole serial console.
	Log string
	// Passed and Failed list the "@@PASS name" and "@@FAIL name why"
	// markers in order.
	Passed, Failed []string
	// Done is true when the guest printed "@@DONE".
	Done bool
	// Wall is the qemu wall time.
	Wall     time.Duration
	TimedOut bool
	// Marks are "@@T <uptime> <event>" lines: guest timeline.
	Marks []string
	// Diag holds the guest's diagnostics sections ("@@DIAG begin" to
	// "@@DIAG end", or to the end of the log when qemu was killed while
	// one was printed): daemon logs, blocked tasks and dmesg.
	Diag string
	// PoweredOff is true when qemu was killed because the guest printed
	// Boot.PowerOffOn.
	PoweredOff bool
	// KernelStacksAsked is true when the guest was still running
	// KernelDumpLead before the timeout and the host asked its kernel for
	// every CPU's and every blocked task's stack (magic SysRq keys through
	// qemu's monitor): what a guest whose own watchdog never ran (its
	// kernel hung) leaves for the report.
	KernelStacksAsked bool
}

// KernelDumpLead is how long before qemu's hard timeout the host asks a
// guest that is still running for its kernel's stacks: after the guest's
// own watchdog (WatchdogMargin), which would have powered it off had its
// userspace run, and early enough for the kernel to print them.
func KernelDumpLead(timeout time.Duration) time.Duration {
	return min(20*time.Second, timeout/8)
}

// sysrqKeys are the magic SysRq keys the host sends a guest that outlived
// its watchdog, in order: console log level 9 (so that what follows is
// printed whatever level it is logged at: the backtraces are logged as
// information, and the NMI backtraces of the other CPUs are printed after
// the key's own raised level has ended), the backtrace of every active
// CPU, and the tasks in uninterruptible sleep.
var sysrqKeys = []string{"9", "l", "w"}

// sysrqBanner is what the guest kernel prints for the first of sysrqKeys;
// Report shows the console from there.
const sysrqBanner = "sysrq: Changing Loglevel"

// WatchdogMargin is how long before qemu's hard timeout the guest's
// watchdog fires: time enough to print its diagnostics.
func WatchdogMargin(timeout time.Duration) time.Duration {
	return min(45*time.Second, timeout/4)
}

// watchdogAt is the guest uptime at which the guest's watchdog fires.
func (b Boot) watchdogAt() time.Duration {
	if b.WatchdogAt > 0 {
		return b.WatchdogAt
	}
	return b.Timeout - WatchdogMargin(b.Timeout)
}

// Run boots the guest and waits until qemu exits or the timeout kills it.
// The error reports only a failure to run qemu; what the guest did is in
// the Result (see Result.Err).
func (b Boot) Run(ctx context.Context) (*Result, error) {
	if b.MemoryMB == 0 {
		b.MemoryMB = 1024
	}
	if b.CPUs == 0 {
		b.CPUs = 2
	}
	if b.Timeout == 0 {
		b.Timeout = 5 * time.Minute
	}
	if b.CPU == "" {
		b.CPU = "max"
	}
	mem := fmt.Sprint(b.MemoryMB)
	var nvdimmArgs []string
	if b.NVDIMM != nil {
		size := b.NVDIMM.SizeMB
		if size == 0 {
			size = 512
		}
		if size%2 != 0 {
			return nil, fmt.Errorf("vm: NVDIMM size %d MiB is not a multiple of 2 MiB", size)
		}
		if err := sizeFile(b.NVDIMM.Path, int64(size)<<20); err != nil {
			return nil, err
		}
		// The NVDIMM is hot-pluggable memory: qemu needs a slot for it
		// and maxmem covering it, or it refuses to start.
		mem = fmt.Sprintf("%d,slots=2,maxmem=%dM", b.MemoryMB, b.MemoryMB+size)
		nvdimmArgs = []string{"-machine", "pc,nvdimm=on",
			"-object", fmt.Sprintf("memory-backend-file,id=mem1,share=on,mem-path=%s,size=%dM", b.NVDIMM.Path, size),
			"-device", "nvdimm,id=nv1,memdev=mem1"}
	}
	// qemu's monitor, for the keys askKernelStacks sends: a socket in a
	// directory of its own (a unix socket's path is at most 107 bytes).
	monDir, err := os.MkdirTemp("", "vmmon")
	if err != nil {
		return nil, fmt.Errorf("vm: monitor socket: %w", err)
	}
	defer os.RemoveAll(monDir)
	monitor := filepath.Join(monDir, "m")
	ctx, cancel := context.WithTimeout(ctx, b.Timeout)
	defer cancel()
	args := []string{
		"-accel", "tcg", "-cpu", b.CPU,
		"-smp", fmt.Sprint(b.CPUs), "-m", mem,
		"-nographic", "-no-reboot", "-nodefaults",
		"-serial", "stdio",
		"-kernel", b.Assets.VMLinuz, "-initrd", b.Initrd,
		// no_timer_check: under emulation on a busy host the kernel's
		// IO-APIC timer probe can miss its window and panic at boot.
		// cachelun.watchdog is the guest uptime (seconds) at which the
		// guest's watchdog dumps its diagnostics and powers off; the
		// dot keeps the kernel from handing it to init.
		// sysrq_always_enabled: Debian's kernel takes only some magic
		// SysRq keys from the keyboard, not the stack dumps the host
		// asks for (askKernelStacks).
		"-append", strings.TrimSpace(fmt.Sprintf("console=ttyS0 panic=-1 loglevel=4 no_timer_check sysrq_always_enabled cachelun.watchdog=%d %s",
			int(b.watchdogAt()/time.Second), b.Append)),
		"-monitor", "unix:" + monitor + ",server=on,wait=off",
	}
	if b.UserNet {
		// restrict=off: the guest must reach the host (10.0.2.2 is the
		// host's loopback); the guest scripts give it no route beyond
		// 10.0.2.0/24, so nothing else leaves qemu.
		args = append(args, "-netdev", "user,id=n0,restrict=off", "-device", "virtio-net-pci,netdev=n0")
	} else {
		args = append(args, "-nic", "none") // the guest gets no network device at all
	}
	args = append(args, nvdimmArgs...)
	args = append(args, b.ExtraArgs...)
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.Stdin = nil
	var log bytes.Buffer
	var out io.Writer = &log
	if b.Console != nil {
		out = io.MultiWriter(&log, b.Console)
	}
	var marker *markerWriter
	if b.PowerOffOn != "" {
		marker = &markerWriter{w: out, marker: []byte(b.PowerOffOn), seen: make(chan struct{})}
		out = marker
	}
	var actions sync.WaitGroup
	for m, action := range b.OnMarker {
		mw := &markerWriter{w: out, marker: []byte(m), seen: make(chan struct{})}
		out = mw
		actions.Add(1)
		go func() {
			defer actions.Done()
			select {
			case <-mw.seen:
				action()
			case <-ctx.Done():
			}
		}()
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("vm: run qemu: %w", err)
	}
	poweredOff := make(chan bool, 1)
	exited := make(chan struct{})
	stacksAsked := make(chan bool, 1)
	go func() {
		t := time.NewTimer(b.Timeout - KernelDumpLead(b.Timeout))
		defer t.Stop()
		select {
		case <-exited:
			stacksAsked <- false
		case <-t.C:
			stacksAsked <- askKernelStacks(monitor, exited)
		}
	}()
	go func() {
		if marker == nil {
			poweredOff <- false
			return
		}
		select {
		case <-marker.seen:
			// Only the qemu this Run started, by its pid.
			cmd.Process.Kill()
			poweredOff <- true
		case <-exited:
			poweredOff <- false
		}
	}()
	err = cmd.Wait()
	close(exited)
	// cancel ends the wait of actions whose marker never came.
	cancel()
	actions.Wait()
	r := &Result{Wall: time.Since(start), Log: log.String(), TimedOut: errors.Is(ctx.Err(), context.DeadlineExceeded), PoweredOff: <-poweredOff,
		KernelStacksAsked: <-stacksAsked}
	r.parse()
	if err != nil && !r.TimedOut && !r.Done && !r.PoweredOff {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			return r, fmt.Errorf("vm: run qemu: %w", err)
		}
	}
	return r, nil
}

// askKernelStacks sends sysrqKeys to the guest through qemu's monitor at
// path, a couple of seconds apart so that the kernel prints each answer
// before the next, and reports whether it sent them all. It stops when
// qemu exits.
func askKernelStacks(path string, exited <-chan struct{}) bool {
	conn, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	// The monitor's banner and prompts are not read: they are short and
	// the socket buffers them.
	for _, k := range sysrqKeys {
		conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
		if _, err := fmt.Fprintf(conn, "sendkey alt-sysrq-%s\n", k); err != nil {
			return false
		}
		select {
		case <-exited:
			return false
		case <-time.After(2 * time.Second):
		}
	}
	return true
}

func (r *Result) parse() {
	sc := bufio.NewScanner(strings.NewReader(r.Log))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var diag strings.Builder
	inDiag := false
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if strings.Contains(line, "@@DIAG begin") {
			inDiag = true
		}
		if inDiag {
			diag.WriteString(line)
			diag.WriteByte('\n')
			inDiag = !strings.Contains(line, "@@DIAG end")
		}
		i := strings.Index(line, "@@")
		if i < 0 {
			continue
		}
		line = line[i:]
		switch {
		case strings.HasPrefix(line, "@@PASS "):
			r.Passed = append(r.Passed, strings.TrimPrefix(line, "@@PASS "))
		case strings.HasPrefix(line, "@@FAIL "):
			r.Failed = append(r.Failed, strings.TrimPrefix(line, "@@FAIL "))
		case line == "@@DONE":
			r.Done = true
		case strings.HasPrefix(line, "@@T "):
			r.Marks = append(r.Marks, strings.TrimPrefix(line, "@@T "))
		}
	}
	r.Diag = diag.String()
}

// maxReportDiag and maxReportKernel bound the diagnostics and the kernel
// stacks a failure report carries; the whole console log is saved to a
// file anyway.
const (
	maxReportDiag   = 64 << 10
	maxReportKernel = 32 << 10
)

// Report is what a failed tier prints: the problems, the guest timeline,
// the guest's diagnostics (daemon logs, blocked tasks, dmesg) and the end of
// the console before them.
func (r *Result) Report(err error, logPath string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "guest: %v\nqemu wall %v; guest timeline: %v\nconsole log saved to %s\n",
		err, r.Wall.Round(time.Second), r.Marks, logPath)
	steps := r.Log
	if i := strings.Index(steps, "@@DIAG begin"); i >= 0 {
		steps = steps[:i]
	}
	fmt.Fprintf(&b, "---- console before the diagnostics (tail):\n%s\n", tail(steps, 6000))
	if r.KernelStacksAsked {
		if i := strings.LastIndex(r.Log, sysrqBanner); i >= 0 {
			k := r.Log[i:]
			if len(k) > maxReportKernel {
				k = k[:maxReportKernel] + "\n... (cut; the whole log is in the file above) ...\n"
			}
			fmt.Fprintf(&b, "---- guest kernel stacks (magic SysRq %s, sent by the host before qemu's timeout):\n%s\n", strings.Join(sysrqKeys, ", "), k)
		} else {
			fmt.Fprintf(&b, "---- guest kernel stacks: the host sent magic SysRq %s before qemu's timeout and the guest printed nothing for them (its kernel took no keyboard interrupt)\n", strings.Join(sysrqKeys, ", "))
		}
	}
	if r.Diag == "" {
		b.WriteString("---- no guest diagnostics: the guest printed no @@DIAG section (it died before its watchdog fired, or its script does not source " + GuestDiagPath + ")\n")
	} else {
		d := r.Diag
		if len(d) > maxReportDiag {
			d = d[:maxReportDiag/2] + "\n... (cut; the whole log is in the file above) ...\n" + d[len(d)-maxReportDiag/2:]
		}
		fmt.Fprintf(&b, "---- guest diagnostics:\n%s", d)
	}
	return b.String()
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// Err summarises a failed run: timeout, missing @@DONE, any @@FAIL, or a
// missing expected @@PASS.
func (r *Result) Err(wantPass ...string) error {
	var problems []string
	if r.TimedOut {
		problems = append(problems, fmt.Sprintf("qemu killed after %v", r.Wall.Round(time.Second)))
	}
	if !r.Done {
		problems = append(problems, "guest did not finish (@@DONE missing)")
	}
	for _, f := range r.Failed {
		problems = append(problems, "FAIL "+f)
	}
	passed := map[string]bool{}
	for _, p := range r.Passed {
		passed[strings.Fields(p + " ")[0]] = true
	}
	for _, w := range wantPass {
		if !passed[w] {
			problems = append(problems, "no PASS for "+w)
		}
	}
	if len(problems) == 0 {
		return nil
	}
	return errors.New(strings.Join(problems, "; "))
}

// SaveLog writes the console log next to the cache for post-mortems.
func (r *Result) SaveLog(path string) error { return os.WriteFile(path, []byte(r.Log), 0o644) }

// markerWriter passes console output through and closes seen the first
// time marker appears in it (also when split across writes).
type markerWriter struct {
	w      io.Writer
	marker []byte
	seen   chan struct{}
	tail   []byte
	done   bool
}

func (m *markerWriter) Write(p []byte) (int, error) {
	n, err := m.w.Write(p)
	if !m.done {
		buf := append(m.tail, p...)
		if bytes.Contains(buf, m.marker) {
			m.done = true
			close(m.seen)
		}
		keep := min(len(buf), len(m.marker)-1)
		m.tail = append(m.tail[:0], buf[len(buf)-keep:]...)
	}
	return n, err
}

// sizeFile creates path (sparse) or resizes it to size bytes.
func sizeFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("vm: NVDIMM backing file: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return fmt.Errorf("vm: NVDIMM backing file: %w", err)
	}
	return f.Close()
}
