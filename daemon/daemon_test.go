package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cachelun/cachelun/conf"
	"github.com/cachelun/cachelun/persist"
	"github.com/cachelun/cachelun/target/tcmu"
)

func testConfig(t *testing.T, dir, mode string) *conf.Config {
	t.Helper()
	src := fmt.Sprintf(`
[global]
data_dir = %q
admin_socket = "admin.sock"
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
mode = %q

[[target]]
iqn = "iqn.2026-11.io.cachelun:unit"
portals = ["127.0.0.1:3260"]

[[target.lun]]
lun = 3
volume = "v0"
`, dir, mode)
	p := filepath.Join(dir, "c.toml")
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	// port 0 is only allowed through --listen
	cfg, err := LoadConfig(p, "", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// The daemon started in-process serves the configured LUN, reports its
// URL with the real port, and keeps written data across a shutdown and a
// new start on the same data directory.
func TestDaemonStartStopKeepsData(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	d, err := startDaemon(ctx, testConfig(t, dir, "writeback"), "127.0.0.1:0", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	urls := d.lunURLs()
	if len(urls) != 1 || !strings.HasSuffix(urls[0].url, "/iqn.2026-11.io.cachelun:unit/3") ||
		strings.Contains(urls[0].url, ":0/") || urls[0].mode != "writeback" {
		t.Fatalf("lun URLs %+v", urls)
	}
	vol, ok := d.eng.volume("v0")
	if !ok {
		t.Fatal("volume v0 not open")
	}
	data := bytes.Repeat([]byte{0x5c}, 64<<10)
	if err := vol.WriteAt(ctx, data, 1<<20, false); err != nil {
		t.Fatal(err)
	}
	if err := vol.WriteAt(ctx, data[:4096], 8<<20-4096, true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "admin.sock")); err != nil {
		t.Errorf("admin socket not created under the data dir: %v", err)
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := d.shutdown(sctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}

	d2, err := startDaemon(ctx, testConfig(t, dir, "writeback"), "127.0.0.1:0", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer d2.shutdown(context.Background())
	vol2, _ := d2.eng.volume("v0")
	got := make([]byte, len(data))
	if err := vol2.ReadAt(ctx, got, 1<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("data lost across restart")
	}
	if err := vol2.ReadAt(ctx, got[:4096], 8<<20-4096); err != nil || !bytes.Equal(got[:4096], data[:4096]) {
		t.Fatalf("last block lost across restart: %v", err)
	}
	if vol2.Size() != 8<<20 || vol2.BlockSize() != 512 {
		t.Errorf("size %d block %d", vol2.Size(), vol2.BlockSize())
	}
}

// A start that fails half way (the portal is taken) releases everything
// it opened, so a second start on the same directory works.
func TestDaemonFailedStartCleansUp(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	first, err := startDaemon(ctx, testConfig(t, dir, "writethrough"), "127.0.0.1:0", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	taken := first.portalAddr["127.0.0.1:0"]
	cfg := testConfig(t, t.TempDir(), "writethrough")
	cfg.Targets[0].Portals = []string{taken}
	if _, err := startDaemon(ctx, cfg, "", testLogger(t)); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("start on a taken portal: %v", err)
	}
	if err := first.shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	again, err := startDaemon(ctx, cfg, "", testLogger(t))
	if err != nil {
		t.Fatalf("start after a failed start: %v", err)
	}
	if err := again.shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestLoadServeConfigOverrides(t *testing.T) {
	cfg, err := LoadConfig("", "rel-dir", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(cfg.Global.DataDir) || filepath.Base(cfg.Global.DataDir) != "rel-dir" {
		t.Errorf("data dir %q", cfg.Global.DataDir)
	}
	if cfg.Targets[0].IQN != conf.DemoIQN || cfg.Targets[0].Portals[0] != "127.0.0.1:0" {
		t.Errorf("demo target %+v", cfg.Targets[0])
	}
	for _, bad := range []string{"localhost:3260", "127.0.0.1", "127.0.0.1:99999"} {
		if _, err := LoadConfig("", "", bad); err == nil {
			t.Errorf("--listen %q accepted", bad)
		}
	}
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "missing.toml"), "", ""); err == nil {
		t.Error("missing config file accepted")
	}
}

// The TCMU front end resolves a cfgstring to a volume it may export, once
// at a time, and refuses unknown, iSCSI-exported and too-small requests
// with the errors that pick the configfs writer's errno.
func TestTCMUResolve(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir, "writeback")
	more, err := conf.Parse("more.toml", []byte(fmt.Sprintf(`
[global]
data_dir = %q
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
[[volume]]
name = "lio"
cache = "c0"
backing = "lio.img"
backing_size = "4MiB"
[[target]]
iqn = "iqn.2026-11.io.cachelun:unit"
portals = ["127.0.0.1:3260"]
[[target.lun]]
lun = 0
volume = "v0"
`, dir)))
	if err != nil {
		t.Fatal(err)
	}
	more.Targets[0].Portals = cfg.Targets[0].Portals
	d, err := startDaemon(context.Background(), more, "127.0.0.1:0", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer d.shutdown(context.Background())
	x := &tcmuExports{d: d, allowed: map[string]bool{}, inUse: map[string]bool{}}
	for _, n := range more.TCMUVolumes() {
		x.allowed[n] = true
	}
	if _, err := x.resolve("v0", 0); !errors.Is(err, tcmu.ErrUnknownVolume) {
		t.Errorf("iSCSI-exported volume: %v", err)
	}
	if _, err := x.resolve("nope", 0); !errors.Is(err, tcmu.ErrUnknownVolume) {
		t.Errorf("unknown volume: %v", err)
	}
	if _, err := x.resolve("lio", 8<<20); !errors.Is(err, tcmu.ErrVolumeTooSmall) {
		t.Errorf("device larger than the volume: %v", err)
	}
	v, err := x.resolve(" lio ", 4<<20)
	if err != nil || v.Size() != 4<<20 {
		t.Fatalf("resolve lio: %v", err)
	}
	if _, err := x.resolve("lio", 0); !errors.Is(err, tcmu.ErrVolumeInUse) {
		t.Errorf("second device on one volume: %v", err)
	}
	x.release("lio", v)
	if _, err := x.resolve("lio", 0); err != nil {
		t.Errorf("after release: %v", err)
	}
	if x.check("lio") != nil || x.check("v0") == nil {
		t.Errorf("check: lio=%v v0=%v", x.check("lio"), x.check("v0"))
	}
}

// A cache file is created under a temporary name, zero-filled and
// formatted, then renamed into place: what a crash during an earlier
// creation left behind is discarded, and the created file has every block
// written (zero_fill) or only reserved (zero_fill = false).
func TestDaemonCreatesCacheFile(t *testing.T) {
	for _, zeroFill := range []bool{true, false} {
		t.Run(fmt.Sprintf("zero_fill=%v", zeroFill), func(t *testing.T) {
			dir := t.TempDir()
			ctx := context.Background()
			path := filepath.Join(dir, "cache.img")
			// An unformatted file a crash left half created.
			if err := os.WriteFile(path+persist.CreatingSuffix, []byte("half created"), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg := testConfig(t, dir, "writeback")
			cfg.Caches[0].ZeroFill = &zeroFill
			d, err := startDaemon(ctx, cfg, "127.0.0.1:0", testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			defer d.shutdown(ctx)
			if _, err := os.Stat(path + persist.CreatingSuffix); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("temporary file left after the creation: %v", err)
			}
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			st, err := f.Stat()
			if err != nil {
				t.Fatal(err)
			}
			const seekHole = 4
			hole, err := f.Seek(0, seekHole)
			if err != nil {
				t.Fatal(err)
			}
			if zeroFill && hole != st.Size() {
				t.Fatalf("first hole at %d of %d bytes: the cache file was not zero-filled", hole, st.Size())
			}
			if !zeroFill && hole == st.Size() {
				// ext4 reports reserved (unwritten) blocks as a hole; only a
				// file system without unwritten extents gets here.
				t.Logf("%s shows no hole in a reserved file", dir)
			}
			vol, ok := d.eng.volume("v0")
			if !ok {
				t.Fatal("volume v0 not open")
			}
			data := bytes.Repeat([]byte{0x3c}, 8192)
			if err := vol.WriteAt(ctx, data, 0, true); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// startDaemon starts a daemon as serve does, with listenOverride as
// --listen.
func startDaemon(ctx context.Context, cfg *conf.Config, listenOverride string, log *slog.Logger) (*Daemon, error) {
	return start(ctx, cfg, Options{Logger: log, ListenOverride: listenOverride})
}
