package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cachelun/cachelun/admin"
	"github.com/cachelun/cachelun/admin/cli"
	"github.com/cachelun/cachelun/conf"
	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/target/scsi"
)

// freePort returns a TCP port nothing listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// testClusterConfig is node "a" of a two-node cluster whose peer "b" is
// not running, without volumes (a clustered volume needs Ceph).
func testClusterConfig(t *testing.T, dir string) *conf.Config {
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

[cluster]
node = "a"
listen = "127.0.0.1:%d"
peers = ["b@127.0.0.1:%d"]
heartbeat_interval = "100ms"
peer_timeout = "500ms"
`, dir, freePort(t), freePort(t))
	p := filepath.Join(dir, "c.toml")
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := conf.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// A cluster node starts its peer link, serves GET /v1/cluster and
// `cachelun cluster status`, and stops it at shutdown; a single node
// says it is none.
func TestClusterNodeStatus(t *testing.T) {
	dir := t.TempDir()
	d, err := startDaemon(context.Background(), testClusterConfig(t, dir), "127.0.0.1:0", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer d.shutdown(context.Background())
	if d.clu == nil || d.clu.node == nil || d.clu.tpgt() != 1 {
		t.Fatalf("cluster part %+v", d.clu)
	}
	sock := filepath.Join(dir, "admin.sock")
	code, out, errs := runVerb(cli.Cluster, "status", "--json", "--socket", sock)
	if code != 0 {
		t.Fatalf("cluster status --json: exit %d %s", code, errs)
	}
	var r admin.ClusterResponse
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if r.Node != "a" || r.TargetPortGroup != 1 || len(r.Groups) != 2 || r.Groups[1] != (admin.ClusterGroup{Node: "b", ID: 2}) {
		t.Errorf("status %+v", r)
	}
	var snap struct {
		Node  string `json:"node"`
		Peers []struct {
			Name, State string
		} `json:"peers"`
	}
	if err := json.Unmarshal(r.Snapshot, &snap); err != nil || snap.Node != "a" || len(snap.Peers) != 1 || snap.Peers[0].State != "down" {
		t.Errorf("snapshot %s (%v)", r.Snapshot, err)
	}
	code, out, errs = runVerb(cli.Cluster, "status", "--socket", sock)
	if code != 0 || !strings.Contains(out, "node a (target port group 1)") || !strings.Contains(out, "b  ") ||
		!strings.Contains(out, "down") {
		t.Errorf("cluster status: exit %d\n%s%s", code, out, errs)
	}

	// a single node
	dir2 := t.TempDir()
	s, err := startDaemon(context.Background(), testConfig(t, dir2, "writeback"), "127.0.0.1:0", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.shutdown(context.Background())
	code, _, errs = runVerb(cli.Cluster, "status", "--socket", filepath.Join(dir2, "admin.sock"))
	if code != cli.ExitFailed || !strings.Contains(errs, "not a cluster node") {
		t.Errorf("cluster status of a single node: exit %d %q", code, errs)
	}
}

// clusterForTest is a cluster part without a daemon around it: nodes a,
// b, c (groups 1, 2, 3), this node b, volume v0 on a fake lock.
func clusterForTest(t *testing.T, c *fakeCeph, clock *fakeClock) (*clusterd, *fakeLock) {
	t.Helper()
	d := &Daemon{log: slog.New(slog.DiscardHandler), registry: prometheus.NewRegistry()}
	cfg := &conf.Config{Cluster: &conf.Cluster{Name: "cachelun", Node: "b", PeerTimeout: conf.Duration{D: testPeerTimeout},
		Peers: []string{"c@127.0.0.1:1", "a@127.0.0.1:2"}}}
	cl, err := newClusterd(d, cfg, clock)
	if err != nil {
		t.Fatal(err)
	}
	l := &fakeLock{c: c, node: "b"}
	sw := &switchVolume{}
	sw.set(standbyVolume{name: "v0", size: 1 << 20, bs: 512})
	cl.vols["v0"] = &clusterVolume{conf: conf.Volume{Name: "v0", BlockSize: 512, Mode: "writethrough"}, sw: sw}
	cl.own.add("v0", l)
	return cl, l
}

// The logical units of a clustered volume report one target port group
// per node (names sorted → 1..N, one port each: the node's TPGT), the
// owner's active/optimized and the others standby; on a standby node they
// answer READ CAPACITY's size and refuse I/O; a lock lost makes this
// node's group unavailable.
func TestClusterALUAStates(t *testing.T) {
	c := newFakeCeph()
	clock := &fakeClock{now: time.Unix(1_800_000_000, 0)}
	// node a holds the lock
	c.holder, c.node, c.alive["a#0"] = "a#0", "a", true
	cl, _ := clusterForTest(t, c, clock)
	if cl.tpgt() != 2 || cl.groups["a"] != 1 || cl.groups["c"] != 3 {
		t.Fatalf("groups %v", cl.groups)
	}
	// attach is the daemon's; here the fake lock's held lock is kept
	if err := cl.own.start(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := scsi.NewTarget(scsi.TargetConfig{Name: "iqn.2026-11.io.cachelun:t"})
	id := scsi.LUNIdentity("iqn.2026-11.io.cachelun:t", "v0")
	if err := cl.addLU("v0", "iqn.2026-11.io.cachelun:t", 0, func(vol scsi.Volume, alua *scsi.ALUAConfig, _ scsi.PRShare) (*scsi.LU, error) {
		return st.AddLU(0, scsi.LUConfig{Volume: vol, SerialNumber: id.Serial, DeviceID: id.DeviceID, ALUA: alua})
	}); err != nil {
		t.Fatal(err)
	}
	lu := cl.vols["v0"].lus[0].lu
	want := func(states ...scsi.ALUAState) {
		t.Helper()
		cfg := lu.ALUA()
		if cfg == nil || len(cfg.Groups) != 3 {
			t.Fatalf("ALUA %+v", cfg)
		}
		for i, g := range cfg.Groups {
			if g.ID != uint16(i+1) || len(g.RelativePorts) != 1 || g.RelativePorts[0] != g.ID || g.State != states[i] {
				t.Fatalf("group %d: %+v, want state %v", i, g, states[i])
			}
		}
	}
	want(scsi.ALUAActiveOptimized, scsi.ALUAStandby, scsi.ALUAStandby)
	if st, _ := lu.TargetPortState(2); st != scsi.ALUAStandby {
		t.Errorf("this node's port: %v", st)
	}
	sw := cl.vols["v0"].sw
	if sw.Size() != 1<<20 || !errors.Is(sw.ReadAt(context.Background(), make([]byte, 512), 0), blk.ErrNotReady) {
		t.Errorf("standby volume: size %d", sw.Size())
	}
	// a peer says c took over
	cl.own.noteOwner("v0", "c")
	want(scsi.ALUAStandby, scsi.ALUAStandby, scsi.ALUAActiveOptimized)
}

// Every documented cluster metric exists on a fresh cluster node (the
// rest of docs/metrics.md is TestDocumentedMetricsExistAtStart's).
func TestDocumentedClusterMetricsExistAtStart(t *testing.T) {
	docs := parseMetricDocs(t, "../docs/metrics.md")
	dir := t.TempDir()
	d, err := startDaemon(context.Background(), testClusterConfig(t, dir), "127.0.0.1:0", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer d.shutdown(context.Background())
	mfs, err := d.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	families := map[string]bool{}
	labels := map[string]map[string]bool{}
	for _, mf := range mfs {
		families[mf.GetName()] = true
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if labels[mf.GetName()] == nil {
					labels[mf.GetName()] = map[string]bool{}
				}
				labels[mf.GetName()][lp.GetName()+"="+lp.GetValue()] = true
			}
		}
	}
	documented := map[string]bool{}
	n := 0
	for _, dm := range docs {
		if !strings.HasPrefix(dm.name, "cachelun_cluster_") {
			continue
		}
		n++
		documented[dm.name] = true
		if !families[dm.name] {
			t.Errorf("%s is documented but a fresh cluster node does not export it", dm.name)
		}
		for _, v := range dm.values {
			if !labels[dm.name][dm.label+"="+v] {
				t.Errorf("%s{%s=%q} is documented but a fresh cluster node does not export it", dm.name, dm.label, v)
			}
		}
	}
	if n < 10 {
		t.Errorf("only %d cluster metrics documented", n)
	}
	for name := range families {
		if strings.HasPrefix(name, "cachelun_cluster_") && !documented[name] {
			t.Errorf("%s is exported but not documented in docs/metrics.md", name)
		}
	}
}
