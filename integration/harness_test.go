package integration

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
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/testkit"
)

// Paths set up by TestMain.
var (
	repoRoot   string
	binaryPath string
	outDir     string
)

// clientTools maps each external program the tests run to the Debian
// package that provides it.
var clientTools = map[string]string{
	"iscsi-ls":             "libiscsi-bin",
	"iscsi-inq":            "libiscsi-bin",
	"iscsi-readcapacity16": "libiscsi-bin",
	"iscsi-test-cu":        "libiscsi-bin",
	"qemu-io":              "qemu-utils (and qemu-block-extra for the iscsi driver)",
	"tgtd":                 "tgt",
	"tgtadm":               "tgt",
	"stdbuf":               "coreutils",
}

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	repoRoot = filepath.Dir(wd)
	outDir = filepath.Join(wd, "out")
	binaryPath = filepath.Join(wd, "tmp", "cachelun")
	if err := os.MkdirAll(filepath.Dir(binaryPath), 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	args := []string{"build", "-o", binaryPath}
	if testkit.RaceEnabled {
		args = append(args, "-race")
	}
	if cephEnabled {
		args = append(args, "-tags", "ceph")
	}
	build := exec.CommandContext(ctx, "go", append(args, "./cmd/cachelun")...)
	build.Dir = repoRoot
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "integration: building cachelun failed: %v\n%s", err, out)
		return 1
	}
	code := m.Run()
	if err := stopCeph(); err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
	}
	return code
}

// needTools fails the test (it does not skip) when a client is missing.
func needTools(t *testing.T, names ...string) {
	t.Helper()
	var missing []string
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			missing = append(missing, fmt.Sprintf("%s (Debian package %s)", n, clientTools[n]))
		}
	}
	if len(missing) > 0 {
		t.Fatalf("required client programs are missing: %s; install them (as root, scripts/deps.sh does: "+
			"apt-get install -y libiscsi-bin qemu-utils qemu-block-extra tgt)", strings.Join(missing, ", "))
	}
}

// result is the outcome of one client run.
type result struct {
	out      string // stdout and stderr interleaved
	exitCode int
	timedOut bool
}

// runTool runs a client with a timeout and returns its combined output.
// A start failure (binary missing) fails the test.
func runTool(t *testing.T, timeout time.Duration, name string, args ...string) result {
	t.Helper()
	return runToolCopy(t, timeout, nil, name, args...)
}

// runToolCopy is runTool that also writes the client's output to also
// as it comes (nil: nowhere).
func runToolCopy(t *testing.T, timeout time.Duration, also io.Writer, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 5 * time.Second
	var buf bytes.Buffer
	var out io.Writer = &buf
	if also != nil {
		// os/exec copies the pipe from one goroutine: no lock needed
		out = io.MultiWriter(&buf, also)
	}
	cmd.Stdout, cmd.Stderr = out, out
	err := cmd.Run()
	r := result{out: buf.String()}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		r.timedOut, r.exitCode = true, -1
	case errors.As(err, &ee):
		r.exitCode = ee.ExitCode()
	case err != nil:
		t.Fatalf("%s: %v", name, err)
	}
	return r
}

// mustRun runs a client that must succeed.
func mustRun(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	r := runTool(t, timeout, name, args...)
	if r.timedOut {
		t.Fatalf("%s %s: timed out after %s\n%s", name, strings.Join(args, " "), timeout, r.out)
	}
	if r.exitCode != 0 {
		t.Fatalf("%s %s: exit %d\n%s", name, strings.Join(args, " "), r.exitCode, r.out)
	}
	return r.out
}

// daemon is one running `cachelun serve`.
type daemon struct {
	t       *testing.T
	dataDir string
	config  string
	cmd     *exec.Cmd
	urls    []string // "iscsi://127.0.0.1:PORT/IQN/LUN" from the ready lines
	portal  string   // 127.0.0.1:PORT
	log     *lockedBuffer
	exited  chan struct{}
	waitErr error
	// listen is the --listen address ("" is 127.0.0.1:0): cluster tests
	// put their nodes on 127.0.0.2, 127.0.0.3, ...
	listen string
	// quickStart runs `cachelun serve --listen 127.0.0.1:0` and nothing
	// else, in the parent of dataDir (which is named cachelun-data), as
	// the README's quick start does.
	quickStart bool
	// gid, when not 0, is the group the daemon runs as (its user stays
	// the test's): a test tells the node's sockets apart by it
	// (iptables' owner match) to cut it off the network.
	gid uint32
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

var urlPattern = regexp.MustCompile(`url=(iscsi://\S+)`)

// startDaemon runs `cachelun serve` with the given config file ("" for the
// embedded default) on 127.0.0.1 with a kernel-chosen port, and waits for
// its ready lines.
func startDaemon(t *testing.T, dataDir, config string) *daemon {
	t.Helper()
	return startDaemonOn(t, "", dataDir, config)
}

// startDaemonOn is startDaemon with the portals on listen (HOST:PORT).
func startDaemonOn(t *testing.T, listen, dataDir, config string) *daemon {
	t.Helper()
	return startDaemonAs(t, 0, listen, dataDir, config)
}

// startDaemonAs is startDaemonOn with the daemon in group gid (0: the
// test's).
func startDaemonAs(t *testing.T, gid uint32, listen, dataDir, config string) *daemon {
	t.Helper()
	d := &daemon{t: t, dataDir: dataDir, config: config, listen: listen, gid: gid}
	d.start()
	t.Cleanup(func() {
		if d.running() {
			d.cmd.Process.Kill()
			<-d.exited
		}
		if t.Failed() {
			d.saveLog()
		}
	})
	return d
}

func (d *daemon) start() {
	t := d.t
	t.Helper()
	// tests run daemons side by side: none may take the default metrics
	// port 9420 of the embedded default
	listen := d.listen
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	args := []string{"serve", "--data-dir", d.dataDir, "--listen", listen, "--metrics", "127.0.0.1:0"}
	if d.config != "" {
		args = append(args, "--config", d.config)
	}
	if d.quickStart {
		args = []string{"serve", "--listen", "127.0.0.1:0"}
	}
	cmd := exec.Command(binaryPath, args...)
	if d.quickStart {
		cmd.Dir = filepath.Dir(d.dataDir)
	}
	if d.gid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{
			Uid: uint32(os.Getuid()), Gid: d.gid, NoSetGroups: true}}
	}
	// The daemon's runtime directory (its intent logs) belongs to the
	// test, as systemd's RuntimeDirectory= belongs to the service.
	runDir := filepath.Join(d.dataDir, "run")
	if err := os.MkdirAll(runDir, 0o750); err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(os.Environ(), "RUNTIME_DIRECTORY="+runDir)
	pr, pw := io.Pipe()
	if d.log == nil {
		d.log = &lockedBuffer{}
	}
	fmt.Fprintf(d.log, "---- start %s\n", time.Now().Format(time.RFC3339Nano))
	cmd.Stdout = d.log
	cmd.Stderr = pw
	if err := cmd.Start(); err != nil {
		t.Fatalf("start cachelun: %v", err)
	}
	d.cmd = cmd
	d.exited = make(chan struct{})
	go func() {
		d.waitErr = cmd.Wait()
		pw.Close()
		close(d.exited)
	}()
	ready := make(chan []string, 1)
	go func() {
		var urls []string
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		sent := false
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(d.log, line)
			if m := urlPattern.FindStringSubmatch(line); m != nil && !sent {
				urls = append(urls, m[1])
			}
			if strings.Contains(line, "cachelun ready") && !sent {
				ready <- urls
				sent = true
			}
		}
		io.Copy(io.Discard, pr)
	}()
	select {
	case d.urls = <-ready:
	case <-d.exited:
		t.Fatalf("cachelun exited before it was ready (%v):\n%s", d.waitErr, d.log)
	case <-time.After(60 * time.Second):
		t.Fatalf("cachelun not ready after 60s:\n%s", d.log)
	}
	if len(d.urls) == 0 {
		t.Fatalf("cachelun printed no LUN URL:\n%s", d.log)
	}
	d.portal = strings.SplitN(strings.TrimPrefix(d.urls[0], "iscsi://"), "/", 2)[0]
}

func (d *daemon) running() bool {
	if d.cmd == nil {
		return false
	}
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}

// url returns the ready URL of a LUN number.
func (d *daemon) url(lun int) string {
	d.t.Helper()
	suffix := fmt.Sprintf("/%d", lun)
	for _, u := range d.urls {
		if strings.HasSuffix(u, suffix) {
			return u
		}
	}
	d.t.Fatalf("no LUN %d among %v", lun, d.urls)
	return ""
}

// stop sends SIGTERM and requires a clean exit (status 0) within 60s.
func (d *daemon) stop() {
	t := d.t
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	select {
	case <-d.exited:
	case <-time.After(60 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
		t.Fatalf("cachelun did not exit within 60s of SIGTERM:\n%s", d.log)
	}
	if d.waitErr != nil {
		t.Fatalf("cachelun exited with %v after SIGTERM (want status 0):\n%s", d.waitErr, d.log)
	}
	d.noRaces()
}

// noRaces fails the test when the race detector reported in the daemon.
func (d *daemon) noRaces() {
	d.t.Helper()
	if strings.Contains(d.log.String(), "WARNING: DATA RACE") {
		d.t.Errorf("the race detector reported a data race in cachelun:\n%s", d.log)
	}
}

// kill sends SIGKILL: the crash the durability contract must survive.
func (d *daemon) kill() {
	d.t.Helper()
	d.cmd.Process.Kill()
	<-d.exited
	d.noRaces()
}

// restart starts the daemon again on the same data directory.
func (d *daemon) restart() {
	d.t.Helper()
	d.start()
}

func (d *daemon) alive() {
	d.t.Helper()
	if !d.running() {
		d.t.Fatalf("cachelun died (%v):\n%s", d.waitErr, d.log)
	}
}

// waitLog waits until the daemon's log holds at least n lines with s: the
// event itself, not a guess at how long it takes. It fails the test if
// the daemon dies first or the lines do not come within toolTimeout (the
// log is saved then, like on every failure).
func (d *daemon) waitLog(s string, n int) {
	d.t.Helper()
	testkit.WaitFor(d.t, toolTimeout, fmt.Sprintf("%d daemon log lines with %q", n, s), func() bool {
		if strings.Count(d.log.String(), s) >= n {
			return true
		}
		d.alive()
		return false
	})
}

func (d *daemon) saveLog() {
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return
	}
	name := strings.NewReplacer("/", "_", " ", "_").Replace(d.t.Name()) + ".daemon.log"
	p := filepath.Join(outDir, name)
	if os.WriteFile(p, []byte(d.log.String()), 0o644) == nil {
		d.t.Logf("daemon log saved to %s", p)
	}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// configOptions describe a test configuration file.
type configOptions struct {
	mode string // volume mode
	// lunSize is the size of each LUN's backing file.
	lunSize string
	// thinLUN adds LUN 1 (its own volume) with thin provisioning.
	thinLUN bool
	// slow, when set, throttles the backing devices.
	slow string
	// journalFlushInterval overrides the cache's 200ms.
	journalFlushInterval string
	// nopInterval, when set, is the target's nop_interval and nop_timeout
	// (an idle connection is pinged after it and dropped when the ping
	// stays unanswered as long again).
	nopInterval string
}

// writeConfig writes a configuration under dir and returns its path. The
// portal is replaced by --listen at start.
func writeConfig(t *testing.T, dir string, o configOptions) string {
	t.Helper()
	if o.mode == "" {
		o.mode = "writeback"
	}
	if o.lunSize == "" {
		o.lunSize = "1GiB"
	}
	if o.journalFlushInterval == "" {
		o.journalFlushInterval = "200ms"
	}
	slow := ""
	if o.slow != "" {
		slow = fmt.Sprintf("slow = %q\n", o.slow)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `[global]
log_level = "info"
admin_socket = "off"
metrics_listen = "off"

[[cache]]
name = "c0"
path = "cache.img"
size = "256MiB"
segment_size = "4MiB"
journal_flush_interval = %q

[[volume]]
name = "thick"
cache = "c0"
backing = "thick.img"
backing_size = %q
mode = %q
%s`, o.journalFlushInterval, o.lunSize, o.mode, slow)
	if o.thinLUN {
		fmt.Fprintf(&b, `
[[volume]]
name = "thin"
cache = "c0"
backing = "thin.img"
backing_size = %q
mode = %q
%s`, o.lunSize, o.mode, slow)
	}
	b.WriteString(`
[[target]]
iqn = "iqn.2026-11.io.cachelun:test"
portals = ["127.0.0.1:3260"]

[[target.lun]]
lun = 0
volume = "thick"
`)
	if o.thinLUN {
		b.WriteString(`
[[target.lun]]
lun = 1
volume = "thin"
thin = true
`)
	}
	if o.nopInterval != "" {
		fmt.Fprintf(&b, "\n[iscsi]\nnop_interval = %q\nnop_timeout = %q\n", o.nopInterval, o.nopInterval)
	}
	p := filepath.Join(dir, "cachelun.toml")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
