package integration

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/testkit"
)

// refusedRun runs the cachelun binary with args and RUNTIME_DIRECTORY
// runDir; it must exit non-zero within limit (a refusal, not a hang).
func refusedRun(t *testing.T, limit time.Duration, runDir string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binaryPath, args...)
	cmd.Env = append(os.Environ(), "RUNTIME_DIRECTORY="+runDir)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("cachelun %v: want a non-zero exit, got %v after %v:\n%s", args, err, took, out.String())
	}
	if took > limit {
		t.Fatalf("cachelun %v: refused after %v, want within %v:\n%s", args, took, limit, out.String())
	}
	return out.String()
}

// inode identifies a file that must stay the same one.
func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return st.Ino
}

// TestSecondDaemonRefused: a second daemon started with the same command,
// or with another data dir whose configuration names the same cache file,
// is refused at once with the path and the first daemon's pid; it touches
// nothing of the first one's, which keeps serving with its intent log and
// admin socket, and a SIGKILL of the first then loses no acknowledged
// write. format and check refuse the file the daemon holds.
func TestSecondDaemonRefused(t *testing.T) {
	needTools(t, "qemu-io", "stdbuf")
	dir := t.TempDir()
	cfg := writeConfig(t, dir, configOptions{lunSize: "256MiB", journalFlushInterval: "1m"})
	src, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	withSocket := strings.Replace(string(src), `admin_socket = "off"`, `admin_socket = "admin.sock"`, 1)
	if err := os.WriteFile(cfg, []byte(withSocket), 0o644); err != nil {
		t.Fatal(err)
	}
	a := startDaemon(t, dir, cfg)
	pid := "pid " + strconv.Itoa(a.cmd.Process.Pid)
	base := region{0, 4 * mib, 0xe1}
	qemuIO(t, a.url(0), base.write(false), "flush")
	flushed := region{16 * mib, 1 * mib, 0xe2}
	qemuIO(t, a.url(0), flushed.write(false), "flush")

	runDir := filepath.Join(dir, "run")
	intents, _ := filepath.Glob(filepath.Join(runDir, "*.intent"))
	if len(intents) != 1 {
		t.Fatalf("intent logs of daemon A: %v", intents)
	}
	intentIno := inode(t, intents[0])
	sockIno := inode(t, filepath.Join(dir, "admin.sock"))
	before, _ := readDirNames(dir)

	// B: the same command again.
	out := refusedRun(t, 5*time.Second, runDir, "serve", "--config", cfg, "--data-dir", dir, "--listen", "127.0.0.1:0")
	if !strings.Contains(out, filepath.Join(dir, "cachelun.lock")) || !strings.Contains(out, pid) {
		t.Errorf("daemon B's refusal does not name the data dir's lock and A's %s:\n%s", pid, out)
	}

	// C: another data dir, naming A's cache file.
	dirC := t.TempDir()
	cfgC := writeConfig(t, dirC, configOptions{lunSize: "256MiB"})
	srcC, err := os.ReadFile(cfgC)
	if err != nil {
		t.Fatal(err)
	}
	cachePath := filepath.Join(dir, "cache.img")
	sharing := strings.Replace(string(srcC), `path = "cache.img"`, "path = "+strconv.Quote(cachePath), 1)
	if err := os.WriteFile(cfgC, []byte(sharing), 0o644); err != nil {
		t.Fatal(err)
	}
	out = refusedRun(t, 5*time.Second, filepath.Join(dirC, "run"), "serve", "--config", cfgC, "--data-dir", dirC, "--listen", "127.0.0.1:0")
	if !strings.Contains(out, "cache file "+cachePath) || !strings.Contains(out, pid) {
		t.Errorf("daemon C's refusal does not name the cache file and A's %s:\n%s", pid, out)
	}

	// format and check refuse the file A holds.
	for _, args := range [][]string{{"format", "--force", cachePath}, {"check", cachePath}} {
		out := refusedRun(t, 5*time.Second, runDir, args...)
		if !strings.Contains(out, cachePath) || !strings.Contains(out, pid) {
			t.Errorf("cachelun %v on A's cache file does not name it and A's %s:\n%s", args, pid, out)
		}
	}

	// Nothing of A's was touched.
	a.alive()
	if after, _ := readDirNames(dir); strings.Join(after, " ") != strings.Join(before, " ") {
		t.Errorf("A's data dir changed: %v -> %v", before, after)
	}
	if inode(t, intents[0]) != intentIno {
		t.Errorf("A's intent log %s was replaced", intents[0])
	}
	if inode(t, filepath.Join(dir, "admin.sock")) != sockIno {
		t.Errorf("A's admin socket was replaced")
	}

	// A serves on: writes acknowledged but not flushed (ksets stay open
	// for a minute: only the intent log holds their keys), then SIGKILL.
	acked := []region{{1 * mib, 256 * 1024, 0xe3}, {32 * mib, 64 * 1024, 0xe4}, {100 * mib, 4096, 0xe5}}
	stop := writeAckedAndStay(t, a.url(0), acked)
	a.kill()
	stop()

	a.restart()
	cmds := []string{flushed.read()}
	for _, r := range acked {
		cmds = append(cmds, r.read())
	}
	cmds = append(cmds, region{0, 1 * mib, 0xe1}.read(), region{1*mib + 256*1024, 3*mib - 256*1024, 0xe1}.read())
	qemuIO(t, a.url(0), cmds...)
	a.stop()
}

// TestSIGTERMDuringZeroFill: SIGTERM while serve zero-fills a new 4 GiB
// cache file ends the process within seconds, and no cache file is left
// under any name.
func TestSIGTERMDuringZeroFill(t *testing.T) {
	dir := t.TempDir()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil || int64(st.Bavail)*st.Bsize < 12*gib {
		t.Skipf("needs 12 GiB free in %s", dir)
	}
	cfg := writeConfig(t, dir, configOptions{lunSize: "64MiB"})
	src, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	big := strings.Replace(string(src), `size = "256MiB"`, `size = "4GiB"`, 1)
	if err := os.WriteFile(cfg, []byte(big), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binaryPath, "serve", "--config", cfg, "--data-dir", dir, "--listen", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "RUNTIME_DIRECTORY="+filepath.Join(dir, "run"))
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
	})
	// The zero fill has begun once the file has its full size (reserved
	// first) and some of it is written.
	creating := filepath.Join(dir, "cache.img.creating")
	testkit.WaitFor(t, 30*time.Second, "the cache file being created at its full size", func() bool {
		var s syscall.Stat_t
		return syscall.Stat(creating, &s) == nil && s.Size == 4*gib
	})
	time.Sleep(100 * time.Millisecond)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	select {
	case <-exited:
		if waitErr == nil {
			t.Errorf("exit status 0 after a start cancelled during the creation:\n%s", out.String())
		}
	case <-time.After(3 * time.Second):
		t.Fatalf("still running 3 s after SIGTERM:\n%s", out.String())
	}
	t.Logf("exited %v after SIGTERM", time.Since(sent).Round(time.Millisecond))
	if names, _ := filepath.Glob(filepath.Join(dir, "cache.img*")); len(names) != 0 {
		t.Fatalf("cancelled creation left %v:\n%s", names, out.String())
	}
}

// TestMissingBackingCreatesNoCache: a start whose backing file is missing
// (and no backing_size to create it) is refused before the cache file is
// created.
func TestMissingBackingCreatesNoCache(t *testing.T) {
	dir := t.TempDir()
	cfg := writeConfig(t, dir, configOptions{lunSize: "64MiB"})
	src, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	noBacking := strings.Replace(string(src), `backing_size = "64MiB"`, ``, 1)
	if err := os.WriteFile(cfg, []byte(noBacking), 0o644); err != nil {
		t.Fatal(err)
	}
	out := refusedRun(t, 5*time.Second, filepath.Join(dir, "run"), "serve", "--config", cfg, "--data-dir", dir, "--listen", "127.0.0.1:0")
	if !strings.Contains(out, "thick.img does not exist") {
		t.Errorf("refusal does not name the missing backing file:\n%s", out)
	}
	if names, _ := filepath.Glob(filepath.Join(dir, "cache.img*")); len(names) != 0 {
		t.Fatalf("refused start created %v", names)
	}
}
