package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/cachelun/cachelun/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// memReceiver is a Receiver that keeps, per sender and volume, the LSNs it
// persisted, in order, and checks that it never sees one twice or out of
// order.
type memReceiver struct {
	mu      sync.Mutex
	got     map[string]map[string][]uint64
	bytes   int64
	calls   int
	fail    error            // when set, Receive fails
	failAt  map[uint64]error // Receive of a batch holding this LSN fails, once
	delay   time.Duration    // per batch
	maxSeen map[string]uint64
	errs    []string
}

func newMemReceiver() *memReceiver {
	return &memReceiver{got: map[string]map[string][]uint64{}, maxSeen: map[string]uint64{}}
}

func (r *memReceiver) Receive(ctx context.Context, from string, batch []Shipment) error {
	if r.delay > 0 {
		select {
		case <-time.After(r.delay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.fail != nil {
		return r.fail
	}
	for _, s := range batch {
		if err := r.failAt[s.LSN]; err != nil {
			delete(r.failAt, s.LSN)
			return err
		}
	}
	m := r.got[from]
	if m == nil {
		m = map[string][]uint64{}
		r.got[from] = m
	}
	for _, s := range batch {
		k := from + "/" + s.Volume
		if s.LSN <= r.maxSeen[k] {
			r.errs = append(r.errs, fmt.Sprintf("%s: LSN %d after %d", k, s.LSN, r.maxSeen[k]))
		}
		r.maxSeen[k] = s.LSN
		if want := payloadFor(s.Volume, s.LSN); string(s.Payload) != want {
			r.errs = append(r.errs, fmt.Sprintf("%s LSN %d: payload %q, want %q", k, s.LSN, s.Payload, want))
		}
		m[s.Volume] = append(m[s.Volume], s.LSN)
		r.bytes += int64(len(s.Payload))
	}
	return nil
}

func (r *memReceiver) lsns(from, volume string) []uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]uint64(nil), r.got[from][volume]...)
}

func (r *memReceiver) persisted(from, volume string) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.maxSeen[from+"/"+volume]
}

func (r *memReceiver) check(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.errs {
		t.Error(e)
	}
}

func (r *memReceiver) callCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls
}

func payloadFor(volume string, lsn uint64) string { return fmt.Sprintf("%s:%d", volume, lsn) }

// listen opens a listener on host (127.0.0.2, 127.0.0.3, ... are loopback
// on Linux), or on 127.0.0.1 when that fails.
func listen(t testing.TB, host string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
	}
	return ln
}

// testConfig is a Config with short timeouts for node name on ln.
func testConfig(t *testing.T, name string, ln net.Listener, r Receiver) Config {
	return Config{
		Cluster: "test", Node: name, Listener: ln, Receiver: r,
		HeartbeatInterval: 50 * time.Millisecond, PeerTimeout: time.Second, ConnectTimeout: time.Second,
		ReconnectMin: 10 * time.Millisecond, ReconnectMax: 100 * time.Millisecond, SyncTimeout: 10 * time.Second,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Clock:  testkit.NewClock(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)),
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(b[:len(b)-1]))
	return len(b), nil
}

// testCluster is n nodes, each with every other as a peer.
type testCluster struct {
	nodes []*Node
	recv  []*memReceiver
	regs  []*prometheus.Registry
}

var nodeNames = []string{"a", "b", "c", "d"}

// startCluster starts n nodes a, b, c... on 127.0.0.2, 127.0.0.3, ...;
// mod may change each node's Config.
func startCluster(t *testing.T, n int, mod func(i int, c *Config)) *testCluster {
	t.Helper()
	lns := make([]net.Listener, n)
	for i := range n {
		lns[i] = listen(t, fmt.Sprintf("127.0.0.%d", i+2))
	}
	tc := &testCluster{}
	for i := range n {
		r := newMemReceiver()
		cfg := testConfig(t, nodeNames[i], lns[i], r)
		for j := range n {
			if j != i {
				cfg.Peers = append(cfg.Peers, Peer{Name: nodeNames[j], Addr: lns[j].Addr().String()})
			}
		}
		reg := prometheus.NewRegistry()
		cfg.Registry = reg
		if mod != nil {
			mod(i, &cfg)
		}
		nd, err := Start(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nd.Close() })
		tc.nodes = append(tc.nodes, nd)
		tc.recv = append(tc.recv, r)
		tc.regs = append(tc.regs, reg)
	}
	return tc
}

// waitState waits until the link is in state s.
func waitState(t *testing.T, l *Link, s State) {
	t.Helper()
	testkit.WaitFor(t, 10*time.Second, fmt.Sprintf("link to %s %s", l.Peer().Name, s), func() bool { return l.State() == s })
}
