package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cachelun/cachelun/internal/flock"
	"github.com/cachelun/cachelun/persist"
	"github.com/cachelun/cachelun/persist/persisttest"
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

// A second daemon, on the same data dir or on another one naming the same
// cache file, is refused at once with the path and the holder's pid; it
// creates, changes and removes nothing, so the first keeps its intent log
// and admin socket and goes on serving.
func TestSecondDaemonRefused(t *testing.T) {
	runtimeDir := t.TempDir()
	t.Setenv("RUNTIME_DIRECTORY", runtimeDir)
	dir := t.TempDir()
	ctx := context.Background()
	a, err := startDaemon(ctx, testConfig(t, dir, "writeback"), "127.0.0.1:0", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer a.shutdown(ctx)
	vol, _ := a.eng.volume("v0")
	if err := vol.WriteAt(ctx, make([]byte, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	intents, _ := filepath.Glob(filepath.Join(runtimeDir, "*.intent"))
	if len(intents) != 1 {
		t.Fatalf("intent logs of the first daemon: %v", intents)
	}
	pid := "pid " + strconv.Itoa(os.Getpid())

	before := snapshotDir(t, dir)
	beforeRun := snapshotDir(t, runtimeDir)
	_, err = startDaemon(ctx, testConfig(t, dir, "writeback"), "127.0.0.1:0", testLogger(t))
	if !errors.Is(err, flock.ErrLocked) || !strings.Contains(err.Error(), filepath.Join(dir, dataDirLockName)) || !strings.Contains(err.Error(), pid) {
		t.Fatalf("second daemon on the same data dir: %v", err)
	}
	// testConfig rewrote c.toml with the same text; nothing else may move
	delete(before, filepath.Join(dir, "c.toml"))
	after := snapshotDir(t, dir)
	delete(after, filepath.Join(dir, "c.toml"))
	sameSnapshot(t, "same data dir", before, after)
	sameSnapshot(t, "same data dir, runtime dir", beforeRun, snapshotDir(t, runtimeDir))

	// Another data dir whose configuration names the first one's cache
	// file: refused at the cache file.
	dir2 := t.TempDir()
	cfg2 := testConfig(t, dir2, "writeback")
	cfg2.Caches[0].Path = filepath.Join(dir, "cache.img")
	before = snapshotDir(t, dir)
	_, err = startDaemon(ctx, cfg2, "127.0.0.1:0", testLogger(t))
	if !errors.Is(err, flock.ErrLocked) || !strings.Contains(err.Error(), "cache file "+filepath.Join(dir, "cache.img")) || !strings.Contains(err.Error(), pid) {
		t.Fatalf("second daemon on the same cache file: %v", err)
	}
	sameSnapshot(t, "same cache file", before, snapshotDir(t, dir))
	sameSnapshot(t, "same cache file, runtime dir", beforeRun, snapshotDir(t, runtimeDir))

	// And one naming its backing file.
	dir3 := t.TempDir()
	cfg3 := testConfig(t, dir3, "writeback")
	cfg3.Volumes[0].Backing = filepath.Join(dir, "v0.img")
	_, err = startDaemon(ctx, cfg3, "127.0.0.1:0", testLogger(t))
	if !errors.Is(err, flock.ErrLocked) || !strings.Contains(err.Error(), "backing file "+filepath.Join(dir, "v0.img")) || !strings.Contains(err.Error(), pid) {
		t.Fatalf("second daemon on the same backing file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir3, "cache.img")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("refused daemon created its cache file: %v", err)
	}
	sameSnapshot(t, "same backing, runtime dir", beforeRun, snapshotDir(t, runtimeDir))

	// the first daemon still serves
	if err := vol.WriteAt(ctx, make([]byte, 4096), 4096, true); err != nil {
		t.Fatalf("first daemon after the refusals: %v", err)
	}

	// (cmd/cachelun: the offline commands refuse the file it holds)
}

// A start whose backing file is missing is refused before its cache file
// is created (and zero-filled for nothing).
func TestServeMissingBackingCreatesNoCache(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir, "writeback")
	cfg.Volumes[0].BackingSize.Bytes = 0
	_, err := startDaemon(context.Background(), cfg, "127.0.0.1:0", testLogger(t))
	if err == nil || !strings.Contains(err.Error(), "v0.img does not exist") {
		t.Fatalf("start without its backing file: %v", err)
	}
	for _, name := range []string{"cache.img", "cache.img" + persist.CreatingSuffix} {
		if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// A reload that adds a cache and a volume whose backing file is missing is
// refused before the new cache file is created.
func TestReloadMissingBackingCreatesNoCache(t *testing.T) {
	d, p := startReloadDaemon(t)
	dir := filepath.Dir(p)
	writeFile(t, p, reloadConfig(dir, "info", "writeback", false, `
[[cache]]
name = "c9"
path = "c9.img"
size = "16MiB"
segment_size = "1MiB"

[[volume]]
name = "v9"
cache = "c9"
backing = "v9.img"
`))
	_, err := d.reload(context.Background(), false)
	if err == nil || !strings.Contains(err.Error(), "v9.img does not exist") {
		t.Fatalf("reload with a missing backing file: %v", err)
	}
	if names, _ := filepath.Glob(filepath.Join(dir, "c9.img*")); len(names) != 0 {
		t.Fatalf("refused reload created %v", names)
	}
}

// A copy of a running daemon's cache file (same UUID, so the same intent
// log name) is refused at its intent log, which stays the first daemon's.
func TestCopiedCacheRefusedAtIntentLog(t *testing.T) {
	runtimeDir := t.TempDir()
	t.Setenv("RUNTIME_DIRECTORY", runtimeDir)
	dir := t.TempDir()
	ctx := context.Background()
	a, err := startDaemon(ctx, testConfig(t, dir, "writeback"), "127.0.0.1:0", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer a.shutdown(ctx)
	intents, _ := filepath.Glob(filepath.Join(runtimeDir, "*.intent"))
	if len(intents) != 1 {
		t.Fatalf("intent logs: %v", intents)
	}
	before := snapshotDir(t, runtimeDir)
	dir2 := t.TempDir()
	img, err := os.ReadFile(filepath.Join(dir, "cache.img"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir2, "cache.img"), img, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = startDaemon(ctx, testConfig(t, dir2, "writeback"), "127.0.0.1:0", testLogger(t))
	if !errors.Is(err, flock.ErrLocked) || !strings.Contains(err.Error(), "intent log "+intents[0]) {
		t.Fatalf("daemon on a copy of a running cache: %v", err)
	}
	sameSnapshot(t, "runtime dir", before, snapshotDir(t, runtimeDir))
}

// Two daemons of different data dirs configured with one admin socket
// path: the second is refused before it opens anything, and the first's
// socket stays in place.
func TestSharedAdminSocketRefused(t *testing.T) {
	t.Setenv("RUNTIME_DIRECTORY", t.TempDir())
	sockDir := t.TempDir()
	sock := filepath.Join(sockDir, "admin.sock")
	ctx := context.Background()
	cfgA := testConfig(t, t.TempDir(), "writeback")
	cfgA.Global.AdminSocket = sock
	a, err := startDaemon(ctx, cfgA, "127.0.0.1:0", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer a.shutdown(ctx)
	var before unix.Stat_t
	if err := unix.Stat(sock, &before); err != nil {
		t.Fatal(err)
	}
	dirB := t.TempDir()
	cfgB := testConfig(t, dirB, "writeback")
	cfgB.Global.AdminSocket = sock
	_, err = startDaemon(ctx, cfgB, "127.0.0.1:0", testLogger(t))
	if !errors.Is(err, flock.ErrLocked) || !strings.Contains(err.Error(), sock) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second daemon on the same admin socket: %v", err)
	}
	if names, _ := filepath.Glob(filepath.Join(dirB, "*.img")); len(names) != 0 {
		t.Errorf("refused daemon created %v", names)
	}
	var after unix.Stat_t
	if err := unix.Stat(sock, &after); err != nil || after.Ino != before.Ino {
		t.Fatalf("the first daemon's admin socket was replaced or removed (%v)", err)
	}
}

// A start whose cache files do not fit in the free space is refused with
// the figures and leaves nothing.
func TestStartRefusedWithoutSpace(t *testing.T) {
	dir := persisttest.MountSmall(t, "8m")
	cfg := testConfig(t, t.TempDir(), "writeback")
	cfg.Caches[0].Path = filepath.Join(dir, "cache.img")
	_, err := startDaemon(context.Background(), cfg, "127.0.0.1:0", testLogger(t))
	if !errors.Is(err, persist.ErrNoSpace) || !strings.Contains(err.Error(), "has 8MiB free") {
		t.Fatalf("start with a 16 MiB cache on 8 MiB: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("refused start left %v", ents)
	}
}
