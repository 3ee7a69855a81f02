package cluster

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cachelun/cachelun/conf"
)

// The [cluster] table of a configuration becomes a Config.
func TestConfigFrom(t *testing.T) {
	c, err := conf.Parse("a.toml", []byte(`
[cluster]
node = "a"
listen = "127.0.0.2:3270"
peers = ["b@127.0.0.3:3270", "c@gw-c.example:3270"]
degraded = "refuse-sync"
sync_timeout = "2s"
`))
	if err != nil {
		t.Fatal(err)
	}
	cfg := ConfigFrom(c.Cluster)
	if cfg.Cluster != "cachelun" || cfg.Node != "a" || cfg.Listen != "127.0.0.2:3270" || cfg.Degraded != RefuseSync ||
		cfg.SyncTimeout != 2*time.Second || cfg.HeartbeatInterval != time.Second || cfg.PeerTimeout != 5*time.Second ||
		cfg.MaxLag != 64<<20 || !slices.Equal(cfg.Peers, []Peer{{"b", "127.0.0.3:3270"}, {"c", "gw-c.example:3270"}}) {
		t.Errorf("%+v", cfg)
	}
}

func TestStartRefusesBadConfig(t *testing.T) {
	r := newMemReceiver()
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{Node: "", Listen: "127.0.0.1:0", Receiver: r}, "node name"},
		{Config{Node: "a", Receiver: r}, "no listen address"},
		{Config{Node: "a", Listen: "127.0.0.1:0"}, "no Receiver"},
		{Config{Node: "a", Listen: "127.0.0.1:0", Receiver: r, Peers: []Peer{{"a", "127.0.0.1:1"}}}, `"a" used twice`},
		{Config{Node: "a", Listen: "127.0.0.1:0", Receiver: r, Peers: []Peer{{"b", "x:1"}, {"b", "y:1"}}}, `"b" used twice`},
		{Config{Node: "a", Listen: "127.0.0.1:0", Receiver: r, Cluster: "a b"}, "cluster name"},
		{Config{Node: "a", Listen: "127.0.0.1:0", Receiver: r, Degraded: "maybe"}, "degraded policy"},
		{Config{Node: "a", Listen: "127.0.0.1:0", Receiver: r, HeartbeatInterval: time.Second, PeerTimeout: time.Second}, "not longer"},
	} {
		if nd, err := Start(context.Background(), c.cfg); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), c.want) {
			if nd != nil {
				nd.Close()
			}
			t.Errorf("%+v: %v, want %q", c.cfg, err, c.want)
		}
	}
	// a listen address in use
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	reg := prometheus.NewRegistry()
	if _, err := Start(context.Background(), Config{Node: "a", Listen: ln.Addr().String(), Receiver: r, Registry: reg}); err == nil {
		t.Fatal("started on an address in use")
	}
	// and its metrics were not left registered
	nd, err := Start(context.Background(), Config{Node: "a", Listen: "127.0.0.1:0", Receiver: r, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	nd.Close()
	// nor after Close
	nd, err = Start(context.Background(), Config{Node: "a", Listen: "127.0.0.1:0", Receiver: r, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	nd.Close()
}

// Every metric exists from the start, before a peer is reached.
func TestMetricsExistAtStart(t *testing.T) {
	tc := startCluster(t, 1, func(i int, c *Config) { c.Peers = []Peer{{Name: "b", Addr: "127.0.0.1:1"}} })
	mfs, err := tc.regs[0].Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, mf := range mfs {
		got[mf.GetName()] = len(mf.GetMetric())
	}
	want := map[string]int{
		"cachelun_cluster_peer_state": 4, "cachelun_cluster_peer_inbound_connected": 1,
		"cachelun_cluster_replication_lag_lsn": 1, "cachelun_cluster_replication_lag_bytes": 1,
		"cachelun_cluster_replication_lag_shipments": 1, "cachelun_cluster_replication_oldest_unacked_seconds": 1,
		"cachelun_cluster_reconnects_total": 1, "cachelun_cluster_shipped_bytes_total": 1,
		"cachelun_cluster_out_of_sync_total": 1, "cachelun_cluster_received_shipments_total": 1,
		"cachelun_cluster_duplicate_shipments_total": 1, "cachelun_cluster_degraded": 1,
		"cachelun_cluster_handshake_refusals_total": 2 * len(Reasons()), "cachelun_cluster_protocol_errors_total": 1,
	}
	for name, n := range want {
		if got[name] != n {
			t.Errorf("%s: %d series, want %d", name, got[name], n)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("undocumented metric %s", name)
		}
	}
}
