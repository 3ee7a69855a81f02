package scsi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/cachelun/cachelun/internal/blk"
)

// Errors returned by the Target's management methods.
var (
	ErrLUNExists     = errors.New("scsi: logical unit number already in use")
	ErrNoSuchLUN     = errors.New("scsi: no such logical unit")
	ErrInvalidConfig = errors.New("scsi: invalid logical unit configuration")
)

// maxLUN is the highest LUN the device server accepts: REPORT LUNS encodes
// LUNs with the flat space addressing method (14 bits).
const maxLUN = 0x3fff

// TargetConfig configures a Target.
type TargetConfig struct {
	// Name is the SCSI target name (the iSCSI target IQN), used in VPD 83h.
	Name string
	// Logger receives command failures caused by bugs and state-file
	// errors; nil discards.
	Logger *slog.Logger
	// CopyManager lets EXTENDED COPY reach the logical units of every
	// Target that shares it (one per daemon); nil gives the Target its
	// own, so copies stay among its logical units.
	CopyManager *CopyManager
}

// Target is a SCSI target device: a set of logical units and the device
// server that executes commands for them. It is safe for concurrent use;
// Execute takes no target-wide lock (the LUN map is copy-on-write).
type Target struct {
	name    string
	log     *slog.Logger
	ops     *opTable
	copyMgr *CopyManager

	// unmappedErrors counts volume errors that map to no sense code.
	unmappedErrors atomic.Uint64

	// mu serializes changes of the LUN map; readers load luns atomically.
	mu   sync.Mutex
	luns atomic.Pointer[map[uint64]*LU]
}

// NewTarget returns a target with no logical units.
func NewTarget(cfg TargetConfig) *Target {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	cm := cfg.CopyManager
	if cm == nil {
		cm = NewCopyManager()
	}
	t := &Target{name: cfg.Name, log: log, ops: newOpTable(), copyMgr: cm}
	empty := map[uint64]*LU{}
	t.luns.Store(&empty)
	return t
}

// Name returns the target name.
func (t *Target) Name() string { return t.name }

// lu returns the logical unit for lun, or nil.
func (t *Target) lu(lun uint64) *LU {
	return (*t.luns.Load())[lun]
}

// LU returns the logical unit numbered lun, or nil.
func (t *Target) LU(lun uint64) *LU { return t.lu(lun) }

// LUNs returns the logical unit numbers in ascending order.
func (t *Target) LUNs() []uint64 {
	m := *t.luns.Load()
	out := make([]uint64, 0, len(m))
	for n := range m {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// AddLU creates logical unit lun serving cfg.Volume. Every other logical
// unit raises REPORTED LUNS DATA HAS CHANGED to the nexuses that know it.
func (t *Target) AddLU(lun uint64, cfg LUConfig) (*LU, error) {
	if lun > maxLUN {
		return nil, fmt.Errorf("scsi: LUN %d above %d: %w", lun, maxLUN, ErrInvalidConfig)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	old := *t.luns.Load()
	if _, ok := old[lun]; ok {
		return nil, fmt.Errorf("scsi: LUN %d: %w", lun, ErrLUNExists)
	}
	lu, err := newLU(t, lun, cfg)
	if err != nil {
		return nil, err
	}
	next := make(map[uint64]*LU, len(old)+1)
	for n, l := range old {
		next[n] = l
		l.raiseAll(ASCReportedLUNsDataChanged, nil)
	}
	next[lun] = lu
	t.luns.Store(&next)
	t.copyMgr.register(lu)
	return lu, nil
}

// RemoveLU removes logical unit lun. Commands already executing on it run
// to completion; later ones get LOGICAL UNIT NOT SUPPORTED.
func (t *Target) RemoveLU(lun uint64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := *t.luns.Load()
	if _, ok := old[lun]; !ok {
		return fmt.Errorf("scsi: LUN %d: %w", lun, ErrNoSuchLUN)
	}
	next := make(map[uint64]*LU, len(old))
	for n, l := range old {
		if n != lun {
			next[n] = l
			l.raiseAll(ASCReportedLUNsDataChanged, nil)
		}
	}
	t.luns.Store(&next)
	t.copyMgr.unregister(old[lun])
	old[lun].stopSanitize()
	return nil
}

// ResetLU performs the side effects of LOGICAL UNIT RESET issued on nexus
// n: it releases a RESERVE(6)/(10) reservation, clears PREVENT ALLOW MEDIUM
// REMOVAL state and raises BUS DEVICE RESET FUNCTION OCCURRED on every
// other nexus. Aborting the tasks is the transport's job (cancel their
// contexts). Persistent reservations and mode parameters survive.
func (t *Target) ResetLU(n *Nexus, lun uint64) error {
	lu := t.lu(lun)
	if lu == nil {
		return fmt.Errorf("scsi: LUN %d: %w", lun, ErrNoSuchLUN)
	}
	lu.reset(n)
	return nil
}

// ResetTarget performs the side effects of TARGET WARM RESET or TARGET
// COLD RESET on every logical unit.
func (t *Target) ResetTarget(n *Nexus) {
	for _, lu := range *t.luns.Load() {
		lu.reset(n)
	}
}

// NexusLost forgets the I_T nexus n (logout, connection drop): its
// RESERVE(6) reservation and PREVENT state are released and its unit
// attention state is dropped. Persistent reservations are kept.
func (t *Target) NexusLost(n *Nexus) {
	for _, lu := range *t.luns.Load() {
		lu.nexusLost(n)
	}
}

// Execute runs one command and returns its outcome. It is safe to call
// from many goroutines at once. ctx is cancelled when the task is aborted;
// the command then ends with TASK ABORTED. A panic inside the device server
// is logged and answered with CHECK CONDITION, never propagated.
func (t *Target) Execute(ctx context.Context, cmd *Command) (resp Response) {
	defer func() {
		if r := recover(); r != nil {
			var lun uint64
			var cdb []byte
			if cmd != nil {
				lun, cdb = cmd.LUN, cmd.CDB
			}
			t.log.Error("scsi: internal error executing command",
				"lun", lun, "cdb", fmt.Sprintf("% x", cdb), "panic", r, "stack", string(debug.Stack()))
			resp = Response{Status: StatusCheckCondition, Sense: newSense(SenseHardwareError, ASCInternalTargetFailure).Bytes()}
		}
	}()
	tk := task{ctx: ctx, cmd: cmd, t: t, cdb: cmd.CDB}
	err := t.dispatch(&tk)
	if err == nil && tk.forwarded != nil {
		return *tk.forwarded
	}
	return tk.response(err)
}

// dispatch finds the logical unit and the command and runs the checks SAM
// and SPC order before the command itself: unit attention, reservation.
func (t *Target) dispatch(tk *task) error {
	cdb := tk.cdb
	if len(cdb) == 0 {
		return errInvalidOpcode()
	}
	op, err := t.ops.lookup(cdb)
	lu := t.lu(tk.cmd.LUN)
	tk.lu = lu
	if lu == nil {
		// Only INQUIRY, REPORT LUNS and REQUEST SENSE work without a
		// logical unit (SPC-4 5.1).
		if op != nil && op.flags&opNoLU != 0 {
			if len(cdb) < op.cdbLen {
				return errCDBField(len(cdb), -1)
			}
			return op.run(tk)
		}
		return newSense(SenseIllegalRequest, ASCLUNotSupported)
	}
	if op != nil && lu.hides(op) {
		op, err = nil, errCDBField(1, 4) // as an unknown service action
	}
	tk.nx = lu.nexus(tk.cmd.Nexus)
	if tk.fromPeer {
		if op == nil || !isPR(op) || len(cdb) < op.cdbLen {
			return errInvalidOpcode()
		}
		return op.run(tk)
	}
	if op == nil || op.flags&opNoUA == 0 {
		if ua, ok := tk.nx.takeUA(); ok {
			return newSense(SenseUnitAttention, ua)
		}
	}
	if err != nil {
		return err
	}
	if len(cdb) < op.cdbLen {
		return errCDBField(len(cdb), -1)
	}
	// NACA and LINK are not supported (SAM-5 5.2).
	if ctl := cdb[op.cdbLen-1]; ctl&0x05 != 0 {
		bit := 0
		if ctl&0x04 != 0 {
			bit = 2
		}
		return errCDBField(op.cdbLen-1, bit)
	}
	// While a SANITIZE runs (or after one failed) only the commands that
	// also ignore unit attentions (INQUIRY, REPORT LUNS, REQUEST SENSE)
	// are served; SANITIZE itself may retry a failed one.
	if op.flags&opNoUA == 0 {
		if se := lu.sanitizeRefusal(); se != nil && !(op.opcode == 0x48 && se.Key == SenseMediumError) {
			return se
		}
	}
	// Task attributes (SAM-5 8.6): an ORDERED task waits for the tasks
	// that entered before it and holds back those that enter after it;
	// HEAD OF QUEUE tasks bypass the task set. The order is the order in
	// which the transport calls Execute.
	switch tk.cmd.Attr {
	case TaskHead:
	case TaskOrdered:
		lu.taskSet.Lock()
		defer lu.taskSet.Unlock()
	default:
		lu.taskSet.RLock()
		defer lu.taskSet.RUnlock()
	}
	// The asymmetric access state of the port the command came through,
	// as it is when the command starts (alua.go).
	if se := tk.aluaRefusal(op); se != nil {
		return se
	}
	if isPR(op) {
		if share := lu.prShare; share != nil && !share.Authoritative() {
			return tk.forwardPR(share)
		}
	}
	if lu.reservationActive.Load() && op.flags&opNoConflictCheck == 0 {
		if lu.conflicts(tk, op) {
			tk.status = StatusReservationConflict
			return nil
		}
	}
	if op.flags&opWritesMedium != 0 && lu.swp.Load() {
		return newSense(SenseDataProtect, ASCSoftwareWriteProtected)
	}
	if op.access == accessWrite {
		tk.revokeForWrite() // ROD tokens of data about to change (odx.go)
	}
	return op.run(tk)
}

// task is one command on its way through the device server.
type task struct {
	ctx context.Context
	cmd *Command
	t   *Target
	lu  *LU
	nx  *nexusState
	cdb []byte

	vctx streamCtx // volCtx's

	status Status
	data   []byte
	xfer   uint32

	// fromPeer: a command another gateway forwarded (ExecuteForwarded);
	// forwarded: the response of one this gateway forwarded (pr_share.go).
	fromPeer  bool
	forwarded *Response
}

// volCtx is the context for volume calls: the task's context tagged with
// the I/O stream (initiator port and LUN).
func (tk *task) volCtx() context.Context {
	if tk.vctx.Context == nil {
		// Set once: a volume call may still use it when the next is made.
		tk.vctx = streamCtx{Context: tk.ctx, stream: tk.nx.streamCtx}
	}
	return &tk.vctx
}

// streamCtx adds the nexus' stream name (looked up in a context built once
// per nexus with blk.WithStream) to a task's context. It lives in the task,
// so a command allocates no context of its own.
type streamCtx struct {
	context.Context
	stream context.Context
}

func (c *streamCtx) Value(key any) any {
	if v := c.stream.Value(key); v != nil {
		return v
	}
	return c.Context.Value(key)
}

// setDataIn returns data to the initiator, cut to the allocation length the
// CDB allows; TransferLen is what remains.
func (tk *task) setDataIn(data []byte, allocLen int) {
	if len(data) > allocLen {
		data = data[:allocLen]
	}
	tk.data = data
	tk.xfer = uint32(len(data))
}

// response turns the handler outcome into a Response.
func (tk *task) response(err error) Response {
	if err != nil {
		var se *SenseError
		switch {
		case errors.As(err, &se):
			return Response{Status: StatusCheckCondition, Sense: se.Bytes(), TransferLen: tk.xfer}
		case errors.Is(err, errTaskAborted), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
			return Response{Status: StatusTaskAborted, TransferLen: tk.xfer}
		default:
			// A failing volume fails every command: log the 1st, 2nd,
			// 4th, 8th... occurrence so the log stays readable.
			if n := tk.t.unmappedErrors.Add(1); n&(n-1) == 0 {
				tk.t.log.Error("scsi: volume error without a SCSI mapping", "lun", tk.cmd.LUN,
					"cdb", fmt.Sprintf("% x", tk.cdb), "err", err, "occurrences", n)
			}
			se = newSense(SenseHardwareError, ASCInternalTargetFailure)
			return Response{Status: StatusCheckCondition, Sense: se.Bytes(), TransferLen: tk.xfer}
		}
	}
	data := tk.data
	if uint32(len(data)) > tk.cmd.DataInLen {
		data = data[:tk.cmd.DataInLen]
	}
	return Response{Status: tk.status, Data: data, TransferLen: tk.xfer}
}

// volumeError maps an error from a Volume call to sense data (see the
// internal/blk sentinels).
func volumeError(err error, kind ioKind) error {
	var se *SenseError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &se):
		return se
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return errTaskAborted
	case errors.Is(err, blk.ErrOutOfRange):
		return errLBAOutOfRange()
	case errors.Is(err, blk.ErrMisaligned):
		return newSense(SenseIllegalRequest, ASCInvalidFieldInCDB)
	case errors.Is(err, blk.ErrNotReady):
		return newSense(SenseNotReady, ASCNotReady)
	case errors.Is(err, blk.ErrMiscompare):
		return newSense(SenseMiscompare, ASCMiscompareDuringVerify)
	case errors.Is(err, blk.ErrMedium):
		if kind == ioRead {
			return newSense(SenseMediumError, ASCUnrecoveredReadError)
		}
		return newSense(SenseMediumError, ASCWriteError)
	default:
		return fmt.Errorf("volume: %w", err)
	}
}
