package conf

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// nodeBase is base without its volume and target: a cluster node's
// volumes must be on RBD, which a binary without the ceph tag refuses.
const nodeBase = `
[global]
data_dir = "/tmp/x"
metrics_listen = "off"

[[cache]]
name = "c0"
path = "c0.img"
size = "64MiB"
segment_size = "1MiB"
`

// clusterBase is nodeBase as node "a" of the two-node cluster, the
// [cluster] table exactly as the issue writes it.
const clusterBase = nodeBase + `
[cluster]
node = "a"                          # this node, unique in the cluster
listen = "127.0.0.2:3270"           # the peer link
peers = ["b@127.0.0.3:3270"]        # the other nodes, NAME@HOST:PORT
`

func TestClusterParse(t *testing.T) {
	c, err := Parse("a.toml", []byte(clusterBase))
	if err != nil {
		t.Fatal(err)
	}
	cl := c.Cluster
	if cl == nil {
		t.Fatal("no cluster")
	}
	if cl.Name != DefaultClusterName || cl.Node != "a" || cl.Listen != "127.0.0.2:3270" ||
		len(cl.Peers) != 1 || cl.Peers[0] != "b@127.0.0.3:3270" || cl.Degraded != DegradedServe ||
		cl.HeartbeatInterval.D != time.Second || cl.PeerTimeout.D != 5*time.Second ||
		cl.ConnectTimeout.D != 3*time.Second || cl.ReconnectMin.D != 100*time.Millisecond ||
		cl.ReconnectMax.D != 5*time.Second || cl.SyncTimeout.D != 5*time.Second || cl.MaxLag.Bytes != 64<<20 {
		t.Errorf("cluster defaults: %+v", cl)
	}
	if got := c.ClusterPeers(); len(got) != 1 || got[0] != (Peer{Name: "b", Addr: "127.0.0.3:3270"}) {
		t.Errorf("ClusterPeers = %v", got)
	}
	// no [cluster]: a single node
	s, err := Parse("s.toml", []byte(base))
	if err != nil {
		t.Fatal(err)
	}
	if s.Cluster != nil || s.ClusterPeers() != nil {
		t.Errorf("a file without [cluster] is a cluster node: %+v", s.Cluster)
	}
	// every key set
	full := nodeBase + `
[cluster]
name = "prod-east"
node = "gw1"
listen = "[fd00::1]:3270"
peers = ["gw2@gw2.example:3270", "gw3@[fd00::3]:3270"]
degraded = "refuse-sync"
heartbeat_interval = "250ms"
peer_timeout = "2s"
connect_timeout = "1s"
reconnect_min = "50ms"
reconnect_max = "2s"
sync_timeout = "1500ms"
max_lag = "1GiB"
`
	f, err := Parse("f.toml", []byte(full))
	if err != nil {
		t.Fatal(err)
	}
	fc := f.Cluster
	if fc.Name != "prod-east" || fc.Node != "gw1" || fc.Degraded != DegradedRefuseSync || fc.HeartbeatInterval.D != 250*time.Millisecond ||
		fc.PeerTimeout.D != 2*time.Second || fc.ConnectTimeout.D != time.Second || fc.ReconnectMin.D != 50*time.Millisecond ||
		fc.ReconnectMax.D != 2*time.Second || fc.SyncTimeout.D != 1500*time.Millisecond || fc.MaxLag.Bytes != 1<<30 {
		t.Errorf("cluster keys: %+v", fc)
	}
	if got := f.ClusterPeers(); len(got) != 2 || got[1] != (Peer{Name: "gw3", Addr: "[fd00::3]:3270"}) {
		t.Errorf("ClusterPeers = %v", got)
	}
	// a cluster of one node
	one, err := Parse("one.toml", []byte(nodeBase+"\n[cluster]\nnode = \"a\"\nlisten = \"127.0.0.2:3270\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(one.Cluster.Peers) != 0 {
		t.Errorf("peers: %v", one.Cluster.Peers)
	}
}

// What config show prints for a cluster node loads back unchanged, and
// a single node's output has no [cluster] table.
func TestClusterRoundTrip(t *testing.T) {
	for _, src := range []string{clusterBase, base} {
		c, err := Parse("a.toml", []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		out, err := c.TOML(true)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(out), "[cluster]") != (c.Cluster != nil) {
			t.Errorf("[cluster] printed for cluster=%v:\n%s", c.Cluster != nil, out)
		}
		back, err := Parse("shown.toml", out)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if p := Diff(c, back); !p.Empty() {
			t.Errorf("round trip changed: %v\n%s", p, out)
		}
	}
}

// The example's commented [cluster] table, uncommented, is valid.
func TestExampleClusterTable(t *testing.T) {
	ex := string(ExampleTOML())
	i := strings.Index(ex, "# [cluster]")
	if i < 0 {
		t.Fatal("example.toml has no [cluster] table")
	}
	var b strings.Builder
	b.WriteString(nodeBase) // the example's volume is a local disk, refused on a cluster node
	for _, l := range strings.Split(ex[i:], "\n") {
		b.WriteString(strings.TrimPrefix(l, "# ") + "\n")
	}
	c, err := Parse("example.toml", []byte(b.String()))
	if err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	d := &Cluster{}
	v := &validator{ix: indexLines("")}
	v.cluster("cluster", d)
	cl := *c.Cluster
	cl.Node, cl.Listen, cl.Peers = "", "", nil
	d.Peers = nil
	// every default the example states is the default
	if Diff(&Config{Cluster: &cl}, &Config{Cluster: d}).String() != "no changes" {
		t.Errorf("example.toml's [cluster] values differ from the defaults: %v", Diff(&Config{Cluster: &cl}, &Config{Cluster: d}))
	}
}

func TestClusterDiff(t *testing.T) {
	a := mustParse(t, clusterBase)
	b := mustParse(t, strings.Replace(clusterBase, `peers = ["b@127.0.0.3:3270"]`, `peers = ["c@127.0.0.4:3270"]`+"\nsync_timeout = \"1s\"", 1))
	p := Diff(a, b)
	if find(p, SectionCluster, "", "peer", Removed) == nil || find(p, SectionCluster, "", "peer", Added) == nil ||
		find(p, SectionCluster, "", "sync_timeout", Modified) == nil || p.Live() {
		t.Errorf("diff: %v", p)
	}
	s := mustParse(t, base)
	if ch := find(Diff(s, a), SectionCluster, "a", "", Added); ch == nil || ch.Live {
		t.Errorf("joining a cluster: %v", Diff(s, a))
	}
	if ch := find(Diff(a, s), SectionCluster, "a", "", Removed); ch == nil || ch.Live {
		t.Errorf("leaving a cluster: %v", Diff(a, s))
	}
}

// Every refusal of the [cluster] table, at its line.
func TestClusterRules(t *testing.T) {
	repl := func(old, new string) string {
		if !strings.Contains(clusterBase, old) {
			t.Fatalf("%q not in clusterBase", old)
		}
		return strings.Replace(clusterBase, old, new, 1)
	}
	addKey := func(kv string) string { return repl(`node = "a" `, kv+" #!\nnode = \"a\" ") }
	cases := []struct{ name, src, want string }{
		{"node missing", nodeBase + "\n[cluster] #!\nlisten = \"127.0.0.2:3270\"\n", "missing (this node's name"},
		{"node empty", repl(`node = "a" `, `node = "" #!`), "missing (this node's name"},
		{"node syntax", repl(`node = "a" `, `node = "node a" #!`), `"node a": use letters`},
		{"node leading dash", repl(`node = "a" `, `node = "-a" #!`), "use letters"},
		{"node too long", repl(`node = "a" `, `node = "`+strings.Repeat("n", 64)+`" #!`), "longer than 63"},
		{"node type", repl(`node = "a" `, `node = 1 #!`), "expected a string"},
		{"name syntax", addKey(`name = "prod/east"`), "use letters"},
		{"listen missing", nodeBase + "\n[cluster] #!\nnode = \"a\"\n", "missing (HOST:PORT of this node's peer link"},
		{"listen no port", repl(`listen = "127.0.0.2:3270"`, `listen = "127.0.0.2" #!`), "not HOST:PORT"},
		{"listen bad port", repl(`listen = "127.0.0.2:3270"`, `listen = "127.0.0.2:0" #!`), "1 to 65535"},
		{"listen host name", repl(`listen = "127.0.0.2:3270"`, `listen = "gw-a:3270" #!`), "must be an IP address"},
		{"listen no host", repl(`listen = "127.0.0.2:3270"`, `listen = ":3270" #!`), "host missing"},
		{"peers not array", repl(`peers = ["b@127.0.0.3:3270"]`, `peers = "b@127.0.0.3:3270" #!`), "expected an array of strings"},
		{"peer no name", repl(`peers = ["b@127.0.0.3:3270"]`, `peers = ["127.0.0.3:3270"] #!`), "not NAME@HOST:PORT"},
		{"peer empty name", repl(`peers = ["b@127.0.0.3:3270"]`, `peers = ["@127.0.0.3:3270"] #!`), "empty name"},
		{"peer name syntax", repl(`peers = ["b@127.0.0.3:3270"]`, `peers = ["b!@127.0.0.3:3270"] #!`), "use letters"},
		{"peer no port", repl(`peers = ["b@127.0.0.3:3270"]`, `peers = ["b@127.0.0.3"] #!`), "not HOST:PORT"},
		{"peer bad port", repl(`peers = ["b@127.0.0.3:3270"]`, `peers = ["b@127.0.0.3:99999"] #!`), "1 to 65535"},
		{"peer bad host", repl(`peers = ["b@127.0.0.3:3270"]`, `peers = ["b@a host:3270"] #!`), "must be an IP address"},
		{"peer bad host name", repl(`peers = ["b@127.0.0.3:3270"]`, `peers = ["b@gw_b.example:3270"] #!`), "not a host name"},
		{"self in peers", repl(`peers = ["b@127.0.0.3:3270"]`, `peers = ["b@127.0.0.3:3270", "a@127.0.0.4:3270"] #!`), `node name "a" used twice (first as cluster.node, this node)`},
		{"peer twice", repl(`peers = ["b@127.0.0.3:3270"]`, `peers = ["b@127.0.0.3:3270", "b@127.0.0.4:3270"] #!`), `node name "b" used twice (first as peer b@127.0.0.3:3270)`},
		{"peer address twice", repl(`peers = ["b@127.0.0.3:3270"]`, `peers = ["b@127.0.0.3:3270", "c@127.0.0.3:3270"] #!`), "already peer b's"},
		{"peer at own address", repl(`peers = ["b@127.0.0.3:3270"]`, `peers = ["b@127.0.0.2:3270"] #!`), "this node's listen address"},
		{"multi-line peers", repl(`peers = ["b@127.0.0.3:3270"]`, "peers = [ #!\n  \"b@127.0.0.3:3270\",\n  \"c\",\n]"), "not NAME@HOST:PORT"},
		{"degraded", addKey(`degraded = "ignore"`), `"ignore" is not one of serve, refuse-sync`},
		{"heartbeat zero", addKey(`heartbeat_interval = "0s"`), "more than 0"},
		{"heartbeat unitless", addKey(`heartbeat_interval = 1`), "needs a unit"},
		{"peer timeout garbage", addKey(`peer_timeout = "soon"`), "bad duration"},
		{"peer timeout short", addKey(`peer_timeout = "1s"`), "not longer than heartbeat_interval"},
		{"connect timeout negative", addKey(`connect_timeout = "-1s"`), "more than 0"},
		{"sync timeout huge", addKey(`sync_timeout = "1h"`), "at most 10m"},
		{"reconnect max < min", addKey(`reconnect_max = "10ms"`), "shorter than reconnect_min"},
		{"max lag small", addKey(`max_lag = "64KiB"`), "at least 1MiB"},
		{"max lag garbage", addKey(`max_lag = "lots"`), "bad size"},
		{"unknown key", addKey(`peer = ["b@127.0.0.3:3270"]`), `unknown key; did you mean "peers"?`},
		{"cluster not a table", "cluster = \"a\" #!\n" + nodeBase, "expected a table"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("test.toml", []byte(tc.src))
			if err == nil {
				t.Fatalf("accepted: %+v", c.Cluster)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("not ErrInvalid: %v", err)
			}
			problemAt(t, err, markedLine(t, tc.src), tc.want)
		})
	}
}

// Several problems of the table are reported at once, each at its line,
// in the form of every other problem.
func TestClusterProblemsAtOnce(t *testing.T) {
	src := `[cluster]
node = "a"
peers = ["a@127.0.0.3:3270", "b@127.0.0.4:3270", "b@127.0.0.5:3270"]
degraded = "panic"
`
	want := `c.toml:1: cluster.listen: missing (HOST:PORT of this node's peer link, e.g. "10.0.0.1:3270")
c.toml:3: cluster.peers: node name "a" used twice (first as cluster.node, this node)
c.toml:3: cluster.peers: node name "b" used twice (first as peer b@127.0.0.4:3270)
c.toml:4: cluster.degraded: "panic" is not one of serve, refuse-sync`
	_, err := Parse("c.toml", []byte(src))
	if err == nil || err.Error() != want {
		t.Errorf("got:\n%v\n\nwant:\n%s", err, want)
	}
}

func TestParsePeer(t *testing.T) {
	for s, want := range map[string]Peer{
		"b@127.0.0.3:3270":    {"b", "127.0.0.3:3270"},
		"gw-2@gw2.example:1":  {"gw-2", "gw2.example:1"},
		"n.1@[fd00::3]:3270":  {"n.1", "[fd00::3]:3270"},
		"N_1@localhost:65535": {"N_1", "localhost:65535"},
	} {
		got, err := ParsePeer(s)
		if err != nil || got != want || got.String() != s {
			t.Errorf("ParsePeer(%q) = %+v, %v", s, got, err)
		}
	}
	for _, s := range []string{"", "b", "@1.2.3.4:1", "b@", "b@1.2.3.4", "b@:1", "b@1.2.3.4:0", "b c@1.2.3.4:1", "b@x@1.2.3.4:1", "b@-x:1", "b@x..y:1"} {
		if p, err := ParsePeer(s); err == nil {
			t.Errorf("ParsePeer(%q) = %+v, want an error", s, p)
		}
	}
}

// A cluster node refuses a volume that is not on a shared (RBD) backing,
// at the backing's line, with the reason.
func TestClusterVolumesMustBeShared(t *testing.T) {
	src := strings.Replace(base, `backing = "v0.img"`, `backing = "v0.img" #!`, 1) + `
[cluster]
node = "a"
listen = "127.0.0.2:3270"
peers = ["b@127.0.0.3:3270"]
`
	_, err := Parse("a.toml", []byte(src))
	if err == nil {
		t.Fatal("a cluster node accepted a file-backed volume")
	}
	problemAt(t, err, markedLine(t, src), `"v0.img" is a local file or device, but this is a cluster node ([cluster]): the backing must be shared by every node`)
	// the same volume on a single node is fine
	if _, err := Parse("s.toml", []byte(base)); err != nil {
		t.Fatal(err)
	}
}

// A cluster node refuses the TCMU front end, at its line.
func TestClusterRefusesTCMU(t *testing.T) {
	src := clusterBase + "\n[tcmu]\nenabled = true #!\n"
	_, err := Parse("a.toml", []byte(src))
	if err == nil {
		t.Fatal("a cluster node accepted tcmu.enabled")
	}
	problemAt(t, err, markedLine(t, src), "not on a cluster node")
}
