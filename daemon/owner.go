package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ownState is this node's state for one clustered volume (see doc.go,
// "Cluster ownership").
type ownState string

const (
	// ownOwner: this node holds the image's exclusive lock and serves the
	// volume (its target port group is active/optimized).
	ownOwner ownState = "owner"
	// ownStandby: another node (or nobody) holds the lock; this node
	// watches the lock and takes it over by the rules of doc.go (its
	// target port group is standby).
	ownStandby ownState = "standby"
	// ownUnavailable: this node lost the lock (another node broke it,
	// which blocklisted this one); it serves nothing of the volume until
	// it restarts (its target port group is unavailable).
	ownUnavailable ownState = "unavailable"
	// ownMoving: this node is handing the volume over to another (a
	// planned move): its target port group is transitioning, which hosts
	// retry, while the volume is flushed and its lock released.
	ownMoving ownState = "moving"
)

func ownStates() []ownState { return []ownState{ownOwner, ownStandby, ownUnavailable, ownMoving} }

// errYield: attach refuses a volume this node must leave to a peer (its
// newest state is in a peer's mirror, not here); the node stays standby
// and takes no free lock of the volume until another node has held it.
var errYield = errors.New("the volume's newest state is in a peer's mirror, not in this node's cache: left to a peer")

// Errors of a planned move.
var (
	errNotOwner   = errors.New("this node does not own the volume")
	errMoveTarget = errors.New("cannot move the volume there")
)

// moveHoldOff is how long a node that handed a volume over leaves its
// free lock to the target before any node may take it again.
const moveHoldOff = 10 * time.Second

// errImageLocked is what an imageLock's Acquire wraps when a live client
// that is not to be broken holds the lock (the real one wraps
// rbd.ErrLocked).
var errImageLocked = errors.New("the image's lock is held by another live client")

// lockHolder is who holds a clustered volume's image lock.
type lockHolder struct {
	// Addr is the holder's lock owner address; "" when the lock is free.
	Addr string
	// Node is the node of this cluster the holder recorded itself as, ""
	// when it is not one (another client, or a node that died between
	// taking the lock and recording it).
	Node string
	// Behind: the nodes the holder recorded as behind (ownerRecord.Behind):
	// a takeover by one of them serves the image without its mirror.
	Behind []string
	// Alive: the holder still watches the image (a killed client's watch
	// lingers for 30 s).
	Alive bool
}

// imageLock is the exclusive lock of one clustered volume's backing image,
// as the ownership state machine sees it: the RBD lock in the daemon
// (rbdLock), a fake in the tests.
type imageLock interface {
	// Holder tells who holds the lock now.
	Holder(ctx context.Context) (lockHolder, error)
	// Acquire takes the lock and records this node as its holder. It
	// never breaks the lock of a live holder other than breakOwner (an
	// Addr from Holder) or this node's own dead predecessor: it fails
	// with an error wrapping errImageLocked (or rbd.ErrLocked) then. A
	// holder that is not alive is broken, as is breakOwner: breaking
	// blocklists the old holder at the OSDs, which fences it.
	Acquire(ctx context.Context, breakOwner string) (heldLock, error)
}

// heldLock is a lock this node took.
type heldLock interface {
	// Holds reports whether this node still holds the lock (false once
	// another node broke it).
	Holds() (bool, error)
	// Release gives the lock back (closes the image). Only for a lock
	// whose attach failed: an attached volume's image belongs to the
	// engine, which closes it.
	Release() error
}

// ownerHooks are what the state machine asks of the daemon.
type ownerHooks interface {
	// attach starts serving volume on a lock just taken: the volume is
	// opened in the engine (with the newest state: its mirror of another
	// owner's journal applied, or its cached data dropped when the image
	// may have been written by another node) and its logical units serve
	// it. On an error the lock is released.
	attach(ctx context.Context, volume string, h heldLock) error
	// changed reports a new state of this node or a new owner of volume
	// (the ALUA states of its logical units follow).
	changed(volume string, st ownState, owner string)
	// announce tells the peers that can be reached that this node now
	// owns volume.
	announce(volume string)
	// release stops serving volume and gives its lock back (a planned
	// move): its data is flushed, it is removed from the engine (which
	// closes the image) and watched again as a standby's.
	release(ctx context.Context, volume string) error
	// handOver asks node to take volume (its lock is free).
	handOver(ctx context.Context, volume, node string) error
}

// ownedVolume is the state machine of one clustered volume.
type ownedVolume struct {
	name   string
	lock   imageLock
	held   heldLock // while owner
	state  ownState
	owner  string // the node believed to own the volume ("" unknown or none)
	since  time.Time
	reason string // why the state was entered
	// movedTo and holdOff: after a planned move, a free lock is left to
	// movedTo until holdOff.
	movedTo string
	holdOff time.Time
	// yielded: attach refused the volume with errYield; this node takes
	// no free lock of it until another node has held it.
	yielded bool
}

// ownershipView is this node's view of one clustered volume, for status.
type ownershipView struct {
	Volume string
	State  ownState
	Owner  string
	Since  time.Time
	Reason string
}

// ownership runs the ownership rules of every clustered volume of this
// node (doc.go, "Cluster ownership"). start decides each volume's initial
// state; step applies the rules once (run calls it every interval and
// when kicked). step runs on one goroutine at a time; mu guards the
// volumes' states for the readers (status, the peer Handler) and is never
// held across a hook or a lock call.
type ownership struct {
	self    string
	peers   []string
	timeout time.Duration // peer_timeout
	clock   interface{ Now() time.Time }
	log     *slog.Logger
	// linkSeen tells when a peer was last heard on this node's link to it
	// and whether its own link to this node is connected.
	linkSeen func(peer string) (lastHeard time.Time, inbound bool)
	hooks    ownerHooks
	metrics  *ownerMetrics // nil: none

	lastUp map[string]time.Time // peer → last time its link was seen up; step's and move's (under stepMu)
	kick   chan struct{}
	// stepMu serializes step and move (→ mu).
	stepMu sync.Mutex

	mu    sync.Mutex
	vols  map[string]*ownedVolume
	order []string
}

func newOwnership(self string, peers []string, timeout time.Duration, clock interface{ Now() time.Time }, log *slog.Logger,
	linkSeen func(string) (time.Time, bool), hooks ownerHooks, m *ownerMetrics) *ownership {
	o := &ownership{self: self, peers: peers, timeout: timeout, clock: clock, log: log, linkSeen: linkSeen, hooks: hooks,
		metrics: m, lastUp: map[string]time.Time{}, kick: make(chan struct{}, 1), vols: map[string]*ownedVolume{}}
	now := clock.Now()
	for _, p := range peers {
		// a peer gets peer_timeout from this node's start to connect
		// before it counts as down
		o.lastUp[p] = now
	}
	return o
}

// add registers a clustered volume (before start).
func (o *ownership) add(volume string, l imageLock) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.vols[volume] = &ownedVolume{name: volume, lock: l, state: ownStandby, since: o.clock.Now()}
	o.order = append(o.order, volume)
	sort.Strings(o.order)
}

// start takes the lock of every volume whose lock is free, held by a dead
// client or by this node's dead predecessor (owner), and leaves the others
// to their holder (standby). It breaks no live lock of another node. An
// error other than a held lock (Ceph unreachable, the engine refusing the
// volume) fails the start.
func (o *ownership) start(ctx context.Context) error {
	for _, name := range o.order {
		v := o.vols[name]
		h, err := v.lock.Acquire(ctx, "")
		if err != nil {
			if !isLocked(err) {
				return fmt.Errorf("volume %s: %w", name, err)
			}
			holder, herr := v.lock.Holder(ctx)
			if herr != nil {
				return fmt.Errorf("volume %s: %w", name, herr)
			}
			o.set(v, ownStandby, holder.Node, "another node holds the image's lock")
			o.log.Info("cluster: volume owned by another node; this node is standby", "volume", name,
				"owner", orUnknown(holder.Node), "lock_owner", holder.Addr)
			continue
		}
		if err := o.hooks.attach(ctx, name, h); err != nil {
			_ = h.Release()
			if errors.Is(err, errYield) {
				o.mu.Lock()
				v.yielded = true
				o.mu.Unlock()
				o.set(v, ownStandby, "", err.Error())
				o.log.Warn("cluster: volume left to a peer", "volume", name, "reason", err)
				continue
			}
			return fmt.Errorf("volume %s: %w", name, err)
		}
		o.mu.Lock()
		v.held = h
		o.mu.Unlock()
		o.set(v, ownOwner, o.self, "took the image's lock at start")
		o.log.Info("cluster: this node owns the volume", "volume", name)
	}
	o.updateGauge()
	return nil
}

func isLocked(err error) bool { return errors.Is(err, errImageLocked) || errors.Is(err, errRBDLocked) }

func orUnknown(node string) string {
	if node == "" {
		return "(unknown)"
	}
	return node
}

// run applies the rules every interval, and at once when kicked, until
// ctx ends.
func (o *ownership) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-o.kick:
		}
		o.step(ctx)
	}
}

// wake makes run step at once.
func (o *ownership) wake() {
	select {
	case o.kick <- struct{}{}:
	default:
	}
}

// peerDown reports whether peer's link has been down (nothing heard on
// this node's link to it, no link of its own to this node) for at least
// peer_timeout.
func (o *ownership) peerDown(peer string, now time.Time) bool {
	last, ok := o.lastUp[peer]
	if !ok {
		return false // not a peer: never judged down
	}
	return now.Sub(last) >= o.timeout
}

// step applies the rules once to every volume.
func (o *ownership) step(ctx context.Context) {
	o.stepMu.Lock()
	defer o.stepMu.Unlock()
	now := o.clock.Now()
	for _, p := range o.peers {
		heard, inbound := o.linkSeen(p)
		switch {
		case inbound:
			o.lastUp[p] = now
		case heard.After(o.lastUp[p]):
			o.lastUp[p] = heard
		}
	}
	o.mu.Lock()
	order := o.order
	o.mu.Unlock()
	for _, name := range order {
		if ctx.Err() != nil {
			return
		}
		o.mu.Lock()
		v := o.vols[name]
		o.mu.Unlock()
		o.stepVolume(ctx, v, now)
	}
}

func (o *ownership) stepVolume(ctx context.Context, v *ownedVolume, now time.Time) {
	o.mu.Lock()
	state, held, movedTo, holdOff := v.state, v.held, v.movedTo, v.holdOff
	o.mu.Unlock()
	switch state {
	case ownOwner:
		ok, err := held.Holds()
		if err != nil || ok {
			return // a transient error says nothing; the fence gate fails fenced I/O anyway
		}
		o.set(v, ownUnavailable, "", "the image's lock was broken by another node (this node is fenced)")
		if o.metrics != nil {
			o.metrics.lockLosses.Inc()
		}
		o.log.Error("cluster: this node lost the image's lock to another node: the volume is unavailable here until a restart",
			"volume", v.name)
	case ownStandby:
		h, err := v.lock.Holder(ctx)
		if err != nil {
			o.log.Debug("cluster: lock holder unknown", "volume", v.name, "err", err)
			return
		}
		o.mu.Lock()
		if h.Node != "" && h.Node != o.self {
			v.yielded = false // another node holds it: it has the newest state now
		}
		yielded := v.yielded
		o.mu.Unlock()
		breakOwner, why := "", ""
		switch {
		case yielded && (h.Addr == "" || h.Node == o.self):
			return // left to a peer (errYield)
		case h.Addr == "" && movedTo != "" && movedTo != o.self && now.Before(holdOff):
			return // handed over: the target takes it
		case h.Addr == "":
			why = "the image's lock was free"
		case h.Node == o.self:
			// this node's dead predecessor: Acquire breaks it only if it
			// is the one this data directory recorded, or dead
			why = "the image's lock was held by this node's previous process"
		case h.Node != "" && o.isPeer(h.Node):
			if !o.peerDown(h.Node, now) {
				o.setOwner(v, h.Node)
				return // never break a lock whose holder's link is up
			}
			if slices.Contains(h.Behind, o.self) && o.wholePeerUp(h, now) && !o.peerDown(h.Node, now.Add(-o.timeout)) {
				// this node's mirror is recorded behind and would not be
				// applied: a peer whose mirror is whole gets another
				// peer_timeout to take the volume over first
				o.setOwner(v, h.Node)
				return
			}
			breakOwner = h.Addr
			why = fmt.Sprintf("the owner %s's peer link was down for %s and it still held the lock", h.Node, o.timeout)
		default:
			if h.Alive {
				o.setOwner(v, "")
				return // a live client this cluster does not know: its lock is never broken
			}
			why = "the image's lock was held by a dead client"
		}
		lh, err := v.lock.Acquire(ctx, breakOwner)
		if err != nil {
			if !isLocked(err) {
				o.log.Warn("cluster: taking the image's lock failed", "volume", v.name, "reason", why, "err", err)
			}
			o.setOwner(v, h.Node)
			return
		}
		if err := o.hooks.attach(ctx, v.name, lh); err != nil {
			_ = lh.Release()
			if errors.Is(err, errYield) {
				o.mu.Lock()
				v.yielded = true
				o.mu.Unlock()
				o.log.Warn("cluster: volume left to a peer", "volume", v.name, "reason", err)
			} else {
				o.log.Error("cluster: took the image's lock but could not serve the volume; lock released", "volume", v.name, "err", err)
			}
			o.setOwner(v, "")
			return
		}
		o.mu.Lock()
		v.held, v.movedTo = lh, ""
		o.mu.Unlock()
		o.set(v, ownOwner, o.self, why)
		if breakOwner != "" && o.metrics != nil {
			o.metrics.failovers.Inc()
		}
		o.log.Warn("cluster: this node took the volume over", "volume", v.name, "previous_owner", orUnknown(h.Node),
			"broke_lock", breakOwner != "", "reason", why)
		o.hooks.announce(v.name)
	}
}

// wholePeerUp reports whether a peer other than the holder of h, and not
// recorded behind by it, is up.
func (o *ownership) wholePeerUp(h lockHolder, now time.Time) bool {
	for _, p := range o.peers {
		if p != h.Node && !slices.Contains(h.Behind, p) && !o.peerDown(p, now) {
			return true
		}
	}
	return false
}

func (o *ownership) isPeer(node string) bool {
	_, ok := o.lastUp[node]
	return ok
}

// set moves v to state st with owner.
func (o *ownership) set(v *ownedVolume, st ownState, owner, reason string) {
	o.mu.Lock()
	changed := v.state != st || v.owner != owner
	if v.state != st {
		v.since = o.clock.Now()
	}
	v.state, v.owner, v.reason = st, owner, reason
	o.mu.Unlock()
	o.updateGauge()
	if changed {
		o.hooks.changed(v.name, st, owner)
	}
}

// setOwner records another node as the owner while this node is standby.
func (o *ownership) setOwner(v *ownedVolume, owner string) {
	o.mu.Lock()
	if v.state != ownStandby || v.owner == owner {
		o.mu.Unlock()
		return
	}
	v.owner = owner
	o.mu.Unlock()
	o.hooks.changed(v.name, ownStandby, owner)
}

// move hands volume over to node (a planned move): this node must own it
// and node's link must be up. The volume goes transitioning here (hosts
// retry), is flushed and released (its lock free), node is asked to take
// it, and no node but node takes the free lock for moveHoldOff. It returns
// once node was asked; node takes the lock at its next step.
func (o *ownership) move(ctx context.Context, volume, node string) error {
	o.stepMu.Lock()
	defer o.stepMu.Unlock()
	o.mu.Lock()
	v, ok := o.vols[volume]
	o.mu.Unlock()
	if !ok {
		return fmt.Errorf("volume %s is not clustered: %w", volume, errMoveTarget)
	}
	if node == o.self {
		return fmt.Errorf("volume %s: node %s is this node: %w", volume, node, errMoveTarget)
	}
	if !o.isPeer(node) {
		return fmt.Errorf("volume %s: %s is not a node of this cluster: %w", volume, node, errMoveTarget)
	}
	heard, inbound := o.linkSeen(node)
	now := o.clock.Now()
	if !inbound && now.Sub(heard) >= o.timeout/2 {
		return fmt.Errorf("volume %s: the peer link to %s is down: %w", volume, node, errMoveTarget)
	}
	o.mu.Lock()
	st := v.state
	o.mu.Unlock()
	if st != ownOwner {
		return fmt.Errorf("volume %s: %w (it is %s here)", volume, errNotOwner, st)
	}
	o.set(v, ownMoving, o.self, "moving to "+node)
	o.log.Info("cluster: moving the volume", "volume", volume, "to", node)
	if err := o.hooks.release(ctx, volume); err != nil {
		o.set(v, ownOwner, o.self, "a move failed: "+err.Error())
		return fmt.Errorf("volume %s: releasing it: %w", volume, err)
	}
	o.mu.Lock()
	v.held, v.movedTo, v.holdOff = nil, node, o.clock.Now().Add(moveHoldOff)
	o.mu.Unlock()
	o.set(v, ownStandby, node, "moved to "+node)
	if err := o.hooks.handOver(ctx, volume, node); err != nil {
		// the lock is free: node takes it at its next step anyway, or
		// any node after the hold-off
		o.log.Warn("cluster: the move's target was not told; it takes the free lock at its next step", "volume", volume, "to", node, "err", err)
	}
	return nil
}

// noteTake is a peer's word that it released volume for this node: the
// hold-off of an earlier move away from here ends, and the free lock is
// taken at once.
func (o *ownership) noteTake(volume string) {
	o.mu.Lock()
	if v, ok := o.vols[volume]; ok {
		v.movedTo = ""
	}
	o.mu.Unlock()
	o.wake()
}

// noteOwner is a peer's word that it now owns volume: a standby shows it
// at once; an owner checks its lock at once (it was probably broken).
func (o *ownership) noteOwner(volume, node string) {
	o.mu.Lock()
	v, ok := o.vols[volume]
	o.mu.Unlock()
	if !ok {
		return
	}
	o.setOwner(v, node)
	o.wake()
}

// view returns this node's view of every clustered volume, by name.
func (o *ownership) view() []ownershipView {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]ownershipView, 0, len(o.order))
	for _, name := range o.order {
		v := o.vols[name]
		out = append(out, ownershipView{Volume: name, State: v.state, Owner: v.owner, Since: v.since, Reason: v.reason})
	}
	return out
}

// volumeView is view for one volume.
func (o *ownership) volumeView(volume string) (ownershipView, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	v, ok := o.vols[volume]
	if !ok {
		return ownershipView{}, false
	}
	return ownershipView{Volume: volume, State: v.state, Owner: v.owner, Since: v.since, Reason: v.reason}, true
}

func (o *ownership) updateGauge() {
	if o.metrics == nil {
		return
	}
	n := map[ownState]int{}
	o.mu.Lock()
	for _, v := range o.vols {
		n[v.state]++
	}
	o.mu.Unlock()
	for _, st := range ownStates() {
		o.metrics.volumes.WithLabelValues(string(st)).Set(float64(n[st]))
	}
}

// ownerMetrics are the cluster ownership's collectors (docs/metrics.md).
type ownerMetrics struct {
	failovers  prometheus.Counter
	lockLosses prometheus.Counter
	volumes    *prometheus.GaugeVec
}

func newOwnerMetrics(reg prometheus.Registerer) (*ownerMetrics, error) {
	m := &ownerMetrics{
		failovers: prometheus.NewCounter(prometheus.CounterOpts{Name: "cachelun_cluster_failovers_total",
			Help: "Clustered volumes this node took over from a peer whose link was down, breaking (fencing) its image lock."}),
		lockLosses: prometheus.NewCounter(prometheus.CounterOpts{Name: "cachelun_cluster_lock_losses_total",
			Help: "Clustered volumes whose image lock this node lost to another node (it was fenced)."}),
		volumes: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "cachelun_cluster_volumes",
			Help: "Clustered volumes by this node's state for them: owner, standby, unavailable."}, []string{"state"}),
	}
	for _, st := range ownStates() {
		m.volumes.WithLabelValues(string(st))
	}
	for _, c := range []prometheus.Collector{m.failovers, m.lockLosses, m.volumes} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	return m, nil
}
