package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCHAPAndACL checks that the configuration's CHAP credentials and
// initiator ACL reach the iSCSI target: the right initiator with the right
// secret gets in, everyone else is refused, and discovery shows a target
// only to initiators its ACL admits.
func TestCHAPAndACL(t *testing.T) {
	needTools(t, "iscsi-inq", "iscsi-ls")
	dir := t.TempDir()
	const allowed = "iqn.2026-11.io.cachelun.test:allowed"
	src := `
[global]
admin_socket = "off"
metrics_listen = "off"

[[cache]]
name = "c0"
path = "cache.img"
size = "64MiB"
segment_size = "1MiB"

[[volume]]
name = "v0"
cache = "c0"
backing = "v0.img"
backing_size = "16MiB"

[[target]]
iqn = "iqn.2026-11.io.cachelun:secured"
portals = ["127.0.0.1:3260"]
initiators = ["` + allowed + `"]

[target.chap]
user = "host1"
secret = "host1-secret-0123"

[[target.lun]]
lun = 0
volume = "v0"
`
	p := filepath.Join(dir, "cachelun.toml")
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, dir, p)
	base := "iscsi://" + d.portal + "/iqn.2026-11.io.cachelun:secured/0"
	withCreds := func(user, secret string) string {
		return "iscsi://" + user + "%" + secret + "@" + d.portal + "/iqn.2026-11.io.cachelun:secured/0"
	}

	out := mustRun(t, toolTimeout, "iscsi-inq", "-i", allowed, withCreds("host1", "host1-secret-0123"))
	if !strings.Contains(out, "Vendor:CACHELUN") {
		t.Errorf("allowed initiator with the right secret:\n%s", out)
	}
	refused := []struct {
		name string
		args []string
	}{
		{"no credentials", []string{"-i", allowed, base}},
		{"wrong secret", []string{"-i", allowed, withCreds("host1", "wrong-secret-0000")}},
		{"wrong user", []string{"-i", allowed, withCreds("host2", "host1-secret-0123")}},
		{"initiator not in the ACL", []string{"-i", "iqn.2026-11.io.cachelun.test:other", withCreds("host1", "host1-secret-0123")}},
	}
	for _, c := range refused {
		r := runTool(t, toolTimeout, "iscsi-inq", c.args...)
		if r.timedOut || r.exitCode == 0 || strings.Contains(r.out, "Vendor:CACHELUN") {
			t.Errorf("%s: not refused (exit %d, timed out %v):\n%s", c.name, r.exitCode, r.timedOut, r.out)
		}
	}
	d.alive()

	ls := runTool(t, toolTimeout, "iscsi-ls", "-i", "iqn.2026-11.io.cachelun.test:other", "iscsi://"+d.portal)
	if strings.Contains(ls.out, "iqn.2026-11.io.cachelun:secured") {
		t.Errorf("discovery shows the target to an initiator outside its ACL:\n%s", ls.out)
	}
	ls = runTool(t, toolTimeout, "iscsi-ls", "-i", allowed, "iscsi://"+d.portal)
	if !strings.Contains(ls.out, "iqn.2026-11.io.cachelun:secured") {
		t.Errorf("discovery hides the target from an admitted initiator:\n%s", ls.out)
	}
	d.stop()
}
