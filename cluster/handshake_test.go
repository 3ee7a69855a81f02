package cluster

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cachelun/cachelun/internal/testkit"
)

// rawHello is the hello a well-behaved node "b" of cluster "test" sends
// to node "a".
func rawHello() Hello {
	return Hello{MinVersion: MinProtocolVersion, MaxVersion: ProtocolVersion, Incarnation: 42, Cluster: "test", From: "b", To: "a"}
}

func frameBytes(t MsgType, payload []byte) []byte {
	var b bytes.Buffer
	_ = writeFrame(&b, t, payload)
	return b.Bytes()
}

// exchange connects to addr, writes out, and returns the frame the node
// answers (0 if none) and whether it then closed the connection.
func exchange(t *testing.T, addr string, out []byte) (MsgType, []byte, bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(out); err != nil {
		t.Fatal(err)
	}
	fr := newFrameReader(c, DefaultMaxFrame)
	typ, p, err := fr.next()
	if err != nil {
		return 0, nil, true
	}
	_, _, err = fr.next()
	return typ, p, errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err)
}

func isReset(err error) bool { return err != nil && strings.Contains(err.Error(), "connection reset") }

// Each bad handshake of the "Bad input" is refused with its
// reason, sent back, counted and logged, the connection closed, and
// nothing else changes: the Receiver is never called, no session exists.
func TestHandshakeRefusals(t *testing.T) {
	tc := startCluster(t, 1, func(i int, c *Config) {
		c.Peers = []Peer{{Name: "b", Addr: "127.0.0.1:1"}} // a's own link to b never connects
	})
	a := tc.nodes[0]
	addr := a.Addr().String()
	hello := func(mod func(h *Hello)) []byte {
		h := rawHello()
		mod(&h)
		return frameBytes(MsgHello, h.encode())
	}
	badCRC := hello(func(*Hello) {})
	badCRC[len(badCRC)-1] ^= 0xff
	badMagic := hello(func(*Hello) {})
	copy(badMagic[HeaderSize:], "CLUNPEEX")
	binary.BigEndian.PutUint32(badMagic[8:], 0)
	fixCRC(badMagic)
	oldVersion := Hello{MinVersion: 0, MaxVersion: 0}
	newVersion := Hello{MinVersion: ProtocolVersion + 1, MaxVersion: ProtocolVersion + 3}
	cases := []struct {
		name   string
		out    []byte
		reason Reason
		detail string
	}{
		{"http", []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), ReasonGarbage, "bytes announced"},
		{"zeros", make([]byte, 64), ReasonGarbage, "unknown type 0"},
		{"bad checksum", badCRC, ReasonGarbage, "checksum"},
		{"bad magic", badMagic, ReasonGarbage, "bad magic"},
		{"not a hello", frameBytes(MsgShip, append(shipHeader("v", 1), "data"...)), ReasonGarbage, "first frame is a ship"},
		{"truncated hello", frameBytes(MsgHello, rawHello().encode()[:20]), ReasonGarbage, "short"},
		{"hello with trailing bytes", frameBytes(MsgHello, append(rawHello().encode(), 0)), ReasonGarbage, "trailing"},
		{"other cluster", hello(func(h *Hello) { h.Cluster = "prod" }), ReasonOtherCluster, `cluster "prod", this node in "test"`},
		{"unknown node", hello(func(h *Hello) { h.From = "z" }), ReasonUnknownNode, `node "z" is not among`},
		{"wrong node", hello(func(h *Hello) { h.To = "c" }), ReasonWrongNode, `expected node "c", this is node "a"`},
		{"own name", hello(func(h *Hello) { h.From = "a" }), ReasonNameInUse, "this node's own name"},
		{"older version", frameBytes(MsgHello, oldVersion.encode()), ReasonOlderVersion, "versions 0..0; this node 1..1"},
		{"newer version", frameBytes(MsgHello, newVersion.encode()), ReasonNewerVersion, "versions 2..4; this node 1..1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			typ, p, closed := exchange(t, addr, c.out)
			if typ != MsgRefuse {
				t.Fatalf("answer: %v, want a refusal", typ)
			}
			rf, err := decodeRefusal(p)
			if err != nil {
				t.Fatal(err)
			}
			if rf.Reason != c.reason || !strings.Contains(rf.Detail, c.detail) {
				t.Errorf("refusal %s %q, want %s containing %q", rf.Reason, rf.Detail, c.reason, c.detail)
			}
			if !closed {
				t.Errorf("connection left open after the refusal")
			}
		})
	}
	counts := map[Reason]int{}
	for _, c := range cases {
		counts[c.reason]++
	}
	for r, n := range counts {
		if got := testutil.ToFloat64(refusalCounter(t, tc.regs[0], "inbound", r)); got != float64(n) {
			t.Errorf("refusals %s: %v, want %d", r, got, n)
		}
	}
	s := a.Snapshot()
	if s.Peers[0].Inbound || s.Peers[0].Received != 0 || tc.recv[0].callCount() != 0 || s.Refused["garbage"] != 7 {
		t.Errorf("a refused handshake changed something: %+v, %d Receive calls", s, tc.recv[0].callCount())
	}
}

func fixCRC(f []byte) {
	var b bytes.Buffer
	_ = writeFrame(&b, MsgType(f[4]), f[HeaderSize:])
	copy(f, b.Bytes())
}

func refusalCounter(t *testing.T, reg *prometheus.Registry, dir string, r Reason) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "cachelun_cluster_handshake_refusals_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var d, rs string
			for _, lp := range m.GetLabel() {
				switch lp.GetName() {
				case "direction":
					d = lp.GetValue()
				case "reason":
					rs = lp.GetValue()
				}
			}
			if d == dir && rs == r.String() {
				c := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
				c.Add(m.GetCounter().GetValue())
				return c
			}
		}
	}
	t.Fatalf("no refusal counter %s %s", dir, r)
	return nil
}

// A node name used twice: while b's link is connected, another process
// calling itself b is refused; the same process (incarnation) dialing
// again replaces its old connection.
func TestNameUsedTwice(t *testing.T) {
	tc := startCluster(t, 1, func(i int, c *Config) { c.Peers = []Peer{{Name: "b", Addr: "127.0.0.1:1"}} })
	addr := tc.nodes[0].Addr().String()
	first, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if _, err := first.Write(frameBytes(MsgHello, rawHello().encode())); err != nil {
		t.Fatal(err)
	}
	fr := newFrameReader(first, DefaultMaxFrame)
	if typ, p, err := fr.next(); err != nil || typ != MsgWelcome {
		t.Fatalf("first b: %v %v", typ, err)
	} else if w, err := decodeWelcome(p); err != nil || w.Node != "a" || w.Cluster != "test" || w.Version != ProtocolVersion {
		t.Fatalf("welcome %+v %v", w, err)
	}
	other := rawHello()
	other.Incarnation = 43
	typ, p, closed := exchange(t, addr, frameBytes(MsgHello, other.encode()))
	rf, _ := decodeRefusal(p)
	if typ != MsgRefuse || rf.Reason != ReasonNameInUse || !strings.Contains(rf.Detail, "another process") || !closed {
		t.Errorf("second b: %v %+v closed=%v", typ, rf, closed)
	}
	// the first connection still works
	ship := frameBytes(MsgShip, append(shipHeader("v", 1), "v:1"...))
	if _, err := first.Write(ship); err != nil {
		t.Fatal(err)
	}
	if typ, p, err := fr.next(); err != nil || typ != MsgAck {
		t.Fatalf("ack: %v %v", typ, err)
	} else if a, _ := decodeAck(p, false); a.LSN != 1 {
		t.Errorf("ack %+v", a)
	}
	// the same incarnation again: the old connection is replaced
	again, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if _, err := again.Write(frameBytes(MsgHello, rawHello().encode())); err != nil {
		t.Fatal(err)
	}
	fr2 := newFrameReader(again, DefaultMaxFrame)
	if typ, _, err := fr2.next(); err != nil || typ != MsgWelcome {
		t.Fatalf("reconnect: %v %v", typ, err)
	}
	_ = first.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := fr.next(); err == nil {
		t.Errorf("the replaced connection is still open")
	}
	// a retransmission on the new connection is acknowledged, not persisted again
	if _, err := again.Write(ship); err != nil {
		t.Fatal(err)
	}
	if typ, _, err := fr2.next(); err != nil || typ != MsgAck {
		t.Fatalf("ack: %v %v", typ, err)
	}
	if got := tc.recv[0].lsns("b", "v"); len(got) != 1 {
		t.Errorf("receiver got %v", got)
	}
}

// Garbage after the handshake closes the connection and reaches neither
// the Receiver nor anything else; it is counted.
func TestGarbageAfterHandshake(t *testing.T) {
	tc := startCluster(t, 1, func(i int, c *Config) { c.Peers = []Peer{{Name: "b", Addr: "127.0.0.1:1"}} })
	addr := tc.nodes[0].Addr().String()
	for _, bad := range [][]byte{
		[]byte("garbage garbage garbage"),
		frameBytes(MsgShip, []byte{0}),                                       // a ship with an empty volume name
		frameBytes(MsgShip, shipHeader("v", 0)),                              // LSN 0
		frameBytes(MsgWelcome, Welcome{Cluster: "test", Node: "b"}.encode()), // a frame the dialer never sends
		frameBytes(MsgHeartbeat, []byte{1, 2, 3}),
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		h := rawHello()
		if _, err := c.Write(frameBytes(MsgHello, h.encode())); err != nil {
			t.Fatal(err)
		}
		fr := newFrameReader(c, DefaultMaxFrame)
		if typ, _, err := fr.next(); typ != MsgWelcome {
			t.Fatalf("%v %v", typ, err)
		}
		if _, err := c.Write(bad); err != nil {
			t.Fatal(err)
		}
		if typ, _, err := fr.next(); err == nil {
			t.Errorf("%q: answered with a %s instead of closing", bad, typ)
		}
		c.Close()
	}
	testkit.WaitFor(t, 5*time.Second, "sessions to end", func() bool { return !tc.nodes[0].Snapshot().Peers[0].Inbound })
	if tc.recv[0].callCount() != 0 {
		t.Errorf("garbage reached the Receiver")
	}
	if got := testutil.ToFloat64(tc.nodes[0].metrics.protoErr); got != 5 {
		t.Errorf("protocol errors: %v", got)
	}
}

// The dialing side: a peer of another cluster refuses a's link, which
// stays down, says why, counts the refusal, and ships nothing.
func TestLinkRefusedByPeer(t *testing.T) {
	tc := startCluster(t, 2, func(i int, c *Config) {
		if i == 1 {
			c.Cluster = "other"
		}
	})
	l := tc.nodes[0].Link("b")
	testkit.WaitFor(t, 10*time.Second, "a refusal", func() bool { return l.Snapshot().LastRefusal == "other_cluster" })
	s := l.Snapshot()
	if s.State != StateDown || !strings.Contains(s.LastError, `cluster "test", this node in "other"`) {
		t.Errorf("refused link: %+v", s)
	}
	if got := testutil.ToFloat64(refusalCounter(t, tc.regs[0], "outbound", ReasonOtherCluster)); got < 1 {
		t.Errorf("outbound refusals: %v", got)
	}
	if got := testutil.ToFloat64(refusalCounter(t, tc.regs[1], "inbound", ReasonOtherCluster)); got < 1 {
		t.Errorf("inbound refusals: %v", got)
	}
	if tc.recv[1].callCount() != 0 || tc.recv[0].callCount() != 0 {
		t.Errorf("a refused link delivered shipments")
	}
}

// A peer configured at the address of another node (a's peer "b" is in
// fact node c): wrong_node, by the accepting side.
func TestLinkWrongNode(t *testing.T) {
	tc := startCluster(t, 3, func(i int, c *Config) {
		if i == 0 {
			c.Peers[0].Addr = c.Peers[1].Addr // "b" at c's address
		}
	})
	l := tc.nodes[0].Link("b")
	testkit.WaitFor(t, 10*time.Second, "a refusal", func() bool { return l.Snapshot().LastRefusal == "wrong_node" })
	if l.State() != StateDown {
		t.Errorf("state %s", l.State())
	}
}

// A welcome that does not match what the dialer expects is refused by the
// dialer (direction inbound on its side).
func TestDialerChecksWelcome(t *testing.T) {
	fake := listen(t, "127.0.0.3")
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := fake.Accept()
			if err != nil {
				return
			}
			fr := newFrameReader(c, DefaultMaxFrame)
			_, _, _ = fr.next()
			_ = writeFrame(c, MsgWelcome, Welcome{Version: ProtocolVersion, Cluster: "test", Node: "impostor"}.encode())
			_, _, _ = fr.next() // the dialer's refusal
			c.Close()
		}
	}()
	cfg := testConfig(t, "a", listen(t, "127.0.0.2"), newMemReceiver())
	cfg.Peers = []Peer{{Name: "b", Addr: fake.Addr().String()}}
	nd, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	l := nd.Link("b")
	testkit.WaitFor(t, 10*time.Second, "a refusal", func() bool { return l.Snapshot().LastRefusal == "wrong_node" })
	if s := l.Snapshot(); s.State != StateDown || !strings.Contains(s.LastError, `found "impostor"`) {
		t.Errorf("%+v", s)
	}
	nd.Close()
	fake.Close()
	<-done
}

// A client that connects and says nothing is closed after the connect
// timeout; a flood of them does not keep a real peer out for longer.
func TestSilentClientsClosed(t *testing.T) {
	tc := startCluster(t, 2, func(i int, c *Config) { c.ConnectTimeout = 300 * time.Millisecond })
	addr := tc.nodes[1].Addr().String()
	var silent []net.Conn
	defer func() {
		for _, c := range silent {
			c.Close()
		}
	}()
	for range maxHandshakes + 10 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		silent = append(silent, c)
	}
	start := time.Now()
	_ = silent[0].SetReadDeadline(time.Now().Add(5 * time.Second))
	typ, p, err := newFrameReader(silent[0], DefaultMaxFrame).next()
	if err == nil {
		rf, _ := decodeRefusal(p)
		if typ != MsgRefuse || rf.Reason != ReasonGarbage || !strings.Contains(rf.Detail, "timeout") {
			t.Errorf("silent client got a %s %+v", typ, rf)
		}
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("silent client closed after %v", d)
	}
	// the real peer, made to dial again during the flood, gets through
	// once the silent ones are gone
	l := tc.nodes[0].Link("b")
	waitState(t, l, StateInSync)
	for range maxHandshakes {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		silent = append(silent, c)
	}
	b := tc.nodes[1]
	b.mu.Lock()
	if s := b.inbound["a"]; s != nil {
		s.conn.Close()
	}
	b.mu.Unlock()
	if err := l.Replicate(context.Background(), "v", 1, []byte("v:1")); err != nil {
		t.Fatal(err)
	}
}
