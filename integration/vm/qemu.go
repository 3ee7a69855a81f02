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
	// it. Default 5 minutes.
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
		"-append", strings.TrimSpace("console=ttyS0 panic=-1 loglevel=4 no_timer_check " + b.Append),
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
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
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
