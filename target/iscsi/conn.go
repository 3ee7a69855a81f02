package iscsi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachelun/cachelun/target/scsi"
)

// conn is one TCP connection and, after login, its session's state. Its
// goroutines: serve (the reader: login, then every inbound PDU), writer
// (every outbound PDU after login), pinger (NOP-In keepalive), a worker
// per concurrently running SCSI command, and one per task-management or
// logout request.
//
// Lock order: Server.mu, then conn.tmu, then conn.wmu.
type conn struct {
	srv       *Server
	log       *slog.Logger
	nc        net.Conn
	localAddr netip.AddrPort
	br        *bufio.Reader
	bw        *vecWriter
	pr        pduReader
	pw        pduWriter

	ctx    context.Context // cancelled at teardown; parent of every task context
	cancel context.CancelFunc
	done   chan struct{} // closed when teardown is complete

	// Set by login, read-only afterwards.
	sess      *session
	params    sessionParams
	discovery bool
	initiator string
	cid       uint16
	nexus     scsi.Nexus
	target    atomic.Pointer[targetEntry] // replaced by UpdateTarget

	// CmdSN window: ExpCmdSN in the high 32 bits, in the low 32 bits the
	// non-immediate commands with a CmdSN below ExpCmdSN not yet answered.
	// One word, so the writer never stamps a MaxCmdSN from a half-done
	// update. Only the reader advances ExpCmdSN.
	win   atomic.Uint64
	ahead map[uint32]bool // CmdSNs received beyond ExpCmdSN (reader only)
	// outsideLogged: a PDU outside the CmdSN window was logged at WARN
	// (reader only); later ones go to DEBUG, so a peer cannot flood the log.
	outsideLogged bool

	tmu      sync.Mutex
	finished sync.Cond        // on tmu: an aborted task's goroutine has finished
	tasks    map[uint32]*task // by ITT: every task not yet answered
	aheadT   map[uint32]*task // by CmdSN: commands received beyond ExpCmdSN
	held     []*task          // data complete, waiting for earlier CmdSNs
	gated    []*task          // in CmdSN order, waiting behind an ORDERED task
	ordered  *task            // the running ORDERED task
	active   int              // tasks started and not finished
	nextTTT  uint32
	recent   [64]uint32 // ITTs of recently aborted tasks: their Data-Out is dropped silently
	recentN  int
	loggedIn atomic.Bool // full-feature phase reached
	closing  atomic.Bool // logout in progress or connection dropped
	// nexusGone: the logout already told the device server that the
	// I_T nexus ended (NexusLost), before its response
	nexusGone atomic.Bool
	taskWG    sync.WaitGroup
	workerWG  sync.WaitGroup // task worker goroutines
	workers   atomic.Int32   // task worker goroutines running
	work      chan *task     // hands a task to an idle worker
	auxWG     sync.WaitGroup // TMF and logout goroutines

	// Writer state: wmu guards queue and wclosed.
	wmu        sync.Mutex
	queue      []outItem
	wake       chan struct{}
	wclosed    bool
	statSN     uint32 // writer goroutine only (login code before it starts)
	writerDone chan struct{}

	lastRecv  atomic.Int64 // unix nanoseconds of the last PDU received
	pingTTT   uint32       // pinger goroutine only
	abortOnce sync.Once

	// Reader-goroutine scratch.
	scratch []byte
	textIn  []byte
	textOut []byte // rest of a SendTargets answer longer than one PDU
	textTTT uint32
}

// maxBatchBytes is how much the writer gathers before it flushes even
// though more responses are queued.
const maxBatchBytes = 4 << 20

// maxWriterQueue bounds the PDUs waiting for the writer of one connection.
const maxWriterQueue = 1 << 14

type outKind uint8

const (
	outStatus outKind = iota // a response that consumes a StatSN
	outNoSN                  // R2T, target-initiated NOP-In: StatSN not advanced
	outTask                  // SCSI command completion (Data-In and/or SCSI Response)
	outClose                 // flush, then close the connection
)

type outItem struct {
	kind outKind
	h    bhs
	data []byte
	t    *task
}

func (s *Server) newConn(nc net.Conn) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &conn{
		srv:        s,
		log:        s.log,
		nc:         nc,
		ctx:        ctx,
		cancel:     cancel,
		done:       make(chan struct{}),
		ahead:      map[uint32]bool{},
		work:       make(chan *task),
		tasks:      map[uint32]*task{},
		aheadT:     map[uint32]*task{},
		wake:       make(chan struct{}, 1),
		writerDone: make(chan struct{}),
	}
	if ap, err := netip.ParseAddrPort(nc.LocalAddr().String()); err == nil {
		c.localAddr = ap
	}
	c.finished.L = &c.tmu
	c.br = bufio.NewReaderSize(nc, 64<<10)
	c.bw = newVecWriter(nc)
	c.pr.r = c.br
	c.pw.w = c.bw
	c.lastRecv.Store(time.Now().UnixNano())
	s.conns[c] = struct{}{}
	s.connWG.Add(1)
	return c
}

// abort drops the connection: in-flight tasks are cancelled and their
// responses discarded. Teardown happens on the serve goroutine.
func (c *conn) abort() {
	c.abortOnce.Do(func() {
		c.closing.Store(true)
		c.nc.Close()
		c.cancel()
	})
}

func (c *conn) serve() {
	defer c.teardown()
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("iscsi: connection handler panicked", "panic", r, "stack", string(debug.Stack()))
		}
	}()
	// A connection must log in within a bounded time.
	c.nc.SetReadDeadline(time.Now().Add(30 * time.Second))
	if err := c.login(); err != nil {
		if !errors.Is(err, io.EOF) {
			c.log.Debug("iscsi: login ended", "remote", c.nc.RemoteAddr().String(), "err", err)
		}
		return
	}
	c.nc.SetReadDeadline(time.Time{})
	c.loggedIn.Store(true)
	c.log.Info("iscsi: session logged in", "initiator", c.initiator, "tsih", c.sess.tsih,
		"target", c.targetName(), "header_digest", c.params.HeaderDigest, "data_digest", c.params.DataDigest)
	go c.writer()
	if c.srv.cfg.NOPInterval > 0 {
		c.auxWG.Add(1)
		go c.pinger()
	}
	err := c.fullFeature()
	if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !c.closing.Load() {
		c.log.Info("iscsi: connection dropped", "initiator", c.initiator, "err", err)
	}
}

func (c *conn) targetName() string {
	if e := c.target.Load(); e != nil {
		return e.cfg.Name
	}
	return ""
}

func (c *conn) teardown() {
	c.closing.Store(true)
	c.cancel()
	c.abortAllTasks()
	c.taskWG.Wait()
	c.auxWG.Wait()
	c.workerWG.Wait()
	// Let the writer send what is queued (a Reject or Logout Response
	// explains the close), but never wait long on a peer that does not read.
	c.wmu.Lock()
	c.wclosed = true
	c.wmu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	if c.loggedIn.Load() {
		t := time.AfterFunc(2*time.Second, func() { c.nc.Close() })
		<-c.writerDone
		t.Stop()
	}
	c.abort()
	if c.sess != nil {
		c.srv.unregisterSession(c.sess)
		if e := c.target.Load(); e != nil && !c.nexusGone.Load() {
			e.cfg.SCSI.NexusLost(&c.nexus)
		}
		c.log.Info("iscsi: session ended", "initiator", c.initiator, "tsih", c.sess.tsih)
	}
	c.srv.mu.Lock()
	delete(c.srv.conns, c)
	c.srv.mu.Unlock()
	close(c.done)
	c.srv.connWG.Done()
}

func (c *conn) applyParams() {
	p := c.params
	c.pr.headerDigest, c.pr.dataDigest = p.HeaderDigest, p.DataDigest
	c.pw.headerDigest, c.pw.dataDigest = p.HeaderDigest, p.DataDigest
	c.pr.maxData = p.MaxRecvDataSegment
	c.scratch = make([]byte, min(p.MaxRecvDataSegment, 64<<10))
}

func (c *conn) inFlight() int {
	c.tmu.Lock()
	defer c.tmu.Unlock()
	return len(c.tasks)
}

// window returns ExpCmdSN and MaxCmdSN as the target advertises them:
// MaxCmdSN = ExpCmdSN + depth - 1 - (commands below ExpCmdSN still
// unanswered). A command counts from the moment ExpCmdSN passes it, in the
// same atomic step, so the advertised MaxCmdSN never runs ahead of what
// acceptCmdSN accepts.
func (c *conn) window() (exp, maxSN uint32) {
	w := c.win.Load()
	exp = uint32(w >> 32)
	return exp, exp + uint32(c.srv.lim.QueueDepth) - 1 - uint32(w)
}

func (c *conn) expCmdSN() uint32 { return uint32(c.win.Load() >> 32) }

// releaseSlot frees the window slot of an answered (or aborted) command.
func (c *conn) releaseSlot() {
	for {
		w := c.win.Load()
		if uint32(w) == 0 {
			c.log.Error("iscsi: CmdSN window accounting underflow")
			return
		}
		if c.win.CompareAndSwap(w, w-1) {
			return
		}
	}
}

// serialLess is RFC 1982 serial-number comparison for 32-bit numbers.
func serialLess(a, b uint32) bool { return a != b && int32(a-b) < 0 }

// acceptCmdSN checks a non-immediate PDU's CmdSN against the window and
// advances ExpCmdSN. It reports false for a CmdSN outside the window or
// already received, which the caller then ignores (RFC 7143 §4.2.2.1).
// counted reports that the PDU, a SCSI command (scsiCmd), now occupies a
// window slot; a SCSI command beyond a gap is counted once the gap closes
// (see aheadT).
func (c *conn) acceptCmdSN(sn uint32, immediate, scsiCmd bool) (ok, counted bool) {
	if immediate {
		return true, false
	}
	exp, maxSN := c.window()
	if serialLess(sn, exp) || serialLess(maxSN, sn) || c.ahead[sn] {
		// RFC 7143 says to ignore it, so it is never answered: when an
		// initiator's idea of the window differs from ours, its command
		// times out with nothing else to explain why.
		level := slog.LevelDebug
		if !c.outsideLogged {
			c.outsideLogged, level = true, slog.LevelWarn
		}
		c.log.Log(context.Background(), level, "iscsi: CmdSN outside the window or already received, PDU ignored (later ones are logged at debug level)",
			"initiator", c.initiator, "cmdsn", sn, "exp", exp, "max", maxSN)
		return false, false
	}
	if sn != exp {
		c.ahead[sn] = true
		return true, false
	}
	var k, m uint64 = 1, 0
	if scsiCmd {
		m = 1
	}
	next := exp + 1
	passed := false
	for c.ahead[next] {
		delete(c.ahead, next)
		passed = true
		c.tmu.Lock()
		if t := c.aheadT[next]; t != nil {
			delete(c.aheadT, next)
			t.counted = true
			m++
		}
		c.tmu.Unlock()
		next++
		k++
	}
	c.win.Add(k<<32 + m)
	if passed {
		c.releaseHeld()
	}
	return true, scsiCmd
}

// queue hands an item to the writer goroutine.
func (c *conn) send(it outItem) {
	c.wmu.Lock()
	if c.wclosed {
		c.wmu.Unlock()
		if it.t != nil {
			it.t.release()
		}
		return
	}
	if len(c.queue) >= maxWriterQueue {
		// The peer sends but does not read (the queue only grows past the
		// CmdSN window through immediate PDUs): drop it.
		c.wmu.Unlock()
		if it.t != nil {
			it.t.release()
		}
		c.log.Warn("iscsi: initiator does not read its responses, dropping connection", "initiator", c.initiator)
		c.abort()
		return
	}
	c.queue = append(c.queue, it)
	c.wmu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// writer is the only goroutine that writes to the socket after login. It
// stamps StatSN/ExpCmdSN/MaxCmdSN, encodes a batch of queued items and
// flushes once the queue is empty, so one syscall carries many responses.
func (c *conn) writer() {
	defer close(c.writerDone)
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("iscsi: writer panicked", "panic", r, "stack", string(debug.Stack()))
			c.abort()
		}
	}()
	var batch []outItem
	var written []*task // tasks whose buffers the pending writev references
	release := func() {
		for i, t := range written {
			t.release()
			written[i] = nil
		}
		written = written[:0]
	}
	defer release()
	failed := false
	for {
		c.wmu.Lock()
		for len(c.queue) == 0 && !c.wclosed {
			c.wmu.Unlock()
			<-c.wake
			c.wmu.Lock()
		}
		if len(c.queue) == 0 && c.wclosed {
			c.wmu.Unlock()
			return
		}
		batch, c.queue = c.queue, batch[:0]
		c.wmu.Unlock()
		for i := range batch {
			it := &batch[i]
			if !failed {
				if err := c.writeItem(it); err != nil {
					failed = true
					c.abort()
				}
			}
			if it.t != nil {
				written = append(written, it.t)
			}
			*it = outItem{}
			if !failed && c.bw.Buffered() >= maxBatchBytes {
				if err := c.bw.Flush(); err != nil {
					failed = true
					c.abort()
				}
				release()
			}
		}
		if failed {
			release()
			continue
		}
		c.wmu.Lock()
		more := len(c.queue) > 0
		c.wmu.Unlock()
		if !more {
			// Yield once before the flush: workers that are about to
			// queue a response run first, and their responses share this
			// writev. Without it a loaded connection sent nearly one
			// writev per response (0.83 per 4 KiB write at QD32 against
			// 0.14 with it), each a trip through the TCP stack.
			runtime.Gosched()
			c.wmu.Lock()
			more = len(c.queue) > 0
			c.wmu.Unlock()
		}
		if !more {
			if err := c.bw.Flush(); err != nil {
				failed = true
				c.abort()
			}
			release()
		}
	}
}

func (c *conn) stamp(h *bhs, advance bool) {
	exp, maxSN := c.window()
	h.putU32(offCmdSN, c.statSN)
	if advance {
		c.statSN++
	}
	h.putU32(offExpSN, exp)
	h.putU32(offMaxCmdSN, maxSN)
}

func (c *conn) writeItem(it *outItem) error {
	switch it.kind {
	case outStatus, outNoSN:
		c.stamp(&it.h, it.kind == outStatus)
		return c.pw.write(&it.h, it.data)
	case outTask:
		return c.writeTaskResponse(it.t)
	case outClose:
		if err := c.bw.Flush(); err != nil {
			return err
		}
		c.abort()
		return errors.New("closed")
	}
	return fmt.Errorf("iscsi: unknown out item %d", it.kind)
}

// reject queues a Reject PDU carrying the offending header.
func (c *conn) reject(h *pduHeader, reason byte) {
	var r bhs
	r[0] = opReject
	r[1] = 0x80
	r[2] = reason
	r.putU32(16, reservedTag)
	hdr := make([]byte, bhsLen)
	copy(hdr, h.bhs[:])
	c.send(outItem{kind: outStatus, h: r, data: hdr})
}

// requestLogout sends an Async Message asking the initiator to log out
// within wait, and drops the connection if it has not by then.
func (c *conn) requestLogout(wait time.Duration) {
	if !c.loggedIn.Load() {
		c.abort()
		return
	}
	secs := max(int(wait/time.Second), 1)
	var h bhs
	h[0] = opAsync
	h[1] = 0x80
	h.putU64LUN(0)
	h.putU32(16, reservedTag)
	h[36] = 1 // SCSI async event 1: target requests logout
	h.putU16(42, uint16(min(secs, 3600)))
	c.send(outItem{kind: outStatus, h: h})
	t := time.AfterFunc(wait, c.abort)
	go func() {
		<-c.done
		t.Stop()
	}()
}

func (h *bhs) putU64LUN(lunField uint64) {
	for i := range 8 {
		h[8+i] = byte(lunField >> (56 - 8*i))
	}
}

// pinger sends a NOP-In when the initiator has been silent for
// NOPInterval and drops the connection when it stays silent for
// NOPTimeout after that.
func (c *conn) pinger() {
	defer c.auxWG.Done()
	iv, to := c.srv.cfg.NOPInterval, c.srv.cfg.NOPTimeout
	tick := time.NewTicker(max(min(iv, to)/2, 10*time.Millisecond))
	defer tick.Stop()
	var pinged int64
	for {
		select {
		case <-c.ctx.Done():
			return
		case now := <-tick.C:
			last := c.lastRecv.Load()
			idle := time.Duration(now.UnixNano() - last)
			if pinged != 0 && last < pinged && now.UnixNano()-pinged >= int64(to) {
				c.log.Info("iscsi: initiator not responding to NOP-In, dropping connection", "initiator", c.initiator)
				c.abort()
				return
			}
			if idle >= iv && (pinged == 0 || last >= pinged) {
				pinged = now.UnixNano()
				c.pingTTT++
				if c.pingTTT == reservedTag {
					c.pingTTT = 1
				}
				var h bhs
				h[0] = opNOPIn
				h[1] = 0x80
				h.putU32(16, reservedTag)
				h.putU32(offTTT, c.pingTTT)
				c.send(outItem{kind: outNoSN, h: h})
			}
		}
	}
}

// readPayload reads the current PDU's data segment into the scratch buffer
// (grown up to the negotiated maximum).
func (c *conn) readPayload(h *pduHeader) ([]byte, error) {
	n := h.bhs.dataLen()
	if n > len(c.scratch) {
		c.scratch = make([]byte, n)
	}
	p := c.scratch[:n]
	if err := c.pr.readData(h, p); err != nil {
		return nil, err
	}
	return p, nil
}

// fullFeature is the reader loop of a logged-in connection.
func (c *conn) fullFeature() error {
	var h pduHeader
	for {
		if err := c.pr.readHeader(&h); err != nil {
			if errors.Is(err, ErrSegmentTooBig) {
				c.reject(&h, rejectProtocolError)
				c.closeAfterFlush()
			}
			return err
		}
		c.lastRecv.Store(time.Now().UnixNano())
		var err error
		switch h.bhs.opcode() {
		case opSCSICmd:
			err = c.handleSCSICommand(&h)
		case opDataOut:
			err = c.handleDataOut(&h)
		case opNOPOut:
			err = c.handleNOPOut(&h)
		case opTaskMgmt:
			err = c.handleTaskMgmt(&h)
		case opTextReq:
			err = c.handleText(&h)
		case opLogoutReq:
			err = c.handleLogout(&h)
		case opSNACK:
			// ErrorRecoveryLevel 0: SNACK is not supported.
			if err = c.pr.readData(&h, nil); err == nil {
				c.reject(&h, rejectSNACK)
			}
		default:
			// A login PDU in full-feature phase or an unknown opcode:
			// the stream cannot be trusted any more.
			c.reject(&h, rejectProtocolError)
			c.closeAfterFlush()
			return fmt.Errorf("%w: opcode %#x in full-feature phase", ErrMalformedPDU, h.bhs.opcode())
		}
		if err != nil {
			if errors.Is(err, ErrDataDigest) {
				c.reject(&h, rejectDataDigest)
				c.closeAfterFlush()
			}
			return err
		}
	}
}

// closeAfterFlush lets the writer send what is queued, then closes.
func (c *conn) closeAfterFlush() {
	c.closing.Store(true)
	c.send(outItem{kind: outClose})
	t := time.AfterFunc(2*time.Second, c.abort)
	go func() {
		<-c.done
		t.Stop()
	}()
}

func (c *conn) handleNOPOut(h *pduHeader) error {
	data, err := c.readPayload(h)
	if err != nil {
		return err
	}
	itt := h.bhs.itt()
	if itt == reservedTag {
		return nil // answer to our NOP-In; lastRecv already noted
	}
	if ok, _ := c.acceptCmdSN(h.bhs.u32(offCmdSN), h.bhs.immediate(), false); !ok {
		return nil
	}
	var r bhs
	r[0] = opNOPIn
	r[1] = 0x80
	copy(r[8:16], h.bhs[8:16])
	r.putU32(16, itt)
	r.putU32(offTTT, reservedTag)
	var echo []byte
	if len(data) > 0 {
		echo = append([]byte(nil), data[:min(len(data), c.params.MaxXmitDataSegment)]...)
	}
	c.send(outItem{kind: outStatus, h: r, data: echo})
	return nil
}

func (c *conn) handleLogout(h *pduHeader) error {
	if err := c.pr.readData(h, nil); err != nil {
		return err
	}
	if ok, _ := c.acceptCmdSN(h.bhs.u32(offCmdSN), h.bhs.immediate(), false); !ok {
		return nil
	}
	reason := h.bhs.flags() & 0x7f
	var resp byte
	switch {
	case reason == 2:
		resp = 2 // connection recovery is not supported
	case reason == 1 && h.bhs.u16(20) != c.cid:
		resp = 1 // CID not found
	case reason > 2:
		c.reject(h, rejectInvalidField)
		return nil
	}
	itt := h.bhs.itt()
	var r bhs
	r[0] = opLogoutResp
	r[1] = 0x80
	r[2] = resp
	r.putU32(16, itt)
	if resp != 0 {
		// Refused: the session carries on as if the request had not
		// come. Aborting the commands still collecting data here, as a
		// logout does, would leave them unanswered, and commands
		// rejected meanwhile would leave a CmdSN gap that holds back
		// every later one.
		c.send(outItem{kind: outStatus, h: r})
		return nil
	}
	c.closing.Store(true)
	c.auxWG.Add(1)
	go func() {
		defer c.auxWG.Done()
		// Answered commands go out before the Logout Response.
		c.abortCollecting()
		stop := c.warnWhile("iscsi: logout waits for commands still running in the device server; its response stays unanswered until they return",
			func(yield func(*task)) {
				for _, t := range c.tasks {
					yield(t)
				}
			})
		c.taskWG.Wait()
		stop()
		// The nexus ends with the logout, before its response: an
		// initiator that logs in again (or another one) right after must
		// not find this nexus' RESERVE(6) still held.
		if e := c.target.Load(); e != nil && c.sess != nil {
			e.cfg.SCSI.NexusLost(&c.nexus)
			c.nexusGone.Store(true)
		}
		c.send(outItem{kind: outStatus, h: r})
		c.send(outItem{kind: outClose})
	}()
	return nil
}
