package main

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cachelun/cachelun/persist/persisttest"
)

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

// format of a file larger than the free space is refused with the figures
// and leaves nothing (daemon: so is a start whose cache files do not fit).
func TestFormatRefusedWithoutSpace(t *testing.T) {
	dir := persisttest.MountSmall(t, "8m")
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
	// the embedded default configuration, its listeners moved off the
	// shared ports
	serveInBackground(t, "--data-dir", dir, "--listen", "127.0.0.1:0", "--metrics", "off")
	pid := "pid " + strconv.Itoa(os.Getpid())
	intents, _ := filepath.Glob(filepath.Join(runtimeDir, "*.intent"))
	if len(intents) != 1 {
		t.Fatalf("intent logs of the daemon: %v", intents)
	}
	intent, err := os.Stat(intents[0])
	if err != nil {
		t.Fatal(err)
	}
	cache := filepath.Join(dir, "demo-cache.img")
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
	// the daemon's intent log stays its own, untouched
	if now, err := os.Stat(intents[0]); err != nil || now.Size() != intent.Size() || !now.ModTime().Equal(intent.ModTime()) {
		t.Errorf("the offline commands touched the daemon's intent log: %v", err)
	}
}
