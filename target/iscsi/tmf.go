package iscsi

import (
	"slices"
)

// Task management functions (RFC 7143 §11.5.1).
const (
	tmfAbortTask      = 1
	tmfAbortTaskSet   = 2
	tmfClearACA       = 3
	tmfClearTaskSet   = 4
	tmfLUNReset       = 5
	tmfTargetWarm     = 6
	tmfTargetCold     = 7
	tmfTaskReassign   = 8
	tmfRespComplete   = 0
	tmfRespNoTask     = 1
	tmfRespNoLUN      = 2
	tmfRespNoReassign = 4
	tmfRespNotSupp    = 5
	tmfRespRejected   = 255
)

// handleTaskMgmt decides what a TMF request affects on the reader
// goroutine (CmdSN bookkeeping must happen in order) and performs the
// aborts on a goroutine of its own, answering once every affected task
// has returned.
func (c *conn) handleTaskMgmt(h *pduHeader) error {
	if err := c.pr.readData(h, nil); err != nil {
		return err
	}
	b := &h.bhs
	cmdSN := b.u32(offCmdSN)
	if ok, _ := c.acceptCmdSN(cmdSN, b.immediate(), false); !ok {
		return nil
	}
	fn := b.flags() & 0x7f
	itt := b.itt()
	lun := decodeLUN(b.lunField())
	ref := b.u32(offTTT)
	refCmdSN := b.u32(32)
	e := c.target.Load()
	if c.discovery || e == nil {
		c.reject(h, rejectProtocolError)
		return nil
	}
	respond := func(code byte) {
		var r bhs
		r[0] = opTaskMgmtRsp
		r[1] = 0x80
		r[2] = code
		r.putU32(16, itt)
		c.send(outItem{kind: outStatus, h: r})
	}
	lunExists := func() bool { return slices.Contains(e.cfg.SCSI.LUNs(), lun) }
	// async performs f on a goroutine of its own and answers with its
	// code; then, if f returned one, runs after (which may end the
	// connection: the response is queued before it).
	async := func(f func() (code byte, after func())) {
		c.auxWG.Add(1)
		go func() {
			defer c.auxWG.Done()
			code, after := f()
			if h := c.srv.beforeTMFResponse.Load(); h != nil {
				(*h)()
			}
			respond(code)
			if after != nil {
				after()
			}
		}()
	}
	switch fn {
	case tmfAbortTask:
		c.tmu.Lock()
		t := c.tasks[ref]
		if t != nil && (t.finished || t.cmd.LUN != lun) {
			t = nil
		}
		c.tmu.Unlock()
		if t == nil {
			// Not here: if its CmdSN is in the window and precedes this
			// request, it was lost or is still to come; consider it
			// received so it is never executed (§11.5.1 b).
			exp := c.expCmdSN()
			if !serialLess(refCmdSN, exp) && serialLess(refCmdSN, cmdSN) {
				c.acceptCmdSN(refCmdSN, false, false)
				c.tmu.Lock()
				c.rememberAborted(ref)
				c.tmu.Unlock()
				respond(tmfRespComplete)
			} else {
				respond(tmfRespNoTask)
			}
			return nil
		}
		async(func() (byte, func()) {
			if c.abortTasks(func(x *task) bool { return x == t }) == 0 {
				// It completed in the meantime; its response went out.
				return tmfRespNoTask, nil
			}
			return tmfRespComplete, nil
		})
	case tmfAbortTaskSet:
		if !lunExists() {
			respond(tmfRespNoLUN)
			return nil
		}
		async(func() (byte, func()) {
			c.abortTasks(func(x *task) bool { return x.cmd.LUN == lun })
			return tmfRespComplete, nil
		})
	case tmfClearTaskSet, tmfLUNReset:
		if !lunExists() {
			respond(tmfRespNoLUN)
			return nil
		}
		async(func() (byte, func()) {
			for _, x := range c.srv.connsOfTarget(e.cfg.Name) {
				x.abortTasks(func(t *task) bool { return t.cmd.LUN == lun })
			}
			if fn == tmfLUNReset {
				if err := e.cfg.SCSI.ResetLU(&c.nexus, lun); err != nil {
					c.log.Warn("iscsi: LUN reset failed", "lun", lun, "err", err)
					return tmfRespRejected, nil
				}
			}
			return tmfRespComplete, nil
		})
	case tmfTargetWarm, tmfTargetCold:
		async(func() (byte, func()) {
			conns := c.srv.connsOfTarget(e.cfg.Name)
			for _, x := range conns {
				x.abortTasks(func(*task) bool { return true })
			}
			e.cfg.SCSI.ResetTarget(&c.nexus)
			if fn != tmfTargetCold {
				return tmfRespComplete, nil
			}
			// Drop every connection of the target (RFC 7143 §11.5.1:
			// cold reset), this initiator's once its answer is queued,
			// so that the answer is written before the close however
			// late this goroutine runs.
			for _, x := range conns {
				if x != c {
					x.abort()
				}
			}
			return tmfRespComplete, c.closeAfterFlush
		})
	case tmfTaskReassign:
		respond(tmfRespNoReassign)
	case tmfClearACA:
		respond(tmfRespNotSupp)
	default:
		respond(tmfRespRejected)
	}
	return nil
}

// connsOfTarget lists the connections of normal sessions logged in to the
// named target.
func (s *Server) connsOfTarget(name string) []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*conn
	for _, ss := range s.sessions {
		if ss.target != nil && ss.target.cfg.Name == name {
			out = append(out, ss.conn)
		}
	}
	return out
}
