package conf

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cachelun/cachelun/backend/rbd"
)

// rbdBase is base with its volume on an RBD image.
var rbdBase = strings.Replace(strings.Replace(base, `backing = "v0.img"`, `backing = "rbd:pool/img"`, 1), "backing_size = \"16MiB\"\n", "", 1)

// problemAt returns the problem of err at line containing want, or fails.
func problemAt(t *testing.T, err error, line int, want string) {
	t.Helper()
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("not a *conf.Error: %T %v", err, err)
	}
	for _, p := range ce.Problems {
		if p.Line == line && strings.Contains(p.Msg, want) {
			return
		}
	}
	t.Errorf("want %q at line %d, got:\n%v", want, line, err)
}

func TestRBDVolumeRules(t *testing.T) {
	cases := []struct{ name, src, want string }{
		{"bad spec", strings.Replace(rbdBase, `backing = "rbd:pool/img"`, `backing = "rbd:pool" #!`, 1), "want rbd:POOL/IMAGE"},
		{"snapshot", strings.Replace(rbdBase, `backing = "rbd:pool/img"`, `backing = "rbd:pool/img@snap" #!`, 1), "names a snapshot"},
		{"backing_size", strings.Replace(rbdBase, `backing = "rbd:pool/img"`, "backing = \"rbd:pool/img\"\nbacking_size = \"1GiB\" #!", 1), "the volume's size is the image's"},
		{"direct", strings.Replace(rbdBase, `backing = "rbd:pool/img"`, "backing = \"rbd:pool/img\"\ndirect = true #!", 1), "O_DIRECT applies to files"},
		{"op timeout", strings.Replace(rbdBase, `backing = "rbd:pool/img"`, "backing = \"rbd:pool/img\"\nceph_op_timeout = \"100ms\" #!", 1), "from 1s to 10m"},
		{"connect timeout", strings.Replace(rbdBase, `backing = "rbd:pool/img"`, "backing = \"rbd:pool/img\"\nceph_connect_timeout = \"1h\" #!", 1), "from 1s to 10m"},
		{"user", strings.Replace(rbdBase, `backing = "rbd:pool/img"`, "backing = \"rbd:pool/img\"\nceph_user = \"client.\" #!", 1), "not a Ceph client id"},
		{"relative ceph_conf", strings.Replace(rbdBase, `backing = "rbd:pool/img"`, "backing = \"rbd:pool/img\"\nceph_conf = \"ceph.conf\" #!", 1), "must be an absolute path"},
		{"slow", strings.Replace(rbdBase, `backing = "rbd:pool/img"`, "backing = \"rbd:pool/img\"\nslow = \"latency=1ms\" #!", 1), "throttle files"},
		{"ceph key on a file", strings.Replace(base, `backing = "v0.img"`, "backing = \"v0.img\"\nceph_conf = \"/etc/ceph/ceph.conf\" #!", 1), "only for an RBD backing"},
		{"same image twice", rbdBase + "\n[[volume]]\nname = \"v1\"\ncache = \"c0\"\nbacking = \"rbd:pool/img\" #!\n", "already used by volume v0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("test.toml", []byte(tc.src))
			if err == nil {
				t.Fatal("accepted")
			}
			problemAt(t, err, markedLine(t, tc.src), tc.want)
		})
	}
}

// A binary without librbd refuses an RBD backing when it loads the file,
// with the rebuild advice, before the daemon creates anything; a ceph
// build accepts it and fills in the defaults.
func TestRBDVolumeBuild(t *testing.T) {
	src := strings.Replace(rbdBase, `backing = "rbd:pool/img"`, `backing = "rbd:pool/ns/img" #!`, 1)
	c, err := Parse("test.toml", []byte(src))
	if !rbd.Built {
		if err == nil {
			t.Fatal("a binary without ceph support accepted an RBD backing")
		}
		problemAt(t, err, markedLine(t, src), "rebuild with `go build -tags ceph ./cmd/cachelun`")
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	v := c.Volumes[0]
	if v.CephConf != rbd.DefaultCephConf || v.CephUser != rbd.DefaultUser || v.CephKeyring != "" ||
		v.CephConnectTimeout.D != rbd.DefaultConnectTimeout || v.CephOpTimeout.D != rbd.DefaultOpTimeout {
		t.Errorf("defaults: %+v", v)
	}
	// what config show prints loads back to the same configuration
	out, err := c.TOML(true)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := Parse("shown.toml", out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if p := Diff(c, c2); !p.Empty() {
		t.Errorf("round trip changed: %v", p)
	}
	// a change of the connection is refused by a live reload
	c3, err := Parse("test.toml", []byte(strings.Replace(src, `backing = "rbd:pool/ns/img" #!`,
		"backing = \"rbd:pool/ns/img\"\nceph_user = \"gw1\"\nceph_op_timeout = \"5s\"", 1)))
	if err != nil {
		t.Fatal(err)
	}
	p := Diff(c, c3)
	if len(p.NeedsRestart()) != 2 || p.Live() {
		t.Errorf("ceph_user and ceph_op_timeout changes must need a restart: %v", p)
	}
	if c3.Volumes[0].CephOpTimeout.D != 5*time.Second {
		t.Errorf("ceph_op_timeout: %v", c3.Volumes[0].CephOpTimeout)
	}
}

// A file volume's round trip keeps the Ceph keys empty (config show prints
// them empty; loading that back must not refuse them).
func TestFileVolumeRoundTripWithCephKeys(t *testing.T) {
	c, err := Parse("test.toml", []byte(base))
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.TOML(true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Parse("shown.toml", out); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}
