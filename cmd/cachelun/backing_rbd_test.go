package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cachelun/cachelun/backend/rbd"
)

// A binary built without -tags ceph refuses a configuration with an RBD
// backing before it creates anything (no cache file, no data directory),
// with the rebuild advice and the file:line of the backing.
func TestServeRefusesRBDWithoutCeph(t *testing.T) {
	if rbd.Built {
		t.Skip("this binary has Ceph support")
	}
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	cfg := `[global]
metrics_listen = "off"
admin_socket = "off"

[[cache]]
name = "c0"
path = "cache.img"
size = "64MiB"
segment_size = "1MiB"

[[volume]]
name = "v0"
cache = "c0"
backing = "rbd:rbd/v0"
`
	p := filepath.Join(dir, "cachelun.toml")
	if err := os.WriteFile(p, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errs := run(t, "serve", "--config", p, "--data-dir", dataDir)
	if code != 1 || !strings.Contains(errs, p+":14: volume[0].backing") || !strings.Contains(errs, "rebuild with `go build -tags ceph ./cmd/cachelun`") {
		t.Errorf("exit %d, stderr:\n%s", code, errs)
	}
	if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
		t.Errorf("the data directory was created: %v", err)
	}
}
