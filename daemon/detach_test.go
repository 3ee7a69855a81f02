package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cachelun/cachelun/admin"
	"github.com/cachelun/cachelun/admin/admintest"
	"github.com/cachelun/cachelun/admin/cli"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/persist"
)

// faultyMedia fails every write and persist once armed, as a dying cache
// device does.
type faultyMedia struct {
	persist.Media
	armed atomic.Bool
}

func (m *faultyMedia) WriteAt(p []byte, off int64) error {
	if m.armed.Load() {
		return fmt.Errorf("%w: injected write error", persist.ErrMediaFault)
	}
	return m.Media.WriteAt(p, off)
}

func (m *faultyMedia) Persist(off, n int64) error {
	if m.armed.Load() {
		return fmt.Errorf("%w: injected persist error", persist.ErrMediaFault)
	}
	return m.Media.Persist(off, n)
}

// failingCacheConfig adds cache c1 (writeback held back so written data
// stays dirty) with volume v9 on it.
const failingCacheConfig = `
[[cache]]
name = "c1"
path = "c1.img"
size = "16MiB"
segment_size = "1MiB"

[cache.writeback]
target_dirty_percent = 90
high_watermark_percent = 95
idle_after = "1h"

[[volume]]
name = "v9"
cache = "c1"
backing = "v9.img"
backing_size = "4MiB"
`

// startFailingCache runs the reload test daemon with cache c1 on media
// the test can break, and dirty data on its volume v9.
func startFailingCache(t *testing.T) (*Daemon, *faultyMedia, []byte) {
	t.Helper()
	d, media, dirty := startDirtyCache(t)
	v9, _ := d.eng.cacheVolume("v9")
	media.armed.Store(true)
	// the next write needs the media: the cache fails
	err := v9.WriteAt(context.Background(), dirty, 65536, true)
	if err == nil {
		t.Fatal("write on failed media succeeded")
	}
	return d, media, dirty
}

// startDirtyCache is startFailingCache with the media still working.
func startDirtyCache(t *testing.T) (*Daemon, *faultyMedia, []byte) {
	t.Helper()
	d, p := startReloadDaemon(t)
	var media *faultyMedia
	d.eng.openMedia = func(ctx context.Context, path string, opts persist.FileOptions) (persist.Media, func() error, error) {
		m, commit, err := openFileMedia(ctx, path, opts)
		if err != nil || filepath.Base(path) != "c1.img" {
			return m, commit, err
		}
		media = &faultyMedia{Media: m}
		return media, commit, nil
	}
	writeFile(t, p, reloadConfig(filepath.Dir(p), "info", "writeback", false, failingCacheConfig))
	if _, err := d.reload(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if media == nil {
		t.Fatal("cache c1 not opened through the hook")
	}
	v9, _ := d.eng.cacheVolume("v9")
	dirty := bytes.Repeat([]byte{0x5c}, 8192)
	if err := v9.WriteAt(context.Background(), dirty, 0, false); err != nil {
		t.Fatal(err)
	}
	if v9.Stats().DirtyBytes == 0 {
		t.Fatal("v9 has no dirty data")
	}
	return d, media, dirty
}

func adminCache(t *testing.T, d *Daemon, name string) admin.CacheAPI {
	t.Helper()
	for _, c := range (&adminBackend{d: d}).Caches() {
		if c.Name() == name {
			return c
		}
	}
	t.Fatalf("admin API does not show cache %s", name)
	return nil
}

// A cache whose media fails is shown failed by the admin API with the
// reason.
func TestCacheFailureShown(t *testing.T) {
	d, _, _ := startFailingCache(t)
	st := adminCache(t, d, "c1").Stats()
	if !st.Failed || !strings.Contains(st.FailureReason, "injected") {
		t.Fatalf("cache stats after the media failed: %+v", st)
	}
	if adminCache(t, d, "c0").Stats().Failed {
		t.Error("the healthy cache c0 shows failed")
	}
}

// serveAdmin serves the daemon's admin API on a socket in the test's
// directory.
func serveAdmin(t *testing.T, d *Daemon) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "admin.sock")
	admintest.StartServer(t, admin.Config{Backend: &adminBackend{d: d}, SocketPath: sock, Logger: testLogger(t)})
	return sock
}

func runCLI(cmd cli.Command, args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := cmd(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// cachelun cache detach: refused, without --force, for a failed cache
// whose volume still has dirty data (exit 1, the
// volume named); with --force the volume goes on in passthrough on its
// backing device, which serves and stores its I/O from then on.
func TestDetachFailedCache(t *testing.T) {
	d, _, dirty := startFailingCache(t)
	ctx := context.Background()
	sock := serveAdmin(t, d)
	v9, _ := d.eng.cacheVolume("v9")

	code, _, errOut := runCLI(cli.Cache, "detach", "c1", "--socket", sock)
	if code != cli.ExitFailed || !strings.Contains(errOut, "v9 (") || !strings.Contains(errOut, "dirty bytes") {
		t.Fatalf("cachelun cache detach c1 with dirty data: exit %d, %q", code, errOut)
	}
	if err := adminCache(t, d, "c1").Detach(ctx, false, nil); !errors.Is(err, cachecore.ErrDirtyData) {
		t.Errorf("detach without force: %v", err)
	}
	// the failed cache still holds v9's newest data: I/O is refused
	// (on_cache_failure = auto) rather than served stale
	if err := v9.ReadAt(ctx, make([]byte, 512), 0); err == nil {
		t.Error("v9 served a read from the failed cache before the detach")
	}

	code, out, errOut := runCLI(cli.Cache, "detach", "c1", "--force", "--socket", sock)
	if code != cli.ExitOK {
		t.Fatalf("cachelun cache detach c1 --force: exit %d, %q %q", code, out, errOut)
	}
	// v9 now runs on its backing device: the abandoned dirty data is not
	// there, new writes are, and reads return them
	buf := make([]byte, len(dirty))
	if err := v9.ReadAt(ctx, buf, 0); err != nil {
		t.Fatalf("read after the detach: %v", err)
	}
	if bytes.Equal(buf, dirty) {
		t.Error("the abandoned dirty data is served although it never reached the backing device")
	}
	fresh := bytes.Repeat([]byte{0xe7}, 4096)
	if err := v9.WriteAt(ctx, fresh, 1<<20, true); err != nil {
		t.Fatalf("write after the detach: %v", err)
	}
	if err := v9.ReadAt(ctx, buf[:4096], 1<<20); err != nil || !bytes.Equal(buf[:4096], fresh) {
		t.Fatalf("read back after the detach: %v", err)
	}
	raw, err := os.ReadFile(filepath.Join(filepath.Dir(d.path("x")), "v9.img"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw[1<<20:1<<20+4096], fresh) {
		t.Error("a write after the detach did not reach the backing device")
	}
	// the healthy cache's volume is untouched
	v0, _ := d.eng.cacheVolume("v0")
	if err := v0.WriteAt(ctx, fresh, 0, false); err != nil {
		t.Errorf("v0 after c1's detach: %v", err)
	}
	if err := d.shutdown(ctx); err != nil {
		t.Logf("shutdown after the detach: %v", err)
	}
}

// cachelun cache detach of a healthy cache: its dirty data is written back
// (the CLI shows the progress), then its volume serves I/O on its backing
// device in passthrough; the other cache is untouched.
func TestDetachHealthyCache(t *testing.T) {
	d, _, dirty := startDirtyCache(t)
	ctx := context.Background()
	sock := serveAdmin(t, d)
	v9, _ := d.eng.cacheVolume("v9")
	backing := filepath.Join(filepath.Dir(d.path("x")), "v9.img")
	raw, err := os.ReadFile(backing)
	if err != nil {
		t.Fatal(err)
	}
	// Written just before the detach (not durable yet, so the trickle of
	// writeback cannot have taken it): the detach must write it back.
	late := bytes.Repeat([]byte{0x77}, 8192)
	if err := v9.WriteAt(ctx, late, 2<<20, false); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(raw[2<<20:2<<20+len(late)], late) {
		t.Fatal("the late write is on the backing device before the detach: the test needs it dirty")
	}

	code, out, errOut := runCLI(cli.Cache, "detach", "c1", "--socket", sock)
	if code != cli.ExitOK || !strings.Contains(out, "detach c1: done in") {
		t.Fatalf("cachelun cache detach c1: exit %d, %q %q", code, out, errOut)
	}
	// How much is still dirty when the detach starts depends on the
	// journal flush timer and the writeback trickle; the final progress
	// line is there either way, and the backing file is checked below.
	if !strings.Contains(errOut, "detach c1: 100% written back, ") || !strings.Contains(errOut, " written, 0 B left") {
		t.Errorf("no progress line for the written-back data: %q", errOut)
	}
	if raw, err = os.ReadFile(backing); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw[:len(dirty)], dirty) || !bytes.Equal(raw[2<<20:2<<20+len(late)], late) {
		t.Error("the dirty data did not reach the backing device")
	}
	if v9.Mode() != cachecore.ModePassthrough || v9.Stats().DirtyBytes != 0 {
		t.Errorf("v9 after the detach: mode %s, %d dirty bytes", v9.Mode(), v9.Stats().DirtyBytes)
	}
	if code, out, _ := runCLI(cli.Cache, "list", "--socket", sock); code != cli.ExitOK || !strings.Contains(out, "detached") {
		t.Errorf("cachelun cache list after the detach: exit %d, %q", code, out)
	}
	buf := make([]byte, len(dirty))
	if err := v9.ReadAt(ctx, buf, 0); err != nil || !bytes.Equal(buf, dirty) {
		t.Fatalf("read after the detach: %v", err)
	}
	fresh := bytes.Repeat([]byte{0x3b}, 4096)
	if err := v9.WriteAt(ctx, fresh, 1<<20, true); err != nil {
		t.Fatalf("write after the detach: %v", err)
	}
	if raw, err = os.ReadFile(backing); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw[1<<20:1<<20+4096], fresh) {
		t.Error("a write after the detach did not reach the backing device")
	}
	v0, _ := d.eng.cacheVolume("v0")
	if err := v0.WriteAt(ctx, fresh, 0, false); err != nil {
		t.Errorf("v0 after c1's detach: %v", err)
	}
	if adminCache(t, d, "c0").Stats().Failed {
		t.Error("c0 shows failed")
	}
	if err := d.shutdown(ctx); err != nil {
		t.Logf("shutdown after the detach: %v", err)
	}
}
