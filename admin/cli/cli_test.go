package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachelun/cachelun/admin"
	"github.com/cachelun/cachelun/admin/admintest"
	"github.com/cachelun/cachelun/admin/cli"
	"github.com/cachelun/cachelun/conf"
	"github.com/cachelun/cachelun/internal/testkit"
)

type fixture struct {
	backend *admintest.Backend
	db1     *admintest.Volume
	cache   *admintest.Cache
	socket  string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	return newFixtureAt(t, filepath.Join(t.TempDir(), "admin.sock"))
}

// newFixtureAt serves the fixture's admin API on the unix socket at path.
func newFixtureAt(t *testing.T, path string) *fixture {
	t.Helper()
	f := &fixture{
		db1:   admintest.NewVolume("db1", "nvme0", 100<<30, 512),
		cache: admintest.NewCache("nvme0", "/var/lib/cachelun/nvme0.cache"),
	}
	f.db1.SetStats(admin.VolumeStats{
		ReadHits: 931, ReadMisses: 69, ReadHitBytes: 880 << 20, ReadMissBytes: 120 << 20,
		DirtyBytes: 8 << 20, WritebackLag: 3200 * time.Millisecond,
		BypassedRequests: map[string]uint64{"sequential": 10},
		BypassedBytes:    map[string]uint64{"sequential": 40 << 20},
	})
	f.cache.SetStats(admin.CacheStats{Segments: 4096, SegmentsUsed: 3012, SegmentsFree: 1084, DirtyBytes: 8 << 20, GCRuns: 7})
	f.backend = admintest.NewBackend([]*admintest.Volume{f.db1}, []*admintest.Cache{f.cache})
	f.backend.SetSessions([]admin.Session{{Transport: "iscsi", Initiator: "iqn.1993-08.org.debian:01:abc",
		Target: "iqn.2026-11.io.cachelun:demo", Portal: "127.0.0.1:3260", Remote: "127.0.0.1:51000", LUNs: []uint64{0, 1}, InFlight: 2}})
	f.socket = path
	admintest.StartServer(t, admin.Config{Backend: f.backend, SocketPath: f.socket, Version: "0.1.0"})
	return f
}

// run runs a verb against the fixture's socket.
func (f *fixture) run(t *testing.T, cmd cli.Command, args ...string) (int, string, string) {
	t.Helper()
	return runCtx(context.Background(), cmd, append(args, "--socket", f.socket)...)
}

func runCtx(ctx context.Context, cmd cli.Command, args ...string) (int, string, string) {
	var stdout, stderr bytes.Buffer
	code := cmd(ctx, args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestStatusTableAndJSON(t *testing.T) {
	f := newFixture(t)
	code, out, errOut := f.run(t, cli.Status)
	if code != cli.ExitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	t.Logf("cachelun status:\n%s", out)
	for _, want := range []string{
		"cachelun 0.1.0, up",
		"VOLUME", "db1", "nvme0", "writeback", "100.0 GiB", "93.1%", "88.0%", "40.0 MiB", "8.0 MiB", "3.2s",
		"CACHE", "4096", "3012", "1084", "ok",
		"sessions: 1 (iscsi 1)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q", want)
		}
	}
	code, out, _ = f.run(t, cli.Status, "--json")
	var st admin.StatusResponse
	if code != cli.ExitOK || json.Unmarshal([]byte(out), &st) != nil || len(st.Volumes) != 1 || st.Volumes[0].Stats.ReadHits != 931 {
		t.Errorf("status --json: exit %d, %q", code, out)
	}
}

func TestExitCodes(t *testing.T) {
	f := newFixture(t)
	missing := filepath.Join(t.TempDir(), "none.sock")
	for _, tc := range []struct {
		name string
		cmd  cli.Command
		args []string
		want int
		msg  string // expected in stderr
	}{
		{"unreachable", cli.Status, []string{"--socket", missing}, cli.ExitUnreachable, "none.sock: connect: no such file or directory"},
		{"unreachable drain", cli.Volume, []string{"drain", "db1", "--socket", missing}, cli.ExitUnreachable, "cannot reach"},
		{"unknown volume", cli.Volume, []string{"show", "nope", "--socket", f.socket}, cli.ExitFailed, `no volume "nope"`},
		{"unknown volume drain", cli.Volume, []string{"drain", "nope", "--socket", f.socket}, cli.ExitFailed, "no volume"},
		{"explain out of range", cli.Explain, []string{"db1", "999999999999", "--socket", f.socket}, cli.ExitFailed, "out of range"},
		{"bad mode", cli.Volume, []string{"mode", "db1", "fast", "--socket", f.socket}, cli.ExitUsage, "unknown mode"},
		{"mode missing arg", cli.Volume, []string{"mode", "db1", "--socket", f.socket}, cli.ExitUsage, "usage"},
		{"no subcommand", cli.Volume, nil, cli.ExitUsage, "usage"},
		{"unknown subcommand", cli.Volume, []string{"resize", "db1"}, cli.ExitUsage, "usage"},
		{"bad flag", cli.Status, []string{"--frobnicate"}, cli.ExitUsage, "frobnicate"},
		{"extra arg", cli.Status, []string{"now"}, cli.ExitUsage, "unexpected argument"},
		{"explain bad lba", cli.Explain, []string{"db1", "ten"}, cli.ExitUsage, "bad LBA"},
		{"explain negative lba", cli.Explain, []string{"db1", "-5"}, cli.ExitUsage, ""},
		{"session bad sub", cli.Session, []string{"kill"}, cli.ExitUsage, "usage"},
		{"job bad sub", cli.Job, []string{"frob"}, cli.ExitUsage, "usage"},
		{"cache bad sub", cli.Cache, []string{"frob"}, cli.ExitUsage, "usage: cachelun cache"},
		{"stats bad sub", cli.Stats, []string{"clear"}, cli.ExitUsage, "usage: cachelun stats reset"},
		{"config bad sub", cli.Config, nil, cli.ExitUsage, "usage: cachelun config show"},
		{"move without node", cli.Volume, []string{"move", "db1"}, cli.ExitUsage, "want the volume and the node"},
		{"move on a single node", cli.Volume, []string{"move", "db1", "b", "--socket", f.socket}, cli.ExitFailed, "not a cluster node"},
		{"cluster bad sub", cli.Cluster, []string{"move"}, cli.ExitUsage, "usage: cachelun cluster status"},
		{"cluster not a cluster node", cli.Cluster, []string{"status", "--socket", f.socket}, cli.ExitFailed, "not a cluster node"},
	} {
		code, _, errOut := runCtx(context.Background(), tc.cmd, tc.args...)
		if code != tc.want {
			t.Errorf("%s: exit %d, want %d (stderr %q)", tc.name, code, tc.want, errOut)
		}
		if !strings.Contains(errOut, tc.msg) {
			t.Errorf("%s: stderr %q lacks %q", tc.name, errOut, tc.msg)
		}
	}
}

// syncBuffer is a bytes.Buffer safe to read while a verb writes to it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestDrainShowsProgressAndWaits(t *testing.T) {
	f := newFixture(t)
	gate := f.db1.HoldWork()
	var stdout, stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- cli.Volume(context.Background(), []string{"drain", "db1", "--socket", f.socket}, &stdout, &stderr)
	}()
	testkit.WaitFor(t, 10*time.Second, "the half-way progress line on stderr", func() bool {
		return strings.Contains(stderr.String(), "50% written back, 4.0 MiB written, 4.0 MiB left")
	})
	select {
	case code := <-done:
		t.Fatalf("drain returned %d while the engine was still draining", code)
	default:
	}
	gate.Open()
	select {
	case code := <-done:
		if code != cli.ExitOK {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("drain did not return after the engine finished")
	}
	if !strings.Contains(stdout.String(), "drain db1: done in") {
		t.Errorf("stdout %q", stdout.String())
	}
	if strings.Contains(stderr.String(), "\r") {
		t.Errorf("terminal control characters on a non-terminal: %q", stderr.String())
	}
	if f.db1.Drains.Load() != 1 {
		t.Errorf("drains %d", f.db1.Drains.Load())
	}
}

func TestModeSwitchFlushFailureAndNoWait(t *testing.T) {
	f := newFixture(t)
	code, out, errOut := f.run(t, cli.Volume, "mode", "db1", "writethrough", "--json")
	var jr admin.JobResponse
	if code != cli.ExitOK || json.Unmarshal([]byte(out), &jr) != nil || jr.Job.State != admin.JobSucceeded || jr.Job.Kind != "mode" {
		t.Fatalf("mode: exit %d out %q err %q", code, out, errOut)
	}
	if f.db1.Mode() != "writethrough" {
		t.Errorf("mode %q", f.db1.Mode())
	}

	f.db1.FailWith(errors.New("backing device gone"))
	code, _, errOut = f.run(t, cli.Volume, "flush", "db1")
	if code != cli.ExitFailed || !strings.Contains(errOut, "failed") || !strings.Contains(errOut, "backing device gone") {
		t.Errorf("failing flush: exit %d, stderr %q", code, errOut)
	}
	f.db1.FailWith(nil)

	gate := f.db1.HoldWork()
	code, out, _ = f.run(t, cli.Volume, "drain", "db1", "--no-wait")
	if code != cli.ExitOK || !strings.Contains(out, "drain db1: started job") {
		t.Errorf("--no-wait: exit %d, %q", code, out)
	}
	// A second drain conflicts and names the running job.
	code, _, errOut = f.run(t, cli.Volume, "drain", "db1")
	if code != cli.ExitFailed || !strings.Contains(errOut, "is running") {
		t.Errorf("conflicting drain: exit %d, %q", code, errOut)
	}
	code, out, _ = f.run(t, cli.Job, "list")
	if code != cli.ExitOK || !strings.Contains(out, "drain") || !strings.Contains(out, "running") {
		t.Errorf("job list: exit %d, %q", code, out)
	}
	gate.Open()
}

func TestInterruptedWaitLeavesJobRunning(t *testing.T) {
	f := newFixture(t)
	gate := f.db1.HoldWork()
	defer gate.Open()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	code, _, errOut := runCtx(ctx, cli.Volume, "drain", "db1", "--socket", f.socket)
	if code != cli.ExitFailed || !strings.Contains(errOut, "continues in the daemon") {
		t.Fatalf("interrupted drain: exit %d, %q", code, errOut)
	}
	if f.db1.Running.Load() != 1 {
		t.Errorf("the daemon's drain stopped with the client")
	}
	code, out, _ := f.run(t, cli.Job, "cancel", "1")
	if code != cli.ExitOK || !strings.Contains(out, "drain") {
		t.Errorf("job cancel: exit %d %q", code, out)
	}
	testkit.WaitFor(t, 5*time.Second, "the cancelled drain to stop", func() bool { return f.db1.Running.Load() == 0 })
}

func TestReloadPrintsPlan(t *testing.T) {
	f := newFixture(t)
	f.backend.OnReload(func(ctx context.Context, dryRun bool) (string, error) {
		if dryRun {
			return "volume db1: mode writeback -> writethrough\n", nil
		}
		return "", errors.New("config: line 12: unknown key \"mdoe\"")
	})
	code, out, errOut := f.run(t, cli.Reload, "--dry-run")
	if code != cli.ExitOK || !strings.Contains(out, "volume db1: mode writeback -> writethrough") {
		t.Errorf("dry run: exit %d out %q err %q", code, out, errOut)
	}
	code, _, errOut = f.run(t, cli.Reload)
	if code != cli.ExitFailed || !strings.Contains(errOut, "line 12") {
		t.Errorf("failing reload: exit %d, %q", code, errOut)
	}
}

func TestExplainAndSessions(t *testing.T) {
	f := newFixture(t)
	f.db1.SetExplanation(2048*512, admin.Explanation{Offset: 2048 * 512, State: "hit", Dirty: true, Segment: 12, SegmentOffset: 65536, Gen: 3})
	code, out, errOut := f.run(t, cli.Explain, "db1", "2048")
	if code != cli.ExitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"LBA 2048", "byte offset 1048576", ": hit", "dirty", "segment 12 offset 65536", "generation 3"} {
		if !strings.Contains(out, want) {
			t.Errorf("explain output %q lacks %q", out, want)
		}
	}
	if strings.Contains(out, "LSN") {
		t.Errorf("explain output %q shows an LSN the engine does not track", out)
	}
	code, out, _ = f.run(t, cli.Explain, "db1", "2048", "--json")
	if code != cli.ExitOK || strings.Contains(out, "lsn") || !strings.Contains(out, `"gen": 3`) {
		t.Errorf("explain --json: exit %d, %q (want gen and no lsn)", code, out)
	}
	code, out, _ = f.run(t, cli.Explain, "db1", "0x10")
	if code != cli.ExitOK || !strings.Contains(out, "LBA 16") || !strings.Contains(out, "not cached") {
		t.Errorf("explain of a miss: exit %d, %q", code, out)
	}
	code, out, _ = f.run(t, cli.Session, "list")
	if code != cli.ExitOK || !strings.Contains(out, "iqn.1993-08.org.debian:01:abc") || !strings.Contains(out, "0,1") {
		t.Errorf("session list: exit %d, %q", code, out)
	}
	code, out, _ = f.run(t, cli.Volume, "show", "db1")
	if code != cli.ExitOK || !strings.Contains(out, "sequential 10 (40.0 MiB)") || !strings.Contains(out, "hit ratio 93.1%") {
		t.Errorf("volume show: exit %d, %q", code, out)
	}
	code, out, _ = f.run(t, cli.Cache, "list")
	if code != cli.ExitOK || !strings.Contains(out, "KEY HEAD") {
		t.Errorf("cache list: exit %d, %q", code, out)
	}
}

func TestTCPWithTokenFromEnvironment(t *testing.T) {
	b := admintest.NewBackend([]*admintest.Volume{admintest.NewVolume("db1", "c", 1<<20, 512)}, nil)
	srv := admintest.StartServer(t, admin.Config{Backend: b, SocketPath: filepath.Join(t.TempDir(), "s"),
		TCPListen: "127.0.0.1:0", Token: "tok-123"})
	addr := srv.Addr("tcp").String()

	t.Setenv(cli.EnvToken, "tok-123")
	code, out, errOut := runCtx(context.Background(), cli.Volume, "list", "--addr", addr)
	if code != cli.ExitOK || !strings.Contains(out, "db1") {
		t.Errorf("with token: exit %d, %q %q", code, out, errOut)
	}
	t.Setenv(cli.EnvToken, "wrong")
	code, _, errOut = runCtx(context.Background(), cli.Volume, "list", "--addr", addr)
	if code != cli.ExitFailed || !strings.Contains(errOut, "bearer token") {
		t.Errorf("with a wrong token: exit %d, %q", code, errOut)
	}
	// The socket flag's default comes from the environment.
	t.Setenv(cli.EnvSocket, filepath.Join(t.TempDir(), "nothing.sock"))
	code, _, errOut = runCtx(context.Background(), cli.Status)
	if code != cli.ExitUnreachable || !strings.Contains(errOut, "nothing.sock") {
		t.Errorf("socket from environment: exit %d, %q", code, errOut)
	}
}

// TestHungDaemonIsUnreachable: a daemon that accepts the connection but
// never answers makes the CLI give up with exit code 3, not hang.
func TestHungDaemonIsUnreachable(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "hung.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // accepted, never answered
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	}()
	start := time.Now()
	code, _, errOut := runCtx(context.Background(), cli.Status, "--socket", sock, "--timeout", "200ms")
	t.Logf("gave up after %v", time.Since(start))
	if code != cli.ExitUnreachable || !strings.Contains(errOut, "no answer within 200ms") {
		t.Errorf("hung daemon: exit %d, %q", code, errOut)
	}
}

// cache detach: a failed cache whose volumes still hold dirty data is
// refused (exit 1, the engine's reason on stderr) unless --force is given.
func TestCacheDetachForce(t *testing.T) {
	f := newFixture(t)
	f.cache.SetStats(admin.CacheStats{Failed: true, FailureReason: "EIO"})
	f.cache.DetachErr = errors.New("volumes with dirty data: db1 (8.0 MiB)")
	code, _, errOut := f.run(t, cli.Cache, "detach", "nvme0")
	if code != cli.ExitFailed || !strings.Contains(errOut, "db1 (8.0 MiB)") || f.cache.Detached.Load() != 0 {
		t.Fatalf("detach with dirty data: exit %d, stderr %q, detached %d", code, errOut, f.cache.Detached.Load())
	}
	code, out, errOut := f.run(t, cli.Cache, "detach", "nvme0", "--force")
	if code != cli.ExitOK || f.cache.Forced.Load() != 1 || f.cache.Detached.Load() != 1 {
		t.Fatalf("detach --force: exit %d, %q %q, forced %d", code, out, errOut, f.cache.Forced.Load())
	}
}

// A TCMU device is one row of session list: device, volume, commands in
// flight, and dashes where LIO's fabrics own the information.
func TestSessionListTCMURow(t *testing.T) {
	f := newFixture(t)
	f.backend.SetSessions([]admin.Session{
		{Transport: "iscsi", Initiator: "iqn.1993-08.org.debian:01:abc", Target: "iqn.2026-11.io.cachelun:demo",
			Portal: "127.0.0.1:3260", Remote: "127.0.0.1:51000", LUNs: []uint64{0}, InFlight: 1, ID: "isid=0x1,tsih=1"},
		{Transport: "tcmu", Target: "user_0/logs", Volume: "logs", ID: "uio0", InFlight: 3},
	})
	code, out, errOut := f.run(t, cli.Session, "list")
	if code != cli.ExitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "VOLUME") {
		t.Fatalf("session list:\n%s", out)
	}
	if got := strings.Fields(lines[2]); strings.Join(got, " ") != "tcmu - user_0/logs logs - - - 3 uio0" {
		t.Errorf("TCMU row %q", got)
	}
	code, out, _ = f.run(t, cli.Status)
	if code != cli.ExitOK || !strings.Contains(out, "tcmu 1") {
		t.Errorf("status does not count the TCMU device: %q", out)
	}
}

// Without --socket the verbs find the daemon of the quick start: run in
// the directory where `cachelun serve` was started, its socket is
// ./cachelun-data/admin.sock (the embedded default's data dir and socket
// name). --data-dir DIR names DIR/admin.sock.
func TestSocketDiscovery(t *testing.T) {
	t.Setenv(cli.EnvSocket, "")
	wd := t.TempDir()
	t.Chdir(wd)
	if err := os.Mkdir(filepath.Join(wd, "cachelun-data"), 0o750); err != nil {
		t.Fatal(err)
	}
	// the verbs' copy of where the quick start puts its socket
	def := conf.Default()
	if admin.DefaultSocketPath != conf.DefaultAdminSocket {
		t.Errorf("the CLI looks for %s, the daemon's default socket is %s", admin.DefaultSocketPath, conf.DefaultAdminSocket)
	}
	if def.Global.DataDir != conf.DefaultDataDir || def.Global.AdminSocket != cli.DataDirSocket {
		t.Fatalf("embedded default: data dir %q, socket %q; the CLI looks for %s/%s", def.Global.DataDir,
			def.Global.AdminSocket, conf.DefaultDataDir, cli.DataDirSocket)
	}
	newFixtureAt(t, filepath.Join(wd, "cachelun-data", "admin.sock"))
	for _, args := range [][]string{nil, {"--data-dir", filepath.Join(wd, "cachelun-data")}, {"--data-dir", "cachelun-data"}} {
		code, out, errOut := runCtx(context.Background(), cli.Status, args...)
		if code != cli.ExitOK || !strings.Contains(out, "cachelun 0.1.0, up") {
			t.Errorf("status %q in the quick start's directory: exit %d, %q %q", args, code, out, errOut)
		}
	}
	if code, out, errOut := runCtx(context.Background(), cli.Volume, "show", "db1"); code != cli.ExitOK || !strings.Contains(out, "db1") {
		t.Errorf("volume show without --socket: exit %d, %q %q", code, out, errOut)
	}
	// a socket named in the environment is the only one tried
	t.Setenv(cli.EnvSocket, filepath.Join(wd, "other.sock"))
	if code, _, errOut := runCtx(context.Background(), cli.Status); code != cli.ExitUnreachable || !strings.Contains(errOut, "other.sock") {
		t.Errorf("status with $%s naming a dead socket: exit %d, %q", cli.EnvSocket, code, errOut)
	}
	t.Setenv(cli.EnvSocket, "")

	// elsewhere, nothing answers: the error lists every place looked at
	t.Chdir(t.TempDir())
	if c, err := net.Dial("unix", admin.DefaultSocketPath); err == nil {
		c.Close()
		t.Skipf("a daemon answers on %s on this machine", admin.DefaultSocketPath)
	}
	cwd, _ := os.Getwd()
	code, _, errOut := runCtx(context.Background(), cli.Status)
	if code != cli.ExitUnreachable || !strings.Contains(errOut, "looked at:\n  "+filepath.Join(cwd, "cachelun-data", "admin.sock")+": no such file or directory\n  "+admin.DefaultSocketPath+": ") ||
		!strings.Contains(errOut, "--socket PATH, --data-dir DIR or $"+cli.EnvSocket) {
		t.Errorf("status with no daemon: exit %d\n%s", code, errOut)
	}
	if code, _, errOut := runCtx(context.Background(), cli.Status, "--data-dir", "nowhere"); code != cli.ExitUnreachable || !strings.Contains(errOut, "nowhere/admin.sock") {
		t.Errorf("status --data-dir nowhere: exit %d, %q", code, errOut)
	}
}

// Help asked for is an answer: the usage on stdout, nothing on stderr,
// exit 0, for every verb and subcommand.
func TestHelpOnStdout(t *testing.T) {
	for _, tc := range []struct {
		cmd  cli.Command
		args []string
		want string
	}{
		{cli.Status, []string{"-h"}, "usage: cachelun status"},
		{cli.Status, []string{"--help"}, "usage: cachelun status"},
		{cli.Volume, []string{"help"}, "usage: cachelun volume list|show"},
		{cli.Volume, []string{"--help"}, "usage: cachelun volume list|show"},
		{cli.Volume, []string{"drain", "--help"}, "usage: cachelun volume drain"},
		{cli.Cache, []string{"-h"}, "usage: cachelun cache list|detach"},
		{cli.Session, []string{"--help"}, "usage: cachelun session list"},
		{cli.Job, []string{"list", "-h"}, "usage: cachelun job list|show"},
		{cli.Reload, []string{"--help"}, "usage: cachelun reload"},
		{cli.Explain, []string{"-help"}, "usage: cachelun explain"},
		{cli.Config, []string{"show", "--help"}, "usage: cachelun config show"},
		{cli.Stats, []string{"help"}, "usage: cachelun stats reset"},
		{cli.Cluster, []string{"status", "--help"}, "usage: cachelun cluster status"},
	} {
		code, out, errOut := runCtx(context.Background(), tc.cmd, tc.args...)
		if code != cli.ExitOK || !strings.HasPrefix(out, tc.want) || errOut != "" {
			t.Errorf("%q: exit %d\nstdout %q\nstderr %q", tc.args, code, out, errOut)
		}
	}
}

// clusterBackend is the fixture's backend on a cluster node: db1 is
// served here, web1 by node a (this node is standby for it).
type clusterBackend struct{ *admintest.Backend }

func (clusterBackend) ClusterStatus() (admin.ClusterResponse, error) {
	return admin.ClusterResponse{Node: "b", Volumes: []admin.ClusterVolume{
		{Name: "db1", Owner: "b", State: "owner", ALUA: "active/optimized", Mode: "writeback"},
		{Name: "web1", Owner: "a", State: "standby", ALUA: "standby", Mode: "writeback"},
	}}, nil
}

// A standby lists the clustered volumes another node serves beside the
// ones it serves (volume list, status, their JSON), and `volume show` of
// one says where it is served instead of "no volume".
func TestStandbyListsVolumesServedElsewhere(t *testing.T) {
	f := newFixture(t)
	sock := filepath.Join(t.TempDir(), "cluster.sock")
	admintest.StartServer(t, admin.Config{Backend: clusterBackend{f.backend}, SocketPath: sock, Version: "0.1.0"})
	for _, verb := range []struct {
		cmd  cli.Command
		args []string
	}{{cli.Volume, []string{"list"}}, {cli.Status, nil}} {
		code, out, errOut := runCtx(context.Background(), verb.cmd, append(verb.args, "--socket", sock)...)
		if code != cli.ExitOK {
			t.Fatalf("%v: exit %d: %s", verb.args, code, errOut)
		}
		i := strings.Index(out, "CLUSTERED, NOT SERVED HERE")
		if i < 0 {
			t.Fatalf("%v on a standby lists no volume served elsewhere:\n%s", verb.args, out)
		}
		t.Logf("%v on a standby:\n%s", verb.args, out)
		elsewhere := out[i:]
		if !strings.Contains(out, "db1") || !regexp.MustCompile(`(?m)^web1 +standby +a +standby$`).MatchString(elsewhere) || strings.Contains(elsewhere, "db1") {
			t.Errorf("%v on a standby:\n%s", verb.args, out)
		}
		// a daemon that is not a cluster node prints no such table
		if code, out, _ := f.run(t, verb.cmd, verb.args...); code != cli.ExitOK || strings.Contains(out, "CLUSTERED") {
			t.Errorf("%v on a single node: exit %d\n%s", verb.args, code, out)
		}
	}
	code, out, _ := runCtx(context.Background(), cli.Volume, "list", "--json", "--socket", sock)
	var r admin.VolumesResponse
	if err := json.Unmarshal([]byte(out), &r); code != cli.ExitOK || err != nil {
		t.Fatalf("volume list --json: exit %d %v\n%s", code, err, out)
	}
	if len(r.Volumes) != 1 || r.Volumes[0].Name != "db1" || len(r.Clustered) != 1 || r.Clustered[0].Name != "web1" || r.Clustered[0].Owner != "a" {
		t.Errorf("volume list --json: %s", out)
	}
	code, _, errOut := runCtx(context.Background(), cli.Volume, "show", "web1", "--socket", sock)
	if code == cli.ExitOK || !strings.Contains(errOut, `volume "web1" is not served by this node (standby; owner a)`) {
		t.Errorf("volume show web1 on its standby: exit %d %q", code, errOut)
	}
}
