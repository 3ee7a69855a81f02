package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/testkit"
)

// shipMany sends LSNs 1..n of volume on l without waiting, then checks
// that each completes, in order, and only once the receiver persisted it.
func shipMany(t *testing.T, l *Link, volume string, n int, persisted func() uint64) {
	t.Helper()
	ps := make([]*Pending, n)
	for i := range n {
		lsn := uint64(i + 1)
		p, err := l.Send(volume, lsn, []byte(payloadFor(volume, lsn)))
		if err != nil {
			t.Fatalf("send %s %d: %v", volume, lsn, err)
		}
		ps[i] = p
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i, p := range ps {
		if err := p.Wait(ctx); err != nil {
			t.Fatalf("%s LSN %d: %v", volume, i+1, err)
		}
		if got := persisted(); got < uint64(i+1) {
			t.Fatalf("%s LSN %d acknowledged before it was persisted (receiver at %d)", volume, i+1, got)
		}
		if i > 0 {
			select {
			case <-ps[i-1].Done():
			default:
				t.Fatalf("%s LSN %d done before %d", volume, i+1, i)
			}
		}
	}
}

func wantLSNs(t *testing.T, got []uint64, n int) {
	t.Helper()
	if len(got) != n {
		t.Fatalf("receiver got %d LSNs, want %d", len(got), n)
	}
	for i, l := range got {
		if l != uint64(i+1) {
			t.Fatalf("receiver's LSN #%d is %d", i, l)
		}
	}
}

// Two nodes ship 10k payloads each way, pipelined; every ack arrives in
// order and only after the receiver persisted the shipment.
func TestTwoNodesPipelined(t *testing.T) {
	n := 10000
	if testkit.RaceEnabled {
		n = 4000
	}
	tc := startCluster(t, 2, nil)
	a, b := tc.nodes[0], tc.nodes[1]
	waitState(t, a.Link("b"), StateInSync)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		shipMany(t, b.Link("a"), "vb", n/10, func() uint64 { return tc.recv[0].persisted("b", "vb") })
	}()
	shipMany(t, a.Link("b"), "v1", n, func() uint64 { return tc.recv[1].persisted("a", "v1") })
	wg.Wait()
	wantLSNs(t, tc.recv[1].lsns("a", "v1"), n)
	wantLSNs(t, tc.recv[0].lsns("b", "vb"), n/10)
	tc.recv[0].check(t)
	tc.recv[1].check(t)
	s := a.Snapshot()
	if len(s.Peers) != 1 || s.Peers[0].State != StateInSync || s.Peers[0].LagShipments != 0 || s.Peers[0].LagBytes != 0 ||
		s.Peers[0].LagLSN != 0 || s.Peers[0].Acked != uint64(n) || !s.Peers[0].Inbound || s.Peers[0].Received != uint64(n/10) || !s.AllInSync || s.RefuseSync {
		t.Errorf("snapshot: %+v", s)
	}
	if v := s.Peers[0].Volumes; len(v) != 1 || v[0] != (VolumeLag{Volume: "v1", Shipped: uint64(n), Acked: uint64(n)}) {
		t.Errorf("volumes: %+v", v)
	}
	if tc.recv[1].callCount() >= n {
		t.Logf("no batching: %d Receive calls for %d shipments", tc.recv[1].callCount(), n)
	}
}

// Three nodes, each shipping two volumes to both others at once.
func TestThreeNodes(t *testing.T) {
	const n = 1000
	tc := startCluster(t, 3, nil)
	var wg sync.WaitGroup
	for i, nd := range tc.nodes {
		for _, l := range nd.Links() {
			j := slices.Index(nodeNames, l.Peer().Name)
			for _, vol := range []string{"x", "y"} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					from := nodeNames[i]
					shipMany(t, l, vol, n, func() uint64 { return tc.recv[j].persisted(from, vol) })
				}()
			}
		}
	}
	wg.Wait()
	for j, r := range tc.recv {
		r.check(t)
		for i := range tc.nodes {
			if i == j {
				continue
			}
			for _, vol := range []string{"x", "y"} {
				wantLSNs(t, r.lsns(nodeNames[i], vol), n)
			}
		}
	}
	for _, nd := range tc.nodes {
		s := nd.Snapshot()
		if !s.AllInSync || len(s.Peers) != 2 {
			t.Errorf("%s: %+v", s.Node, s)
		}
	}
}

// trackingDialer records the connections a link dials, so that a test can
// kill them.
type trackingDialer struct {
	mu    sync.Mutex
	conns []net.Conn
}

func (d *trackingDialer) dial(ctx context.Context, addr string) (net.Conn, error) {
	var nd net.Dialer
	c, err := nd.DialContext(ctx, "tcp", addr)
	if err == nil {
		d.mu.Lock()
		d.conns = append(d.conns, c)
		d.mu.Unlock()
	}
	return c, err
}

func (d *trackingDialer) killLast() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.conns[len(d.conns)-1].Close()
	return len(d.conns)
}

// Connections killed mid-stream, from the dialing side and from the
// accepting side: every shipment is acknowledged, the receiver sees every
// LSN once and in order (retransmissions are deduplicated), and the link
// counts its reconnects.
func TestReconnectMidStream(t *testing.T) {
	n := 6000
	if testkit.RaceEnabled {
		n = 3000
	}
	d := &trackingDialer{}
	tc := startCluster(t, 2, func(i int, c *Config) {
		if i == 0 {
			c.Dial = d.dial
		}
	})
	a, b := tc.nodes[0], tc.nodes[1]
	l := a.Link("b")
	waitState(t, l, StateInSync)
	const waves = 8
	var ps []*Pending
	kills, inFlight := 0, 0
	for k := range waves {
		for range n / waves {
			lsn := uint64(len(ps) + 1)
			p, err := l.Send("v", lsn, []byte(payloadFor("v", lsn)))
			if err != nil {
				t.Fatal(err)
			}
			ps = append(ps, p)
		}
		inFlight += l.Snapshot().LagShipments
		// kill the connection with the wave in flight
		if k%2 == 0 {
			d.killLast() // the dialer's socket
		} else {
			b.mu.Lock() // the acceptor's socket
			if s := b.inbound["a"]; s != nil {
				s.conn.Close()
			}
			b.mu.Unlock()
		}
		kills++
		testkit.WaitFor(t, 20*time.Second, "a reconnect", func() bool { return l.Snapshot().Reconnects >= uint64(kills) })
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i, p := range ps {
		if err := p.Wait(ctx); err != nil {
			t.Fatalf("LSN %d: %v", i+1, err)
		}
	}
	wantLSNs(t, tc.recv[1].lsns("a", "v"), n)
	tc.recv[1].check(t)
	waitState(t, l, StateInSync)
	s := l.Snapshot()
	if s.Reconnects != uint64(kills) || s.LagShipments != 0 || s.Acked != uint64(n) {
		t.Errorf("after %d kills: %+v", kills, s)
	}
	t.Logf("%d kills with %d shipments in flight in all, %d reconnects, %d retransmissions dropped by the receiver",
		kills, inFlight, s.Reconnects, b.Snapshot().Peers[0].Duplicates)
}

// A peer that cannot be reached: shipments wait, and when one waited
// longer than the sync timeout the peer is out of sync: they fail, Send
// fails at once, the snapshot says why and gives the refuse-sync
// decision. Resync hands back the acknowledged LSNs and lets shipments
// through again.
func TestOutOfSyncOnTimeout(t *testing.T) {
	dead := listen(t, "127.0.0.3")
	deadAddr := dead.Addr().String()
	dead.Close() // nothing listens: dials are refused
	ln := listen(t, "127.0.0.2")
	clock := testkit.NewClock(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))
	cfg := testConfig(t, "a", ln, newMemReceiver())
	cfg.Peers = []Peer{{Name: "b", Addr: deadAddr}}
	cfg.Clock = clock
	cfg.SyncTimeout = time.Second
	cfg.Degraded = RefuseSync
	nd, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer nd.Close()
	l := nd.Link("b")
	p, err := l.Send("v", 1, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	if s := nd.Snapshot(); s.Peers[0].State != StateDown || s.AllInSync || !s.RefuseSync || s.Peers[0].LagShipments != 1 || s.Peers[0].LagBytes != 1 {
		t.Errorf("down: %+v", s)
	}
	select {
	case <-p.Done():
		t.Fatal("done before the sync timeout")
	case <-time.After(100 * time.Millisecond):
	}
	clock.Add(1500 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Wait(ctx); !errors.Is(err, ErrOutOfSync) || !strings.Contains(err.Error(), "sync_timeout") {
		t.Fatalf("want ErrOutOfSync for the sync timeout, got %v", err)
	}
	if _, err := l.Send("v", 2, []byte("y")); !errors.Is(err, ErrOutOfSync) {
		t.Errorf("send while out of sync: %v", err)
	}
	s := nd.Snapshot().Peers[0]
	if s.State != StateOutOfSync || !strings.Contains(s.OutOfSyncReason, "LSN 1") || s.LagShipments != 0 || s.OutOfSyncTimes != 1 || s.LastError == "" {
		t.Errorf("out of sync: %+v", s)
	}
	acked := l.Resync()
	if acked["v"] != 0 || len(acked) != 1 {
		t.Errorf("resync: %v", acked)
	}
	if l.State() != StateDown {
		t.Errorf("after resync: %s", l.State())
	}
	l.ResyncDone()
	if s := nd.Snapshot(); s.Peers[0].State != StateDown || !s.RefuseSync {
		t.Errorf("resync done, peer down: %+v", s)
	}
	if _, err := l.Send("v", 1, []byte("x")); err != nil {
		t.Errorf("re-shipping after resync: %v", err)
	}
}

// Unacknowledged bytes beyond max_lag put the peer out of sync at once.
func TestOutOfSyncOnLag(t *testing.T) {
	dead := listen(t, "127.0.0.3")
	deadAddr := dead.Addr().String()
	dead.Close()
	cfg := testConfig(t, "a", listen(t, "127.0.0.2"), newMemReceiver())
	cfg.Peers = []Peer{{Name: "b", Addr: deadAddr}}
	cfg.MaxLag = 1 << 20
	nd, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer nd.Close()
	l := nd.Link("b")
	p, err := l.Send("v", 1, make([]byte, 600<<10))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Send("v", 2, make([]byte, 600<<10)); !errors.Is(err, ErrOutOfSync) || !strings.Contains(err.Error(), "max_lag") {
		t.Fatalf("want ErrOutOfSync for max_lag, got %v", err)
	}
	if err := p.Err(); !errors.Is(err, ErrOutOfSync) {
		t.Errorf("the queued shipment: %v", err)
	}
}

// A receiver that fails to persist: the peer nacks, the sender marks it
// out of sync with the receiver's reason; nothing is acknowledged.
func TestOutOfSyncOnNack(t *testing.T) {
	tc := startCluster(t, 2, nil)
	tc.recv[1].mu.Lock()
	tc.recv[1].fail = errors.New("mirror full")
	tc.recv[1].mu.Unlock()
	l := tc.nodes[0].Link("b")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := l.Replicate(ctx, "v", 1, []byte("v:1"))
	if !errors.Is(err, ErrOutOfSync) || !strings.Contains(err.Error(), "mirror full") {
		t.Fatalf("want ErrOutOfSync with the receiver's reason, got %v", err)
	}
	if s := tc.nodes[1].Snapshot().Peers[0]; s.ReceiveFailures != 1 || s.Received != 0 {
		t.Errorf("receiver side: %+v", s)
	}
}

// Send's own refusals.
func TestSendRefusals(t *testing.T) {
	tc := startCluster(t, 2, func(i int, c *Config) {
		c.MaxFrame = 8 << 10
		// b acknowledges a batch 400 ms after it arrives, so LSN 7 is
		// still unacknowledged when LSN 6 follows it (an LSN already
		// acknowledged is done at once, not refused)
		c.Receiver.(*memReceiver).delay = 400 * time.Millisecond
	})
	l := tc.nodes[0].Link("b")
	ctx := context.Background()
	if err := l.Replicate(ctx, "v", 5, []byte("v:5")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		vol  string
		lsn  uint64
		data []byte
		want error
	}{
		{"v", 0, nil, ErrLSNOrder},
		{"", 1, nil, ErrBadName},
		{"a b", 1, nil, ErrBadName},
		{strings.Repeat("v", 256), 1, nil, ErrBadName},
		{"v", 6, make([]byte, 8<<10), ErrTooLarge},
	} {
		if _, err := l.Send(c.vol, c.lsn, c.data); !errors.Is(err, c.want) {
			t.Errorf("Send(%q, %d, %d bytes) = %v, want %v", c.vol, c.lsn, len(c.data), err, c.want)
		}
	}
	if p, err := l.Send("v", 7, []byte("v:7")); err != nil {
		t.Fatal(err)
	} else if _, err := l.Send("v", 6, []byte("v:6")); !errors.Is(err, ErrLSNOrder) {
		t.Errorf("LSN 6 after 7: %v", err)
	} else if err := p.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	// an LSN already acknowledged is done at once
	if p, err := l.Send("v", 3, []byte("v:3")); err != nil || p.Err() != nil {
		t.Errorf("old LSN: %v", err)
	} else {
		<-p.Done()
	}
	wantSeen := []uint64{5, 7}
	if got := tc.recv[1].lsns("a", "v"); !slices.Equal(got, wantSeen) {
		t.Errorf("receiver got %v, want %v", got, wantSeen)
	}
}

type echoHandler struct{ calls atomic.Int32 }

func (h *echoHandler) Handle(ctx context.Context, from, kind string, body []byte) ([]byte, error) {
	h.calls.Add(1)
	if kind == "fail" {
		return nil, errors.New("no such volume")
	}
	return []byte(fmt.Sprintf("%s %s %s", from, kind, body)), nil
}

func TestCall(t *testing.T) {
	h := &echoHandler{}
	tc := startCluster(t, 2, func(i int, c *Config) {
		if i == 1 {
			c.Handler = h
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ab, ba := tc.nodes[0].Link("b"), tc.nodes[1].Link("a")
	waitState(t, ab, StateInSync)
	waitState(t, ba, StateInSync)
	got, err := ab.Call(ctx, "move", []byte("db1"))
	if err != nil || string(got) != "a move db1" {
		t.Errorf("call: %q, %v", got, err)
	}
	if _, err := ab.Call(ctx, "fail", nil); !errors.Is(err, ErrRemote) || !strings.Contains(err.Error(), "no such volume") {
		t.Errorf("failing handler: %v", err)
	}
	if _, err := ba.Call(ctx, "move", nil); !errors.Is(err, ErrNoHandler) {
		t.Errorf("no handler: %v", err)
	}
	if _, err := ab.Call(ctx, "bad kind", nil); !errors.Is(err, ErrBadName) {
		t.Errorf("bad kind: %v", err)
	}
}

func TestCloseFailsPending(t *testing.T) {
	dead := listen(t, "127.0.0.3")
	deadAddr := dead.Addr().String()
	dead.Close()
	cfg := testConfig(t, "a", listen(t, "127.0.0.2"), newMemReceiver())
	cfg.Peers = []Peer{{Name: "b", Addr: deadAddr}}
	nd, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	p, err := nd.Link("b").Send("v", 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	nd.Close()
	if err := p.Err(); !errors.Is(err, ErrClosed) {
		t.Errorf("pending after close: %v", err)
	}
	if _, err := nd.Link("b").Send("v", 2, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("send after close: %v", err)
	}
}

// One shipment at a time (a FUA write's kset) is acknowledged at once:
// the receiving side never waits for a next frame to fill a batch.
func TestSequentialReplicateIsPrompt(t *testing.T) {
	tc := startCluster(t, 2, func(i int, c *Config) { c.PeerTimeout = 2 * time.Second })
	l := tc.nodes[0].Link("b")
	waitState(t, l, StateInSync)
	ctx := context.Background()
	start := time.Now()
	for i := uint64(1); i <= 50; i++ {
		if err := l.Replicate(ctx, "v", i, []byte(payloadFor("v", i))); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("50 sequential replications took %v", d)
	}
}

// A Receiver that fails in the middle of a stream: the peer nacks, the
// session ends so that nothing behind the failure is persisted, the
// sender is out of sync; after Resync it ships again from the
// acknowledged LSN and the receiver ends with every LSN, without a hole.
func TestNackLeavesNoHole(t *testing.T) {
	const n = 200
	tc := startCluster(t, 2, nil)
	tc.recv[1].mu.Lock()
	tc.recv[1].failAt = map[uint64]error{120: errors.New("write error")}
	tc.recv[1].mu.Unlock()
	l := tc.nodes[0].Link("b")
	waitState(t, l, StateInSync)
	var ps []*Pending
	for i := uint64(1); i <= n; i++ {
		p, err := l.Send("v", i, []byte(payloadFor("v", i)))
		if err != nil {
			break // out of sync already
		}
		ps = append(ps, p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i, p := range ps {
		err := p.Wait(ctx)
		if i+1 >= 120 && !errors.Is(err, ErrOutOfSync) {
			t.Fatalf("LSN %d: %v, want ErrOutOfSync", i+1, err)
		}
		if err == nil && tc.recv[1].persisted("a", "v") < uint64(i+1) {
			t.Fatalf("LSN %d acknowledged, not persisted", i+1)
		}
	}
	if got := tc.recv[1].persisted("a", "v"); got >= 120 {
		t.Fatalf("persisted up to %d past the failed LSN 120", got)
	}
	acked := l.Resync()
	from := acked["v"] + 1
	for i := from; i <= n; i++ {
		p, err := l.Send("v", i, []byte(payloadFor("v", i)))
		if err != nil {
			t.Fatalf("re-shipping %d: %v", i, err)
		}
		ps = append(ps, p)
	}
	// the session closed after the nack: the link may be reconnecting
	if st := l.State(); st != StateConnected && st != StateDown {
		t.Errorf("resyncing: %s, want connected or down", st)
	}
	l.ResyncDone()
	if err := ps[len(ps)-1].Wait(ctx); err != nil {
		t.Fatal(err)
	}
	wantLSNs(t, tc.recv[1].lsns("a", "v"), n)
	tc.recv[1].check(t)
	waitState(t, l, StateInSync)
}

// A sender that restarted (a new incarnation) is not deduplicated against
// what its previous incarnation shipped: its LSNs reach the Receiver.
func TestNewIncarnationNotDeduplicated(t *testing.T) {
	tc := startCluster(t, 2, nil)
	ctx := context.Background()
	for i := uint64(1); i <= 5; i++ {
		if err := tc.nodes[0].Link("b").Replicate(ctx, "v", i, []byte(payloadFor("v", i))); err != nil {
			t.Fatal(err)
		}
	}
	tc.nodes[0].Close()
	cfg := testConfig(t, "a", listen(t, "127.0.0.2"), newMemReceiver())
	cfg.Peers = []Peer{{Name: "b", Addr: tc.nodes[1].Addr().String()}}
	a2, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a2.Close()
	for i := uint64(1); i <= 3; i++ {
		if err := a2.Link("b").Replicate(ctx, "v", i, []byte(payloadFor("v", i))); err != nil {
			t.Fatal(err)
		}
	}
	if got := tc.recv[1].lsns("a", "v"); !slices.Equal(got, []uint64{1, 2, 3, 4, 5, 1, 2, 3}) {
		t.Errorf("receiver got %v", got)
	}
}

// A peer that completes the handshake and then goes silent (no acks, no
// heartbeat echoes) is dropped after the peer timeout and dialed again.
func TestSilentPeerDropped(t *testing.T) {
	fake := listen(t, "127.0.0.3")
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := fake.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			fr := newFrameReader(c, DefaultMaxFrame)
			_, _, _ = fr.next()
			_ = writeFrame(c, MsgWelcome, Welcome{Version: ProtocolVersion, Cluster: "test", Node: "b"}.encode())
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(io.Discard, c) // read, never answer
			}()
		}
	}()
	cfg := testConfig(t, "a", listen(t, "127.0.0.2"), newMemReceiver())
	cfg.Peers = []Peer{{Name: "b", Addr: fake.Addr().String()}}
	cfg.PeerTimeout = 300 * time.Millisecond
	nd, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	l := nd.Link("b")
	// the fake never closes a connection: only the link's peer timeout ends one
	testkit.WaitFor(t, 10*time.Second, "a reconnect after silence", func() bool { return l.Snapshot().Reconnects >= 1 })
	nd.Close()
	fake.Close()
	mu.Lock()
	for _, c := range conns {
		c.Close()
	}
	mu.Unlock()
	wg.Wait()
}

// A peer that restarted (a new incarnation) may have lost what it
// acknowledged (its cache file deleted): the link puts it out of sync and
// Resync reports that it holds nothing known.
func TestPeerRestartPutsOutOfSync(t *testing.T) {
	tc := startCluster(t, 2, nil)
	ctx := context.Background()
	l := tc.nodes[0].Link("b")
	for i := uint64(1); i <= 5; i++ {
		if err := l.Replicate(ctx, "v", i, []byte(payloadFor("v", i))); err != nil {
			t.Fatal(err)
		}
	}
	addr := tc.nodes[1].Addr().String()
	tc.nodes[1].Close()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen again on %s: %v", addr, err)
	}
	cfg := testConfig(t, "b", ln, newMemReceiver())
	cfg.Peers = []Peer{{Name: "a", Addr: tc.nodes[0].Addr().String()}}
	b2, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	waitState(t, l, StateOutOfSync)
	if s := l.Snapshot(); !strings.Contains(s.OutOfSyncReason, "restarted") {
		t.Errorf("reason: %q", s.OutOfSyncReason)
	}
	if acked := l.Resync(); acked["v"] != 0 {
		t.Errorf("resync after the peer's restart: %v", acked)
	}
	for i := uint64(1); i <= 5; i++ {
		if err := l.Replicate(ctx, "v", i, []byte(payloadFor("v", i))); err != nil {
			t.Fatal(err)
		}
	}
	l.ResyncDone()
	waitState(t, l, StateInSync)
}

// Node.Replicate applies the degraded policy: with one peer in sync and
// one out of sync, serve returns nil once the peer in sync has the
// shipment; refuse-sync returns ErrDegraded.
func TestNodeReplicatePolicy(t *testing.T) {
	for _, policy := range []Policy{Serve, RefuseSync} {
		t.Run(string(policy), func(t *testing.T) {
			tc := startCluster(t, 3, func(i int, c *Config) { c.Degraded = policy })
			a := tc.nodes[0]
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := a.Replicate(ctx, "v", 1, []byte("v:1")); err != nil {
				t.Fatal(err)
			}
			tc.recv[2].mu.Lock()
			tc.recv[2].fail = errors.New("mirror broken")
			tc.recv[2].mu.Unlock()
			err := a.Replicate(ctx, "v", 2, []byte("v:2"))
			if policy == Serve && err != nil {
				t.Errorf("serve: %v", err)
			}
			if policy == RefuseSync && (!errors.Is(err, ErrDegraded) || !errors.Is(err, ErrOutOfSync) || !strings.Contains(err.Error(), "mirror broken")) {
				t.Errorf("refuse-sync: %v", err)
			}
			// the peer in sync has it either way
			if got := tc.recv[1].persisted("a", "v"); got != 2 {
				t.Errorf("peer in sync persisted up to %d", got)
			}
			s := a.Snapshot()
			if s.AllInSync || s.RefuseSync != (policy == RefuseSync) || s.Policy != policy {
				t.Errorf("snapshot: %+v", s)
			}
			err = a.Replicate(ctx, "v", 3, []byte("v:3"))
			if (policy == Serve) != (err == nil) {
				t.Errorf("%s, next flush: %v", policy, err)
			}
		})
	}
}

// TestDeposedFailsWhateverThePolicy: a peer that refuses a volume's
// shipment with ErrDeposed (it owns the volume now) fails the wait under
// both policies — a deposed owner must not acknowledge a flush — and the
// volume is never shipped on that link again; other volumes are not
// affected once the link is back in sync.
func TestDeposedFailsWhateverThePolicy(t *testing.T) {
	for _, policy := range []Policy{Serve, RefuseSync} {
		t.Run(string(policy), func(t *testing.T) {
			tc := startCluster(t, 2, func(i int, c *Config) { c.Degraded = policy })
			a := tc.nodes[0]
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := a.Replicate(ctx, "v", 1, []byte("v:1")); err != nil {
				t.Fatal(err)
			}
			tc.recv[1].mu.Lock()
			tc.recv[1].fail = fmt.Errorf("b owns v: %w", ErrDeposed)
			tc.recv[1].mu.Unlock()
			if err := a.Replicate(ctx, "v", 2, []byte("v:2")); !errors.Is(err, ErrDeposed) {
				t.Fatalf("%s: flush after the peer refused as owner: %v, want ErrDeposed", policy, err)
			}
			tc.recv[1].mu.Lock()
			tc.recv[1].fail = nil
			tc.recv[1].mu.Unlock()
			l := a.Link("b")
			if acked := l.Resync(); acked == nil {
				t.Fatal("link not out of sync after the refusal")
			}
			l.ResyncDone()
			if err := a.Replicate(ctx, "v", 3, []byte("v:3")); !errors.Is(err, ErrDeposed) {
				t.Fatalf("%s: the deposed volume shipped again: %v", policy, err)
			}
			if err := a.Replicate(ctx, "w", 1, []byte("w:1")); err != nil {
				t.Fatalf("%s: another volume: %v", policy, err)
			}
			if got := tc.recv[1].persisted("a", "v"); got != 1 {
				t.Errorf("peer persisted v up to %d, want 1", got)
			}
		})
	}
}
