package vm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
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
	// hangs still prints its diagnostics.
	Timeout time.Duration
	// ExtraArgs are passed to qemu (e.g. -drive for a root disk).
	ExtraArgs []string
	// Console, if set, receives the serial console as it arrives.
	Console io.Writer
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
}

// WatchdogMargin is how long before qemu's hard timeout the guest's
// watchdog fires: time enough to print its diagnostics.
func WatchdogMargin(timeout time.Duration) time.Duration {
	return min(45*time.Second, timeout/4)
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
	ctx, cancel := context.WithTimeout(ctx, b.Timeout)
	defer cancel()
	args := []string{
		"-accel", "tcg", "-cpu", "max",
		"-smp", fmt.Sprint(b.CPUs), "-m", fmt.Sprint(b.MemoryMB),
		"-nographic", "-no-reboot", "-nodefaults",
		"-nic", "none", // the guest gets no network device at all
		"-serial", "stdio",
		"-kernel", b.Assets.VMLinuz, "-initrd", b.Initrd,
		// no_timer_check: under emulation on a busy host the kernel's
		// IO-APIC timer probe can miss its window and panic at boot.
		// cachelun.watchdog is the guest uptime (seconds) at which the
		// guest's watchdog dumps its diagnostics and powers off; the
		// dot keeps the kernel from handing it to init.
		"-append", strings.TrimSpace(fmt.Sprintf("console=ttyS0 panic=-1 loglevel=4 no_timer_check cachelun.watchdog=%d %s",
			int((b.Timeout-WatchdogMargin(b.Timeout))/time.Second), b.Append)),
	}
	args = append(args, b.ExtraArgs...)
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.Stdin = nil
	var log bytes.Buffer
	var out io.Writer = &log
	if b.Console != nil {
		out = io.MultiWriter(&log, b.Console)
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err := cmd.Run()
	r := &Result{Wall: time.Since(start), Log: log.String(), TimedOut: errors.Is(ctx.Err(), context.DeadlineExceeded)}
	r.parse()
	if err != nil && !r.TimedOut && !r.Done {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			return r, fmt.Errorf("vm: run qemu: %w", err)
		}
	}
	return r, nil
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

// maxReportDiag bounds the diagnostics a failure report carries; the whole
// console log is saved to a file anyway.
const maxReportDiag = 64 << 10

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
