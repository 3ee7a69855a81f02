package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// snapshotDir records the names, sizes and modification times of the
// files under dir.
func snapshotDir(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		out[p] = fmt.Sprintf("%v %d %d", fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameSnapshot(t *testing.T, what string, before, after map[string]string) {
	t.Helper()
	for p, b := range before {
		if a, ok := after[p]; !ok {
			t.Errorf("%s: %s removed", what, p)
		} else if a != b {
			t.Errorf("%s: %s changed: %s -> %s", what, p, b, a)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s: %s created", what, p)
		}
	}
}

// SIGTERM (a cancelled context) while a cache file is created stops the
// start, and no cache file is left under any name.
func TestServeCancelledDuringCreation(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out, errb lockedBuffer
	code := runServe(ctx, []string{"--data-dir", dir, "--listen", "127.0.0.1:0"}, &out, &errb)
	if code == 0 || !strings.Contains(errb.String(), "context canceled") {
		t.Fatalf("exit %d:\n%s", code, errb.String())
	}
	names, _ := filepath.Glob(filepath.Join(dir, "demo-cache.img*"))
	if len(names) != 0 {
		t.Fatalf("cancelled creation left %v", names)
	}
}

// mountSmall mounts a tmpfs of size for the test (root only).
func mountSmall(t *testing.T, size string) string {
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

// format of a file larger than the free space is refused with the figures
// and leaves nothing (daemon: so is a start whose cache files do not fit).
func TestFormatRefusedWithoutSpace(t *testing.T) {
	dir := mountSmall(t, "8m")
	path := filepath.Join(dir, "cache.img")
	code, _, errs := run(t, "format", "--size", "10TiB", path)
	if code != 2 || !strings.Contains(errs, "needs 10.0 TiB, the file system of "+dir+" has 8.0 MiB free") {
		t.Fatalf("format --size 10TiB on 8 MiB: exit %d, %q", code, errs)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("refused format left %v", ents)
	}

}

// format cancelled (SIGTERM) during its zero fill leaves no file.
func TestFormatCancelledLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cache.img")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out, errb lockedBuffer
	code := runFormat(ctx, []string{"--size", "64MiB", "--segment-size", "1MiB", path}, &out, &errb)
	if code == 0 || !strings.Contains(errb.String(), "context canceled") {
		t.Fatalf("cancelled format: exit %d, %q", code, errb.String())
	}
	if names, _ := filepath.Glob(filepath.Join(dir, "*")); len(names) != 0 {
		t.Fatalf("cancelled format left %v", names)
	}
}

// A format that grows an existing file and then fails gives the space
// back: the file keeps its old size.
func TestFailedFormatShrinksBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.img")
	if err := os.WriteFile(path, make([]byte, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errs := run(t, "format", "--size", "64MiB", "--segment-size", "1MiB", "--block-size", "1000", path)
	if code != 2 || !strings.Contains(errs, "block size 1000") {
		t.Fatalf("format with a bad block size: exit %d, %q", code, errs)
	}
	if st, err := os.Stat(path); err != nil || st.Size() != 4<<20 {
		t.Fatalf("after the failed format: %v %v", st.Size(), err)
	}
}

// The offline commands (format, check, inspect) refuse a cache file a
// running daemon holds, naming the holder's pid, and touch nothing of it.
func TestOfflineCommandsRefuseHeldFile(t *testing.T) {
	runtimeDir := t.TempDir()
	t.Setenv("RUNTIME_DIRECTORY", runtimeDir)
	dir := t.TempDir()
	config := filepath.Join(dir, "c.toml")
	if err := os.WriteFile(config, []byte(`
[global]
admin_socket = "off"
metrics_listen = "off"

[[cache]]
name = "c0"
path = "cache.img"
size = "16MiB"
segment_size = "1MiB"

[[volume]]
name = "v0"
cache = "c0"
backing = "v0.img"
backing_size = "8MiB"

[[target]]
iqn = "iqn.2026-11.io.cachelun:unit"
portals = ["127.0.0.1:3260"]

[[target.lun]]
lun = 0
volume = "v0"
`), 0o644); err != nil {
		t.Fatal(err)
	}
	serveInBackground(t, "--config", config, "--data-dir", dir, "--listen", "127.0.0.1:0")
	pid := "pid " + strconv.Itoa(os.Getpid())
	beforeRun := snapshotDir(t, runtimeDir)
	cache := filepath.Join(dir, "cache.img")
	for _, args := range [][]string{
		{"format", "--force", "--segment-size", "1MiB", cache},
		{"format", "--segment-size", "1MiB", cache},
		{"check", cache},
		{"inspect", cache},
	} {
		code, _, errs := run(t, args...)
		if code == 0 || !strings.Contains(errs, "in use by another process ("+pid) {
			t.Errorf("%q on a held file: exit %d, %q", args, code, errs)
		}
	}
	sameSnapshot(t, "offline commands, runtime dir", beforeRun, snapshotDir(t, runtimeDir))
}
