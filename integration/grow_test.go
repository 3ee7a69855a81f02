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

// qemuSession is one qemu-io process holding one iSCSI session open across
// the test's events, fed commands one at a time: what an initiator whose
// LUN grows under it sees.
type qemuSession struct {
	t     *testing.T
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *lockedBuffer
	done  chan struct{}
}

func startQemuSession(t *testing.T, url string) *qemuSession {
	t.Helper()
	s := &qemuSession{t: t, out: &lockedBuffer{}, done: make(chan struct{})}
	s.cmd = exec.Command("qemu-io", "-f", "raw", url)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	var err error
	if s.stdin, err = s.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		s.stdin.Close()
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			s.cmd.Process.Kill()
			<-s.done
		}
	})
	return s
}

// do sends one command and waits until the output holds want (the line
// the command prints when it is done).
func (s *qemuSession) do(cmd, want string) {
	s.t.Helper()
	n := strings.Count(s.out.String(), want)
	if _, err := fmt.Fprintln(s.stdin, cmd); err != nil {
		s.t.Fatalf("qemu-io %q: %v\n%s", cmd, err, s.out)
	}
	testkit.WaitFor(s.t, toolTimeout, fmt.Sprintf("qemu-io %q to print %q", cmd, want), func() bool {
		select {
		case <-s.done:
			s.t.Fatalf("qemu-io exited:\n%s", s.out)
		default:
		}
		return strings.Count(s.out.String(), want) > n
	})
	if o := s.out.String(); strings.Contains(o, "Pattern verification failed") || strings.Contains(o, "failed:") {
		s.t.Fatalf("qemu-io %q:\n%s", cmd, o)
	}
}

// growthSeen drives an open session through a growth from oldMiB to
// newMiB that the daemon already followed: its next command gets the unit
// attention CAPACITY DATA HAS CHANGED, a fresh READ CAPACITY (qemu-io's
// truncate to the new size re-reads it and refuses a size the LUN does not
// have) gives the new size, and the blocks past the old end write and read
// back. A new session's READ CAPACITY(16) reports the new size too.
func growthSeen(t *testing.T, s *qemuSession, url string, oldMiB, newMiB int64) {
	t.Helper()
	s.do("read -P 0x11 0 64k", "read 65536/65536 bytes at offset 0")
	if !strings.Contains(s.out.String(), "CAPACITY_DATA_HAS_CHANGED") {
		t.Fatalf("the open session did not get CAPACITY DATA HAS CHANGED:\n%s", s.out)
	}
	s.do(fmt.Sprintf("truncate %dM", newMiB), "qemu-io> ")
	s.do("length", fmt.Sprintf("%d MiB", newMiB))
	off := (newMiB - 1) << 20
	s.do(fmt.Sprintf("write -P 0x22 %d 1M", off), fmt.Sprintf("wrote 1048576/1048576 bytes at offset %d", off))
	s.do(fmt.Sprintf("read -P 0x22 %d 1M", off), fmt.Sprintf("read 1048576/1048576 bytes at offset %d", off))
	s.do(fmt.Sprintf("read -P 0 %d 1M", oldMiB<<20), fmt.Sprintf("read 1048576/1048576 bytes at offset %d", oldMiB<<20))
	rc := mustRun(t, toolTimeout, "iscsi-readcapacity16", url)
	if want := fmt.Sprintf("RETURNED LOGICAL BLOCK ADDRESS:%d", newMiB<<20/512-1); !strings.Contains(rc, want) {
		t.Fatalf("a new session's READ CAPACITY(16) does not report %d MiB:\n%s", newMiB, rc)
	}
}

// TestBackingFileGrowsLive: a backing file grown with truncate under the
// running daemon: an initiator with a session open sees CAPACITY DATA HAS
// CHANGED and the new capacity, and writes past the old end, without a
// restart; the volume keeps the size and the data across one. A file
// shrunk below its volume is reported in `volume show` and changes
// nothing.
func TestBackingFileGrowsLive(t *testing.T) {
	needTools(t, "qemu-io", "iscsi-readcapacity16")
	dir := t.TempDir()
	cfg := writeConfig(t, dir, configOptions{lunSize: "32MiB"})
	cfgText, _ := os.ReadFile(cfg)
	os.WriteFile(cfg, []byte(strings.Replace(string(cfgText), `admin_socket = "off"`, `admin_socket = "admin.sock"`, 1)), 0o644)
	d := startDaemon(t, dir, cfg)
	url := d.url(0)
	s := startQemuSession(t, url)
	s.do("write -P 0x11 0 64k", "wrote 65536/65536 bytes at offset 0")
	s.do("length", "32 MiB")

	if err := os.Truncate(filepath.Join(dir, "thick.img"), 48<<20); err != nil {
		t.Fatal(err)
	}
	d.waitLog("backing device grew", 1)
	growthSeen(t, s, url, 32, 48)

	if err := os.Truncate(filepath.Join(dir, "thick.img"), 40<<20); err != nil {
		t.Fatal(err)
	}
	d.waitLog("backing device shrank below its volume", 1)
	r := runTool(t, toolTimeout, binaryPath, "volume", "show", "thick", "--socket", filepath.Join(dir, "admin.sock"))
	if r.exitCode != 0 || !strings.Contains(r.out, "SHRUNK") {
		t.Fatalf("volume show does not report the shrunk backing:\n%s", r.out)
	}
	s.do("length", "48 MiB")
	if err := os.Truncate(filepath.Join(dir, "thick.img"), 48<<20); err != nil {
		t.Fatal(err)
	}
	d.waitLog("backing device is back to at least its volume's size", 1)
	if _, err := fmt.Fprintln(s.stdin, "quit"); err != nil {
		t.Fatal(err)
	}
	<-s.done
	t.Logf("qemu-io session:\n%s", s.out)

	d.stop()
	d.start()
	url = d.url(0)
	if rc := mustRun(t, toolTimeout, "iscsi-readcapacity16", url); !strings.Contains(rc, "RETURNED LOGICAL BLOCK ADDRESS:98303") {
		t.Fatalf("after a restart the LUN is not 48 MiB:\n%s", rc)
	}
	qemuIO(t, url, "read -P 0x22 47M 1M", "read -P 0x11 0 64k")
	d.stop()
}
