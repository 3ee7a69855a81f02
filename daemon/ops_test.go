package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cachelun/cachelun/admin"
	"github.com/cachelun/cachelun/admin/cli"
	"github.com/cachelun/cachelun/conf"
)

func runVerb(verb cli.Command, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := verb(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// `cachelun config show` prints the running configuration: it loads with
// conf and is equivalent to what runs (the --listen override included);
// CHAP secrets only with --secrets.
func TestConfigShow(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir, "writethrough")
	raw, err := os.ReadFile(cfg.Source)
	if err != nil {
		t.Fatal(err)
	}
	chap := "\n[target.chap]\nuser = \"host1\"\nsecret = \"unit-secret-123\"\n"
	if err := os.WriteFile(cfg.Source, append(raw, chap...), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err = LoadConfig(cfg.Source, "", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d, err := startDaemon(context.Background(), cfg, "127.0.0.1:0", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer d.shutdown(context.Background())
	sock := filepath.Join(dir, "admin.sock")

	code, out, errs := runVerb(cli.Config, "show", "--secrets", "--socket", sock)
	if code != 0 {
		t.Fatalf("config show --secrets: exit %d %s", code, errs)
	}
	shown, err := conf.Parse("shown.toml", []byte(out))
	if err != nil {
		t.Fatalf("the shown configuration does not load: %v\n%s", err, out)
	}
	// the portal given port 0 shows the port it got; nothing else differs
	bound := strings.SplitN(strings.TrimPrefix(d.lunURLs()[0].url, "iscsi://"), "/", 2)[0]
	for _, c := range conf.Diff(d.config(), shown).Changes {
		if c.Section != conf.SectionTarget || c.Field != "portal" {
			t.Errorf("the shown configuration differs from the running one: %+v\n%s", c, out)
		}
	}
	for _, want := range []string{`mode = "writethrough"`, `portals = ["` + bound + `"]`, `secret = "unit-secret-123"`, `data_dir = "` + dir + `"`} {
		if !strings.Contains(out, want) {
			t.Errorf("config show lacks %s:\n%s", want, out)
		}
	}

	code, out, _ = runVerb(cli.Config, "show", "--socket", sock)
	if code != 0 || strings.Contains(out, "unit-secret-123") || !strings.Contains(out, conf.RedactedSecret) {
		t.Errorf("config show without --secrets: exit %d\n%s", code, out)
	}
	code, out, _ = runVerb(cli.Config, "show", "--json", "--socket", sock)
	var r admin.ConfigResponse
	if code != 0 || json.Unmarshal([]byte(out), &r) != nil || !r.SecretsRedacted || !strings.Contains(r.TOML, "[[target.lun]]") {
		t.Errorf("config show --json: exit %d %q", code, out)
	}
	if code, _, _ := runVerb(cli.Config, "bogus", "--socket", sock); code != cli.ExitUsage {
		t.Errorf("config bogus: exit %d", code)
	}
}

// `cachelun stats reset`: volume show counts from the reset; /metrics
// does not.
func TestStatsResetThroughDaemon(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	d, err := startDaemon(ctx, testConfig(t, dir, "writeback"), "127.0.0.1:0", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer d.shutdown(ctx)
	sock := filepath.Join(dir, "admin.sock")
	vol, _ := d.eng.volume("v0")
	if err := vol.WriteAt(ctx, bytes.Repeat([]byte{1}, 64<<10), 0, false); err != nil {
		t.Fatal(err)
	}
	show := func() admin.VolumeResponse {
		t.Helper()
		code, out, errs := runVerb(cli.Volume, "show", "v0", "--json", "--socket", sock)
		var r admin.VolumeResponse
		if code != 0 || json.Unmarshal([]byte(out), &r) != nil {
			t.Fatalf("volume show: exit %d %s %s", code, out, errs)
		}
		return r
	}
	if r := show(); r.Volume.Stats.WriteBytes != 64<<10 || r.CountersSince != nil {
		t.Fatalf("before the reset: %+v", r)
	}
	code, out, errs := runVerb(cli.Stats, "reset", "--socket", sock)
	if code != 0 || !strings.Contains(out, "counters of 1 volumes and 1 caches reset at") {
		t.Fatalf("stats reset: exit %d %q %q", code, out, errs)
	}
	if r := show(); r.Volume.Stats.WriteBytes != 0 || r.Volume.Stats.WriteHits != 0 || r.CountersSince == nil {
		t.Errorf("after the reset: %+v", r)
	}
	if err := vol.WriteAt(ctx, bytes.Repeat([]byte{2}, 4096), 1<<20, false); err != nil {
		t.Fatal(err)
	}
	if r := show(); r.Volume.Stats.WriteBytes != 4096 {
		t.Errorf("a write after the reset: write bytes %d, want 4096", r.Volume.Stats.WriteBytes)
	}
	code, out, _ = runVerb(cli.Volume, "show", "v0", "--socket", sock)
	if code != 0 || !strings.Contains(out, "counters since ") {
		t.Errorf("volume show after a reset does not say since when:\n%s", out)
	}
	// Prometheus counters stay monotonic
	if got := metricSum(t, d, "cachelun_volume_write_bytes_total", map[string]string{"volume": "v0"}); got != 64<<10+4096 {
		t.Errorf("/metrics write bytes %v after a reset, want %d", got, 64<<10+4096)
	}
}
