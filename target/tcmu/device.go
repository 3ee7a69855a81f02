package tcmu

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cachelun/cachelun/target/scsi"
)

// uioPort is the device's UIO file: wait blocks until the kernel queued
// something (or the port was stopped), kick tells the kernel completions are
// ready. The kernel implementation is uioFile; tests use a simulated kernel.
type uioPort interface {
	// wait returns stopped=true once stop was called.
	wait() (stopped bool, err error)
	kick() error
	stop()
	close() error
}

// executor runs SCSI commands (a *scsi.Target).
type executor interface {
	Execute(ctx context.Context, cmd *scsi.Command) scsi.Response
}

// device serves one TCMU device: it owns the ring and runs one goroutine per
// command in flight (the kernel bounds them by hw_queue_depth).
type device struct {
	name  uioName
	minor uint32
	log   *slog.Logger
	port  uioPort
	ring  *ring
	exec  func() (executor, error) // the LU, created on first use
	nexus *scsi.Nexus
	grace time.Duration

	cmdCtx    context.Context
	cancelCmd context.CancelFunc

	mu       sync.Mutex
	inflight map[uint16]context.CancelFunc

	cmds sync.WaitGroup
	// broken is set when the ring turned out corrupt; nothing more is
	// written to it.
	broken atomic.Bool

	served atomic.Uint64
}

func newDevice(name uioName, minor uint32, port uioPort, mm []byte, exec func() (executor, error), log *slog.Logger) (*device, error) {
	r, err := newRing(mm)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &device{
		name:      name,
		minor:     minor,
		log:       log,
		port:      port,
		ring:      r,
		exec:      exec,
		grace:     10 * time.Second,
		cmdCtx:    ctx,
		cancelCmd: cancel,
		inflight:  make(map[uint16]context.CancelFunc),
		nexus: &scsi.Nexus{
			InitiatorName:  "tcmu",
			InitiatorPort:  "tcmu,i,0x0",
			TargetPort:     fmt.Sprintf("%s,t,0x1", name.configDir()),
			RelativePortID: 1,
		},
	}
	return d, nil
}

// serve consumes the ring until the port is stopped, then waits for the
// commands in flight (cancelling them after the grace period) so their
// completions reach the kernel before the mapping goes away.
func (d *device) serve() {
	var (
		cmds []cmdRequest
		tmrs []tmrNotice
	)
	for {
		var err error
		cmds, tmrs, err = d.ring.consume(cmds[:0], tmrs[:0])
		for _, t := range tmrs {
			d.abort(t)
		}
		for i := range cmds {
			d.start(cmds[i])
		}
		if err != nil {
			d.broken.Store(true)
			d.log.Error("tcmu: device ring is corrupt; the device stops serving (re-adopt it by restarting the daemon)",
				"device", d.name.String(), "err", err)
			break
		}
		stopped, err := d.port.wait()
		if stopped {
			break
		}
		if err != nil {
			d.log.Error("tcmu: waiting for the kernel failed", "device", d.name.String(), "err", err)
			break
		}
	}
	d.drain()
}

// drain waits for in-flight commands, cancelling them after the grace
// period.
func (d *device) drain() {
	done := make(chan struct{})
	go func() { d.cmds.Wait(); close(done) }()
	t := time.NewTimer(d.grace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		d.log.Warn("tcmu: commands still running at shutdown; aborting them", "device", d.name.String(), "in_flight", d.ring.inFlight())
		d.cancelCmd()
		<-done
	}
	d.cancelCmd()
}

// abort cancels the commands a task management function aborted. The kernel
// has already answered the initiator; our completion is only bookkeeping.
func (d *device) abort(t tmrNotice) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, id := range t.cmdIDs {
		if cancel, ok := d.inflight[id]; ok {
			cancel()
		}
	}
}

func (d *device) start(req cmdRequest) {
	ctx, cancel := context.WithCancel(d.cmdCtx)
	d.mu.Lock()
	d.inflight[req.id] = cancel
	d.mu.Unlock()
	d.cmds.Add(1)
	go func() {
		defer d.cmds.Done()
		c := d.run(ctx, &req)
		d.mu.Lock()
		delete(d.inflight, req.id)
		d.mu.Unlock()
		cancel()
		d.finish(c)
	}()
}

// finish publishes one completion and kicks the kernel.
func (d *device) finish(c completion) {
	if d.broken.Load() {
		return
	}
	if err := d.ring.complete(c); err != nil {
		d.broken.Store(true)
		d.log.Error("tcmu: cannot complete command; the device stops serving", "device", d.name.String(), "cmd_id", c.id, "err", err)
		return
	}
	d.served.Add(1)
	if err := d.port.kick(); err != nil {
		d.log.Warn("tcmu: kick failed", "device", d.name.String(), "err", err)
	}
}

// run executes one command through the SCSI device server, moving data
// between the ring's data area and the command.
func (d *device) run(ctx context.Context, req *cmdRequest) completion {
	c := completion{id: req.id}
	ex, err := d.exec()
	if err != nil {
		d.log.Error("tcmu: logical unit unavailable", "device", d.name.String(), "err", err)
		c.status = byte(scsi.StatusCheckCondition)
		c.sense = scsi.Sense(scsi.SenseNotReady, scsi.ASCNotReady)
		return c
	}
	segs := d.ring.dataSlices(req, false)
	total := 0
	for _, s := range segs {
		total += len(s)
	}
	cmd := &scsi.Command{
		Nexus: d.nexus,
		LUN:   0,
		CDB:   req.cdb,
		Tag:   uint64(req.id),
		Attr:  scsi.TaskSimple,
	}
	out := dataOut(req.cdb)
	var scratch []byte
	switch {
	case total == 0:
	case out && len(segs) == 1:
		cmd.DataOut = segs[0]
	case out:
		scratch = gather(segs, total)
		cmd.DataOut = scratch
	case len(segs) == 1:
		cmd.DataInLen = uint32(total)
		cmd.DataIn = segs[0][:0]
	default:
		cmd.DataInLen = uint32(total)
		scratch = make([]byte, total)
		cmd.DataIn = scratch[:0]
	}
	resp := d.execute(ctx, ex, cmd)
	c.status = byte(resp.Status)
	c.sense = resp.Sense
	if !out && total > 0 {
		n := scatter(segs, resp.Data)
		c.readLen, c.hasReadLen = uint32(n), n > 0
		if d.ring.layout.flags&mbFlagReadLen == 0 || n == 0 {
			// The kernel returns the whole buffer to the initiator:
			// never let bytes of an earlier command leak out.
			zeroFrom(segs, n)
		}
	}
	return c
}

func (d *device) execute(ctx context.Context, ex executor, cmd *scsi.Command) (resp scsi.Response) {
	defer func() {
		if p := recover(); p != nil {
			d.log.Error("tcmu: command panicked", "device", d.name.String(), "cdb", fmt.Sprintf("% x", cmd.CDB), "panic", p)
			resp = scsi.Response{Status: scsi.StatusCheckCondition, Sense: scsi.Sense(scsi.SenseHardwareError, scsi.ASCInternalTargetFailure)}
		}
	}()
	return ex.Execute(ctx, cmd)
}

func gather(segs [][]byte, total int) []byte {
	b := make([]byte, 0, total)
	for _, s := range segs {
		b = append(b, s...)
	}
	return b
}

// scatter copies data into the segments (skipping the copy when the device
// server already wrote into the first segment) and returns how many bytes
// are valid.
func scatter(segs [][]byte, data []byte) int {
	n := len(data)
	if n == 0 {
		return 0
	}
	if len(segs) > 0 && len(segs[0]) > 0 && unsafe.SliceData(segs[0]) == unsafe.SliceData(data) && n <= len(segs[0]) {
		return n
	}
	rest := data
	for _, s := range segs {
		if len(rest) == 0 {
			break
		}
		rest = rest[copy(s, rest):]
	}
	return n - len(rest)
}

func zeroFrom(segs [][]byte, n int) {
	for _, s := range segs {
		if n >= len(s) {
			n -= len(s)
			continue
		}
		clear(s[n:])
		n = 0
	}
}

// dataOut reports whether the command with this CDB carries data from the
// initiator. TCMU does not say which way a command's buffer goes, so it is
// decided by opcode, as the kernel's own CDB parsers do.
func dataOut(cdb []byte) bool {
	if len(cdb) == 0 {
		return false
	}
	switch cdb[0] {
	case 0x04, // FORMAT UNIT
		0x07, // REASSIGN BLOCKS
		0x0a, // WRITE(6)
		0x15, // MODE SELECT(6)
		0x1d, // SEND DIAGNOSTIC
		0x2a, // WRITE(10)
		0x2e, // WRITE AND VERIFY(10)
		0x2f, // VERIFY(10) with BYTCHK: data-out; without, length 0
		0x3b, // WRITE BUFFER
		0x3f, // WRITE LONG(10)
		0x41, // WRITE SAME(10)
		0x42, // UNMAP
		0x4c, // LOG SELECT
		0x55, // MODE SELECT(10)
		0x5f, // PERSISTENT RESERVE OUT
		0x83, // EXTENDED COPY
		0x89, // COMPARE AND WRITE
		0x8a, // WRITE(16)
		0x8b, // ORWRITE(16)
		0x8e, // WRITE AND VERIFY(16)
		0x8f, // VERIFY(16)
		0x93, // WRITE SAME(16)
		0xa4, // MAINTENANCE OUT (SET TARGET PORT GROUPS)
		0xaa, // WRITE(12)
		0xae, // WRITE AND VERIFY(12)
		0xaf, // VERIFY(12)
		0xb5: // SECURITY PROTOCOL OUT
		return true
	case 0x7f: // variable length: WRITE(32) family
		if len(cdb) >= 10 {
			sa := uint16(cdb[8])<<8 | uint16(cdb[9])
			return sa == 0x000b || sa == 0x000c || sa == 0x000d || sa == 0x000a
		}
	case 0x9f: // SERVICE ACTION OUT(16): WRITE LONG(16)
		return true
	}
	return false
}
