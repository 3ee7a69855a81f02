//go:build linux

package persist

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cachelun/cachelun/internal/flock"
)

// A cache file one open holds is refused to every other open, read-only
// included, with the path and the holder's pid; the holder's file is not
// touched (a second open with Create and another size must not resize it).
func TestOpenFileRefusesHeldFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cache.img")
	m, err := OpenFile(path, FileOptions{Create: true, Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, opts := range []FileOptions{{}, {ReadOnly: true}, {Create: true, Size: 2 << 20}} {
		_, err := OpenFile(path, opts)
		if !errors.Is(err, flock.ErrLocked) {
			t.Fatalf("%+v: %v, want flock.ErrLocked", opts, err)
		}
		for _, want := range []string{path, "pid " + strconv.Itoa(os.Getpid())} {
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("%+v: %q does not name %q", opts, err, want)
			}
		}
	}
	if st, err := os.Stat(path); err != nil || st.Size() != 1<<20 {
		t.Fatalf("held file changed: %v %v", st.Size(), err)
	}
	if _, _, err := CreateFile(context.Background(), path, FileOptions{Size: 1 << 20}); err == nil {
		t.Fatal("CreateFile over an existing file")
	}
}

// Read-only opens share the file; a writer is refused while they hold it.
func TestReadOnlyOpensShare(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cache.img")
	if err := os.WriteFile(path, make([]byte, 1<<16), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := OpenFile(path, FileOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := OpenFile(path, FileOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("second read-only open: %v", err)
	}
	defer b.Close()
	if _, err := OpenFile(path, FileOptions{}); !errors.Is(err, flock.ErrLocked) {
		t.Fatalf("writer under readers: %v", err)
	}
}

// smallFS mounts a tmpfs of size bytes for the test (root only).
func smallFS(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// listDir names the files in dir.
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// A file larger than the free space is refused before anything is
// written, with the figures, and leaves no file under any name.
func TestCreateRefusedWithoutSpace(t *testing.T) {
	dir := smallFS(t, "8m")
	path := filepath.Join(dir, "cache.img")
	for name, open := range map[string]func() (Media, error){
		"OpenFile": func() (Media, error) {
			return OpenFile(path, FileOptions{Create: true, Size: 64 << 20, ZeroFill: true})
		},
		"CreateFile": func() (Media, error) {
			m, _, err := CreateFile(context.Background(), path, FileOptions{Size: 64 << 20, ZeroFill: true})
			return m, err
		},
	} {
		m, err := open()
		if err == nil {
			m.Close()
			t.Fatalf("%s: 64 MiB created on an 8 MiB file system", name)
		}
		if !errors.Is(err, ErrNoSpace) {
			t.Fatalf("%s: %v, want ErrNoSpace", name, err)
		}
		for _, want := range []string{"needs 64.0 MiB", "the file system of " + dir + " has 8.0 MiB free"} {
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("%s: %q does not say %q", name, err, want)
			}
		}
		if names := listDir(t, dir); len(names) != 0 {
			t.Fatalf("%s left %v", name, names)
		}
	}
}

// A grown file that cannot be reserved is cut back to its old size.
func TestGrowRefusedKeepsOldSize(t *testing.T) {
	dir := smallFS(t, "8m")
	path := filepath.Join(dir, "cache.img")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenFile(path, FileOptions{Create: true, Size: 64 << 20}); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("grow: %v", err)
	}
	if st, err := os.Stat(path); err != nil || st.Size() != 1<<20 {
		t.Fatalf("after a refused grow: %v %v", st.Size(), err)
	}
}

// cancelAfter is a context whose Err turns to context.Canceled at its
// n-th call: a cancellation that arrives in the middle of a zero fill,
// whatever the disk's speed.
type cancelAfter struct {
	context.Context
	n atomic.Int32
}

func (c *cancelAfter) Err() error {
	if c.n.Add(-1) <= 0 {
		return context.Canceled
	}
	return nil
}

// A creation cancelled during its zero fill stops and leaves no file,
// under the final or the temporary name; so does OpenFile's.
func TestCreateCancelledDuringZeroFill(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cache.img")
	ctx := &cancelAfter{Context: context.Background()}
	ctx.n.Store(3)
	if _, _, err := CreateFile(ctx, path, FileOptions{Size: 64 << 20, ZeroFill: true}); !errors.Is(err, context.Canceled) {
		t.Fatalf("CreateFile: %v, want context.Canceled", err)
	}
	if names := listDir(t, dir); len(names) != 0 {
		t.Fatalf("cancelled creation left %v", names)
	}
	ctx.n.Store(3)
	if _, err := OpenFileContext(ctx, path, FileOptions{Create: true, Size: 64 << 20, ZeroFill: true}); !errors.Is(err, context.Canceled) {
		t.Fatalf("OpenFileContext: %v, want context.Canceled", err)
	}
	if names := listDir(t, dir); len(names) != 0 {
		t.Fatalf("cancelled creation left %v", names)
	}
}

// A real cancellation reaches a large zero fill within a second.
func TestZeroFillCancelledWithinASecond(t *testing.T) {
	dir := t.TempDir()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil || int64(st.Bavail)*int64(st.Bsize) < 16<<30 {
		t.Skipf("needs 16 GiB free in %s for a zero fill that outlasts the cancellation", dir)
	}
	path := filepath.Join(dir, "cache.img")
	ctx, cancel := context.WithCancel(context.Background())
	var cancelled atomic.Int64
	go func() {
		time.Sleep(200 * time.Millisecond)
		cancelled.Store(time.Now().UnixNano())
		cancel()
	}()
	m, _, err := CreateFile(ctx, path, FileOptions{Size: 8 << 30, ZeroFill: true})
	if err == nil {
		m.Close()
		t.Skip("8 GiB zero-filled in 200 ms: too fast to cancel")
	}
	took := time.Since(time.Unix(0, cancelled.Load()))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("%v, want context.Canceled", err)
	}
	if took > time.Second {
		t.Fatalf("returned %v after the cancellation", took)
	}
	if names := listDir(t, dir); len(names) != 0 {
		t.Fatalf("cancelled creation left %v", names)
	}
}

// CreateFile builds under the temporary name, refuses a temporary file
// another process is building, reuses one a crash left, and renames only
// at commit; an uncommitted file is removed at Close.
func TestCreateFileTemporaryName(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cache.img")
	tmp := path + CreatingSuffix
	if err := os.WriteFile(tmp, []byte("left by a crash"), 0o600); err != nil {
		t.Fatal(err)
	}
	m, commit, err := CreateFile(context.Background(), path, FileOptions{Size: MinMediaSize(minSegmentSize), ZeroFill: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := CreateFile(context.Background(), path, FileOptions{Size: 1 << 20}); !errors.Is(err, flock.ErrLocked) {
		t.Fatalf("second creation: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("final name exists before commit: %v", err)
	}
	if _, err := Format(m, FormatOptions{SegmentSize: minSegmentSize}); err != nil {
		t.Fatal(err)
	}
	if err := commit(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if names := listDir(t, dir); len(names) != 1 || names[0] != "cache.img" {
		t.Fatalf("after commit: %v", names)
	}
	m2, err := OpenFile(path, FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(m2); err != nil {
		t.Fatalf("committed file does not open: %v", err)
	}
	m2.Close()

	other := filepath.Join(dir, "other.img")
	m3, _, err := CreateFile(context.Background(), other, FileOptions{Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	m3.Close()
	if names := listDir(t, dir); len(names) != 1 {
		t.Fatalf("uncommitted creation left %v", names)
	}
}

func TestMinMediaSizeHoldsAnEngine(t *testing.T) {
	for _, ss := range []uint32{0, minSegmentSize} {
		n := MinMediaSize(ss)
		m := NewCrashMedia(n, TearPage)
		s, err := Format(m, FormatOptions{SegmentSize: ss})
		if err != nil {
			t.Fatalf("segment size %d: %v", ss, err)
		}
		if got := s.Superblock().SegmentCount; got != 3 {
			t.Fatalf("segment size %d: %d segments", ss, got)
		}
	}
}
