package integration

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/testkit"
)

const (
	reloadMainIQN = "iqn.2026-11.io.cachelun:reload-main"
	reloadSideIQN = "iqn.2026-11.io.cachelun:reload-side"
	// keeperIQN is always in the side target's ACL; revokedIQN comes and
	// goes.
	keeperIQN  = "iqn.2026-11.io.cachelun.test:keeper"
	revokedIQN = "iqn.2026-11.io.cachelun.test:revoked"
	sideUser   = "side"
)

var sideSecrets = [2]string{"side-secret-0000a", "side-secret-0000b"}

// reloadStep is one configuration of the reload test.
type reloadStep struct {
	mode        string // main volume's cache mode
	logLevel    string
	gcPercent   int
	targetDirty int
	cutoff      string
	allowB      bool // revokedIQN in the side target's ACL
	secret      int  // index into sideSecrets
	lun1        bool // side target maps LUN 1 to volume side1 (which exists only then)
	badMode     bool // render an invalid mode (the bad configuration)
}

func reloadSteps(n int) []reloadStep {
	modes := []string{"writeback", "writethrough", "writearound"}
	cutoffs := []string{"4MiB", "1MiB"}
	steps := make([]reloadStep, n)
	for i := range steps {
		steps[i] = reloadStep{
			mode:        modes[i%3],
			logLevel:    "info",
			gcPercent:   60 + 10*(i%3),
			targetDirty: 10 + i,
			cutoff:      cutoffs[i%2],
			allowB:      i%4 < 2,
			secret:      (i / 2) % 2,
			lun1:        i%2 == 1,
		}
	}
	if n > 6 {
		steps[6].logLevel = "warn"
	}
	return steps
}

// render returns the configuration text and the line of the main
// volume's mode.
func (s reloadStep) render() (string, int) {
	mode := s.mode
	if s.badMode {
		mode = "turbo"
	}
	var b strings.Builder
	fmt.Fprintf(&b, `[global]
log_level = %q
admin_socket = "admin.sock"
metrics_listen = "off"

[[cache]]
name = "c0"
path = "cache.img"
size = "128MiB"
segment_size = "4MiB"
journal_flush_interval = "200ms"
gc_percent = %d

[cache.writeback]
target_dirty_percent = %d

[[volume]]
name = "main"
cache = "c0"
backing = "main.img"
backing_size = "64MiB"
sequential_cutoff = %q
`, s.logLevel, s.gcPercent, s.targetDirty, s.cutoff)
	modeLine := strings.Count(b.String(), "\n") + 1
	fmt.Fprintf(&b, "mode = %q\n", mode)
	b.WriteString(`
[[volume]]
name = "side0"
cache = "c0"
backing = "side0.img"
backing_size = "16MiB"
`)
	if s.lun1 {
		b.WriteString(`
[[volume]]
name = "side1"
cache = "c0"
backing = "side1.img"
backing_size = "16MiB"
`)
	}
	acl := fmt.Sprintf("%q", keeperIQN)
	if s.allowB {
		acl += fmt.Sprintf(", %q", revokedIQN)
	}
	fmt.Fprintf(&b, `
[[target]]
iqn = %q
portals = ["127.0.0.1:3260"]

[[target.lun]]
lun = 0
volume = "main"

[[target]]
iqn = %q
portals = ["127.0.0.1:3260"]
initiators = [%s]

[target.chap]
user = %q
secret = %q

[[target.lun]]
lun = 0
volume = "side0"
`, reloadMainIQN, reloadSideIQN, acl, sideUser, sideSecrets[s.secret])
	if s.lun1 {
		b.WriteString(`
[[target.lun]]
lun = 1
volume = "side1"
`)
	}
	return b.String(), modeLine
}

// reloadLoad is the qemu-io client writing and verifying on the main LUN
// during the reloads, in one session: commands go to its standard input
// one iteration at a time until stop.
type reloadLoad struct {
	cmd   *exec.Cmd
	out   lockedBuffer
	stop  chan struct{}
	done  chan struct{}
	iters int
	err   error
	final map[int64]byte // 256 KiB region offset -> last pattern written
}

const loadChunk = 256 * 1024

func startReloadLoad(t *testing.T, url string) *reloadLoad {
	t.Helper()
	l := &reloadLoad{final: map[int64]byte{}, stop: make(chan struct{}), done: make(chan struct{})}
	l.cmd = exec.Command("qemu-io", "-f", "raw", url)
	l.cmd.WaitDelay = 5 * time.Second
	l.cmd.Stdout, l.cmd.Stderr = &l.out, &l.out
	in, err := l.cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(l.done)
		defer func() {
			in.Close()
			if err := l.cmd.Wait(); err != nil && l.err == nil {
				l.err = err
			}
		}()
		sent := 0
		for i := 0; i < 2000; i++ {
			select {
			case <-l.stop:
				fmt.Fprintln(in, "flush")
				return
			default:
			}
			off := int64(i%48) * loadChunk * 3 // spread over ~36 MiB
			p := byte(1 + i%250)
			f := ""
			if i%7 == 3 {
				f = "-f " // FUA
			}
			cmds := []string{
				fmt.Sprintf("write %s-P 0x%02x %d %d", f, p, off, loadChunk),
				fmt.Sprintf("read -P 0x%02x %d %d", p, off, loadChunk),
			}
			if i%5 == 4 {
				cmds = append(cmds, "flush")
			}
			// one command at a time: qemu-io reads a line once its prompt
			// is back; each completion prints the next prompt
			for _, c := range cmds {
				if _, err := io.WriteString(in, c+"\n"); err != nil {
					l.err = err
					return
				}
				sent++
				deadline := time.Now().Add(30 * time.Second)
				for strings.Count(l.out.String(), "qemu-io> ") < sent+1 {
					if time.Now().After(deadline) {
						l.err = fmt.Errorf("iteration %d: %q did not complete within 30s", i, c)
						l.cmd.Process.Kill()
						return
					}
					time.Sleep(5 * time.Millisecond)
				}
			}
			l.final[off] = p
			l.iters = i + 1
			time.Sleep(40 * time.Millisecond)
		}
	}()
	return l
}

// finish stops the load and returns its output; it fails the test on any
// error the client saw.
func (l *reloadLoad) finish(t *testing.T) {
	t.Helper()
	close(l.stop)
	select {
	case <-l.done:
	case <-time.After(60 * time.Second):
		l.cmd.Process.Kill()
		<-l.done
		t.Fatal("the load client did not finish")
	}
	out := l.out.String()
	if l.err != nil || strings.Contains(out, "failed") || strings.Contains(out, "Pattern verification") ||
		strings.Contains(strings.ToLower(out), "error") {
		t.Fatalf("the client on the unaffected LUN saw an error (%v):\n%s", l.err, out)
	}
	if n := strings.Count(out, "wrote "); n != l.iters {
		t.Errorf("the client completed %d of %d writes:\n%s", n, l.iters, out)
	}
}

func (l *reloadLoad) verifyCmds() []string {
	var out []string
	for off, p := range l.final {
		out = append(out, fmt.Sprintf("read -P 0x%02x %d %d", p, off, loadChunk))
	}
	return out
}

// sideOpts is a qemu --image-opts string for a LUN of the side target.
func sideOpts(portal, initiator string, secret, lun int) string {
	return fmt.Sprintf("driver=iscsi,transport=tcp,portal=%s,target=%s,lun=%d,user=%s,password=%s,initiator-name=%s",
		portal, reloadSideIQN, lun, sideUser, sideSecrets[secret], initiator)
}

func sideURL(portal string, secret, lun int) string {
	return fmt.Sprintf("iscsi://%s%%%s@%s/%s/%d", sideUser, sideSecrets[secret], portal, reloadSideIQN, lun)
}

// TestReloadUnderLoad changes the configuration about every second while
// a client writes and verifies on the main LUN: mode switches, writeback
// and GC tunables, the log level, ACL and CHAP changes and a LUN (with its
// volume) added and removed on another target, through both SIGHUP and
// `cachelun reload`. The client must see no error; its data must be there
// afterwards and after a restart; revoked initiators are refused and their
// session dropped; a bad file applies nothing and names its line; a dry
// run prints the plan and changes nothing.
func TestReloadUnderLoad(t *testing.T) {
	needTools(t, "qemu-io", "iscsi-inq", "iscsi-readcapacity16")
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "cachelun.toml")
	socket := filepath.Join(dir, "admin.sock")
	steps := reloadSteps(14)
	write := func(s reloadStep) int {
		t.Helper()
		text, line := s.render()
		if err := os.WriteFile(cfgPath, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return line
	}
	write(steps[0])
	d := startDaemon(t, dir, cfgPath)
	portal := d.portal
	mainURL := "iscsi://" + portal + "/" + reloadMainIQN + "/0"

	cli := func(args ...string) result {
		t.Helper()
		return runTool(t, toolTimeout, binaryPath, append(args, "--socket", socket)...)
	}
	reloadCLI := func() {
		t.Helper()
		r := cli("reload")
		if r.timedOut || r.exitCode != 0 {
			t.Fatalf("cachelun reload: exit %d:\n%s", r.exitCode, r.out)
		}
	}
	sighups := 0
	sessionOf := func(initiator string) bool {
		t.Helper()
		r := cli("session", "list")
		if r.exitCode != 0 {
			t.Fatalf("cachelun session list: exit %d:\n%s", r.exitCode, r.out)
		}
		return strings.Contains(r.out, initiator)
	}
	waitSession := func(initiator string, want bool) {
		t.Helper()
		testkit.WaitFor(t, 15*time.Second, fmt.Sprintf("session of %s present=%v", initiator, want), func() bool {
			return sessionOf(initiator) == want
		})
	}
	canInquire := func(initiator string, secret, lun int) bool {
		t.Helper()
		r := runTool(t, toolTimeout, "iscsi-inq", "-i", initiator, sideURL(portal, secret, lun))
		if r.timedOut {
			t.Fatalf("iscsi-inq timed out:\n%s", r.out)
		}
		return r.exitCode == 0 && strings.Contains(r.out, "Vendor:CACHELUN")
	}
	lun1Mapped := func(secret int) bool {
		t.Helper()
		r := runTool(t, toolTimeout, "iscsi-readcapacity16", "-i", keeperIQN, sideURL(portal, secret, 1))
		if r.timedOut {
			t.Fatalf("iscsi-readcapacity16 timed out:\n%s", r.out)
		}
		return r.exitCode == 0
	}

	// the load: one qemu-io session on the main LUN for the whole run
	load := startReloadLoad(t, mainURL)
	t.Cleanup(func() {
		select {
		case <-load.done:
		default:
			load.cmd.Process.Kill()
		}
	})
	began := time.Now()

	side1Pattern := byte(0) // last pattern written to side1 (0: none yet)
	var holder *exec.Cmd
	for i := 1; i < len(steps); i++ {
		prev, s := steps[i-1], steps[i]
		stepStart := time.Now()

		if prev.allowB && !s.allowB {
			// an existing session of the initiator about to be revoked
			holder = exec.Command("qemu-io", "--image-opts", "-c", "read 0 4k", "-c", "sleep 30000",
				sideOpts(portal, revokedIQN, prev.secret, 0))
			holder.WaitDelay = time.Second
			if err := holder.Start(); err != nil {
				t.Fatal(err)
			}
			h := holder
			t.Cleanup(func() {
				if h.ProcessState == nil {
					h.Process.Kill()
					h.Wait()
				}
			})
			waitSession(revokedIQN, true)
		}

		switch i {
		case 4:
			// a bad file applies nothing and names its line, through the
			// CLI and through SIGHUP
			bad := s
			bad.badMode = true
			line := write(bad)
			want := fmt.Sprintf("%s:%d", cfgPath, line)
			r := cli("reload")
			if r.exitCode == 0 || !strings.Contains(r.out, want) {
				t.Errorf("reload of a bad file: exit %d, want an error naming %s:\n%s", r.exitCode, want, r.out)
			}
			if err := d.cmd.Process.Signal(sighup); err != nil {
				t.Fatal(err)
			}
			testkit.WaitFor(t, 30*time.Second, "the bad SIGHUP reported in the log", func() bool {
				return strings.Contains(d.log.String(), "SIGHUP: configuration not reloaded")
			})
			if !strings.Contains(d.log.String(), want) {
				t.Errorf("SIGHUP with a bad file: the log does not name %s", want)
			}
			sighups++ // counted as a handled SIGHUP; the checks below look for failures after it
			write(prev)
			if r := cli("reload", "--dry-run"); r.exitCode != 0 || !strings.Contains(r.out, "no changes") {
				t.Errorf("after a bad file the running configuration changed: exit %d:\n%s", r.exitCode, r.out)
			}
			if !canInquire(keeperIQN, prev.secret, 0) {
				t.Errorf("the previous configuration stopped working after a bad file")
			}
		case 9:
			// a dry run prints the plan and changes nothing
			write(s)
			r := cli("reload", "--dry-run")
			if r.exitCode != 0 {
				t.Fatalf("reload --dry-run: exit %d:\n%s", r.exitCode, r.out)
			}
			for _, want := range []string{"volume main: mode modified " + prev.mode + " -> " + s.mode,
				"volume side1 added", "target " + reloadSideIQN + ": lun 1 added"} {
				if !strings.Contains(r.out, want) {
					t.Errorf("dry-run plan lacks %q:\n%s", want, r.out)
				}
			}
			if lun1Mapped(prev.secret) {
				t.Errorf("LUN 1 mapped by a dry run")
			}
		}

		write(s)
		if i%3 == 1 {
			before := strings.Count(d.log.String(), "SIGHUP: configuration not reloaded")
			reloadHUPChecked(t, d, &sighups, before)
		} else {
			reloadCLI()
		}
		d.alive()

		// the side target follows the new configuration
		if got := lun1Mapped(s.secret); got != s.lun1 {
			t.Errorf("step %d: LUN 1 mapped=%v, want %v", i, got, s.lun1)
		}
		if s.lun1 {
			// removal drained what the last mapping wrote to side1
			opts := sideOpts(portal, keeperIQN, s.secret, 1)
			if side1Pattern != 0 {
				qemuIOOpts(t, opts, fmt.Sprintf("read -P 0x%02x 0 64k", side1Pattern))
			}
			side1Pattern = byte(0x40 + i)
			qemuIOOpts(t, opts, fmt.Sprintf("write -P 0x%02x 0 64k", side1Pattern))
		}
		if !canInquire(keeperIQN, s.secret, 0) {
			t.Errorf("step %d: the admitted initiator with the current secret is refused", i)
		}
		if prev.secret != s.secret && canInquire(keeperIQN, prev.secret, 0) {
			t.Errorf("step %d: the previous CHAP secret still works", i)
		}
		if got := canInquire(revokedIQN, s.secret, 0); got != s.allowB {
			t.Errorf("step %d: initiator %s admitted=%v, want %v", i, revokedIQN, got, s.allowB)
		}
		if holder != nil {
			waitSession(revokedIQN, false)
			// the client retries its login in the background; it must not
			// come back once a later step admits the initiator again
			holder.Process.Kill()
			holder.Wait()
			holder = nil
		}
		if i == 6 && !strings.Contains(d.log.String(), "SIGHUP: configuration reloaded") {
			t.Errorf("no SIGHUP reload logged")
		}
		if rest := time.Second - time.Since(stepStart); rest > 0 {
			time.Sleep(rest)
		}
		select {
		case <-load.done:
			t.Fatalf("the load ended before step %d (after %s, %v):\n%s", i, time.Since(began), load.err, load.out.String())
		default:
		}
	}
	reloadEnd := time.Since(began)

	load.finish(t)
	t.Logf("%d reloads over %s under load; the client wrote and verified %d times in one session",
		len(steps)-1, reloadEnd.Round(time.Millisecond), load.iters)

	qemuIO(t, mainURL, load.verifyCmds()...)
	d.stop()
	d.restart()
	qemuIO(t, "iscsi://"+d.portal+"/"+reloadMainIQN+"/0", load.verifyCmds()...)
	d.stop()
}

// reloadHUPChecked sends SIGHUP and waits for the daemon to report the
// reload; it fails on a failed one.
func reloadHUPChecked(t *testing.T, d *daemon, sighups *int, failedBefore int) {
	t.Helper()
	*sighups++
	if err := d.cmd.Process.Signal(sighup); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 30*time.Second, "the SIGHUP handled", func() bool {
		log := d.log.String()
		if strings.Count(log, "SIGHUP: configuration not reloaded") > failedBefore {
			t.Fatalf("SIGHUP reload failed:\n%s", log)
		}
		return strings.Count(log, "SIGHUP: configuration reloaded")+strings.Count(log, "SIGHUP: configuration not reloaded") >= *sighups
	})
}

// qemuIOOpts runs qemu-io commands on --image-opts; all must succeed.
func qemuIOOpts(t *testing.T, opts string, cmds ...string) {
	t.Helper()
	args := []string{"--image-opts"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := mustRun(t, toolTimeout, "qemu-io", append(args, opts)...)
	if strings.Contains(out, "failed") || strings.Contains(out, "Pattern verification") {
		t.Fatalf("qemu-io %v:\n%s", cmds, out)
	}
}

// The file is the desired state: a mode switched with `cachelun volume
// mode` is shown by `reload --dry-run` as a live value that will change,
// and an unrelated reload (the log level only) converges it to the file.
func TestReloadConvergesAdminMode(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "cachelun.toml")
	socket := filepath.Join(dir, "admin.sock")
	step := reloadSteps(1)[0] // main volume in writeback
	write := func(s reloadStep) {
		t.Helper()
		text, _ := s.render()
		if err := os.WriteFile(cfgPath, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(step)
	startDaemon(t, dir, cfgPath)
	cli := func(want int, args ...string) string {
		t.Helper()
		r := runTool(t, toolTimeout, binaryPath, append(args, "--socket", socket)...)
		if r.timedOut || r.exitCode != want {
			t.Fatalf("cachelun %s: exit %d, want %d:\n%s", strings.Join(args, " "), r.exitCode, want, r.out)
		}
		return r.out
	}
	mode := func() string {
		t.Helper()
		out := cli(0, "volume", "show", "main", "--json")
		for _, m := range []string{"writeback", "writethrough", "writearound"} {
			if strings.Contains(out, `"mode": "`+m+`"`) {
				return m
			}
		}
		t.Fatalf("no mode in %s", out)
		return ""
	}

	cli(0, "volume", "mode", "main", "writethrough")
	if m := mode(); m != "writethrough" {
		t.Fatalf("after cachelun volume mode: %s", m)
	}
	step.logLevel = "debug"
	write(step)
	plan := cli(0, "reload", "--dry-run")
	const want = "volume main: mode modified writethrough (live, set by admin) -> writeback (file)"
	if !strings.Contains(plan, want) || !strings.Contains(plan, "log_level modified info -> debug") {
		t.Fatalf("dry-run plan lacks %q or the log level:\n%s", want, plan)
	}
	if m := mode(); m != "writethrough" {
		t.Fatalf("the dry run switched the mode to %s", m)
	}
	if out := cli(0, "reload"); !strings.Contains(out, want) {
		t.Errorf("applied plan lacks %q:\n%s", want, out)
	}
	if m := mode(); m != "writeback" {
		t.Errorf("after the reload: mode %s, the file says writeback", m)
	}
	if out := cli(0, "reload", "--dry-run"); !strings.Contains(out, "no changes") {
		t.Errorf("converged daemon still plans changes:\n%s", out)
	}
}
