package cluster

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"slices"
	"sort"
	"sync"
	"time"
)

// Node is this node's end of the peer links: a listener that accepts the
// peers' links (and hands what they ship to the Receiver) and one Link per
// peer that ships to it.
type Node struct {
	cfg         Config
	log         *slog.Logger
	ln          net.Listener
	incarnation uint64
	ctx         context.Context
	cancel      context.CancelFunc
	wg          sync.WaitGroup
	links       []*Link
	byName      map[string]*Link
	peers       map[string]Peer
	metrics     *metrics

	mu      sync.Mutex
	conns   map[net.Conn]struct{}    // accepted connections, closed at shutdown
	inbound map[string]*session      // the live session of each peer's link to this node
	hwm     map[string]*dedup        // peer → what its Receiver persisted of it
	inStats map[string]*inboundStats // peer → counters of its link to this node
	refused map[Reason]uint64        // inbound refusals by reason
	// handshaking counts accepted connections still in their handshake
	handshaking int

	// resyncers ship each volume's journal again to a link being
	// resynchronised (AddResyncer); resyncMu serialises ResyncLink.
	resyncMu  sync.Mutex
	resyncers map[string]*Resyncer
}

// A Resyncer ships one volume's journal again on l, above acked (the
// highest LSN of the volume the peer acknowledged), during a resync
// (ResyncLink).
type Resyncer func(l *Link, acked uint64) error

// AddResyncer makes fn the Resyncer of volume (replacing another) until
// remove is called.
func (n *Node) AddResyncer(volume string, fn Resyncer) (remove func()) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.resyncers == nil {
		n.resyncers = map[string]*Resyncer{}
	}
	r := &fn
	n.resyncers[volume] = r
	return func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		if n.resyncers[volume] == r {
			delete(n.resyncers, volume)
		}
	}
}

// ResyncLink brings l back in sync if it is out of sync: Link.Resync,
// every volume's Resyncer in turn (a link is out of sync for all the
// volumes it ships at once, so each needs its journal again), then
// Link.ResyncDone. A Resyncer that fails leaves the link out of sync
// (MarkOutOfSync), to be tried again. One resync runs at a time.
func (n *Node) ResyncLink(l *Link) (err error) {
	n.resyncMu.Lock()
	defer n.resyncMu.Unlock()
	acked := l.Resync()
	if acked == nil {
		return nil
	}
	defer l.ResyncDone() // after MarkOutOfSync on failure: then a no-op
	defer func() {
		if err != nil {
			l.MarkOutOfSync("resync failed: " + err.Error())
		}
	}()
	n.mu.Lock()
	fns := maps.Clone(n.resyncers)
	n.mu.Unlock()
	for _, v := range slices.Sorted(maps.Keys(fns)) {
		if err := (*fns[v])(l, acked[v]); err != nil {
			return fmt.Errorf("volume %s: %w", v, err)
		}
	}
	return nil
}

// dedup is the highest LSN persisted, per volume, of one incarnation of a
// peer: a peer that restarted ships under a new incarnation, whose LSNs
// are judged afresh (its Receiver sorts out what it holds already).
type dedup struct {
	inc uint64
	top map[string]uint64
}

// inboundStats describes a peer's link to this node.
type inboundStats struct {
	since     time.Time
	received  uint64 // shipments handed to the Receiver
	duplicate uint64 // shipments dropped as already persisted
	failed    uint64 // Receive errors
}

// Start listens and starts the links. The node runs until ctx ends or
// Close is called; Wait returns when all its goroutines have exited.
func Start(ctx context.Context, cfg Config) (*Node, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: cfg.Logger.With("cluster", cfg.Cluster, "node", cfg.Node),
		byName: map[string]*Link{}, peers: map[string]Peer{}, conns: map[net.Conn]struct{}{},
		inbound: map[string]*session{}, hwm: map[string]*dedup{}, inStats: map[string]*inboundStats{},
		refused: map[Reason]uint64{}}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("cluster: incarnation: %w", err)
	}
	n.incarnation = binary.BigEndian.Uint64(b[:]) | 1
	n.metrics, err = newMetrics(cfg.Registry, n)
	if err != nil {
		return nil, err
	}
	ln := cfg.Listener
	if ln == nil {
		ln, err = net.Listen("tcp", cfg.Listen)
		if err != nil {
			n.metrics.unregister()
			return nil, fmt.Errorf("cluster: listen on %s: %w", cfg.Listen, err)
		}
	}
	n.ln = ln
	n.ctx, n.cancel = context.WithCancel(ctx)
	for _, p := range cfg.Peers {
		l := newLink(n, p)
		n.links = append(n.links, l)
		n.byName[p.Name] = l
		n.peers[p.Name] = p
	}
	n.wg.Add(2)
	go n.acceptLoop()
	go func() {
		// shutdown: stop accepting, close every accepted connection
		defer n.wg.Done()
		<-n.ctx.Done()
		n.ln.Close()
		n.mu.Lock()
		for c := range n.conns {
			c.Close()
		}
		n.mu.Unlock()
	}()
	for _, l := range n.links {
		l.start()
	}
	n.log.Info("cluster peer link ready", "listen", ln.Addr().String(), "peers", len(cfg.Peers))
	return n, nil
}

// Addr is the address the node listens on.
func (n *Node) Addr() net.Addr { return n.ln.Addr() }

// Link returns the link to the named peer, or nil.
func (n *Node) Link(peer string) *Link { return n.byName[peer] }

// Links returns the links to every peer, in configuration order.
func (n *Node) Links() []*Link { return append([]*Link(nil), n.links...) }

// Policy is the configured degraded policy.
func (n *Node) Policy() Policy { return n.cfg.Degraded }

// Close stops the node and waits for its goroutines: shipments not yet
// acknowledged fail with ErrClosed.
func (n *Node) Close() error {
	n.cancel()
	return n.Wait()
}

// Wait blocks until the node has stopped (its context ended or Close was
// called) and every goroutine it started has exited.
func (n *Node) Wait() error {
	n.wg.Wait()
	n.metrics.unregister()
	return nil
}

func (n *Node) acceptLoop() {
	defer n.wg.Done()
	delay := 5 * time.Millisecond
	for {
		c, err := n.ln.Accept()
		if err != nil {
			if n.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			n.log.Warn("cluster: accept failed", "err", err)
			select {
			case <-time.After(delay):
			case <-n.ctx.Done():
				return
			}
			delay = min(2*delay, time.Second)
			continue
		}
		delay = 5 * time.Millisecond
		n.mu.Lock()
		if n.ctx.Err() != nil {
			n.mu.Unlock()
			c.Close()
			return
		}
		if n.handshaking >= maxHandshakes {
			// a flood of connections that do not finish their
			// handshake: the newest wait for the next dial
			n.mu.Unlock()
			c.Close()
			n.log.Debug("cluster: too many handshakes in progress; connection closed", "remote", c.RemoteAddr().String())
			continue
		}
		n.handshaking++
		n.conns[c] = struct{}{}
		n.wg.Add(1)
		n.mu.Unlock()
		go n.serveConn(c)
	}
}

// maxHandshakes bounds the accepted connections in their handshake at
// once (each lasts at most connect_timeout).
const maxHandshakes = 64

// session is a peer's link to this node, after its handshake.
type session struct {
	peer  string
	inc   uint64
	conn  net.Conn
	done  chan struct{} // closed when the session has ended
	wmu   sync.Mutex
	bw    *bufio.Writer
	reqWG sync.WaitGroup
}

// serveConn runs the handshake of an accepted connection and, if it is
// accepted, its session.
func (n *Node) serveConn(c net.Conn) {
	defer n.wg.Done()
	defer func() {
		c.Close()
		n.mu.Lock()
		delete(n.conns, c)
		n.mu.Unlock()
	}()
	handshakeOver := sync.OnceFunc(func() {
		n.mu.Lock()
		n.handshaking--
		n.mu.Unlock()
	})
	defer handshakeOver()
	remote := c.RemoteAddr().String()
	_ = c.SetDeadline(time.Now().Add(n.cfg.ConnectTimeout))
	fr := newFrameReader(c, n.cfg.MaxFrame)
	refuse := func(h Hello, r Reason, format string, args ...any) {
		detail := fmt.Sprintf(format, args...)
		_ = writeFrame(c, MsgRefuse, Refusal{Reason: r, Detail: detail}.encode())
		n.mu.Lock()
		n.refused[r]++
		n.mu.Unlock()
		n.metrics.refusal("inbound", r)
		n.log.Warn("cluster: handshake refused", "remote", remote, "from", h.From, "reason", r.String(), "detail", detail)
	}
	t, p, err := fr.next()
	if err != nil {
		if !errors.Is(err, io.EOF) {
			refuse(Hello{}, ReasonGarbage, "%v", err)
		}
		return
	}
	if t != MsgHello {
		refuse(Hello{}, ReasonGarbage, "first frame is a %s, not a hello", t)
		return
	}
	h, err := decodeHello(p)
	switch {
	case err != nil:
		refuse(h, ReasonGarbage, "%v", err)
		return
	case h.MaxVersion < MinProtocolVersion:
		refuse(h, ReasonOlderVersion, "the peer speaks protocol versions %d..%d; this node %d..%d", h.MinVersion, h.MaxVersion, MinProtocolVersion, ProtocolVersion)
		return
	case h.MinVersion > ProtocolVersion:
		refuse(h, ReasonNewerVersion, "the peer speaks protocol versions %d..%d; this node %d..%d", h.MinVersion, h.MaxVersion, MinProtocolVersion, ProtocolVersion)
		return
	case h.Cluster != n.cfg.Cluster:
		refuse(h, ReasonOtherCluster, "the peer is in cluster %q, this node in %q", h.Cluster, n.cfg.Cluster)
		return
	case h.To != n.cfg.Node:
		refuse(h, ReasonWrongNode, "the peer expected node %q, this is node %q", h.To, n.cfg.Node)
		return
	case h.From == n.cfg.Node:
		refuse(h, ReasonNameInUse, "the peer calls itself %q, this node's own name", h.From)
		return
	}
	if _, ok := n.peers[h.From]; !ok {
		refuse(h, ReasonUnknownNode, "node %q is not among this node's peers", h.From)
		return
	}
	if n.ctx.Err() != nil {
		refuse(h, ReasonShuttingDown, "this node is closing")
		return
	}
	s := &session{peer: h.From, inc: h.Incarnation, conn: c, done: make(chan struct{}), bw: bufio.NewWriterSize(c, 64<<10)}
	n.mu.Lock()
	old := n.inbound[h.From]
	if old != nil && old.inc != h.Incarnation {
		n.mu.Unlock()
		refuse(h, ReasonNameInUse, "node %q is connected already from %s (another process)", h.From, old.conn.RemoteAddr())
		return
	}
	n.inbound[h.From] = s
	n.mu.Unlock()
	if old != nil {
		// the same process dialed again: its old connection is dead to it
		old.conn.Close()
		<-old.done
	}
	err = writeFrame(c, MsgWelcome, Welcome{Version: min(h.MaxVersion, ProtocolVersion), Incarnation: n.incarnation,
		Cluster: n.cfg.Cluster, Node: n.cfg.Node}.encode())
	if err != nil {
		n.endSession(s)
		return
	}
	_ = c.SetDeadline(time.Time{})
	handshakeOver()
	n.log.Info("cluster: peer connected to this node", "peer", h.From, "remote", remote)
	n.serveSession(s, fr)
}

func (n *Node) endSession(s *session) {
	n.mu.Lock()
	if n.inbound[s.peer] == s {
		delete(n.inbound, s.peer)
	}
	n.mu.Unlock()
	close(s.done)
}

// write sends frames on a session and flushes them.
func (s *session) write(timeout time.Duration, frames ...outFrame) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_ = s.conn.SetWriteDeadline(time.Now().Add(timeout))
	for _, f := range frames {
		if err := writeFrame(s.bw, f.t, f.parts...); err != nil {
			return err
		}
	}
	return s.bw.Flush()
}

type outFrame struct {
	t     MsgType
	parts [][]byte
}

// Batch bounds of one Receive call.
const (
	maxBatch      = 256
	maxBatchBytes = 8 << 20
)

// serveSession reads a peer's frames until the connection fails, the peer
// goes silent for PeerTimeout, or the node closes.
func (n *Node) serveSession(s *session, fr *frameReader) {
	ctx, cancel := context.WithCancel(n.ctx)
	closer := make(chan struct{})
	closed := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
		case <-closer:
		}
		s.conn.Close()
		close(closed)
	}()
	defer func() {
		cancel()
		close(closer)
		<-closed
		s.reqWG.Wait()
		n.endSession(s)
	}()
	n.mu.Lock()
	st := n.inStats[s.peer]
	if st == nil {
		st = &inboundStats{}
		n.inStats[s.peer] = st
	}
	st.since = n.cfg.Clock.Now()
	n.mu.Unlock()
	log := n.log.With("peer", s.peer)
	var held *outFrame // a frame read while gathering a batch
	for {
		var t MsgType
		var p []byte
		if held != nil {
			t, p, held = held.t, held.parts[0], nil
		} else {
			_ = s.conn.SetReadDeadline(time.Now().Add(n.cfg.PeerTimeout))
			var err error
			t, p, err = fr.next()
			if err != nil {
				n.sessionError(log, err)
				return
			}
		}
		switch t {
		case MsgHeartbeat:
			if _, err := decodeHeartbeat(p); err != nil {
				n.sessionError(log, err)
				return
			}
			if err := s.write(n.cfg.PeerTimeout, outFrame{t: MsgHeartbeat, parts: [][]byte{p}}); err != nil {
				n.sessionError(log, err)
				return
			}
		case MsgShip:
			sh, err := decodeShip(p)
			if err != nil {
				n.sessionError(log, err)
				return
			}
			batch, size := []Shipment{sh}, len(sh.Payload)
			for len(batch) < maxBatch && size < maxBatchBytes && fr.wholeFrameBuffered() {
				t2, p2, err := fr.next()
				if err != nil {
					n.sessionError(log, err)
					return
				}
				if t2 != MsgShip {
					held = &outFrame{t: t2, parts: [][]byte{p2}}
					break
				}
				sh, err := decodeShip(p2)
				if err != nil {
					n.sessionError(log, err)
					return
				}
				batch, size = append(batch, sh), size+len(sh.Payload)
			}
			if err := n.receive(ctx, s, st, batch); err != nil {
				n.sessionError(log, err)
				return
			}
		case MsgRequest:
			r, err := decodeRequest(p)
			if err != nil {
				n.sessionError(log, err)
				return
			}
			s.reqWG.Add(1)
			go func() {
				defer s.reqWG.Done()
				n.handle(ctx, s, r)
			}()
		case MsgRefuse:
			// the dialer did not like the welcome
			rf, err := decodeRefusal(p)
			if err != nil {
				n.sessionError(log, err)
				return
			}
			n.metrics.refusal("outbound", rf.Reason)
			log.Warn("cluster: the peer refused this node's welcome", "reason", rf.Reason.String(), "detail", rf.Detail)
			return
		default:
			n.sessionError(log, fmt.Errorf("%w: a %s from the dialing side", ErrMalformed, t))
			return
		}
	}
}

// sessionError logs why a session ended.
func (n *Node) sessionError(log *slog.Logger, err error) {
	switch {
	case n.ctx.Err() != nil, errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
		log.Info("cluster: peer's link to this node closed", "err", err)
	case errors.Is(err, ErrMalformed), errors.Is(err, ErrChecksum), errors.Is(err, ErrFrameTooLarge):
		n.metrics.protocolError()
		log.Warn("cluster: garbage on a peer's link; connection closed", "err", err)
	default:
		log.Warn("cluster: peer's link to this node lost", "err", err)
	}
}

var errReceiveFailed = errors.New("the Receiver failed")

// receive hands the new shipments of batch to the Receiver and
// acknowledges, for each volume of the batch, the highest LSN persisted.
// Shipments at or below that LSN were persisted before (a retransmission
// after a reconnect) and are only acknowledged again. When the Receiver
// fails, each volume of the batch is nacked and the session ends, so that
// nothing shipped behind the failure is persisted.
func (n *Node) receive(ctx context.Context, s *session, st *inboundStats, batch []Shipment) error {
	n.mu.Lock()
	dd := n.hwm[s.peer]
	if dd == nil || dd.inc != s.inc {
		dd = &dedup{inc: s.inc, top: map[string]uint64{}}
		n.hwm[s.peer] = dd
	}
	hw := dd.top
	var fresh []Shipment
	last := map[string]uint64{}
	var order []string
	for _, sh := range batch {
		top, seen := last[sh.Volume]
		if !seen {
			top = hw[sh.Volume]
			order = append(order, sh.Volume)
		}
		if sh.LSN > top {
			fresh = append(fresh, sh)
			top = sh.LSN
		}
		last[sh.Volume] = top
	}
	st.duplicate += uint64(len(batch) - len(fresh))
	n.mu.Unlock()
	if len(fresh) > 0 {
		if err := n.cfg.Receiver.Receive(ctx, s.peer, fresh); err != nil {
			if ctx.Err() != nil {
				return err
			}
			n.mu.Lock()
			st.failed++
			n.mu.Unlock()
			n.log.Error("cluster: a shipment could not be persisted; the peer will mark this node out of sync",
				"peer", s.peer, "volume", fresh[0].Volume, "lsn", fresh[0].LSN, "err", err)
			var frames []outFrame
			done := map[string]bool{}
			for _, sh := range fresh {
				if !done[sh.Volume] {
					done[sh.Volume] = true
					reason := err.Error()
					if errors.Is(err, ErrDeposed) {
						reason = deposedMark + reason
					}
					frames = append(frames, outFrame{t: MsgNack, parts: [][]byte{ack{Volume: sh.Volume, LSN: sh.LSN, Reason: reason}.encode(true)}})
				}
			}
			// the session ends: shipments behind the failed ones must
			// not be persisted past a hole
			if werr := s.write(n.cfg.PeerTimeout, frames...); werr != nil {
				return werr
			}
			return fmt.Errorf("%w: %v", errReceiveFailed, err)
		}
	}
	n.mu.Lock()
	st.received += uint64(len(fresh))
	frames := make([]outFrame, 0, len(order))
	for _, v := range order {
		hw[v] = max(hw[v], last[v])
		frames = append(frames, outFrame{t: MsgAck, parts: [][]byte{ack{Volume: v, LSN: hw[v]}.encode(false)}})
	}
	n.mu.Unlock()
	return s.write(n.cfg.PeerTimeout, frames...)
}

// handle runs one request and answers it.
func (n *Node) handle(ctx context.Context, s *session, r request) {
	var body []byte
	var err error
	if n.cfg.Handler == nil {
		err = ErrNoHandler
	} else {
		body, err = n.cfg.Handler.Handle(ctx, s.peer, r.Kind, r.Body)
	}
	resp := response{ID: r.ID}
	if err != nil {
		resp.Failed, body = true, []byte(err.Error())
	}
	if len(body)+32 > n.cfg.MaxFrame {
		resp.Failed, body = true, []byte("response larger than a frame")
	}
	if werr := s.write(n.cfg.PeerTimeout, outFrame{t: MsgResponse, parts: [][]byte{resp.encodeHeader(), body}}); werr != nil {
		n.log.Debug("cluster: response not sent", "peer", s.peer, "err", werr)
	}
}

// inboundSnapshot describes the peers' links to this node.
func (n *Node) inboundSnapshot(peer string) (connected bool, since time.Time, received, duplicate, failed uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	_, connected = n.inbound[peer]
	if st := n.inStats[peer]; st != nil {
		since, received, duplicate, failed = st.since, st.received, st.duplicate, st.failed
	}
	return
}

// Snapshot describes the node and its links (cachelun cluster status).
func (n *Node) Snapshot() Snapshot {
	s := Snapshot{Cluster: n.cfg.Cluster, Node: n.cfg.Node, Listen: n.ln.Addr().String(), Policy: n.cfg.Degraded,
		AllInSync: true, Refused: map[string]uint64{}}
	for _, l := range n.links {
		ps := l.Snapshot()
		if ps.State != StateInSync {
			s.AllInSync = false
		}
		s.Peers = append(s.Peers, ps)
	}
	s.RefuseSync = s.Policy == RefuseSync && !s.AllInSync
	n.mu.Lock()
	for r, c := range n.refused {
		s.Refused[r.String()] = c
	}
	n.mu.Unlock()
	sort.Slice(s.Peers, func(i, j int) bool { return s.Peers[i].Name < s.Peers[j].Name })
	return s
}

// ErrDegraded is returned by Node.Replicate under the refuse-sync policy
// when a peer is not in sync.
var ErrDegraded = errors.New("cluster: a peer is not in sync and the policy is refuse-sync")

// Replicate ships volume's kset lsn to every peer and applies the degraded
// policy: it returns nil once every peer that is not out of sync has
// acknowledged it durable (waiting at most about sync_timeout for a peer
// that is down or slow, which is then out of sync). A peer out of sync is
// skipped under Serve; under RefuseSync it makes the result ErrDegraded
// (the shipment still goes to the peers in sync). Other errors (ErrClosed,
// ErrLSNOrder, ctx) are returned as they are.
func (n *Node) Replicate(ctx context.Context, volume string, lsn uint64, payload []byte) error {
	return n.Ship(volume, lsn, payload)(ctx)
}

// Ship is Replicate in two halves: it queues the shipment on every link at
// once (it never blocks) and returns the wait, which applies the degraded
// policy as Replicate does. Callers that must queue in order under their
// own lock and wait outside it (the engine's kset commits) use it.
func (n *Node) Ship(volume string, lsn uint64, payload []byte) func(context.Context) error {
	wait := n.ShipAcks(volume, lsn, payload)
	return func(ctx context.Context) error {
		missed, err := wait(ctx)
		if err != nil {
			return err
		}
		return n.DegradedErr(missed)
	}
}

// Missed is a peer that did not acknowledge a shipment: it is out of sync.
type Missed struct {
	Peer string
	Err  error // wraps ErrOutOfSync
}

// DegradedErr applies the degraded policy to the peers that missed a
// shipment: ErrDegraded under RefuseSync when there are any, else nil.
func (n *Node) DegradedErr(missed []Missed) error {
	if len(missed) == 0 || n.cfg.Degraded != RefuseSync {
		return nil
	}
	errs := make([]error, len(missed))
	for i, m := range missed {
		errs[i] = m.Err
	}
	return fmt.Errorf("%w: %w", ErrDegraded, errors.Join(errs...))
}

// ShipAcks is Ship without the degraded policy: the wait returns the peers
// out of sync, which did not acknowledge the shipment (the caller applies
// DegradedErr), or an error other than ErrOutOfSync (ErrDeposed, ErrClosed,
// ctx, ...).
func (n *Node) ShipAcks(volume string, lsn uint64, payload []byte) func(context.Context) ([]Missed, error) {
	var missed []Missed
	var failed error
	type sent struct {
		peer string
		p    *Pending
	}
	pending := make([]sent, 0, len(n.links))
	for _, l := range n.links {
		p, err := l.Send(volume, lsn, payload)
		switch {
		case errors.Is(err, ErrDeposed):
			failed = errors.Join(failed, err)
		case errors.Is(err, ErrOutOfSync):
			missed = append(missed, Missed{Peer: l.peer.Name, Err: err})
		case err != nil:
			failed = errors.Join(failed, err)
		default:
			pending = append(pending, sent{peer: l.peer.Name, p: p})
		}
	}
	return func(ctx context.Context) ([]Missed, error) {
		if failed != nil {
			return nil, failed
		}
		out := append([]Missed(nil), missed...)
		for _, s := range pending {
			err := s.p.Wait(ctx)
			switch {
			case errors.Is(err, ErrDeposed):
				return nil, err
			case errors.Is(err, ErrOutOfSync):
				out = append(out, Missed{Peer: s.peer, Err: err})
			case err != nil:
				return nil, err
			}
		}
		return out, nil
	}
}
