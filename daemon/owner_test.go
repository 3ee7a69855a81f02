package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeCeph is one image's exclusive lock as RBD keeps it: a holder (a
// lock owner address), the node it recorded, which clients still watch
// the image, and which were blocklisted when their lock was broken.
type fakeCeph struct {
	mu      sync.Mutex
	holder  string
	node    string
	alive   map[string]bool
	fenced  map[string]bool
	clients int
	behind  []string // the holder's record of the nodes behind
}

func newFakeCeph() *fakeCeph { return &fakeCeph{alive: map[string]bool{}, fenced: map[string]bool{}} }

// die kills the client addr: its watch expires (RBD's 30 s) only when
// expire is true.
func (c *fakeCeph) die(addr string, expire bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if expire {
		c.alive[addr] = false
	}
}

func (c *fakeCeph) holderAddr() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.holder
}

// fakeLock is one node's imageLock on a fakeCeph, with the rules of
// rbd.Open: a live holder is broken only when named (breakOwner, or this
// node's recorded dead predecessor); a holder without a watch is broken;
// breaking blocklists (fences) the old holder.
type fakeLock struct {
	c        *fakeCeph
	node     string
	recorded []string
	acquires int
}

func (l *fakeLock) Holder(context.Context) (lockHolder, error) {
	l.c.mu.Lock()
	defer l.c.mu.Unlock()
	if l.c.holder == "" {
		return lockHolder{}, nil
	}
	return lockHolder{Addr: l.c.holder, Node: l.c.node, Behind: l.c.behind, Alive: l.c.alive[l.c.holder]}, nil
}

func (l *fakeLock) Acquire(_ context.Context, breakOwner string) (heldLock, error) {
	c := l.c
	c.mu.Lock()
	defer c.mu.Unlock()
	l.acquires++
	if h := c.holder; h != "" && c.alive[h] && h != breakOwner && !slices.Contains(l.recorded, h) {
		return nil, fmt.Errorf("held by %s: %w", h, errImageLocked)
	}
	if c.holder != "" {
		c.fenced[c.holder] = true
	}
	c.clients++
	addr := fmt.Sprintf("%s#%d", l.node, c.clients)
	c.holder, c.node, c.alive[addr] = addr, l.node, true
	return &fakeHeld{c: c, addr: addr}, nil
}

type fakeHeld struct {
	c    *fakeCeph
	addr string
}

func (h *fakeHeld) Holds() (bool, error) {
	h.c.mu.Lock()
	defer h.c.mu.Unlock()
	return h.c.holder == h.addr, nil
}

// Release gives the lock back, as closing the image does (a clean
// shutdown or a failed attach).
func (h *fakeHeld) Release() error {
	h.c.mu.Lock()
	defer h.c.mu.Unlock()
	if h.c.holder == h.addr {
		h.c.holder, h.c.node = "", ""
	}
	h.c.alive[h.addr] = false
	return nil
}

// fakeNode is one node's ownership with its fake links, hooks and clock.
type fakeNode struct {
	t          *testing.T
	name       string
	o          *ownership
	lock       *fakeLock
	clock      *fakeClock
	links      map[string]linkView
	attached   []heldLock
	announced  int
	alua       []string // "state owner" at each change
	attachErr  error
	releaseErr error
	handedTo   []string
	reg        *prometheus.Registry
	metrics    *ownerMetrics
}

type linkView struct {
	heard   time.Time
	inbound bool
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

const testPeerTimeout = 5 * time.Second

func newFakeNode(t *testing.T, name string, peers []string, c *fakeCeph, clock *fakeClock) *fakeNode {
	n := &fakeNode{t: t, name: name, lock: &fakeLock{c: c, node: name}, clock: clock, links: map[string]linkView{},
		reg: prometheus.NewRegistry()}
	m, err := newOwnerMetrics(n.reg)
	if err != nil {
		t.Fatal(err)
	}
	n.metrics = m
	n.o = newOwnership(name, peers, testPeerTimeout, clock, slog.New(slog.DiscardHandler), func(p string) (time.Time, bool) {
		lv := n.links[p]
		return lv.heard, lv.inbound
	}, n, m)
	n.o.add("v0", n.lock)
	return n
}

func (n *fakeNode) attach(_ context.Context, _ string, h heldLock) error {
	if n.attachErr != nil {
		return n.attachErr
	}
	n.attached = append(n.attached, h)
	return nil
}

func (n *fakeNode) changed(_ string, st ownState, owner string) {
	n.alua = append(n.alua, string(st)+" "+owner)
}

func (n *fakeNode) announce(string) { n.announced++ }

// release closes the image: the lock is free.
func (n *fakeNode) release(context.Context, string) error {
	if n.releaseErr != nil {
		return n.releaseErr
	}
	return n.attached[len(n.attached)-1].Release()
}

func (n *fakeNode) handOver(_ context.Context, _, node string) error {
	n.handedTo = append(n.handedTo, node)
	return nil
}

func (n *fakeNode) state() ownershipView {
	v, _ := n.o.volumeView("v0")
	return v
}

func (n *fakeNode) want(st ownState, owner string) {
	n.t.Helper()
	if v := n.state(); v.State != st || v.Owner != owner {
		n.t.Fatalf("node %s: state %s owner %q (%s), want %s owner %q", n.name, v.State, v.Owner, v.Reason, st, owner)
	}
}

// linkUp says the peer was heard just now on both links.
func (n *fakeNode) linkUp(peer string) {
	n.links[peer] = linkView{heard: n.clock.Now(), inbound: true}
}

// linkDown says the peer's links closed (last heard now).
func (n *fakeNode) linkDown(peer string) {
	n.links[peer] = linkView{heard: n.links[peer].heard}
}

func twoNodes(t *testing.T) (*fakeCeph, *fakeClock, *fakeNode, *fakeNode) {
	c := newFakeCeph()
	clock := &fakeClock{now: time.Unix(1_800_000_000, 0)}
	a := newFakeNode(t, "a", []string{"b"}, c, clock)
	b := newFakeNode(t, "b", []string{"a"}, c, clock)
	ctx := context.Background()
	if err := a.o.start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.o.start(ctx); err != nil {
		t.Fatal(err)
	}
	a.linkUp("b")
	b.linkUp("a")
	return c, clock, a, b
}

// The first node to start takes the free lock and owns the volume; the
// second finds it held by a live node and is standby, naming the owner.
func TestOwnershipStartOwnerStandby(t *testing.T) {
	c, _, a, b := twoNodes(t)
	a.want(ownOwner, "a")
	b.want(ownStandby, "a")
	if len(a.attached) != 1 || len(b.attached) != 0 {
		t.Fatalf("attached: a %d, b %d", len(a.attached), len(b.attached))
	}
	if c.holderAddr() != "a#1" {
		t.Fatalf("holder %s", c.holderAddr())
	}
	if got := testutil.ToFloat64(a.metrics.volumes.WithLabelValues("owner")); got != 1 {
		t.Errorf("a's owner gauge %v", got)
	}
	if got := testutil.ToFloat64(b.metrics.volumes.WithLabelValues("standby")); got != 1 {
		t.Errorf("b's standby gauge %v", got)
	}
}

// While the owner's link is up the standby never breaks its lock, however
// long it waits, even when the owner's watch on the image expired (it is
// cut off from Ceph but not from its peer).
func TestOwnershipNoTakeoverWhileLinkUp(t *testing.T) {
	c, clock, a, b := twoNodes(t)
	ctx := context.Background()
	c.die("a#1", true)
	for range 20 {
		clock.advance(time.Second)
		a.linkUp("b")
		b.linkUp("a")
		a.o.step(ctx)
		b.o.step(ctx)
	}
	a.want(ownOwner, "a")
	b.want(ownStandby, "a")
	if b.lock.acquires != 1 || c.fenced["a#1"] {
		t.Fatalf("b tried the lock %d times; a fenced: %v", b.lock.acquires, c.fenced["a#1"])
	}
	// only the inbound link up (a's link to b) is enough too
	for range 10 {
		clock.advance(time.Second)
		b.links["a"] = linkView{inbound: true}
		b.o.step(ctx)
	}
	b.want(ownStandby, "a")
}

// The owner dies (SIGKILL: its watch lingers): the standby waits for the
// owner's link to be down for peer_timeout, then breaks the lock (fencing
// the dead owner), attaches the volume, takes the active/optimized state
// and tells the peers. A failover is counted.
func TestOwnershipTakeoverAfterPeerTimeout(t *testing.T) {
	c, clock, _, b := twoNodes(t)
	ctx := context.Background()
	b.linkDown("a") // a killed: its links close at once
	for _, d := range []time.Duration{time.Second, 2 * time.Second, time.Second, 900 * time.Millisecond} {
		clock.advance(d)
		b.o.step(ctx)
		b.want(ownStandby, "a")
	}
	if c.fenced["a#1"] {
		t.Fatal("a fenced before peer_timeout")
	}
	clock.advance(100 * time.Millisecond) // peer_timeout since a was last heard
	b.o.step(ctx)
	b.want(ownOwner, "b")
	if !c.fenced["a#1"] || c.holderAddr() != "b#2" {
		t.Fatalf("fenced %v holder %s", c.fenced, c.holderAddr())
	}
	if len(b.attached) != 1 || b.announced != 1 {
		t.Fatalf("attached %d announced %d", len(b.attached), b.announced)
	}
	if got := testutil.ToFloat64(b.metrics.failovers); got != 1 {
		t.Errorf("failovers %v", got)
	}
	if last := b.alua[len(b.alua)-1]; last != "owner b" {
		t.Errorf("ALUA changes %v", b.alua)
	}
	// a restarts (a new process, a new client): b owns and its link is
	// up, so a stays standby however long it runs
	a2 := newFakeNode(t, "a", []string{"b"}, c, clock)
	a2.lock.recorded = []string{"a#1"} // its data directory recorded its predecessor
	if err := a2.o.start(ctx); err != nil {
		t.Fatal(err)
	}
	a2.want(ownStandby, "b")
	for range 20 {
		clock.advance(time.Second)
		a2.linkUp("b")
		b.linkUp("a")
		a2.o.step(ctx)
		b.o.step(ctx)
	}
	a2.want(ownStandby, "b")
	b.want(ownOwner, "b")
}

// A node whose lock was broken goes unavailable at its next step, stops
// serving, and never takes the volume back (no ping-pong in a
// partition): its state is sticky until a restart.
func TestOwnershipLockLossUnavailable(t *testing.T) {
	c, clock, a, b := twoNodes(t)
	ctx := context.Background()
	// a partition between a and b; both still reach Ceph
	a.linkDown("b")
	b.linkDown("a")
	clock.advance(testPeerTimeout)
	b.o.step(ctx)
	b.want(ownOwner, "b")
	if !c.fenced["a#1"] {
		t.Fatal("a not fenced by the takeover")
	}
	a.o.step(ctx)
	a.want(ownUnavailable, "")
	if got := testutil.ToFloat64(a.metrics.lockLosses); got != 1 {
		t.Errorf("lock losses %v", got)
	}
	if last := a.alua[len(a.alua)-1]; last != "unavailable " {
		t.Errorf("a's changes %v", a.alua)
	}
	for range 20 {
		clock.advance(time.Second)
		a.o.step(ctx)
		b.o.step(ctx)
	}
	a.want(ownUnavailable, "")
	b.want(ownOwner, "b")
	if a.lock.acquires != 1 {
		t.Errorf("the fenced node tried the lock again (%d acquires)", a.lock.acquires)
	}
}

// Partitions in every order: at every step at most one node holds the
// lock, and a node that believes it owns the volume without holding the
// lock has been fenced (its writes fail at the OSDs) — no split brain.
func TestOwnershipPartitions(t *testing.T) {
	for _, tc := range []struct {
		name string
		// per step: is the link between a and b up?
		up func(i int) bool
	}{
		{"partition", func(i int) bool { return i < 3 }},
		{"flapping faster than peer_timeout", func(i int) bool { return i%4 != 0 }},
		{"partition healed", func(i int) bool { return i < 3 || i > 12 }},
		{"never up", func(int) bool { return false }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, clock, a, b := twoNodes(t)
			ctx := context.Background()
			for i := range 30 {
				clock.advance(time.Second)
				for _, n := range []*fakeNode{a, b} {
					peer := "b"
					if n == b {
						peer = "a"
					}
					if tc.up(i) {
						n.linkUp(peer)
					} else {
						n.linkDown(peer)
					}
				}
				a.o.step(ctx)
				b.o.step(ctx)
				owners := 0
				for _, n := range []*fakeNode{a, b} {
					if n.state().State != ownOwner {
						continue
					}
					h := n.attached[len(n.attached)-1].(*fakeHeld)
					if ok, _ := h.Holds(); ok {
						owners++
					} else if !c.fenced[h.addr] {
						t.Fatalf("step %d: %s serves without the lock and is not fenced", i, n.name)
					}
				}
				if owners > 1 {
					t.Fatalf("step %d: two owners", i)
				}
			}
			// the flapping link never stayed down for peer_timeout
			if tc.name == "flapping faster than peer_timeout" {
				a.want(ownOwner, "a")
				b.want(ownStandby, "a")
			}
		})
	}
}

// A lock released on a clean shutdown is taken at the next step, without
// waiting for peer_timeout and without counting a failover.
func TestOwnershipFreeLockTaken(t *testing.T) {
	c, _, a, b := twoNodes(t)
	if err := a.attached[0].Release(); err != nil {
		t.Fatal(err)
	}
	b.o.step(context.Background())
	b.want(ownOwner, "b")
	if len(c.fenced) != 0 {
		t.Errorf("fenced %v", c.fenced)
	}
	if got := testutil.ToFloat64(b.metrics.failovers); got != 0 {
		t.Errorf("failovers %v", got)
	}
}

// A live client this cluster does not know (an `rbd` command, another
// gateway) is never broken; once its watch expired (it died), its lock is
// taken.
func TestOwnershipUnknownHolder(t *testing.T) {
	c := newFakeCeph()
	clock := &fakeClock{now: time.Unix(1_800_000_000, 0)}
	c.holder, c.alive["client.99"] = "client.99", true
	b := newFakeNode(t, "b", []string{"a"}, c, clock)
	ctx := context.Background()
	if err := b.o.start(ctx); err != nil {
		t.Fatal(err)
	}
	b.want(ownStandby, "")
	for range 10 {
		clock.advance(time.Second)
		b.o.step(ctx)
	}
	b.want(ownStandby, "")
	c.die("client.99", true)
	clock.advance(time.Second)
	b.o.step(ctx)
	b.want(ownOwner, "b")
}

// A lock that cannot be served (the engine refuses the volume) is
// released again and the node stays standby.
func TestOwnershipAttachFailureReleases(t *testing.T) {
	c, _, a, b := twoNodes(t)
	b.attachErr = fmt.Errorf("cache detached")
	if err := a.attached[0].Release(); err != nil {
		t.Fatal(err)
	}
	b.o.step(context.Background())
	b.want(ownStandby, "")
	if c.holderAddr() != "" {
		t.Fatalf("lock kept by %s", c.holderAddr())
	}
}

// A peer's word that it took a volume over shows at once on a standby.
func TestOwnershipNoteOwner(t *testing.T) {
	_, _, _, b := twoNodes(t)
	b.o.noteOwner("v0", "c")
	b.want(ownStandby, "c")
	b.o.noteOwner("nope", "c") // an unknown volume changes nothing
}

// A planned move: the owner goes transitioning, releases the lock (no
// fencing) and hands the volume over; the target takes the free lock at
// its next step; the old owner leaves the free lock to the target for the
// hold-off and is standby under the new owner.
func TestOwnershipPlannedMove(t *testing.T) {
	c, clock, a, b := twoNodes(t)
	ctx := context.Background()
	if err := a.o.move(ctx, "v0", "b"); err != nil {
		t.Fatal(err)
	}
	a.want(ownStandby, "b")
	if !slices.Contains(a.alua, "moving a") || len(a.handedTo) != 1 || a.handedTo[0] != "b" {
		t.Fatalf("a's changes %v, handed to %v", a.alua, a.handedTo)
	}
	if c.holderAddr() != "" {
		t.Fatalf("lock still held by %s", c.holderAddr())
	}
	// the target has not stepped yet: the old owner leaves the lock alone
	clock.advance(time.Second)
	a.linkUp("b")
	a.o.step(ctx)
	a.want(ownStandby, "b")
	if c.holderAddr() != "" {
		t.Fatal("the old owner took the handed-over lock back")
	}
	b.o.step(ctx)
	b.want(ownOwner, "b")
	if len(c.fenced) != 0 || testutil.ToFloat64(b.metrics.failovers) != 0 {
		t.Errorf("a planned move fenced %v / counted %v failovers", c.fenced, testutil.ToFloat64(b.metrics.failovers))
	}
	a.o.step(ctx)
	a.want(ownStandby, "b")
	// and back
	b.linkUp("a")
	if err := b.o.move(ctx, "v0", "a"); err != nil {
		t.Fatal(err)
	}
	a.o.noteTake("v0") // b's handOver, through the peer link
	a.o.step(ctx)
	a.want(ownOwner, "a")
	b.want(ownStandby, "a")
}

// A move is refused, changing nothing, when this node does not own the
// volume, when the target is this node or no peer, or when its link is
// down; a release that fails leaves the owner serving.
func TestOwnershipMoveRefused(t *testing.T) {
	c, clock, a, b := twoNodes(t)
	ctx := context.Background()
	for _, tc := range []struct {
		n          *fakeNode
		vol, node  string
		wantErr    error
		wantDetail string
	}{
		{b, "v0", "a", errNotOwner, "standby"},
		{a, "v0", "a", errMoveTarget, "this node"},
		{a, "v0", "z", errMoveTarget, "not a node"},
		{a, "nope", "b", errMoveTarget, "not clustered"},
	} {
		err := tc.n.o.move(ctx, tc.vol, tc.node)
		if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.wantDetail) {
			t.Errorf("move %s to %s on %s: %v", tc.vol, tc.node, tc.n.name, err)
		}
	}
	a.linkDown("b")
	clock.advance(testPeerTimeout)
	if err := a.o.move(ctx, "v0", "b"); !errors.Is(err, errMoveTarget) || !strings.Contains(err.Error(), "down") {
		t.Errorf("move over a down link: %v", err)
	}
	a.linkUp("b")
	a.releaseErr = errors.New("drain failed")
	if err := a.o.move(ctx, "v0", "b"); err == nil {
		t.Error("a failed release reported success")
	}
	a.want(ownOwner, "a")
	if c.holderAddr() != "a#1" {
		t.Errorf("holder %s", c.holderAddr())
	}
}

// A node whose attach yields the volume (its newest state is in a peer's
// mirror: errYield) stays standby, releases the lock and takes no free
// lock of the volume until another node has held it; the peer then takes
// the free lock.
func TestOwnershipYieldToPeer(t *testing.T) {
	c := newFakeCeph()
	clock := &fakeClock{now: time.Unix(1_800_000_000, 0)}
	a := newFakeNode(t, "a", []string{"b"}, c, clock)
	b := newFakeNode(t, "b", []string{"a"}, c, clock)
	ctx := context.Background()
	a.attachErr = fmt.Errorf("volume v0: %w", errYield)
	if err := a.o.start(ctx); err != nil {
		t.Fatalf("a yielding at start failed the start: %v", err)
	}
	a.want(ownStandby, "")
	if c.holderAddr() != "" {
		t.Fatalf("the yielded lock is held by %s", c.holderAddr())
	}
	a.linkUp("b")
	for range 5 {
		clock.advance(time.Second)
		a.o.step(ctx)
	}
	if c.holderAddr() != "" || len(a.attached) != 0 {
		t.Fatalf("a took the volume it yielded (holder %q)", c.holderAddr())
	}
	// b starts and takes the free lock
	if err := b.o.start(ctx); err != nil {
		t.Fatal(err)
	}
	b.want(ownOwner, "b")
	b.linkUp("a")
	a.o.step(ctx)
	a.want(ownStandby, "b")
	// b releases it (a clean shutdown): a, no longer yielding, takes it
	a.attachErr = nil
	if err := b.attached[0].Release(); err != nil {
		t.Fatal(err)
	}
	a.o.step(ctx)
	a.want(ownOwner, "a")
}

// threeNodes starts a (the owner), b and c, every link up.
func threeNodes(t *testing.T) (*fakeCeph, *fakeClock, *fakeNode, *fakeNode, *fakeNode) {
	c := newFakeCeph()
	clock := &fakeClock{now: time.Unix(1_800_000_000, 0)}
	a := newFakeNode(t, "a", []string{"b", "c"}, c, clock)
	b := newFakeNode(t, "b", []string{"a", "c"}, c, clock)
	cn := newFakeNode(t, "c", []string{"a", "b"}, c, clock)
	ctx := context.Background()
	for _, n := range []*fakeNode{a, b, cn} {
		if err := n.o.start(ctx); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{"a", "b", "c"} {
			if p != n.name {
				n.linkUp(p)
			}
		}
	}
	a.want(ownOwner, "a")
	return c, clock, a, b, cn
}

// The owner a recorded b's mirror as behind and dies. b would serve the
// image without its mirror, c's is whole: while c is up, b leaves the
// takeover to c for another peer_timeout; c takes it at peer_timeout.
// Without a whole peer up, or once c had its extra peer_timeout, b takes
// it.
func TestOwnershipBehindNodeLeavesTakeoverToWholePeer(t *testing.T) {
	ctx := context.Background()
	// aDied: a recorded behind as behind and died peer_timeout ago; c
	// went down with it, or b and c hear each other (cUp).
	aDied := func(t *testing.T, cUp bool, behind ...string) (*fakeClock, *fakeNode, *fakeNode) {
		ceph, clock, _, b, cn := threeNodes(t)
		ceph.behind = behind
		b.linkDown("a")
		cn.linkDown("a")
		if !cUp {
			b.linkDown("c")
		}
		clock.advance(testPeerTimeout)
		if cUp {
			b.linkUp("c")
			cn.linkUp("b")
		}
		return clock, b, cn
	}
	t.Run("c takes it", func(t *testing.T) {
		_, b, cn := aDied(t, true, "b")
		b.o.step(ctx)
		b.want(ownStandby, "a")
		cn.o.step(ctx)
		cn.want(ownOwner, "c")
		if b.lock.acquires != 1 {
			t.Fatalf("b tried the lock %d times; want only at its start", b.lock.acquires)
		}
	})
	// b takes it at once: no whole peer is up, or b is not behind
	for _, tc := range []struct {
		name   string
		cUp    bool
		behind string
	}{{"c down too", false, "b"}, {"not behind", true, "c"}} {
		t.Run(tc.name, func(t *testing.T) {
			_, b, _ := aDied(t, tc.cUp, tc.behind)
			b.o.step(ctx)
			b.want(ownOwner, "b")
		})
	}
	t.Run("c up but silent on it", func(t *testing.T) {
		clock, b, _ := aDied(t, true, "b")
		b.o.step(ctx)
		b.want(ownStandby, "a")
		clock.advance(testPeerTimeout)
		b.linkUp("c")
		b.o.step(ctx)
		b.want(ownOwner, "b")
	})
}
