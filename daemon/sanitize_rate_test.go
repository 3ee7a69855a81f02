package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cachelun/cachelun/conf"
	"github.com/cachelun/cachelun/target/scsi"
)

// A volume's sanitize_max_bytes_per_sec reaches the LUNs that serve it:
// the default, a configured rate, and "0" for no limit.
func TestSanitizeRateReachesLUN(t *testing.T) {
	if conf.DefaultSanitizeMaxBytesPerSec != scsi.DefaultSanitizeMaxBytesPerSec {
		t.Fatalf("conf's default sanitize rate %d, scsi's %d", conf.DefaultSanitizeMaxBytesPerSec, scsi.DefaultSanitizeMaxBytesPerSec)
	}
	for _, c := range []struct {
		line string
		want int64
	}{{"", 16 << 20}, {`sanitize_max_bytes_per_sec = "8MiB"`, 8 << 20}, {"sanitize_max_bytes_per_sec = 0", -1}} {
		dir := t.TempDir()
		cfg := testConfig(t, dir, "writeback")
		if c.line != "" {
			p := filepath.Join(dir, "c.toml")
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			src := strings.Replace(string(b), "mode = \"writeback\"\n", "mode = \"writeback\"\n"+c.line+"\n", 1)
			if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
				t.Fatal(err)
			}
			if cfg, err = LoadConfig(p, "", "127.0.0.1:0"); err != nil {
				t.Fatal(err)
			}
		}
		ctx := context.Background()
		d, err := startDaemon(ctx, cfg, "127.0.0.1:0", testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		d.mu.RLock()
		lu := d.targets["iqn.2026-11.io.cachelun:unit"].LU(3)
		d.mu.RUnlock()
		got := lu.SanitizeMaxBytesPerSec()
		if err := d.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		if got != c.want {
			t.Errorf("%q: LUN's sanitize rate %d, want %d", c.line, got, c.want)
		}
	}
}
