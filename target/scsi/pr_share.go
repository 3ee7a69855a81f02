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
// Unit attentions that a change raises for registrants (registrations
// preempted, reservations preempted or released) reach the nexuses of
// every gateway: the authoritative one raises them for its own nexuses and,
// once the change is saved, hands the others to Notify as PRNotices; a
// gateway that receives them raises them for its nexuses that match
// (Target.RaisePRNotices). Delivery is best effort, as the gateways'
// link: a host whose gateway did not get the notice learns of the change
// from its next PERSISTENT RESERVE IN or RESERVATION CONFLICT.
// RESERVE(6)/(10) stays local to each gateway.
type PRShare interface {
	// Authoritative reports whether this gateway applies the commands.
	Authoritative() bool
	// Forward runs a PERSISTENT RESERVE IN or OUT command on the
	// authoritative gateway (its ExecuteForwarded) and returns the
	// response.
	Forward(ctx context.Context, cmd *Command) (Response, error)
	// Save durably records the state (PRState's bytes).
	Save(ctx context.Context, state []byte) error
	// Notify hands the other gateways the unit attentions a saved
	// change raised (Target.RaisePRNotices on each). It is called with
	// the unit's reservation lock held and must not block.
	Notify(notices []PRNotice)
}

// PRNotice is a unit attention a change of the persistent reservations
// raised for the I_T nexuses it names, on whichever gateway they are.
type PRNotice struct {
	ASC ASC `json:"asc"`
	// Nexuses names the nexuses by initiator and target port; an empty
	// target port stands for every target port (a registration made
	// with ALL_TG_PT, or every nexus of a preempted initiator port).
	Nexuses []NexusID `json:"nexuses"`
	// Skip is the nexus whose command made the change: it gets none.
	Skip NexusID `json:"skip"`
}

// NexusID names an I_T nexus by its ports.
type NexusID struct {
	InitiatorPort string `json:"initiator_port"`
	TargetPort    string `json:"target_port,omitempty"`
}

func (id NexusID) matches(k nexusKey) bool {
	return id.InitiatorPort == k.initiatorPort && (id.TargetPort == "" || id.TargetPort == k.targetPort)
}

// RaisePRNotices raises the unit attentions another gateway's change of
// the persistent reservations of LUN lun established (PRShare.Notify) for
// the nexuses of this target that they name. It reports whether the LUN
// exists.
func (t *Target) RaisePRNotices(lun uint64, notices []PRNotice) bool {
	lu := t.lu(lun)
	if lu == nil {
		return false
	}
	for k, ns := range *lu.nexuses.Load() {
		for _, n := range notices {
			if k == (nexusKey{initiatorPort: n.Skip.InitiatorPort, targetPort: n.Skip.TargetPort}) {
				continue
			}
			for _, id := range n.Nexuses {
				if id.matches(k) {
					ns.raise(n.ASC)
					break
				}
			}
		}
	}
	return true
}

// noteRegistrantsLocked records, on a unit whose reservations are shared,
// the notice of an attention raised for every registrant but skip, for
// the other gateways. Caller holds resMu.
func (lu *LU) noteRegistrantsLocked(asc ASC, skip nexusKey) {
	if lu.prShare == nil {
		return
	}
	n := PRNotice{ASC: asc, Skip: NexusID{InitiatorPort: skip.initiatorPort, TargetPort: skip.targetPort}}
	for _, r := range lu.pr.Regs {
		id := NexusID{InitiatorPort: r.InitiatorPort, TargetPort: r.TargetPort}
		if r.AllTgPt {
			id.TargetPort = ""
		}
		n.Nexuses = append(n.Nexuses, id)
	}
	if len(n.Nexuses) > 0 {
		lu.prNotices = append(lu.prNotices, n)
	}
}

// noteInitiatorLocked is noteRegistrantsLocked for every nexus of one
// initiator port.
func (lu *LU) noteInitiatorLocked(asc ASC, ip string) {
	if lu.prShare == nil {
		return
	}
	lu.prNotices = append(lu.prNotices, PRNotice{ASC: asc, Nexuses: []NexusID{{InitiatorPort: ip}}})
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
