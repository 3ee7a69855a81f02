package scsi

import (
	"context"
	"encoding/json"
	"fmt"
)

// PRShare shares a logical unit's persistent reservations between the
// gateways that export one volume through ports of their own (a cluster
// of gateways with ALUA), so that a host sees one device whichever path it
// uses. One gateway at a time is authoritative (the volume's owner, the
// only one that serves I/O, and so the only one that checks reservation
// conflicts): it applies PERSISTENT RESERVE OUT and answers PERSISTENT
// RESERVE IN from its own state, and saves every change (Save) before the
// command that made it completes; a failed save undoes the change and
// fails the command. The other gateways forward both commands to it
// (Forward), with the I_T nexus they came through: a registration made
// through any gateway's port is that nexus' registration on the
// authoritative unit. A gateway that becomes authoritative loads the last
// saved state first (LoadPRState).
//
// Unit attentions that a change raises for nexuses of other gateways
// (registrations preempted or released) are not delivered: the hosts
// learn of the change from their next PERSISTENT RESERVE IN or
// RESERVATION CONFLICT. RESERVE(6)/(10) stays local to each gateway.
type PRShare interface {
	// Authoritative reports whether this gateway applies the commands.
	Authoritative() bool
	// Forward runs a PERSISTENT RESERVE IN or OUT command on the
	// authoritative gateway (its ExecuteForwarded) and returns the
	// response.
	Forward(ctx context.Context, cmd *Command) (Response, error)
	// Save durably records the state (PRState's bytes).
	Save(ctx context.Context, state []byte) error
}

// PRState returns the logical unit's persistent reservation state, as
// LoadPRState takes it.
func (lu *LU) PRState() []byte {
	lu.resMu.Lock()
	defer lu.resMu.Unlock()
	b, _ := json.Marshal(lu.prSnapshotLocked())
	return b
}

// LoadPRState replaces the logical unit's persistent reservation state by
// one PRState returned (empty: no registrations).
func (lu *LU) LoadPRState(b []byte) error {
	var s prState
	if len(b) > 0 {
		if err := json.Unmarshal(b, &s); err != nil {
			return fmt.Errorf("scsi: persistent reservation state: %w", err)
		}
		if len(s.Regs) > maxRegistrations || (s.Reserved && !validPRType(s.Type)) {
			return fmt.Errorf("scsi: persistent reservation state: %d registrations, type %d", len(s.Regs), s.Type)
		}
	}
	lu.resMu.Lock()
	defer lu.resMu.Unlock()
	lu.pr = s
	lu.updateReservationActiveLocked()
	return nil
}

// isPR reports whether op is PERSISTENT RESERVE IN or OUT.
func isPR(op *opEntry) bool { return op.opcode == 0x5e || op.opcode == 0x5f }

// forwardPR sends the task's PERSISTENT RESERVE command to the
// authoritative gateway and keeps its response for Execute. A gateway it
// cannot reach ends the command in NOT READY, ASYMMETRIC ACCESS STATE
// TRANSITION, which hosts retry.
func (tk *task) forwardPR(share PRShare) error {
	resp, err := share.Forward(tk.ctx, tk.cmd)
	if err != nil {
		if tk.ctx.Err() != nil {
			return tk.ctx.Err()
		}
		tk.lu.log.Warn("scsi: persistent reservation command not forwarded to the authoritative gateway",
			"lun", tk.lu.lun, "cdb", fmt.Sprintf("% x", tk.cdb), "err", err)
		return newSense(SenseNotReady, ASCLUNotAccessibleTransition)
	}
	tk.forwarded = &resp
	return nil
}

// ExecuteForwarded runs a PERSISTENT RESERVE IN or OUT command another
// gateway forwarded (PRShare.Forward) as if it had come through this
// target, for the nexus it names. Unit attentions and the asymmetric
// access state were checked by the gateway that received it; any other
// command is refused.
func (t *Target) ExecuteForwarded(ctx context.Context, cmd *Command) Response {
	tk := task{ctx: ctx, cmd: cmd, t: t, cdb: cmd.CDB, fromPeer: true}
	err := t.dispatch(&tk)
	return tk.response(err)
}
