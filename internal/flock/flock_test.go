package flock

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestHelperHold is not a test: run as a child process by the tests below,
// it claims the file named by FLOCK_TEST_HOLD, says "held" and waits for
// its stdin to close.
func TestHelperHold(t *testing.T) {
	path := os.Getenv("FLOCK_TEST_HOLD")
	if path == "" {
		t.Skip("helper process only")
	}
	mode := Exclusive
	if os.Getenv("FLOCK_TEST_SHARED") != "" {
		mode = Shared
	}
	f, err := OpenLocked(path, os.O_RDWR|os.O_CREATE, 0o600, mode, "test file")
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	defer f.Close()
	fmt.Println("held")
	buf := make([]byte, 1)
	os.Stdin.Read(buf)
}

// holdInChild claims path in a child process until the test ends; it
// returns the child's pid.
func holdInChild(t *testing.T, path string, shared bool) int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperHold$")
	cmd.Env = append(os.Environ(), "FLOCK_TEST_HOLD="+path)
	if shared {
		cmd.Env = append(cmd.Env, "FLOCK_TEST_SHARED=1")
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "held" {
		t.Fatalf("helper: %q, %v", line, err)
	}
	return cmd.Process.Pid
}

func TestSecondProcessRefusedWithPid(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cache.img")
	pid := holdInChild(t, path, false)
	for _, mode := range []Mode{Exclusive, Shared} {
		_, err := OpenLocked(path, os.O_RDWR, 0, mode, "cache file")
		if !errors.Is(err, ErrLocked) {
			t.Fatalf("mode %d: got %v, want ErrLocked", mode, err)
		}
		for _, want := range []string{"cache file " + path, "pid " + strconv.Itoa(pid)} {
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("mode %d: %q does not name %q", mode, err, want)
			}
		}
	}
}

func TestSharedClaimsCoexistButExcludeExclusive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cache.img")
	pid := holdInChild(t, path, true)
	f, err := OpenLocked(path, os.O_RDONLY, 0, Shared, "cache file")
	if err != nil {
		t.Fatalf("second shared claim: %v", err)
	}
	defer f.Close()
	_, err = OpenLocked(path, os.O_RDWR, 0, Exclusive, "cache file")
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(pid)) {
		t.Fatalf("exclusive claim under shared ones: %v", err)
	}
}

// flock locks belong to the open file description: a second open in the
// same process is refused too.
func TestSecondOpenInSameProcessRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	f, err := OpenLocked(path, os.O_RDWR|os.O_CREATE, 0o600, Exclusive, "cache file")
	if err != nil {
		t.Fatal(err)
	}
	_, err = OpenLocked(path, os.O_RDWR, 0, Exclusive, "cache file")
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second open: %v", err)
	}
	f.Close()
	g, err := OpenLocked(path, os.O_RDWR, 0, Exclusive, "cache file")
	if err != nil {
		t.Fatalf("after close: %v", err)
	}
	g.Close()
}

// A claim taken on a file its holder then unlinked is not kept: OpenLocked
// follows the path to the new file.
func TestOpenLockedFollowsReplacedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "intent")
	old, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	f, err := OpenLocked(path, os.O_RDWR|os.O_CREATE, 0o600, Exclusive, "intent log")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if same, err := namesInode(f, path); err != nil || !same {
		t.Fatalf("claimed inode is not the path's: %v %v", same, err)
	}
}

func TestLockFileHoldsPidAndStays(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cachelun.lock")
	l, err := CreateLockFile(path, "data dir lock")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(os.Getpid()) {
		t.Fatalf("lock file holds %q (%v)", b, err)
	}
	if _, err := CreateLockFile(path, "data dir lock"); !errors.Is(err, ErrLocked) {
		t.Fatalf("second claim: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("lock file removed: %v", err)
	}
	l2, err := CreateLockFile(path, "data dir lock")
	if err != nil {
		t.Fatal(err)
	}
	l2.Close()
}

func TestHolderInParsesProcLocks(t *testing.T) {
	const locks = `1: POSIX  ADVISORY  WRITE 15716 fe:00:9978053 0 EOF
2: FLOCK  ADVISORY  WRITE 77 fe:00:9978053 0 EOF
3: -> FLOCK  ADVISORY  WRITE 88 103:02:42 0 EOF
4: FLOCK  ADVISORY  READ 99 103:02:42 0 EOF
5: FLOCK  ADVISORY  READ 5 103:02:42 0 EOF
`
	scan := func() *bufio.Scanner { return bufio.NewScanner(strings.NewReader(locks)) }
	if pid, ok := holderIn(scan(), 0xfe, 0, 9978053, 1); !ok || pid != 77 {
		t.Fatalf("fe:00:9978053: %d %v", pid, ok)
	}
	if pid, ok := holderIn(scan(), 0x103, 2, 42, 99); !ok || pid != 5 {
		t.Fatalf("103:02:42 seen by 99: %d %v", pid, ok)
	}
	if _, ok := holderIn(scan(), 0xfe, 0, 1, 1); ok {
		t.Fatal("holder of an unlocked inode")
	}
}
