package iscsi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/cachelun/cachelun/target/scsi"
)

// task is one SCSI command from arrival to response.
//
// Fields up to "shared" are owned by the reader goroutine while the task
// collects Data-Out, then by the task goroutine while it runs, then by the
// writer. started, finished and aborted are guarded by conn.tmu.
type task struct {
	c         *conn
	itt       uint32
	cmdSN     uint32
	immediate bool
	lunField  uint64
	read      bool
	write     bool
	edtl      uint32
	cmd       scsi.Command
	cdb       [16]byte

	buf      []byte  // Data-Out, len == edtl for writes
	dataIn   []byte  // pooled Data-In buffer
	bufP     *[]byte // pooled buffers (Server.bufs) behind buf and dataIn
	dataInP  *[]byte
	pooled   bool
	reserved int64 // bytes counted in Server.bufBytes
	resp     scsi.Response
	ctx      taskCtx
	noExec   bool // answered by the transport itself (resp preset)

	// Data-Out collection (reader goroutine only).
	unsolNext, unsolEnd uint32 // unsolicited window [imm, unsolEnd)
	solNext             uint32 // next solicited offset expected
	r2tNext             uint32 // end of the solicited data asked for so far
	r2tEnds             []uint32
	r2tSN               uint32
	ttt                 uint32
	dataSN              uint32 // next DataSN expected in the current solicited sequence
	unsolDataSN         uint32 // next DataSN expected in the unsolicited sequence

	// shared (conn.tmu)
	started, finished, aborted bool
	counted                    bool // occupies a CmdSN window slot
	final                      bool // F bit: no unsolicited Data-Out follows the command
}

func (t *task) complete() bool {
	return t.unsolNext == t.unsolEnd && t.solNext == t.edtl
}

// release returns pooled buffers once nothing refers to them any more.
func (t *task) release() {
	t.unreserve()
	if t.pooled {
		t.c.srv.bufs.put(t.bufP)
		t.c.srv.bufs.put(t.dataInP)
	}
	t.bufP, t.dataInP = nil, nil
	t.buf, t.dataIn, t.cmd.DataOut, t.cmd.DataIn, t.resp.Data = nil, nil, nil, nil, nil
}

// unreserve returns the task's buffer bytes to the server's budget.
func (t *task) unreserve() {
	if t.reserved > 0 {
		t.c.srv.bufBytes.Add(-t.reserved)
		t.reserved = 0
	}
}

// Buffer pool: power-of-two size classes from 4 KiB to 16 MiB.
const (
	minBufShift = 12
	maxBufShift = 24
)

// bufPool recycles data buffers by size class. It holds pointers to
// slices, so that putting a buffer back does not allocate a slice header
// (two allocations a command, one for its buffer and one for the pointer
// to it, otherwise).
type bufPool struct {
	classes [maxBufShift - minBufShift + 1]sync.Pool
}

func bufClass(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}

// get returns a buffer of length n, or nil for n == 0.
func (p *bufPool) get(n int) *[]byte {
	if n == 0 {
		return nil
	}
	c := bufClass(n)
	if c >= len(p.classes) {
		b := make([]byte, n)
		return &b
	}
	if b, ok := p.classes[c].Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(c+minBufShift))
	return &b
}

// bytesOf is the buffer b points to; nil for nil.
func bytesOf(b *[]byte) []byte {
	if b == nil {
		return nil
	}
	return *b
}

// put returns a buffer from get; nil is ignored.
func (p *bufPool) put(b *[]byte) {
	if b == nil {
		return
	}
	c := bufClass(cap(*b))
	if c >= len(p.classes) || cap(*b) != 1<<(c+minBufShift) {
		return
	}
	p.classes[c].Put(b)
}

// handleSCSICommand accepts a SCSI Command PDU: checks it, reads immediate
// data, asks for the rest with R2Ts, and starts it when all data is in.
func (c *conn) handleSCSICommand(h *pduHeader) error {
	if refused, err := c.refuseOutsideFullFeature(h); refused || err != nil {
		return err
	}
	cmd, ok, err := c.admitCommand(h)
	if !ok || err != nil {
		return err
	}
	t := c.newTask(h, cmd)
	if resp, refuse := c.refuseBeforeData(t); refuse {
		return c.answerWithoutData(h, t, resp)
	}
	if err := c.takeImmediateData(h, t); err != nil {
		return err
	}
	c.startTask(t)
	return nil
}

// scsiCmd is what admitCommand reads from a SCSI Command PDU.
type scsiCmd struct {
	itt         uint32
	dsl, edtl   uint32
	read, write bool
	final       bool
	attr        byte
	cdbExt      []byte
	counted     bool
}

// refuseOutsideFullFeature rejects a command on a discovery session, on a
// connection without a target, or on a connection waiting for its logout.
func (c *conn) refuseOutsideFullFeature(h *pduHeader) (refused bool, err error) {
	reason := byte(0)
	switch {
	case c.discovery || c.target.Load() == nil:
		reason = rejectProtocolError
	case c.closing.Load():
		reason = rejectWaitingLogout
	default:
		return false, nil
	}
	if err := c.pr.readData(h, nil); err != nil {
		return true, err
	}
	c.reject(h, reason)
	return true, nil
}

// admitCommand checks the PDU (flags against the negotiated parameters,
// the AHS, a task tag already in use, the bound on immediate commands) and
// the CmdSN window. A refused command is rejected, its data read and
// dropped; ok is false then.
func (c *conn) admitCommand(h *pduHeader) (cmd scsiCmd, ok bool, err error) {
	b := &h.bhs
	flags := b.flags()
	cmd = scsiCmd{itt: b.itt(), dsl: uint32(b.dataLen()), edtl: b.u32(offTTT),
		read: flags&0x40 != 0, write: flags&0x20 != 0, final: flags&0x80 != 0, attr: flags & 7}
	malformed := cmd.itt == reservedTag ||
		(cmd.dsl > 0 && (!cmd.write || cmd.dsl > cmd.edtl || !c.params.ImmediateData || cmd.dsl > uint32(c.params.FirstBurstLength))) ||
		(cmd.write && !cmd.final && c.params.InitialR2T) ||
		(!cmd.write && !cmd.final)
	if !malformed && len(h.ahs) > 0 {
		var ok bool
		cmd.cdbExt, ok = parseAHS(h.ahs)
		malformed = !ok
	}
	c.tmu.Lock()
	dup := c.tasks[cmd.itt] != nil
	// Immediate commands bypass the CmdSN window; bound them separately.
	tooMany := b.immediate() && len(c.tasks) >= 2*c.srv.lim.QueueDepth
	c.tmu.Unlock()
	if tooMany {
		if err := c.pr.readData(h, nil); err != nil {
			return cmd, false, err
		}
		c.reject(h, rejectImmediate)
		return cmd, false, nil
	}
	if malformed || dup {
		if err := c.pr.readData(h, nil); err != nil {
			return cmd, false, err
		}
		// The rejected command still uses up its CmdSN, or every later
		// command would wait for it forever.
		c.acceptCmdSN(b.u32(offCmdSN), b.immediate(), false)
		if dup {
			c.reject(h, rejectTaskInProgress)
		} else {
			c.reject(h, rejectInvalidField)
		}
		return cmd, false, nil
	}
	accepted, counted := c.acceptCmdSN(b.u32(offCmdSN), b.immediate(), true)
	if !accepted {
		return cmd, false, c.pr.readData(h, nil)
	}
	cmd.counted = counted
	return cmd, true, nil
}

// newTask builds the task of an admitted command.
func (c *conn) newTask(h *pduHeader, cmd scsiCmd) *task {
	b := &h.bhs
	t := &task{
		c:         c,
		itt:       cmd.itt,
		cmdSN:     b.u32(offCmdSN),
		immediate: b.immediate(),
		lunField:  b.lunField(),
		read:      cmd.read,
		write:     cmd.write,
		edtl:      cmd.edtl,
		ttt:       reservedTag,
		counted:   cmd.counted,
		final:     cmd.final,
	}
	copy(t.cdb[:], b[32:48])
	t.cmd.CDB = t.cdb[:]
	if cmd.cdbExt != nil {
		t.cmd.CDB = append(t.cdb[:16:16], cmd.cdbExt...)
	}
	t.cmd.Nexus = &c.nexus
	t.cmd.LUN = decodeLUN(t.lunField)
	t.cmd.Tag = uint64(cmd.itt)
	t.cmd.Attr = scsi.TaskAttr(cmd.attr)
	return t
}

// refuseBeforeData decides whether the command is answered without taking
// its data: too large to buffer (CHECK CONDITION), or over the server's
// buffer budget (TASK SET FULL). Otherwise it reserves the budget.
func (c *conn) refuseBeforeData(t *task) (scsi.Response, bool) {
	if t.edtl > uint32(c.srv.cfg.MaxTransferLength) {
		return scsi.Response{Status: scsi.StatusCheckCondition, Sense: scsi.Sense(scsi.SenseIllegalRequest, scsi.ASCInvalidFieldInCDB)}, true
	}
	need := int64(0)
	if t.write {
		need += int64(t.edtl)
	}
	if t.read {
		need += int64(t.edtl)
	}
	if need > 0 && c.srv.bufBytes.Add(need) > c.srv.cfg.MaxBufferBytes {
		c.srv.bufBytes.Add(-need)
		c.log.Debug("iscsi: buffer budget exhausted, TASK SET FULL", "itt", t.itt, "bytes", need)
		return scsi.Response{Status: scsi.StatusTaskSetFull}, true
	}
	t.reserved = need
	return scsi.Response{}, false
}

// answerWithoutData answers a command refused before its data with resp,
// without reading the data; unsolicited data that follows is dropped.
func (c *conn) answerWithoutData(h *pduHeader, t *task, resp scsi.Response) error {
	if err := c.pr.readData(h, nil); err != nil {
		return err
	}
	t.noExec = true
	t.solNext, t.r2tNext = t.edtl, t.edtl
	t.resp = resp
	if t.write && !t.final {
		c.tmu.Lock()
		c.rememberAborted(t.itt)
		c.tmu.Unlock()
	}
	c.register(t)
	c.ready(t)
	return nil
}

// takeImmediateData takes the buffers of the command and reads its
// immediate data; what remains to come (unsolicited Data-Out up to the
// first burst, then R2Ts) is set up in the task.
func (c *conn) takeImmediateData(h *pduHeader, t *task) error {
	t.pooled = true
	dsl := uint32(h.bhs.dataLen())
	if t.write {
		t.bufP = c.srv.bufs.get(int(t.edtl))
		t.buf = bytesOf(t.bufP)
		if err := c.pr.readData(h, t.buf[:dsl]); err != nil {
			c.srv.bufs.put(t.bufP)
			t.unreserve()
			return err
		}
		t.unsolNext, t.unsolEnd = dsl, dsl
		if !t.final {
			t.unsolEnd = max(dsl, min(uint32(c.params.FirstBurstLength), t.edtl))
		}
		t.solNext, t.r2tNext = t.unsolEnd, t.unsolEnd
		t.cmd.DataOut = t.buf
	} else {
		if err := c.pr.readData(h, nil); err != nil {
			t.unreserve()
			return err
		}
		t.solNext, t.r2tNext = t.edtl, t.edtl
	}
	if t.read {
		t.dataInP = c.srv.bufs.get(int(t.edtl))
		t.dataIn = bytesOf(t.dataInP)
		t.cmd.DataIn = t.dataIn[:0]
		t.cmd.DataInLen = t.edtl
	}
	return nil
}

// startTask registers the task and hands it to the device server once it
// has all its data, or solicits the rest with R2Ts.
func (c *conn) startTask(t *task) {
	c.register(t)
	if t.complete() {
		c.ready(t)
		return
	}
	if t.r2tNext < t.edtl {
		c.tmu.Lock()
		c.nextTTT++
		if c.nextTTT == reservedTag {
			c.nextTTT = 0
		}
		t.ttt = c.nextTTT
		c.tmu.Unlock()
		c.issueR2Ts(t)
	}
}

// parseAHS walks the additional header segments and returns the extended
// CDB bytes, if any (RFC 7143 §11.2.2).
func parseAHS(ahs []byte) (ext []byte, ok bool) {
	for len(ahs) > 0 {
		if len(ahs) < 4 {
			return nil, false
		}
		n := int(binary.BigEndian.Uint16(ahs[0:2]))
		typ := ahs[2]
		total := (3 + n + 3) &^ 3 // length counts from byte 3
		if n == 0 || total > len(ahs) {
			return nil, false
		}
		switch typ {
		case 1: // extended CDB
			if n < 2 {
				return nil, false
			}
			ext = ahs[4 : 3+n]
		case 2: // bidirectional read length: not supported, ignored
		default:
			return nil, false
		}
		ahs = ahs[total:]
	}
	return ext, true
}

func (c *conn) register(t *task) {
	c.tmu.Lock()
	c.tasks[t.itt] = t
	if !t.immediate && !t.counted {
		c.aheadT[t.cmdSN] = t
	}
	c.tmu.Unlock()
}

// rememberAborted and recentlyAborted need c.tmu.
func (c *conn) rememberAborted(itt uint32) {
	c.recent[c.recentN%len(c.recent)] = itt
	c.recentN++
}

func (c *conn) recentlyAborted(itt uint32) bool {
	return slices.Contains(c.recent[:min(c.recentN, len(c.recent))], itt)
}

// issueR2Ts asks for solicited data, up to MaxOutstandingR2T bursts at a time.
func (c *conn) issueR2Ts(t *task) {
	for len(t.r2tEnds) < c.params.MaxOutstandingR2T && t.r2tNext < t.edtl {
		n := min(t.edtl-t.r2tNext, uint32(c.params.MaxBurstLength))
		var h bhs
		h[0] = opR2T
		h[1] = 0x80
		h.putU64LUN(t.lunField)
		h.putU32(16, t.itt)
		h.putU32(offTTT, t.ttt)
		h.putU32(offDataSN, t.r2tSN)
		h.putU32(offBufOff, t.r2tNext)
		h.putU32(offResidual, n)
		t.r2tSN++
		t.r2tNext += n
		t.r2tEnds = append(t.r2tEnds, t.r2tNext)
		c.send(outItem{kind: outNoSN, h: h})
	}
}

// handleDataOut places a Data-Out payload straight into its task's buffer,
// after checking that it lies inside what the target asked for: data is
// never accepted past the expected transfer length or out of order.
func (c *conn) handleDataOut(h *pduHeader) error {
	b := &h.bhs
	itt := b.itt()
	c.tmu.Lock()
	t := c.tasks[itt]
	if t != nil && (t.started || t.aborted || !t.write || t.noExec) {
		t = nil
	}
	known := t == nil && c.recentlyAborted(itt)
	c.tmu.Unlock()
	if t == nil {
		if err := c.pr.readData(h, nil); err != nil {
			return err
		}
		if !known {
			c.reject(h, rejectInvalidField)
		}
		return nil
	}
	off := b.u32(offBufOff)
	n := uint32(b.dataLen())
	ttt := b.u32(offTTT)
	if t.complete() {
		// All its data is in and it waits for an earlier CmdSN or for
		// an ORDERED task: it is already on its way to run, so it
		// cannot be failed any more. Data for it is a protocol error
		// the connection cannot recover from at ERL 0.
		if err := c.pr.readData(h, nil); err != nil {
			return err
		}
		c.log.Info("iscsi: Data-Out for a command that has all its data, dropping connection", "itt", itt, "offset", off, "len", n)
		c.reject(h, rejectProtocolError)
		c.closeAfterFlush()
		return ErrMalformedPDU
	}
	var next, sn *uint32
	var limit uint32
	if ttt == reservedTag {
		next, sn, limit = &t.unsolNext, &t.unsolDataSN, t.unsolEnd
	} else if ttt == t.ttt {
		next, sn, limit = &t.solNext, &t.dataSN, t.r2tNext
	}
	var asc, ascq byte
	switch {
	case next == nil:
		asc, ascq = 0x4b, 0x01 // INVALID TARGET PORT TRANSFER TAG RECEIVED
	case ttt == reservedTag && uint64(off)+uint64(n) > uint64(limit):
		asc, ascq = 0x0c, 0x0c // UNEXPECTED UNSOLICITED DATA
	case off != *next || n == 0 || uint64(off)+uint64(n) > uint64(limit):
		asc, ascq = 0x4b, 0x05 // DATA OFFSET ERROR
	case b.u32(offDataSN) != *sn:
		// A DataSN gap means a lost PDU: an implied digest error
		// (RFC 7143 §7.8).
		asc, ascq = 0x47, 0x05 // PROTOCOL SERVICE CRC ERROR
	}
	if asc != 0 {
		// The header is sound, so the stream is still in step: only this
		// command is lost. ERL 0 cannot ask for the data again, so the
		// command ends with CHECK CONDITION and nothing of it is written.
		if err := c.pr.readData(h, nil); err != nil {
			return err
		}
		c.log.Info("iscsi: unexpected Data-Out, failing the command", "itt", itt, "offset", off, "len", n,
			"datasn", b.u32(offDataSN), "ttt", ttt, "asc", asc, "ascq", ascq)
		c.failCollecting(t, asc, ascq)
		return nil
	}
	if err := c.pr.readData(h, t.buf[off:off+n]); err != nil {
		if errors.Is(err, ErrDataDigest) {
			// RFC 7143 §7.8: a Data-Out with a payload digest error is
			// rejected and, at ERL 0, its task ends with CHECK
			// CONDITION; the connection carries on.
			c.log.Info("iscsi: data digest error in Data-Out, failing the command", "itt", itt, "offset", off, "len", n)
			c.reject(h, rejectDataDigest)
			c.failCollecting(t, 0x47, 0x05)
			return nil
		}
		return err
	}
	*next += n
	*sn++
	if ttt != reservedTag {
		for len(t.r2tEnds) > 0 && t.solNext >= t.r2tEnds[0] {
			t.r2tEnds = t.r2tEnds[1:]
			t.dataSN = 0 // each R2T starts a new sequence
		}
		c.issueR2Ts(t)
	}
	if t.complete() {
		c.ready(t)
	}
	return nil
}

// failCollecting ends a write whose Data-Out went wrong before it started:
// it is answered CHECK CONDITION, ABORTED COMMAND with asc/ascq without
// running, and the rest of its Data-Out is read and dropped quietly.
func (c *conn) failCollecting(t *task, asc, ascq byte) {
	c.tmu.Lock()
	t.noExec = true
	c.rememberAborted(t.itt)
	c.tmu.Unlock()
	t.unsolNext, t.solNext, t.r2tNext, t.r2tEnds = t.unsolEnd, t.edtl, t.edtl, nil
	t.resp = scsi.Response{Status: scsi.StatusCheckCondition, Sense: scsi.Sense(scsi.SenseAbortedCommand, scsi.ASC(asc)<<8|scsi.ASC(ascq))}
	c.ready(t)
}

// ready starts a task whose data is complete, unless an earlier CmdSN is
// still missing, in which case it waits in held.
func (c *conn) ready(t *task) {
	if !t.immediate && !serialLess(t.cmdSN, c.expCmdSN()) {
		c.tmu.Lock()
		c.held = append(c.held, t)
		c.tmu.Unlock()
		return
	}
	c.launch(t)
}

// releaseHeld starts held tasks whose CmdSN is now below ExpCmdSN.
func (c *conn) releaseHeld() {
	exp := c.expCmdSN()
	c.tmu.Lock()
	var go_ []*task
	c.held = slices.DeleteFunc(c.held, func(t *task) bool {
		if serialLess(t.cmdSN, exp) {
			go_ = append(go_, t)
			return true
		}
		return false
	})
	c.tmu.Unlock()
	for _, t := range go_ {
		c.launch(t)
	}
}

func (c *conn) launch(t *task) {
	c.tmu.Lock()
	if t.aborted || c.closing.Load() {
		c.tmu.Unlock()
		return
	}
	var start *task
	if c.mayStartLocked(t) {
		start = c.startLocked(t)
	} else {
		c.gated = append(c.gated, t)
	}
	c.tmu.Unlock()
	if start != nil {
		c.run(start)
	}
}

// SAM task attributes, per connection: an ORDERED task starts only when
// every task before it has finished, and tasks after it wait until it has
// finished; HEAD OF QUEUE starts at once; SIMPLE (and ACA, untagged) tasks
// run concurrently. Tasks held back wait in c.gated, in order.
func (c *conn) mayStartLocked(t *task) bool {
	switch {
	case t.cmd.Attr == scsi.TaskHead:
		return true
	case len(c.gated) > 0 || c.ordered != nil:
		return false
	case t.cmd.Attr == scsi.TaskOrdered:
		return c.active == 0
	}
	return true
}

func (c *conn) startLocked(t *task) *task {
	t.started = true
	c.active++
	if t.cmd.Attr == scsi.TaskOrdered {
		c.ordered = t
	}
	c.taskWG.Add(1)
	return t
}

// releaseGatedLocked starts the gated tasks the ordering rules now allow.
func (c *conn) releaseGatedLocked() []*task {
	var out []*task
	for len(c.gated) > 0 && c.ordered == nil && !c.closing.Load() {
		t := c.gated[0]
		if t.cmd.Attr == scsi.TaskOrdered && c.active > 0 {
			break
		}
		c.gated = c.gated[1:]
		out = append(out, c.startLocked(t))
	}
	return out
}

// run hands a started task to a worker.
func (c *conn) run(t *task) {
	if t.noExec {
		c.finish(t)
		return
	}
	select {
	case c.work <- t:
	default:
		c.workerWG.Add(1)
		go c.worker(t)
	}
}

// worker runs tasks until the connection ends or it has been idle for a
// while. Reusing goroutines keeps their grown stacks, which a goroutine
// per command would have to grow again each time.
func (c *conn) worker(t *task) {
	defer c.workerWG.Done()
	c.workers.Add(1)
	defer c.workers.Add(-1)
	// The idle timer is re-armed when it fires after a busy period, not
	// after every command: a Reset per command was 1 % of the daemon's CPU
	// samples in 4 KiB writes. A worker so ends after one to two idle
	// periods.
	idle := time.NewTimer(c.srv.workerIdle)
	defer idle.Stop()
	for {
		t.run(c.target.Load().cfg.SCSI)
		busy := true
	wait:
		select {
		case t = <-c.work:
		case <-idle.C:
			if !busy {
				return
			}
			busy = false
			idle.Reset(c.srv.workerIdle)
			goto wait
		case <-c.ctx.Done():
			return
		}
	}
}

const defaultWorkerIdle = 2 * time.Second

// defaultReinstateWait is below open-iscsi's 15 s login timeout, so a
// reinstating login is answered before the initiator gives up on it.
const defaultReinstateWait = 5 * time.Second

// defaultStuckWarn: a device server that takes this long to return an
// aborted command is worth a line in the log, and one more each period.
const defaultStuckWarn = 10 * time.Second

func (t *task) run(st SCSITarget) {
	defer func() {
		if r := recover(); r != nil {
			t.c.log.Error("iscsi: command panicked", "cdb", t.cmd.CDB, "panic", r, "stack", string(debug.Stack()))
			t.resp = scsi.Response{Status: scsi.StatusCheckCondition, Sense: scsi.Sense(scsi.SenseHardwareError, scsi.ASCInternalTargetFailure)}
		}
		t.ctx.cancel()
		t.c.finish(t)
	}()
	t.resp = st.Execute(&t.ctx, &t.cmd)
}

// finish queues the response of a task unless it was aborted.
func (c *conn) finish(t *task) {
	defer c.taskWG.Done()
	c.tmu.Lock()
	t.finished = true
	if t.aborted {
		c.finished.Broadcast() // abortTasks waits for it
	}
	c.active--
	if c.ordered == t {
		c.ordered = nil
	}
	next := c.releaseGatedLocked()
	aborted := t.aborted
	if !aborted {
		delete(c.tasks, t.itt)
	}
	c.tmu.Unlock()
	if !aborted {
		c.send(outItem{kind: outTask, t: t})
	}
	for _, x := range next {
		c.run(x)
	}
}

// abortTasks aborts the unanswered tasks match selects: they are removed,
// their contexts cancelled, and their responses will never be sent. It
// waits for running ones to return.
func (c *conn) abortTasks(match func(*task) bool) int {
	c.tmu.Lock()
	var victims []*task
	for itt, t := range c.tasks {
		if t.finished || !match(t) {
			continue
		}
		t.aborted = true
		delete(c.tasks, itt)
		if !t.immediate && !t.counted {
			delete(c.aheadT, t.cmdSN)
		}
		c.rememberAborted(itt)
		victims = append(victims, t)
	}
	var next []*task
	if len(victims) > 0 {
		c.held = slices.DeleteFunc(c.held, func(t *task) bool { return t.aborted })
		c.gated = slices.DeleteFunc(c.gated, func(t *task) bool { return t.aborted })
		next = c.releaseGatedLocked()
	}
	c.tmu.Unlock()
	for _, x := range next {
		c.run(x)
	}
	for _, t := range victims {
		t.ctx.cancel()
	}
	if len(victims) > 0 {
		defer c.warnUnfinished(victims)()
	}
	for _, t := range victims {
		c.tmu.Lock()
		started := t.started
		for started && !t.finished {
			c.finished.Wait()
		}
		c.tmu.Unlock()
		if started {
			t.release()
		} else {
			// The reader may still be filling its buffer: leave that to
			// the garbage collector, but give back the budget.
			t.unreserve()
		}
		if t.counted {
			c.releaseSlot()
		}
	}
	return len(victims)
}

// warnUnfinished logs, every Server.stuckWarn until the returned stop is
// called, the aborted commands still running in the device server. Until
// they return, whatever waits for them (a task management response, a
// logout, a connection's teardown and so a reinstating login) stays
// unanswered; the log names the commands so that such a hang can be traced
// to the device server.
func (c *conn) warnUnfinished(victims []*task) (stop func()) {
	return c.warnWhile("iscsi: aborted commands have not returned from the device server; what waits for them stays unanswered",
		func(yield func(*task)) {
			for _, t := range victims {
				yield(t)
			}
		})
}

// warnWhile logs msg every Server.stuckWarn, until stop is called, with
// the commands tasks lists (under c.tmu) that are still running in the
// device server.
func (c *conn) warnWhile(msg string, tasks func(yield func(*task))) (stop func()) {
	start := time.Now()
	var mu sync.Mutex
	stopped := false
	var tm *time.Timer
	mu.Lock()
	defer mu.Unlock()
	tm = time.AfterFunc(c.srv.stuckWarn, func() {
		var stuck []string
		c.tmu.Lock()
		tasks(func(t *task) {
			if t.started && !t.finished {
				stuck = append(stuck, fmt.Sprintf("itt=%#x lun=%d cdb=[% x]", t.itt, t.cmd.LUN, t.cmd.CDB))
			}
		})
		c.tmu.Unlock()
		if len(stuck) > 0 {
			c.log.Warn(msg, "initiator", c.initiator, "waited", time.Since(start).Round(time.Millisecond), "commands", stuck)
		}
		mu.Lock()
		if !stopped {
			tm.Reset(c.srv.stuckWarn)
		}
		mu.Unlock()
	})
	return func() {
		mu.Lock()
		stopped = true
		tm.Stop()
		mu.Unlock()
	}
}

// abortCollecting aborts tasks that have not started and stops new ones
// from starting (logout).
func (c *conn) abortCollecting() {
	c.closing.Store(true)
	c.abortTasks(func(t *task) bool { return !t.started })
}

func (c *conn) abortAllTasks() {
	c.closing.Store(true)
	c.abortTasks(func(*task) bool { return true })
}

// writeTaskResponse sends a finished command's Data-In PDUs and status:
// the status rides in the last Data-In (phase collapse) when there is data
// and no sense, else in a SCSI Response PDU.
func (c *conn) writeTaskResponse(t *task) error {
	if t.counted {
		c.releaseSlot()
	}
	resp := &t.resp
	var data []byte
	if t.read {
		data = resp.Data
		if uint32(len(data)) > t.edtl {
			data = data[:t.edtl]
		}
	}
	var rflags byte
	var residual uint32
	switch {
	case resp.TransferLen > t.edtl:
		rflags, residual = 0x04, resp.TransferLen-t.edtl
	case t.read && uint32(len(data)) < t.edtl:
		rflags, residual = 0x02, t.edtl-uint32(len(data))
	case !t.read && resp.TransferLen < t.edtl:
		rflags, residual = 0x02, t.edtl-resp.TransferLen
	}
	collapse := len(data) > 0 && len(resp.Sense) == 0
	maxSeg := c.params.MaxXmitDataSegment
	burst := c.params.MaxBurstLength
	var dataSN uint32
	for off := 0; off < len(data); {
		burstEnd := (off/burst + 1) * burst
		n := min(maxSeg, len(data)-off, burstEnd-off)
		last := off+n == len(data)
		var h bhs
		h[0] = opDataIn
		if last || off+n == burstEnd {
			h[1] = 0x80
		}
		h.putU64LUN(t.lunField)
		h.putU32(16, t.itt)
		h.putU32(offTTT, reservedTag)
		if last && collapse {
			h[1] |= 0x01 | rflags
			h[3] = byte(resp.Status)
			c.stamp(&h, true)
			h.putU32(offResidual, residual)
		} else {
			c.stamp(&h, false)
			h.putU32(offCmdSN, 0)
		}
		h.putU32(offDataSN, dataSN)
		h.putU32(offBufOff, uint32(off))
		dataSN++
		if err := c.pw.write(&h, data[off:off+n]); err != nil {
			return err
		}
		off += n
	}
	if collapse {
		return nil
	}
	var h bhs
	h[0] = opSCSIResp
	h[1] = 0x80 | rflags
	h[3] = byte(resp.Status)
	h.putU32(16, t.itt)
	c.stamp(&h, true)
	h.putU32(offDataSN, dataSN)
	h.putU32(offResidual, residual)
	var seg []byte
	if len(resp.Sense) > 0 {
		seg = make([]byte, 2+len(resp.Sense))
		binary.BigEndian.PutUint16(seg, uint16(len(resp.Sense)))
		copy(seg[2:], resp.Sense)
	}
	return c.pw.write(&h, seg)
}
