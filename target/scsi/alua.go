package scsi

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
)

// Asymmetric logical unit access (ALUA, SPC-4 r37 5.15), implicit only.
//
// A logical unit configured with ALUA (LUConfig.ALUA, LU.SetALUA) reports
// TPGS=01b in standard INQUIRY, the target port group of the port a command
// came through in VPD 83h, and every group with its state and relative
// target ports in REPORT TARGET PORT GROUPS. The owner of the states is the
// daemon (the cluster decides which node serves a volume): SET TARGET PORT
// GROUPS is not offered (SPC-4 makes it mandatory only with explicit ALUA,
// TPGS=10b or 11b), so it ends in INVALID COMMAND OPERATION CODE like any
// unknown command. Without ALUA every answer is what it was before ALUA
// existed (testdata/noalua.golden).

// ALUAState is a primary target port asymmetric access state, coded as in
// the ASYMMETRIC ACCESS STATE field of a target port group descriptor of
// REPORT TARGET PORT GROUPS (SPC-4 r37 6.37).
type ALUAState uint8

// The states cachelun offers. Logical block dependent (4h) and offline (Eh)
// are not supported (LBD_SUP=0, O_SUP=0).
const (
	ALUAActiveOptimized    ALUAState = 0x0
	ALUAActiveNonOptimized ALUAState = 0x1
	ALUAStandby            ALUAState = 0x2
	ALUAUnavailable        ALUAState = 0x3
	ALUATransitioning      ALUAState = 0xf
)

// supportedALUAStates is byte 1 of a target port group descriptor: T_SUP,
// U_SUP, S_SUP, AN_SUP and AO_SUP; O_SUP and LBD_SUP stay 0.
const supportedALUAStates = 0x80 | 0x08 | 0x04 | 0x02 | 0x01

func (s ALUAState) String() string {
	switch s {
	case ALUAActiveOptimized:
		return "active/optimized"
	case ALUAActiveNonOptimized:
		return "active/non-optimized"
	case ALUAStandby:
		return "standby"
	case ALUAUnavailable:
		return "unavailable"
	case ALUATransitioning:
		return "transitioning"
	}
	return fmt.Sprintf("ALUAState(%#x)", uint8(s))
}

func (s ALUAState) valid() bool {
	switch s {
	case ALUAActiveOptimized, ALUAActiveNonOptimized, ALUAStandby, ALUAUnavailable, ALUATransitioning:
		return true
	}
	return false
}

// Additional sense codes of ALUA (SPC-4 annex D).
const (
	ASCLUNotAccessibleTransition  ASC = 0x040a // LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION
	ASCLUNotAccessibleStandby     ASC = 0x040b // LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE
	ASCLUNotAccessibleUnavailable ASC = 0x040c // LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE
	ASCAsymmetricAccessChanged    ASC = 0x2a06 // ASYMMETRIC ACCESS STATE CHANGED
	ASCInquiryDataChanged         ASC = 0x3f03 // INQUIRY DATA HAS CHANGED
)

// TargetPortGroup is one target port group of a logical unit: the target
// ports (by relative target port identifier) that share an asymmetric
// access state.
type TargetPortGroup struct {
	// ID is the TARGET PORT GROUP value (VPD 83h designator type 5,
	// REPORT TARGET PORT GROUPS).
	ID uint16
	// State is the group's asymmetric access state.
	State ALUAState
	// Preferred sets the PREF bit: the group is a preferred path when
	// several are active.
	Preferred bool
	// RelativePorts are the relative target port identifiers of the
	// group's ports (Nexus.RelativePortID; 1 to 65535, at most 255).
	RelativePorts []uint16
}

// ALUAConfig is the ALUA setup of a logical unit. Every node of a cluster
// gives each of its logical units of one volume the same groups (same IDs,
// ports and states), so REPORT TARGET PORT GROUPS answers alike on every
// path; a node's own ports are the ones its commands arrive through.
type ALUAConfig struct {
	// Groups are the target port groups; at least one. IDs and relative
	// ports are unique across groups.
	Groups []TargetPortGroup
	// TransitionTime is the IMPLICIT TRANSITION TIME of the extended
	// REPORT TARGET PORT GROUPS header, in seconds: how long a host should
	// wait for a transition (state transitioning) before it gives up on a
	// path. 0 means unspecified (the host uses its own default; Linux
	// 60 s).
	TransitionTime uint8
}

// ErrNoSuchPortGroup is returned for a state change of a target port group
// the logical unit does not have.
var ErrNoSuchPortGroup = errors.New("scsi: no such target port group")

// ErrNoALUA is returned for a state change on a logical unit without ALUA.
var ErrNoALUA = errors.New("scsi: logical unit has no ALUA configuration")

// Limits of an ALUA configuration: the TARGET PORT COUNT of a descriptor is
// one byte; the group count keeps REPORT TARGET PORT GROUPS small.
const (
	maxPortsPerGroup = 255
	maxPortGroups    = 256
)

// aluaState is the ALUA part of an LU: the current configuration, read
// lock-free by every command, replaced whole by the setters (serialized by
// mu). Lock order: mu → nexusState.mu (raising the unit attentions); mu is
// never taken by a command.
type aluaState struct {
	mu  sync.Mutex
	cur atomic.Pointer[aluaSnapshot]
}

// aluaSnapshot is an immutable ALUA configuration.
type aluaSnapshot struct {
	groups         []aluaGroup // ascending ID, ports ascending
	byPort         map[uint16]int
	transitionTime uint8
}

type aluaGroup struct {
	TargetPortGroup
	// status is the STATUS CODE of the descriptor: 00h until the state
	// changes, then 02h (altered by implicit ALUA behaviour).
	status byte
}

// newALUASnapshot validates cfg and builds its snapshot; status codes carry
// over from prev for groups whose state did not change.
func newALUASnapshot(cfg *ALUAConfig, prev *aluaSnapshot) (*aluaSnapshot, error) {
	if len(cfg.Groups) == 0 || len(cfg.Groups) > maxPortGroups {
		return nil, fmt.Errorf("scsi: ALUA: %d target port groups, want 1 to %d: %w", len(cfg.Groups), maxPortGroups, ErrInvalidConfig)
	}
	s := &aluaSnapshot{byPort: map[uint16]int{}, transitionTime: cfg.TransitionTime}
	for _, g := range cfg.Groups {
		if !g.State.valid() {
			return nil, fmt.Errorf("scsi: ALUA: target port group %d: state %v: %w", g.ID, g.State, ErrInvalidConfig)
		}
		if len(g.RelativePorts) == 0 || len(g.RelativePorts) > maxPortsPerGroup {
			return nil, fmt.Errorf("scsi: ALUA: target port group %d: %d ports, want 1 to %d: %w", g.ID, len(g.RelativePorts), maxPortsPerGroup, ErrInvalidConfig)
		}
		ag := aluaGroup{TargetPortGroup: g}
		ag.RelativePorts = slices.Clone(g.RelativePorts)
		slices.Sort(ag.RelativePorts)
		if prev != nil {
			if i, ok := prev.group(g.ID); ok && prev.groups[i].State == g.State {
				ag.status = prev.groups[i].status
			} else if ok {
				ag.status = rtpgStatusImplicit
			}
		}
		s.groups = append(s.groups, ag)
	}
	slices.SortFunc(s.groups, func(a, b aluaGroup) int { return int(a.ID) - int(b.ID) })
	for i, g := range s.groups {
		if i > 0 && s.groups[i-1].ID == g.ID {
			return nil, fmt.Errorf("scsi: ALUA: target port group %d listed twice: %w", g.ID, ErrInvalidConfig)
		}
		for _, p := range g.RelativePorts {
			if p == 0 {
				return nil, fmt.Errorf("scsi: ALUA: target port group %d: relative port 0 is reserved: %w", g.ID, ErrInvalidConfig)
			}
			if j, dup := s.byPort[p]; dup {
				return nil, fmt.Errorf("scsi: ALUA: relative port %d in target port groups %d and %d: %w", p, s.groups[j].ID, g.ID, ErrInvalidConfig)
			}
			s.byPort[p] = i
		}
	}
	return s, nil
}

// STATUS CODE values of a target port group descriptor (SPC-4 r37 6.37).
const (
	rtpgStatusNone     = 0x00
	rtpgStatusImplicit = 0x02
)

func (s *aluaSnapshot) group(id uint16) (int, bool) {
	return slices.BinarySearchFunc(s.groups, id, func(g aluaGroup, id uint16) int { return int(g.ID) - int(id) })
}

// portState is the state of the group relative port rel belongs to. A port
// in no group (a misconfiguration: the daemon lists every port it serves
// the logical unit through) is unavailable: it serves no data.
func (s *aluaSnapshot) portState(rel uint16) ALUAState {
	if i, ok := s.byPort[rel]; ok {
		return s.groups[i].State
	}
	return ALUAUnavailable
}

func (s *aluaSnapshot) config() *ALUAConfig {
	cfg := &ALUAConfig{TransitionTime: s.transitionTime}
	for _, g := range s.groups {
		tg := g.TargetPortGroup
		tg.RelativePorts = slices.Clone(tg.RelativePorts)
		cfg.Groups = append(cfg.Groups, tg)
	}
	return cfg
}

// sameGroups reports whether a and b report the same REPORT TARGET PORT
// GROUPS data apart from status codes and the transition time.
func sameGroups(a, b *aluaSnapshot) bool {
	return slices.EqualFunc(a.groups, b.groups, func(x, y aluaGroup) bool {
		return x.ID == y.ID && x.State == y.State && x.Preferred == y.Preferred && slices.Equal(x.RelativePorts, y.RelativePorts)
	})
}

// initALUA applies LUConfig.ALUA to a new logical unit.
func (lu *LU) initALUA(cfg *ALUAConfig) error {
	if cfg == nil {
		return nil
	}
	s, err := newALUASnapshot(cfg, nil)
	if err != nil {
		return fmt.Errorf("scsi: LUN %d: %w", lu.lun, err)
	}
	lu.alua.cur.Store(s)
	return nil
}

// ALUA returns a copy of the logical unit's ALUA configuration with the
// current states (groups in ascending ID order), or nil without ALUA.
func (lu *LU) ALUA() *ALUAConfig {
	if s := lu.alua.cur.Load(); s != nil {
		return s.config()
	}
	return nil
}

// SetALUA replaces the logical unit's ALUA configuration; nil turns ALUA
// off. The change is atomic: every command sees the old or the new
// configuration whole. Turning ALUA on or off changes the standard INQUIRY
// data (TPGS) and raises INQUIRY DATA HAS CHANGED on every I_T nexus; a
// change of the groups, their ports or states raises ASYMMETRIC ACCESS
// STATE CHANGED on every I_T nexus (no nexus causes an implicit change).
// Commands already past the access check run to completion.
func (lu *LU) SetALUA(cfg *ALUAConfig) error {
	lu.alua.mu.Lock()
	defer lu.alua.mu.Unlock()
	prev := lu.alua.cur.Load()
	var next *aluaSnapshot
	if cfg != nil {
		var err error
		if next, err = newALUASnapshot(cfg, prev); err != nil {
			return fmt.Errorf("scsi: LUN %d: %w", lu.lun, err)
		}
	}
	lu.alua.cur.Store(next)
	switch {
	case (prev == nil) != (next == nil):
		lu.raiseAll(ASCInquiryDataChanged, nil)
		if next != nil {
			lu.raiseAll(ASCAsymmetricAccessChanged, nil)
		}
	case next != nil && !sameGroups(prev, next):
		lu.raiseAll(ASCAsymmetricAccessChanged, nil)
	}
	return nil
}

// SetTargetPortGroupStates sets the asymmetric access state of several
// target port groups in one atomic step (a failover moves one group to
// standby and another to active/optimized at once), and reports whether
// any state changed. When one did, every I_T nexus of the logical unit gets
// the unit attention ASYMMETRIC ACCESS STATE CHANGED (SPC-4 r37 5.15: an
// implicit change is reported to every I_T nexus; only the nexus that sent
// a SET TARGET PORT GROUPS is spared, and there is none), raised
// after the new states are in place: a host that reads REPORT TARGET PORT
// GROUPS after seeing it reads the new states. Groups not named keep their
// state. An unknown group or state changes nothing and returns an error.
// Commands already past the access check run to completion.
func (lu *LU) SetTargetPortGroupStates(states map[uint16]ALUAState) (changed bool, err error) {
	lu.alua.mu.Lock()
	defer lu.alua.mu.Unlock()
	prev := lu.alua.cur.Load()
	if prev == nil {
		return false, fmt.Errorf("scsi: LUN %d: %w", lu.lun, ErrNoALUA)
	}
	cfg := prev.config()
	for id, st := range states {
		i, ok := prev.group(id)
		if !ok {
			return false, fmt.Errorf("scsi: LUN %d: target port group %d: %w", lu.lun, id, ErrNoSuchPortGroup)
		}
		if !st.valid() {
			return false, fmt.Errorf("scsi: LUN %d: target port group %d: state %v: %w", lu.lun, id, st, ErrInvalidConfig)
		}
		if cfg.Groups[i].State != st {
			cfg.Groups[i].State = st
			changed = true
		}
	}
	if !changed {
		return false, nil
	}
	next, err := newALUASnapshot(cfg, prev)
	if err != nil {
		return false, fmt.Errorf("scsi: LUN %d: %w", lu.lun, err)
	}
	lu.alua.cur.Store(next)
	lu.raiseAll(ASCAsymmetricAccessChanged, nil)
	return true, nil
}

// SetTargetPortGroupState sets the state of one target port group; see
// SetTargetPortGroupStates.
func (lu *LU) SetTargetPortGroupState(id uint16, st ALUAState) (changed bool, err error) {
	return lu.SetTargetPortGroupStates(map[uint16]ALUAState{id: st})
}

// TargetPortState returns the asymmetric access state commands arriving
// through relative target port rel get; ok is false without ALUA (every
// port then serves as active/optimized).
func (lu *LU) TargetPortState(rel uint16) (st ALUAState, ok bool) {
	if s := lu.alua.cur.Load(); s != nil {
		return s.portState(rel), true
	}
	return ALUAActiveOptimized, false
}

// tpgs is the TPGS field of standard INQUIRY byte 5: 01b (implicit ALUA)
// when configured.
func (lu *LU) tpgs() byte {
	if lu.alua.cur.Load() != nil {
		return 0x10
	}
	return 0
}

// targetPortGroupOf is the TARGET PORT GROUP of the VPD 83h designator for
// relative port rel: the one group every port belongs to without ALUA, the
// port's group with it (ok=false for a port in no group: no designator).
func (lu *LU) targetPortGroupOf(rel uint16) (id uint16, ok bool) {
	s := lu.alua.cur.Load()
	if s == nil {
		return targetPortGroup, true
	}
	if i, ok := s.byPort[rel]; ok {
		return s.groups[i].ID, true
	}
	return 0, false
}

// saReportTargetPortGroups is the MAINTENANCE IN service action of REPORT
// TARGET PORT GROUPS.
const saReportTargetPortGroups = 0x0a

// isRTPG reports whether e is REPORT TARGET PORT GROUPS.
func isRTPG(e *opEntry) bool { return e.opcode == 0xa3 && e.sa == saReportTargetPortGroups }

// hides reports whether the logical unit does not offer command e although
// the command table has it: REPORT TARGET PORT GROUPS without ALUA, which
// then ends exactly as an unknown MAINTENANCE IN service action did before
// ALUA existed.
func (lu *LU) hides(e *opEntry) bool {
	return isRTPG(e) && lu.alua.cur.Load() == nil
}

// aluaRefusal is the sense data a command gets when the asymmetric access
// state of the target port it came through does not allow it, else nil.
//
// Commands allowed per state, of the ones this device server implements
// (SPC-4 r37 subclauses; spc4r17, which LIO cites, numbers them 5.9.x):
//
//   - active/optimized, active/non-optimized: all (SPC-4 5.15.2.4.2,
//     5.15.2.4.3).
//   - standby (SPC-4 5.15.2.4.4): INQUIRY, LOG SELECT, LOG SENSE, MODE
//     SELECT, MODE SENSE, REPORT LUNS, RECEIVE DIAGNOSTIC RESULTS, SEND
//     DIAGNOSTIC, REPORT TARGET PORT GROUPS, SET TARGET PORT GROUPS,
//     REQUEST SENSE, PERSISTENT RESERVE IN, PERSISTENT RESERVE OUT and the
//     echo buffer modes of READ BUFFER and WRITE BUFFER are listed; of
//     those, INQUIRY, MODE SELECT(6/10), MODE SENSE(6/10), REPORT LUNS,
//     REPORT TARGET PORT GROUPS, REQUEST SENSE and PERSISTENT RESERVE
//     IN/OUT exist here. SPC-4 lets the device server support others; READ
//     CAPACITY(10) and (16) are (as LIO and SCST do): hosts read the
//     capacity of every path when they scan, standby ones included. TEST
//     UNIT READY is not listed and gets NOT READY, so a host sees the path
//     is not ready for I/O. Everything else: NOT READY, LOGICAL UNIT NOT
//     ACCESSIBLE, TARGET PORT IN STANDBY STATE (04h/0Bh).
//   - unavailable (SPC-4 5.15.2.4.5): INQUIRY, REPORT LUNS, REPORT TARGET
//     PORT GROUPS, SET TARGET PORT GROUPS, REQUEST SENSE and the echo
//     buffer modes of READ/WRITE BUFFER are listed; INQUIRY, REPORT LUNS,
//     REPORT TARGET PORT GROUPS and REQUEST SENSE exist here. Everything
//     else: NOT READY, LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN
//     UNAVAILABLE STATE (04h/0Ch).
//   - transitioning (SPC-4 5.15.2.5): INQUIRY, REPORT LUNS, REPORT TARGET
//     PORT GROUPS and REQUEST SENSE as for unavailable; everything else:
//     NOT READY, LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE
//     TRANSITION (04h/0Ah), which hosts retry for the implicit transition
//     time.
//
// The check comes after the unit attention (a host first learns that the
// states changed), the CDB checks and the wait in the task set (so a
// command held back by an ORDERED task gets the state it starts under),
// before reservations and the command.
func (tk *task) aluaRefusal(op *opEntry) *SenseError {
	s := tk.lu.alua.cur.Load()
	if s == nil {
		return nil
	}
	var rel uint16
	if tk.nx != nil {
		rel = tk.nx.nexus.RelativePortID
	}
	switch st := s.portState(rel); st {
	case ALUAActiveOptimized, ALUAActiveNonOptimized:
		return nil
	case ALUAStandby:
		if allowedInStandby(op) {
			return nil
		}
		return newSense(SenseNotReady, ASCLUNotAccessibleStandby)
	case ALUAUnavailable:
		if allowedWhenInaccessible(op) {
			return nil
		}
		return newSense(SenseNotReady, ASCLUNotAccessibleUnavailable)
	default: // transitioning
		if allowedWhenInaccessible(op) {
			return nil
		}
		return newSense(SenseNotReady, ASCLUNotAccessibleTransition)
	}
}

// allowedWhenInaccessible: the commands served in the unavailable and
// transitioning states (see aluaRefusal).
func allowedWhenInaccessible(op *opEntry) bool {
	switch op.opcode {
	case 0x12, 0xa0, 0x03: // INQUIRY, REPORT LUNS, REQUEST SENSE
		return true
	}
	return isRTPG(op)
}

// allowedInStandby: the commands served in the standby state (see
// aluaRefusal).
func allowedInStandby(op *opEntry) bool {
	switch op.opcode {
	case 0x15, 0x55, // MODE SELECT(6), (10)
		0x1a, 0x5a, // MODE SENSE(6), (10)
		0x5e, 0x5f, // PERSISTENT RESERVE IN, OUT
		0x25: // READ CAPACITY(10)
		return true
	case 0x9e:
		return op.sa == 0x10 // READ CAPACITY(16)
	}
	return allowedWhenInaccessible(op)
}

// cmdReportTargetPortGroups serves REPORT TARGET PORT GROUPS (SPC-4 6.37):
// every target port group of the logical unit with its state and relative
// target ports, with the length-only header (PARAMETER DATA FORMAT 000b) or
// the extended header (001b) that carries the implicit transition time.
// RETURN DATA LENGTH counts the bytes after itself in both formats (n - 3),
// as Linux and sg_rtpg read it.
func cmdReportTargetPortGroups(tk *task) error {
	s := tk.lu.alua.cur.Load()
	if s == nil {
		return errCDBField(1, 4) // dispatch hides the command; a race with SetALUA(nil)
	}
	cdb := tk.cdb
	format := cdb[1] >> 5
	if format > 1 {
		return errCDBField(1, 7)
	}
	alloc := be32(cdb[6:10])
	hdr := 4
	if format == 1 {
		hdr = 8
	}
	n := hdr
	for _, g := range s.groups {
		n += 8 + 4*len(g.RelativePorts)
	}
	d := make([]byte, hdr, n)
	put32(d[0:4], uint32(n-4))
	if format == 1 {
		d[4] = 0x10 // FORMAT TYPE 001b
		d[5] = s.transitionTime
	}
	for _, g := range s.groups {
		var desc [8]byte
		desc[0] = byte(g.State)
		if g.Preferred {
			desc[0] |= 0x80
		}
		desc[1] = supportedALUAStates
		put16(desc[2:4], g.ID)
		desc[5] = g.status
		desc[7] = byte(len(g.RelativePorts))
		d = append(d, desc[:]...)
		for _, p := range g.RelativePorts {
			d = append(d, 0, 0, byte(p>>8), byte(p))
		}
	}
	tk.setDataIn(d, int(min(alloc, 1<<20)))
	return nil
}
