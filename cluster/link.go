package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"
)

// State is a link's state, as status and metrics show it.
type State string

// Link states.
const (
	// StateDown: no connection to the peer (dialing, backing off, or
	// refused). Shipments queue, and the peer goes out of sync if one of
	// them waits longer than the sync timeout.
	StateDown State = "down"
	// StateConnected: connected, retransmitting what the peer had not
	// acknowledged when the connection was made, or resyncing (between
	// Resync and the acknowledgement of what was queued until ResyncDone).
	StateConnected State = "connected"
	// StateInSync: connected and caught up; every shipment is
	// acknowledged or in flight for less than the sync timeout.
	StateInSync State = "in_sync"
	// StateOutOfSync: the peer missed shipments the link no longer holds
	// (it fell behind beyond max_lag or the sync timeout, or failed to
	// persist one). Shipments fail with ErrOutOfSync until Resync.
	StateOutOfSync State = "out_of_sync"
)

// States lists every state.
func States() []State { return []State{StateDown, StateConnected, StateInSync, StateOutOfSync} }

// Link ships to one peer: a connection this node dials (the peer's node
// accepts it), re-dialed with backoff when it fails.
type Link struct {
	n    *Node
	peer Peer
	log  *slog.Logger
	kick chan struct{}

	mu           sync.Mutex
	conn         net.Conn
	closed       bool
	state        State
	stateSince   time.Time
	outOfSync    bool
	oosReason    string
	resyncing    bool     // between Resync and ResyncDone
	queue        []*entry // shipments not yet acknowledged (and acknowledged ones behind them), in Send order
	sent         int      // queue[:sent] was written on the current connection
	vols         map[string]*volState
	catchUp      map[string]uint64 // volume → LSN to be acknowledged before the link is in sync again
	unackedBytes int64
	unacked      int
	calls        map[uint64]*call
	outCalls     []*call
	nextCallID   uint64
	lastHeard    time.Time
	lastErr      string
	lastRefusal  string
	everUp       bool
	peerInc      uint64 // the peer's incarnation at the last handshake
	stats        linkStats
}

type linkStats struct {
	reconnects, shipments, shippedBytes, acked, outOfSync uint64
}

type volState struct {
	queued, acked uint64
	top           uint64 // highest LSN ever queued (not lowered by out of sync)
	pending       []*entry
	// deposed: the peer refused a shipment of the volume with
	// ErrDeposed; nothing of it is shipped on this link again.
	deposed bool
}

// deposedMark starts the reason of a nack whose Receiver error wraps
// ErrDeposed, so that the shipping side tells deposition from a failure.
const deposedMark = "deposed: "

type entry struct {
	volume string
	lsn    uint64
	hdr    []byte
	data   []byte
	at     time.Time
	acked  bool
	done   chan struct{}
	err    error
}

type call struct {
	id   uint64
	kind string
	body []byte
	done chan struct{}
	resp []byte
	err  error
}

func newLink(n *Node, p Peer) *Link {
	return &Link{n: n, peer: p, log: n.log.With("peer", p.Name), kick: make(chan struct{}, 1),
		state: StateDown, stateSince: n.cfg.Clock.Now(), vols: map[string]*volState{}, calls: map[uint64]*call{}}
}

// Peer is the peer this link ships to.
func (l *Link) Peer() Peer { return l.peer }

func (l *Link) start() {
	l.n.wg.Add(2)
	go l.run()
	go l.watch()
}

func (l *Link) wake() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// Pending is a shipment on its way: Done is closed when the peer has
// acknowledged it durable or it failed.
type Pending struct{ e *entry }

// Done is closed when the shipment is acknowledged or has failed.
func (p *Pending) Done() <-chan struct{} { return p.e.done }

// Err is nil once the peer acknowledged the shipment durable; after Done,
// otherwise, why it failed (ErrOutOfSync, ErrClosed).
func (p *Pending) Err() error {
	select {
	case <-p.e.done:
		return p.e.err
	default:
		return nil
	}
}

// Wait returns when the peer acknowledged the shipment durable (nil), it
// failed, or ctx ended (ctx.Err(); the shipment stays queued).
func (p *Pending) Wait(ctx context.Context) error {
	select {
	case <-p.e.done:
		return p.e.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Send queues a shipment of volume's kset lsn and returns at once; the
// link keeps payload (which the caller must not change) until the peer
// acknowledges it. LSNs of a volume must be shipped in ascending order;
// an LSN the peer already acknowledged is done at once. It fails with
// ErrOutOfSync while the peer is out of sync (or when queuing it would put
// the peer beyond max_lag), ErrClosed after the node closed.
func (l *Link) Send(volume string, lsn uint64, payload []byte) (*Pending, error) {
	if !validName(volume) {
		return nil, fmt.Errorf("%w: volume %q", ErrBadName, volume)
	}
	if lsn == 0 {
		return nil, fmt.Errorf("%w: LSN 0", ErrLSNOrder)
	}
	hdr := shipHeader(volume, lsn)
	if len(hdr)+len(payload) > l.n.cfg.MaxFrame {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, len(payload), l.n.cfg.MaxFrame-len(hdr))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.closed:
		return nil, ErrClosed
	case l.outOfSync:
		return nil, fmt.Errorf("%w: %s: %s", ErrOutOfSync, l.peer.Name, l.oosReason)
	}
	vs := l.vols[volume]
	if vs == nil {
		vs = &volState{}
		l.vols[volume] = vs
	}
	if vs.deposed {
		return nil, fmt.Errorf("%w: %s refused volume %s", ErrDeposed, l.peer.Name, volume)
	}
	if lsn <= vs.acked {
		return &Pending{e: &entry{volume: volume, lsn: lsn, done: closedChan}}, nil
	}
	if lsn <= vs.queued {
		return nil, fmt.Errorf("%w: volume %s LSN %d after %d", ErrLSNOrder, volume, lsn, vs.queued)
	}
	if l.unacked > 0 && l.unackedBytes+int64(len(payload)) > l.n.cfg.MaxLag {
		l.markOutOfSyncLocked(fmt.Sprintf("%d bytes unacknowledged, beyond max_lag %d", l.unackedBytes+int64(len(payload)), l.n.cfg.MaxLag))
		return nil, fmt.Errorf("%w: %s: %s", ErrOutOfSync, l.peer.Name, l.oosReason)
	}
	e := &entry{volume: volume, lsn: lsn, hdr: hdr, data: payload, at: l.n.cfg.Clock.Now(), done: make(chan struct{})}
	l.queue = append(l.queue, e)
	vs.pending = append(vs.pending, e)
	vs.queued = lsn
	vs.top = max(vs.top, lsn)
	l.unacked++
	l.unackedBytes += int64(len(payload))
	l.stats.shipments++
	l.stats.shippedBytes += uint64(len(payload))
	l.wake()
	return &Pending{e: e}, nil
}

// Replicate ships volume's kset lsn and returns when the peer has
// acknowledged it durable (nil), the shipment failed (ErrOutOfSync,
// ErrClosed, ...), or ctx ended.
func (l *Link) Replicate(ctx context.Context, volume string, lsn uint64, payload []byte) error {
	p, err := l.Send(volume, lsn, payload)
	if err != nil {
		return err
	}
	return p.Wait(ctx)
}

// Resync ends the out-of-sync state and returns, for each volume ever
// shipped, the highest LSN the peer acknowledged durable. The caller (the
// engine) then ships again everything of each volume above it, in order
// (Send accepts LSNs from there on), and calls ResyncDone once it has
// queued it all. Until then the link is not in sync (connected, or down).
// It returns nil when the link was not out of sync.
func (l *Link) Resync() map[string]uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.outOfSync {
		return nil
	}
	l.outOfSync, l.oosReason, l.resyncing = false, "", true
	out := make(map[string]uint64, len(l.vols))
	for v, vs := range l.vols {
		out[v] = vs.acked
	}
	l.log.Info("cluster: peer resync begins", "volumes", len(out))
	l.noteStateLocked()
	return out
}

// ResyncDone says that everything the peer missed is queued again: the
// link is in sync once the peer acknowledged it all.
func (l *Link) ResyncDone() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.resyncing {
		return
	}
	l.resyncing = false
	l.catchUp = map[string]uint64{}
	for v, vs := range l.vols {
		if vs.queued > vs.acked {
			l.catchUp[v] = vs.queued
		}
	}
	l.log.Info("cluster: peer resync queued", "volumes", len(l.catchUp))
	l.noteStateLocked()
}

// Call sends a control request to the peer's Handler and returns its
// answer. It is not retransmitted: when the connection fails first, the
// result is ErrDisconnect and whether the peer ran it is unknown (requests
// must be idempotent).
func (l *Link) Call(ctx context.Context, kind string, body []byte) ([]byte, error) {
	if !validName(kind) {
		return nil, fmt.Errorf("%w: request kind %q", ErrBadName, kind)
	}
	if len(body)+len(kind)+16 > l.n.cfg.MaxFrame {
		return nil, fmt.Errorf("%w: request of %d bytes", ErrTooLarge, len(body))
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, ErrClosed
	}
	if l.conn == nil {
		l.mu.Unlock()
		return nil, fmt.Errorf("%w: %s is down", ErrDisconnect, l.peer.Name)
	}
	l.nextCallID++
	c := &call{id: l.nextCallID, kind: kind, body: body, done: make(chan struct{})}
	l.calls[c.id] = c
	l.outCalls = append(l.outCalls, c)
	l.mu.Unlock()
	l.wake()
	select {
	case <-c.done:
		return c.resp, c.err
	case <-ctx.Done():
		l.mu.Lock()
		delete(l.calls, c.id)
		l.mu.Unlock()
		return nil, ctx.Err()
	}
}

// run dials the peer, serves each connection until it fails, and dials
// again with backoff, until the node closes.
func (l *Link) run() {
	defer l.n.wg.Done()
	ctx := l.n.ctx
	backoff := l.n.cfg.ReconnectMin
	for ctx.Err() == nil {
		conn, fr, peerInc, err := l.dial(ctx)
		if err != nil {
			l.dialFailed(err)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
			backoff = min(2*backoff, l.n.cfg.ReconnectMax)
			continue
		}
		backoff = l.n.cfg.ReconnectMin
		l.serve(ctx, conn, fr, peerInc)
	}
	l.mu.Lock()
	l.closed = true
	for _, e := range l.queue {
		if !e.acked {
			e.err = ErrClosed
			close(e.done)
		}
	}
	l.queue, l.sent = nil, 0
	for _, vs := range l.vols {
		vs.pending = nil
	}
	l.mu.Unlock()
}

// dial connects and runs the handshake.
func (l *Link) dial(ctx context.Context) (net.Conn, *frameReader, uint64, error) {
	cfg := &l.n.cfg
	dctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	conn, err := cfg.Dial(dctx, l.peer.Addr)
	if err != nil {
		return nil, nil, 0, err
	}
	stop := context.AfterFunc(dctx, func() { conn.Close() })
	defer stop()
	_ = conn.SetDeadline(time.Now().Add(cfg.ConnectTimeout))
	hello := Hello{MinVersion: MinProtocolVersion, MaxVersion: ProtocolVersion, Incarnation: l.n.incarnation,
		Cluster: cfg.Cluster, From: cfg.Node, To: l.peer.Name}
	if err := writeFrame(conn, MsgHello, hello.encode()); err != nil {
		conn.Close()
		return nil, nil, 0, err
	}
	fr := newFrameReader(conn, cfg.MaxFrame)
	t, p, err := fr.next()
	if err != nil {
		conn.Close()
		if errors.Is(err, ErrMalformed) || errors.Is(err, ErrChecksum) || errors.Is(err, ErrFrameTooLarge) {
			return nil, nil, 0, &RefusedError{Refusal: Refusal{Reason: ReasonGarbage, Detail: err.Error()}}
		}
		return nil, nil, 0, err
	}
	refuse := func(r Reason, format string, args ...any) (net.Conn, *frameReader, uint64, error) {
		rf := Refusal{Reason: r, Detail: fmt.Sprintf(format, args...)}
		_ = writeFrame(conn, MsgRefuse, rf.encode())
		conn.Close()
		return nil, nil, 0, &RefusedError{Refusal: rf}
	}
	switch t {
	case MsgRefuse:
		conn.Close()
		rf, err := decodeRefusal(p)
		if err != nil {
			rf = Refusal{Reason: ReasonGarbage, Detail: "undecodable refusal: " + err.Error()}
		}
		return nil, nil, 0, &RefusedError{Refusal: rf, Remote: true}
	case MsgWelcome:
	default:
		return refuse(ReasonGarbage, "answer to a hello is a %s", t)
	}
	w, err := decodeWelcome(p)
	switch {
	case err != nil:
		return refuse(ReasonGarbage, "%v", err)
	case w.Version < MinProtocolVersion:
		return refuse(ReasonOlderVersion, "the peer chose protocol version %d; this node speaks %d..%d", w.Version, MinProtocolVersion, ProtocolVersion)
	case w.Version > ProtocolVersion:
		return refuse(ReasonNewerVersion, "the peer chose protocol version %d; this node speaks %d..%d", w.Version, MinProtocolVersion, ProtocolVersion)
	case w.Cluster != cfg.Cluster:
		return refuse(ReasonOtherCluster, "the peer is in cluster %q, this node in %q", w.Cluster, cfg.Cluster)
	case w.Node != l.peer.Name:
		return refuse(ReasonWrongNode, "expected node %q at %s, found %q", l.peer.Name, l.peer.Addr, w.Node)
	}
	_ = conn.SetDeadline(time.Time{})
	if !stop() {
		conn.Close()
		return nil, nil, 0, ctx.Err()
	}
	return conn, fr, w.Incarnation, nil
}

// dialFailed records and logs (once per distinct error) a failed dial.
func (l *Link) dialFailed(err error) {
	var re *RefusedError
	l.mu.Lock()
	msg := err.Error()
	repeat := msg == l.lastErr
	l.lastErr = msg
	if errors.As(err, &re) {
		l.lastRefusal = re.Reason.String()
	}
	l.noteStateLocked()
	l.mu.Unlock()
	if re != nil {
		dir := "inbound"
		if re.Remote {
			dir = "outbound"
		}
		l.n.metrics.refusal(dir, re.Reason)
	}
	switch {
	case l.n.ctx.Err() != nil:
	case repeat:
		l.log.Debug("cluster: dial failed", "addr", l.peer.Addr, "err", err)
	case re != nil:
		l.log.Warn("cluster: handshake with peer refused", "addr", l.peer.Addr, "reason", re.Reason.String(), "remote", re.Remote, "detail", re.Detail)
	default:
		l.log.Warn("cluster: cannot reach peer", "addr", l.peer.Addr, "err", err)
	}
}

// serve runs one connection: a writer that ships, sends requests and
// heartbeats, and a reader of acks, responses and heartbeats. Everything
// unacknowledged is shipped again on the connection.
func (l *Link) serve(parent context.Context, conn net.Conn, fr *frameReader, peerInc uint64) {
	now := l.n.cfg.Clock.Now()
	l.mu.Lock()
	if l.peerInc != 0 && peerInc != l.peerInc {
		// what the peer's previous process acknowledged may be gone
		// with it (a lost cache file): nothing it acknowledged counts
		for _, vs := range l.vols {
			vs.acked, vs.queued, vs.top = 0, 0, 0
		}
		l.markOutOfSyncLocked("the peer restarted (new incarnation): what it acknowledged before may be lost")
	}
	l.peerInc = peerInc
	l.conn = conn
	l.sent = 0
	l.lastHeard = now
	l.lastErr = ""
	if l.everUp {
		l.stats.reconnects++
	}
	l.everUp = true
	l.catchUp = map[string]uint64{}
	for v, vs := range l.vols {
		if vs.queued > vs.acked {
			l.catchUp[v] = vs.queued
		}
	}
	l.noteStateLocked()
	l.mu.Unlock()
	l.log.Info("cluster: connected to peer", "addr", l.peer.Addr)

	ctx, cancel := context.WithCancelCause(parent)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		cancel(l.writer(ctx, conn))
	}()
	go func() {
		defer wg.Done()
		cancel(l.reader(conn, fr))
	}()
	<-ctx.Done()
	conn.Close()
	wg.Wait()
	cause := context.Cause(ctx)

	l.mu.Lock()
	l.conn = nil
	l.catchUp = nil
	l.lastErr = cause.Error()
	for id, c := range l.calls {
		c.err = fmt.Errorf("%w: %v", ErrDisconnect, cause)
		close(c.done)
		delete(l.calls, id)
	}
	l.outCalls = nil
	l.noteStateLocked()
	l.mu.Unlock()
	if parent.Err() == nil {
		l.log.Warn("cluster: link to peer lost", "err", cause)
	}
}

// Writer limits per round: the lock is not held for long and the
// heartbeat is not starved.
const (
	writeBatch      = 512
	writeBatchBytes = 4 << 20
)

type outShip struct{ hdr, data []byte }

func (l *Link) writer(ctx context.Context, conn net.Conn) error {
	cfg := &l.n.cfg
	bw := bufio.NewWriterSize(conn, 256<<10)
	hb := time.NewTicker(cfg.HeartbeatInterval)
	defer hb.Stop()
	var seq uint64
	heartbeat := func() error {
		seq++
		return writeFrame(bw, MsgHeartbeat, heartbeat{Seq: seq, Time: time.Now().UnixNano()}.encode())
	}
	if err := heartbeat(); err != nil {
		return err
	}
	var ships []outShip
	var calls []*call
	for {
		ships, calls = ships[:0], calls[:0]
		l.mu.Lock()
		size := 0
		for l.sent < len(l.queue) && len(ships) < writeBatch && size < writeBatchBytes {
			e := l.queue[l.sent]
			l.sent++
			if !e.acked {
				ships = append(ships, outShip{e.hdr, e.data})
				size += len(e.data)
			}
		}
		calls = append(calls, l.outCalls...)
		l.outCalls = nil
		more := l.sent < len(l.queue)
		l.mu.Unlock()
		_ = conn.SetWriteDeadline(time.Now().Add(cfg.PeerTimeout))
		for _, s := range ships {
			if err := writeFrame(bw, MsgShip, s.hdr, s.data); err != nil {
				return err
			}
		}
		for _, c := range calls {
			if err := writeFrame(bw, MsgRequest, request{ID: c.id, Kind: c.kind}.encodeHeader(), c.body); err != nil {
				return err
			}
		}
		select {
		case <-hb.C:
			if err := heartbeat(); err != nil {
				return err
			}
		default:
		}
		if more {
			continue
		}
		if err := bw.Flush(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-l.kick:
		case <-hb.C:
			_ = conn.SetWriteDeadline(time.Now().Add(cfg.PeerTimeout))
			if err := heartbeat(); err != nil {
				return err
			}
		}
	}
}

func (l *Link) reader(conn net.Conn, fr *frameReader) error {
	cfg := &l.n.cfg
	for {
		_ = conn.SetReadDeadline(time.Now().Add(cfg.PeerTimeout))
		t, p, err := fr.next()
		if err != nil {
			if errors.Is(err, ErrMalformed) || errors.Is(err, ErrChecksum) || errors.Is(err, ErrFrameTooLarge) {
				l.n.metrics.protocolError()
			}
			return err
		}
		now := l.n.cfg.Clock.Now()
		switch t {
		case MsgHeartbeat:
			if _, err := decodeHeartbeat(p); err != nil {
				l.n.metrics.protocolError()
				return err
			}
			l.mu.Lock()
			l.lastHeard = now
			l.mu.Unlock()
		case MsgAck, MsgNack:
			a, err := decodeAck(p, t == MsgNack)
			if err != nil {
				l.n.metrics.protocolError()
				return err
			}
			l.mu.Lock()
			l.lastHeard = now
			if vs := l.vols[a.Volume]; vs == nil || a.LSN > vs.top {
				l.mu.Unlock()
				l.n.metrics.protocolError()
				return fmt.Errorf("%w: %s of volume %s LSN %d, never shipped", ErrMalformed, t, a.Volume, a.LSN)
			}
			if t == MsgAck {
				l.ackLocked(a.Volume, a.LSN)
			} else {
				if strings.HasPrefix(a.Reason, deposedMark) {
					l.vols[a.Volume].deposed = true
				}
				l.markOutOfSyncLocked(fmt.Sprintf("the peer failed to persist volume %s LSN %d: %s", a.Volume, a.LSN, a.Reason))
			}
			l.mu.Unlock()
		case MsgResponse:
			r, err := decodeResponse(p)
			if err != nil {
				l.n.metrics.protocolError()
				return err
			}
			l.mu.Lock()
			l.lastHeard = now
			if c := l.calls[r.ID]; c != nil {
				delete(l.calls, r.ID)
				if r.Failed {
					if string(r.Body) == ErrNoHandler.Error() {
						c.err = ErrNoHandler
					} else {
						c.err = fmt.Errorf("%w: %s", ErrRemote, r.Body)
					}
				} else {
					c.resp = r.Body
				}
				close(c.done)
			}
			l.mu.Unlock()
		default:
			l.n.metrics.protocolError()
			return fmt.Errorf("%w: a %s from the accepting side", ErrMalformed, t)
		}
	}
}

// ackLocked records that the peer holds every shipment of volume up to
// lsn durably.
func (l *Link) ackLocked(volume string, lsn uint64) {
	vs := l.vols[volume]
	if vs == nil || lsn <= vs.acked {
		return
	}
	vs.acked = lsn
	k := 0
	for ; k < len(vs.pending) && vs.pending[k].lsn <= lsn; k++ {
		e := vs.pending[k]
		e.acked = true
		l.unacked--
		l.unackedBytes -= int64(len(e.data))
		e.data, e.hdr = nil, nil
		close(e.done)
		l.stats.acked++
	}
	vs.pending = vs.pending[k:]
	if len(vs.pending) == 0 {
		vs.pending = nil
	}
	drop := 0
	for drop < len(l.queue) && l.queue[drop].acked {
		drop++
	}
	if drop > 0 {
		// slide forward; append reallocates (dropping the front) when
		// the array is full
		clear(l.queue[:drop])
		l.queue = l.queue[drop:]
		l.sent = max(0, l.sent-drop)
	}
	if want, ok := l.catchUp[volume]; ok && lsn >= want {
		delete(l.catchUp, volume)
	}
	l.noteStateLocked()
}

// markOutOfSyncLocked puts the peer out of sync: every shipment not yet
// acknowledged fails with ErrOutOfSync and is dropped.
// MarkOutOfSync puts the peer out of sync now (the caller knows it is
// gone: it fenced it), rather than after the sync timeout; what waits on
// it fails with ErrOutOfSync at once.
func (l *Link) MarkOutOfSync(reason string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.markOutOfSyncLocked(reason)
}

func (l *Link) markOutOfSyncLocked(reason string) {
	if l.outOfSync || l.closed {
		return
	}
	l.outOfSync, l.oosReason, l.resyncing = true, reason, false
	l.stats.outOfSync++
	err := fmt.Errorf("%w: %s: %s", ErrOutOfSync, l.peer.Name, reason)
	for _, e := range l.queue {
		if !e.acked {
			e.err = err
			if vs := l.vols[e.volume]; vs != nil && vs.deposed {
				e.err = fmt.Errorf("%w: %s: %s", ErrDeposed, l.peer.Name, reason)
			}
			close(e.done)
		}
	}
	l.queue, l.sent, l.unacked, l.unackedBytes, l.catchUp = nil, 0, 0, 0, nil
	for _, vs := range l.vols {
		vs.pending = nil
		vs.queued = vs.acked
	}
	l.log.Warn("cluster: peer out of sync", "reason", reason, "policy", string(l.n.cfg.Degraded))
	l.noteStateLocked()
}

// watch puts the peer out of sync when a shipment waits for its
// acknowledgement longer than the sync timeout.
func (l *Link) watch() {
	defer l.n.wg.Done()
	period := min(max(l.n.cfg.SyncTimeout/10, 10*time.Millisecond), time.Second)
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-l.n.ctx.Done():
			return
		case <-t.C:
		}
		now := l.n.cfg.Clock.Now()
		l.mu.Lock()
		for _, e := range l.queue {
			if e.acked {
				continue
			}
			if age := now.Sub(e.at); age > l.n.cfg.SyncTimeout {
				l.markOutOfSyncLocked(fmt.Sprintf("volume %s LSN %d unacknowledged for %s, beyond sync_timeout %s",
					e.volume, e.lsn, age.Round(time.Millisecond), l.n.cfg.SyncTimeout))
			}
			break
		}
		l.mu.Unlock()
	}
}

// stateLocked computes the link's state.
func (l *Link) stateLocked() State {
	switch {
	case l.outOfSync:
		return StateOutOfSync
	case l.conn == nil:
		return StateDown
	case l.resyncing, len(l.catchUp) > 0:
		return StateConnected
	}
	return StateInSync
}

// noteStateLocked records when the state changed.
func (l *Link) noteStateLocked() {
	if s := l.stateLocked(); s != l.state {
		l.log.Debug("cluster: link state", "from", string(l.state), "to", string(s))
		l.state, l.stateSince = s, l.n.cfg.Clock.Now()
	}
}

// State is the link's current state.
func (l *Link) State() State {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stateLocked()
}
