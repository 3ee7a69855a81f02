package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cachelun/cachelun/admin"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/reconcile"
	"github.com/cachelun/cachelun/target/scsi"
)

// reloadConfig renders a configuration with volume v0 (mode) on LUN 0 and,
// when extra is set, a volume v1 mapped as LUN 1 of a second target.
func reloadConfig(dir, logLevel, mode string, extra bool, tail string) string {
	s := fmt.Sprintf(`[global]
log_level = %q
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
mode = %q
`, logLevel, mode)
	if extra {
		s += `
[[volume]]
name = "v1"
cache = "c0"
backing = "v1.img"
backing_size = "4MiB"
`
	}
	s += `
[[target]]
iqn = "iqn.2026-11.io.cachelun:unit"
portals = ["127.0.0.1:3260"]

[[target.lun]]
lun = 0
volume = "v0"
`
	if extra {
		s += `
[[target]]
iqn = "iqn.2026-11.io.cachelun:second"
portals = ["127.0.0.1:3260"]
initiators = ["iqn.2026-11.test:host"]

[[target.lun]]
lun = 1
volume = "v1"
`
	}
	return s + tail
}

func startReloadDaemon(t *testing.T) (*Daemon, string) {
	t.Helper()
	return startReloadDaemonWith(t, func(dir string) string { return reloadConfig(dir, "info", "writeback", false, "") })
}

// startReloadDaemonWith starts a daemon on the configuration config
// renders for its directory, written to c.toml there, and returns it and
// the file's path.
func startReloadDaemonWith(t *testing.T, config func(dir string) string) (*Daemon, string) {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "c.toml")
	writeFile(t, p, config(dir))
	cfg, err := LoadConfig(p, dir, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d, err := startDaemon(context.Background(), cfg, "127.0.0.1:0", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	d.level = new(slog.LevelVar)
	t.Cleanup(func() { d.shutdown(context.Background()) })
	return d, p
}

func writeFile(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (d *Daemon) targetNames() []string {
	d.mu.RLock()
	defer d.mu.RUnlock()
	var out []string
	for k := range d.targets {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// A reload adds a volume, a target and its LUN, switches a mode and the
// log level; the next one takes them away again (draining the volume).
func TestReloadAppliesAndReverts(t *testing.T) {
	d, p := startReloadDaemon(t)
	dir := filepath.Dir(p)
	ctx := context.Background()

	writeFile(t, p, reloadConfig(dir, "debug", "writethrough", true, ""))
	plan, err := d.reload(ctx, true)
	if err != nil {
		t.Fatalf("dry run: %v", err)
	}
	for _, want := range []string{"volume v1 added", "mode modified writeback -> writethrough", "log_level modified"} {
		if !strings.Contains(plan, want) {
			t.Errorf("dry-run plan lacks %q:\n%s", want, plan)
		}
	}
	if _, ok := d.eng.volume("v1"); ok || len(d.targetNames()) != 1 || d.config().Volumes[0].Mode != "writeback" {
		t.Fatalf("dry run changed the daemon")
	}

	if _, err := d.reload(ctx, false); err != nil {
		t.Fatalf("reload: %v", err)
	}
	v1, ok := d.eng.cacheVolume("v1")
	if !ok {
		t.Fatal("volume v1 not added")
	}
	v0, _ := d.eng.cacheVolume("v0")
	if v0.Mode() != cachecore.ModeWritethrough {
		t.Errorf("v0 mode %v", v0.Mode())
	}
	if d.level.Level() != slog.LevelDebug {
		t.Errorf("log level %v", d.level.Level())
	}
	if got := d.targetNames(); !slices.Equal(got, []string{"iqn.2026-11.io.cachelun:second", "iqn.2026-11.io.cachelun:unit"}) {
		t.Errorf("targets %v", got)
	}
	d.mu.RLock()
	lu := d.targets["iqn.2026-11.io.cachelun:second"].LU(1)
	d.mu.RUnlock()
	if lu == nil || unwrapVolume(lu.Volume()) != v1 {
		t.Fatal("LUN 1 does not serve v1")
	}
	// dirty data on v1 must reach its backing file when it is removed
	data := make([]byte, 4096)
	for i := range data {
		data[i] = 0xa5
	}
	if err := v1.WriteAt(ctx, data, 8192, false); err != nil {
		t.Fatal(err)
	}

	writeFile(t, p, reloadConfig(dir, "info", "writeback", false, ""))
	if _, err := d.reload(ctx, false); err != nil {
		t.Fatalf("reload back: %v", err)
	}
	if _, ok := d.eng.volume("v1"); ok {
		t.Error("v1 still open")
	}
	if got := d.targetNames(); len(got) != 1 {
		t.Errorf("targets %v", got)
	}
	if v0.Mode() != cachecore.ModeWriteback || d.level.Level() != slog.LevelInfo {
		t.Errorf("mode %v level %v", v0.Mode(), d.level.Level())
	}
	raw, err := os.ReadFile(filepath.Join(dir, "v1.img"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(raw[8192:8192+4096], data) {
		t.Error("removing v1 lost its dirty data")
	}
}

// Changes that need a restart refuse the whole reload; a bad file names
// its line; a step that fails rolls back the steps before it.
func TestReloadRefusesAndRollsBack(t *testing.T) {
	d, p := startReloadDaemon(t)
	dir := filepath.Dir(p)
	ctx := context.Background()
	before := d.config()

	notLive := strings.Replace(reloadConfig(dir, "debug", "writethrough", true, ""), `segment_size = "1MiB"`, `segment_size = "2MiB"`, 1)
	writeFile(t, p, notLive)
	_, err := d.reload(ctx, false)
	if !errors.Is(err, reconcile.ErrNotLive) || !strings.Contains(err.Error(), "segment_size") {
		t.Errorf("segment_size change: %v", err)
	}
	if _, dryErr := d.reload(ctx, true); !errors.Is(dryErr, reconcile.ErrNotLive) {
		t.Errorf("dry run of a refused reload: %v", dryErr)
	}

	writeFile(t, p, reloadConfig(dir, "loud", "writethrough", true, ""))
	_, err = d.reload(ctx, false)
	if err == nil || !strings.Contains(err.Error(), p+":2") {
		t.Errorf("bad log level: %v", err)
	}

	// v2's backing file is missing and has no size to create it: adding
	// it fails after the log level, and v1, were applied
	bad := reloadConfig(dir, "debug", "writethrough", true, `
[[volume]]
name = "v2"
cache = "c0"
backing = "missing/v2.img"
`)
	writeFile(t, p, bad)
	_, err = d.reload(ctx, false)
	if err == nil || !strings.Contains(err.Error(), "v2") || !strings.Contains(err.Error(), "rolled back") {
		t.Fatalf("failing reload: %v", err)
	}
	if d.config() != before {
		t.Error("configuration replaced by a failed reload")
	}
	if _, ok := d.eng.volume("v1"); ok {
		t.Error("v1 left behind by the rollback")
	}
	if d.level.Level() != slog.LevelInfo {
		t.Errorf("log level not rolled back: %v", d.level.Level())
	}
	if v0, _ := d.eng.cacheVolume("v0"); v0.Mode() != cachecore.ModeWriteback {
		t.Errorf("v0 mode %v", v0.Mode())
	}

	// the daemon still reloads a good file afterwards
	writeFile(t, p, reloadConfig(dir, "info", "writeback", true, ""))
	if _, err := d.reload(ctx, false); err != nil {
		t.Fatalf("good reload after failures: %v", err)
	}
	if _, ok := d.eng.volume("v1"); !ok {
		t.Error("v1 not added")
	}
}

func freeLoopbackPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func listening(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// Portals open before a target names them and close when none does; a
// removed target is gone from the iSCSI server.
func TestReloadPortalsAndTargets(t *testing.T) {
	dir := t.TempDir()
	p1, p2 := freeLoopbackPort(t), freeLoopbackPort(t)
	render := func(portals string, second bool) string {
		s := reloadConfig(dir, "info", "writeback", second, "")
		return strings.ReplaceAll(s, `portals = ["127.0.0.1:3260"]`, "portals = ["+portals+"]")
	}
	p := filepath.Join(dir, "c.toml")
	writeFile(t, p, render(fmt.Sprintf("%q", p1), true))
	cfg, err := LoadConfig(p, dir, "")
	if err != nil {
		t.Fatal(err)
	}
	d, err := startDaemon(context.Background(), cfg, "", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer d.shutdown(context.Background())
	if !listening(p1) || listening(p2) {
		t.Fatalf("start: %s listening=%v, %s listening=%v", p1, listening(p1), p2, listening(p2))
	}

	writeFile(t, p, render(fmt.Sprintf("%q, %q", p1, p2), true))
	if _, err := d.reload(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if !listening(p1) || !listening(p2) {
		t.Fatalf("portal %s not added", p2)
	}

	writeFile(t, p, render(fmt.Sprintf("%q", p2), false))
	if _, err := d.reload(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if listening(p1) || !listening(p2) {
		t.Errorf("portal %s still open or %s closed", p1, p2)
	}
	if got := d.targetNames(); !slices.Equal(got, []string{"iqn.2026-11.io.cachelun:unit"}) {
		t.Errorf("targets %v", got)
	}
	if err := d.iscsi.RemoveTarget("iqn.2026-11.io.cachelun:second"); err == nil {
		t.Error("the removed target is still known to the iSCSI server")
	}
}

// unwrapVolume returns the engine volume behind a LUN's volume, which the
// latency instrumentation wraps.
func unwrapVolume(v scsi.Volume) scsi.Volume {
	for {
		u, ok := v.(interface{ Unwrap() blk.Volume })
		if !ok {
			return v
		}
		v = u.Unwrap()
	}
}

// adminVolume finds a volume as the admin API sees it.
func adminVolumeNamed(t *testing.T, d *Daemon, name string) admin.VolumeAPI {
	t.Helper()
	for _, v := range (&adminBackend{d: d}).Volumes() {
		if v.Name() == name {
			return v
		}
	}
	t.Fatalf("admin API does not show volume %s", name)
	return nil
}

// The file is the desired state: a mode set through the admin API is
// shown by the dry run as a live value and converged to the file's by an
// unrelated reload; once live and file agree, no mode change is planned.
func TestReloadConvergesLiveMode(t *testing.T) {
	d, p := startReloadDaemon(t)
	dir := filepath.Dir(p)
	ctx := context.Background()

	if err := adminVolumeNamed(t, d, "v0").SetMode(ctx, "writethrough", nil); err != nil {
		t.Fatal(err)
	}
	v0, _ := d.eng.cacheVolume("v0")
	if v0.Mode() != cachecore.ModeWritethrough {
		t.Fatalf("admin mode switch: v0 mode %v", v0.Mode())
	}

	// unrelated change: the log level only
	writeFile(t, p, reloadConfig(dir, "debug", "writeback", false, ""))
	plan, err := d.reload(ctx, true)
	if err != nil {
		t.Fatalf("dry run: %v", err)
	}
	const want = "volume v0: mode modified writethrough (live, set by admin) -> writeback (file)"
	if !strings.Contains(plan, want) || !strings.Contains(plan, "log_level modified info -> debug") {
		t.Errorf("dry-run plan lacks %q or the log level:\n%s", want, plan)
	}
	if v0.Mode() != cachecore.ModeWritethrough {
		t.Fatalf("dry run switched the mode to %v", v0.Mode())
	}

	applied, err := d.reload(ctx, false)
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	if applied != plan {
		t.Errorf("applied plan differs from the dry run:\n%s\nvs\n%s", applied, plan)
	}
	if v0.Mode() != cachecore.ModeWriteback {
		t.Errorf("reload left v0 in mode %v, file says writeback", v0.Mode())
	}
	if d.level.Level() != slog.LevelDebug {
		t.Errorf("log level %v", d.level.Level())
	}

	// live and file agree again: nothing to do
	if plan, err := d.reload(ctx, true); err != nil || plan != "no changes" {
		t.Errorf("converged daemon: plan %q, %v", plan, err)
	}

	// a live mode the file asks for anyway is no change; a mode switched
	// by other means than the admin API is labelled live only
	if err := adminVolumeNamed(t, d, "v0").SetMode(ctx, "writearound", nil); err != nil {
		t.Fatal(err)
	}
	writeFile(t, p, reloadConfig(dir, "debug", "writearound", false, ""))
	if plan, err := d.reload(ctx, false); err != nil || strings.Contains(plan, "mode") {
		t.Errorf("file agrees with the live mode: plan %q, %v", plan, err)
	}
	if m := d.config().Volumes[0].Mode; m != "writearound" {
		t.Errorf("running configuration still says mode %s", m)
	}
	if err := v0.SetMode(ctx, cachecore.ModeWritethrough, nil); err != nil {
		t.Fatal(err)
	}
	plan, err = d.reload(ctx, false)
	if err != nil || !strings.Contains(plan, "mode modified writethrough (live) -> writearound (file)") {
		t.Errorf("engine-side switch: plan %q, %v", plan, err)
	}
	if v0.Mode() != cachecore.ModeWritearound {
		t.Errorf("v0 mode %v, file says writearound", v0.Mode())
	}
}

// A reload keeps serve --metrics: the file's metrics_listen does not
// count as a change that needs a restart.
func TestReloadKeepsMetricsOverride(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir, "writeback") // the file says metrics_listen = "off"
	cfg.Global.MetricsListen = "127.0.0.1:0"
	d := &Daemon{cfg: cfg, listenOverride: "127.0.0.1:0", metricsOverride: "127.0.0.1:0"}
	next, err := d.loadForReload(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if plan, err := reconcile.MakePlan(cfg, next, nil); err != nil || !plan.Changes.Empty() {
		t.Errorf("reload plan with --metrics: %v", plan.Changes)
	}
}
