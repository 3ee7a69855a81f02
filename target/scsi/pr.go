package scsi

import (
	"bytes"
	"encoding/json"
	"slices"
)

// Persistent reservation types (SPC-4 table 180).
const (
	prWriteExclusive         = 0x1
	prExclusiveAccess        = 0x3
	prWriteExclusiveRegOnly  = 0x5
	prExclusiveAccessRegOnly = 0x6
	prWriteExclusiveAllReg   = 0x7
	prExclusiveAccessAllReg  = 0x8
)

// maxRegistrations bounds the registrations per logical unit.
const maxRegistrations = 128

// prReg is one registration: a reservation key for an I_T nexus, or for
// every target port of an initiator port (ALL_TG_PT).
type prReg struct {
	Key           uint64 `json:"key"`
	InitiatorPort string `json:"initiator_port"`
	TargetPort    string `json:"target_port,omitempty"`
	AllTgPt       bool   `json:"all_tg_pt,omitempty"`
	RelPort       uint16 `json:"rel_port,omitempty"`
}

func (r *prReg) matches(k nexusKey) bool {
	return r.InitiatorPort == k.initiatorPort && (r.AllTgPt || r.TargetPort == k.targetPort)
}

// prState is the persistent reservation state of a logical unit, guarded
// by LU.resMu. It is what the state file stores when APTPL is set.
type prState struct {
	Generation uint32  `json:"generation"`
	Regs       []prReg `json:"registrations,omitempty"`
	Reserved   bool    `json:"reserved,omitempty"`
	Type       byte    `json:"type,omitempty"`
	// Holder is the index-free identity of the reservation holder (for
	// the all-registrants types every registrant holds it).
	HolderInitiator string `json:"holder_initiator,omitempty"`
	HolderTarget    string `json:"holder_target,omitempty"`
	APTPL           bool   `json:"aptpl,omitempty"`
}

func allRegistrants(t byte) bool { return t == prWriteExclusiveAllReg || t == prExclusiveAccessAllReg }

func validPRType(t byte) bool {
	switch t {
	case prWriteExclusive, prExclusiveAccess, prWriteExclusiveRegOnly, prExclusiveAccessRegOnly,
		prWriteExclusiveAllReg, prExclusiveAccessAllReg:
		return true
	}
	return false
}

// reg returns the registration of nexus k, or -1.
func (s *prState) reg(k nexusKey) int {
	for i := range s.Regs {
		if s.Regs[i].matches(k) {
			return i
		}
	}
	return -1
}

// isHolder reports whether nexus k holds the persistent reservation.
func (s *prState) isHolder(k nexusKey) bool {
	if !s.Reserved {
		return false
	}
	if allRegistrants(s.Type) {
		return s.reg(k) >= 0
	}
	i := s.reg(k)
	return i >= 0 && s.Regs[i].InitiatorPort == s.HolderInitiator && (s.Regs[i].AllTgPt || s.Regs[i].TargetPort == s.HolderTarget)
}

func (s *prState) holderReg() *prReg {
	for i := range s.Regs {
		r := &s.Regs[i]
		if r.InitiatorPort == s.HolderInitiator && (r.TargetPort == s.HolderTarget || r.AllTgPt) {
			return r
		}
	}
	return nil
}

func (s *prState) setHolder(r *prReg) {
	s.HolderInitiator, s.HolderTarget = r.InitiatorPort, r.TargetPort
}

func (s *prState) release() {
	s.Reserved, s.Type, s.HolderInitiator, s.HolderTarget = false, 0, "", ""
}

// conflicts reports whether the command must end in RESERVATION CONFLICT
// because another I_T nexus holds a reservation (SPC-4 5.12.1 table 63,
// SPC-2 7.21 for RESERVE/RELEASE).
func (lu *LU) conflicts(tk *task, op *opEntry) bool {
	k := tk.nx.key
	lu.resMu.Lock()
	defer lu.resMu.Unlock()
	if lu.resv6 != nil {
		return *lu.resv6 != k && op.access != accessRelease
	}
	s := &lu.pr
	if !s.Reserved || s.isHolder(k) {
		return false
	}
	switch op.access {
	case accessAlways, accessPR, accessRelease:
		return false
	}
	registered := s.reg(k) >= 0
	read := op.access == accessRead
	switch s.Type {
	case prWriteExclusive:
		return !read
	case prExclusiveAccess:
		return true
	case prWriteExclusiveRegOnly, prWriteExclusiveAllReg:
		return !registered && !read
	default: // exclusive access, registrants only / all registrants
		return !registered
	}
}

// cmdReserve serves RESERVE(6)/(10) (SPC-2 reservations of the whole
// logical unit; third-party and extent reservations are not supported).
func cmdReserve(tk *task) error {
	if tk.cdb[0] == 0x56 && tk.cdb[1]&0x12 != 0 { // 3RDPTY, LONGID
		return errCDBField(1, 4)
	}
	if tk.cdb[0] == 0x16 && tk.cdb[1]&0x01 != 0 { // EXTENT
		return errCDBField(1, 0)
	}
	lu := tk.lu
	k := tk.nx.key
	lu.resMu.Lock()
	defer lu.resMu.Unlock()
	if lu.pr.Reserved || len(lu.pr.Regs) > 0 {
		// CRH=1: a persistent reservation holder's RESERVE is a no-op,
		// anybody else conflicts.
		if lu.pr.isHolder(k) {
			return nil
		}
		tk.status = StatusReservationConflict
		return nil
	}
	if lu.resv6 != nil && *lu.resv6 != k {
		tk.status = StatusReservationConflict
		return nil
	}
	lu.resv6 = &k
	lu.updateReservationActiveLocked()
	return nil
}

// cmdRelease serves RELEASE(6)/(10): releases the nexus' own RESERVE;
// from anybody else it is a no-op (SPC-2 7.21.2).
func cmdRelease(tk *task) error {
	lu := tk.lu
	k := tk.nx.key
	lu.resMu.Lock()
	defer lu.resMu.Unlock()
	if lu.pr.Reserved && !lu.pr.isHolder(k) {
		tk.status = StatusReservationConflict
		return nil
	}
	if lu.resv6 != nil && *lu.resv6 == k {
		lu.resv6 = nil
		lu.updateReservationActiveLocked()
	}
	return nil
}

// cmdPRIn serves PERSISTENT RESERVE IN.
func cmdPRIn(tk *task) error {
	lu := tk.lu
	sa := tk.cdb[1] & 0x1f
	alloc := int(be16(tk.cdb[7:9]))
	lu.resMu.Lock()
	if lu.resv6 != nil && *lu.resv6 != tk.nx.key {
		lu.resMu.Unlock()
		tk.status = StatusReservationConflict
		return nil
	}
	s := &lu.pr
	var d []byte
	switch sa {
	case 0x00: // READ KEYS
		d = make([]byte, 8, 8+8*len(s.Regs))
		put32(d[0:4], s.Generation)
		for _, r := range s.Regs {
			d = append(d, 0, 0, 0, 0, 0, 0, 0, 0)
			put64(d[len(d)-8:], r.Key)
		}
		put32(d[4:8], uint32(len(d)-8))
	case 0x01: // READ RESERVATION
		d = make([]byte, 8)
		put32(d[0:4], s.Generation)
		if s.Reserved {
			d = append(d, make([]byte, 16)...)
			put32(d[4:8], 16)
			if !allRegistrants(s.Type) {
				if h := s.holderReg(); h != nil {
					put64(d[8:16], h.Key)
				}
			}
			d[21] = s.Type // scope 0 (LU)
		}
	case 0x02: // REPORT CAPABILITIES
		d = make([]byte, 8)
		put16(d[0:2], 8)
		d[2] = 0x10 | 0x04 // CRH, ATP_C
		if lu.saveable() {
			d[2] |= 0x01 // PTPL_C
		}
		d[3] = 0x80 // TMV
		if s.APTPL {
			d[3] |= 0x01 // PTPL_A
		}
		d[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02 // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
		d[5] = 0x01                             // EX_AC_AR
	case 0x03: // READ FULL STATUS
		d = make([]byte, 8)
		put32(d[0:4], s.Generation)
		for i := range s.Regs {
			r := &s.Regs[i]
			tid := transportID(r.InitiatorPort)
			e := make([]byte, 24, 24+len(tid))
			put64(e[0:8], r.Key)
			if r.AllTgPt {
				e[12] |= 0x02
			}
			if s.Reserved && (allRegistrants(s.Type) || (r.InitiatorPort == s.HolderInitiator && (r.AllTgPt || r.TargetPort == s.HolderTarget))) {
				e[12] |= 0x01
				e[13] = s.Type
			}
			put16(e[18:20], r.RelPort)
			put32(e[20:24], uint32(len(tid)))
			d = append(append(d, e...), tid...)
		}
		put32(d[4:8], uint32(len(d)-8))
	default:
		lu.resMu.Unlock()
		return errCDBField(1, 4)
	}
	lu.resMu.Unlock()
	tk.setDataIn(d, alloc)
	return nil
}

// transportID encodes an iSCSI initiator port name ("name,i,0xISID") as an
// iSCSI TransportID (SPC-4 7.6.4.6): format 01b when it carries an ISID,
// 00b otherwise; NUL-terminated and padded to a multiple of 4, at least 20
// bytes of name.
func transportID(port string) []byte {
	n := (len(port) + 4) &^ 3
	if n < 20 {
		n = 20
	}
	b := make([]byte, 4+n)
	b[0] = 0x05 // protocol identifier iSCSI
	if bytes.Contains([]byte(port), []byte(",i,0x")) {
		b[0] |= 0x40
	}
	put16(b[2:4], uint16(n))
	copy(b[4:], port)
	return b
}

// parseTransportID decodes an iSCSI TransportID into the initiator port
// name used for registrations. It returns the name and the TransportID's
// total length.
func parseTransportID(b []byte) (string, int, bool) {
	if len(b) < 4 || b[0]&0x0f != 0x05 {
		return "", 0, false
	}
	n := int(be16(b[2:4]))
	if n < 4 || 4+n > len(b) {
		return "", 0, false
	}
	name := b[4 : 4+n]
	if i := bytes.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	if len(name) == 0 {
		return "", 0, false
	}
	return string(name), 4 + n, true
}

// proutParams is a decoded PERSISTENT RESERVE OUT parameter list.
type proutParams struct {
	key, saKey uint64
	specIPT    bool
	allTgPt    bool
	aptpl      bool
	// REGISTER AND MOVE
	unreg        bool
	relPort      uint16
	moveInitPort string
}

// parsePROut validates the parameter list of service action sa.
func parsePROut(sa byte, p []byte) (proutParams, error) {
	var pp proutParams
	if sa == 0x07 {
		if len(p) < 24 {
			return pp, errParamListLength()
		}
		pp.key, pp.saKey = be64(p[0:8]), be64(p[8:16])
		pp.unreg = p[17]&0x02 != 0
		pp.aptpl = p[17]&0x01 != 0
		pp.relPort = be16(p[18:20])
		tlen := int(be32(p[20:24]))
		if tlen > len(p)-24 || tlen < 24 {
			return pp, errParamListLength()
		}
		name, _, ok := parseTransportID(p[24 : 24+tlen])
		if !ok {
			return pp, errParamField(24, -1)
		}
		pp.moveInitPort = name
		return pp, nil
	}
	if len(p) != 24 {
		return pp, errParamListLength()
	}
	pp.key, pp.saKey = be64(p[0:8]), be64(p[8:16])
	pp.specIPT = p[20]&0x08 != 0
	pp.allTgPt = p[20]&0x04 != 0
	pp.aptpl = p[20]&0x01 != 0
	return pp, nil
}

// cmdPROut serves PERSISTENT RESERVE OUT.
func cmdPROut(tk *task) error {
	lu := tk.lu
	sa := tk.cdb[1] & 0x1f
	scope := tk.cdb[2] >> 4
	typ := tk.cdb[2] & 0x0f
	plen := be32(tk.cdb[5:9])
	tk.xfer = plen
	if uint32(len(tk.cmd.DataOut)) < plen {
		return errParamListLength()
	}
	pp, err := parsePROut(sa, tk.cmd.DataOut[:plen])
	if err != nil {
		return err
	}
	if pp.specIPT {
		return errParamField(20, 3)
	}
	if pp.aptpl && !lu.saveable() {
		return errParamField(20, 0)
	}
	switch sa {
	case 0x01, 0x02, 0x04, 0x05, 0x07:
		if scope != 0 {
			return errCDBField(2, 7)
		}
		if !validPRType(typ) && sa != 0x07 {
			return errCDBField(2, 3)
		}
	}
	k := tk.nx.key
	lu.resMu.Lock()
	defer lu.resMu.Unlock()
	if lu.resv6 != nil && *lu.resv6 != k {
		tk.status = StatusReservationConflict
		return nil
	}
	s := &lu.pr
	before := lu.prSnapshotLocked()
	lu.prNotices = nil
	conflict, err := lu.proutLocked(tk, sa, typ, pp)
	notices := lu.prNotices
	lu.prNotices = nil
	if err != nil {
		return err
	}
	if conflict {
		tk.status = StatusReservationConflict
		return nil
	}
	if share := lu.prShare; share != nil {
		// the change is shared: saved before it completes, undone when
		// it cannot be (pr_share.go); the other gateways' nexuses get
		// their unit attentions once it is saved
		state, _ := json.Marshal(lu.prSnapshotLocked())
		if err := share.Save(tk.ctx, state); err != nil {
			lu.pr = before
			lu.log.Error("scsi: saving shared persistent reservations; the change is undone", "lun", lu.lun, "err", err)
			return newSense(SenseHardwareError, ASCInternalTargetFailure)
		}
		if len(notices) > 0 {
			share.Notify(notices)
		}
	}
	lu.updateReservationActiveLocked()
	if s.APTPL || before.APTPL {
		if err := lu.savePRLocked(); err != nil {
			lu.log.Error("scsi: saving persistent reservations", "lun", lu.lun, "err", err)
			return newSense(SenseHardwareError, ASCInternalTargetFailure)
		}
	}
	return nil
}

func (lu *LU) prSnapshotLocked() prState {
	s := lu.pr
	s.Regs = slices.Clone(s.Regs)
	return s
}

// proutLocked applies one service action; it reports a reservation
// conflict as true.
func (lu *LU) proutLocked(tk *task, sa, typ byte, pp proutParams) (bool, error) {
	s := &lu.pr
	k := tk.nx.key
	me := s.reg(k)
	switch sa {
	case 0x00, 0x06: // REGISTER, REGISTER AND IGNORE EXISTING KEY
		if me < 0 {
			if sa == 0x00 && pp.key != 0 {
				return true, nil
			}
			if pp.saKey == 0 {
				return false, nil
			}
			if len(s.Regs) >= maxRegistrations {
				return false, newSense(SenseIllegalRequest, ASCInsufficientRegistrationRes)
			}
			r := prReg{Key: pp.saKey, InitiatorPort: k.initiatorPort, AllTgPt: pp.allTgPt, RelPort: tk.nx.nexus.RelativePortID}
			if !pp.allTgPt {
				r.TargetPort = k.targetPort
			}
			s.Regs = append(s.Regs, r)
			s.APTPL = pp.aptpl
			s.Generation++
			return false, nil
		}
		if sa == 0x00 && pp.key != s.Regs[me].Key {
			return true, nil
		}
		if pp.saKey == 0 {
			lu.unregisterLocked(me)
		} else {
			s.Regs[me].Key = pp.saKey
		}
		s.APTPL = pp.aptpl
		s.Generation++
		return false, nil

	case 0x01: // RESERVE
		if me < 0 || pp.key != s.Regs[me].Key {
			return true, nil
		}
		if s.Reserved {
			if s.isHolder(k) && s.Type == typ {
				return false, nil
			}
			return true, nil
		}
		s.Reserved, s.Type = true, typ
		s.setHolder(&s.Regs[me])
		return false, nil

	case 0x02: // RELEASE
		if me < 0 || pp.key != s.Regs[me].Key {
			return true, nil
		}
		if !s.Reserved || !s.isHolder(k) {
			return false, nil
		}
		if s.Type != typ {
			return false, newSense(SenseIllegalRequest, ASCInvalidReleaseOfPR)
		}
		notify := s.Type != prWriteExclusive && s.Type != prExclusiveAccess
		s.release()
		if notify {
			lu.raiseRegistrantsLocked(ASCReservationsReleased, k)
		}
		return false, nil

	case 0x03: // CLEAR
		if me < 0 || pp.key != s.Regs[me].Key {
			return true, nil
		}
		lu.raiseRegistrantsLocked(ASCReservationsPreempted, k)
		s.Regs = nil
		s.release()
		s.Generation++
		return false, nil

	case 0x04, 0x05: // PREEMPT, PREEMPT AND ABORT
		if me < 0 || pp.key != s.Regs[me].Key {
			return true, nil
		}
		return lu.preemptLocked(k, me, typ, pp.saKey)

	case 0x07: // REGISTER AND MOVE
		if me < 0 || pp.key != s.Regs[me].Key {
			return true, nil
		}
		if !s.Reserved || allRegistrants(s.Type) || !s.isHolder(k) {
			return true, nil
		}
		if pp.saKey == 0 {
			return false, errParamField(8, -1)
		}
		if pp.moveInitPort == k.initiatorPort {
			return false, errParamField(24, -1)
		}
		if pp.relPort != tk.nx.nexus.RelativePortID {
			return false, errParamField(18, -1)
		}
		dest := nexusKey{initiatorPort: pp.moveInitPort, targetPort: k.targetPort}
		di := s.reg(dest)
		if di < 0 {
			if len(s.Regs) >= maxRegistrations {
				return false, newSense(SenseIllegalRequest, ASCInsufficientRegistrationRes)
			}
			s.Regs = append(s.Regs, prReg{Key: pp.saKey, InitiatorPort: dest.initiatorPort, TargetPort: dest.targetPort, RelPort: pp.relPort})
			di = len(s.Regs) - 1
		} else {
			s.Regs[di].Key = pp.saKey
		}
		s.setHolder(&s.Regs[di])
		if pp.unreg {
			s.Regs = slices.Delete(s.Regs, me, me+1)
		}
		s.APTPL = pp.aptpl
		s.Generation++
		return false, nil
	}
	return false, errCDBField(1, 4)
}

// unregisterLocked removes registration i, releasing the reservation if
// its holder goes (for all-registrants types: when the last one goes).
func (lu *LU) unregisterLocked(i int) {
	s := &lu.pr
	r := s.Regs[i]
	k := nexusKey{initiatorPort: r.InitiatorPort, targetPort: r.TargetPort}
	wasHolder := s.Reserved && (allRegistrants(s.Type) && len(s.Regs) == 1 ||
		!allRegistrants(s.Type) && r.InitiatorPort == s.HolderInitiator && (r.AllTgPt || r.TargetPort == s.HolderTarget))
	s.Regs = slices.Delete(s.Regs, i, i+1)
	if wasHolder {
		t := s.Type
		s.release()
		if t == prWriteExclusiveRegOnly || t == prExclusiveAccessRegOnly {
			lu.raiseRegistrantsLocked(ASCReservationsReleased, k)
		}
	}
}

// preemptLocked implements PREEMPT (SPC-4 5.12.11.4).
func (lu *LU) preemptLocked(k nexusKey, me int, typ byte, saKey uint64) (bool, error) {
	s := &lu.pr
	myReg := s.Regs[me]
	removeKey := func(key uint64, keepAllButMe bool) int {
		removed := 0
		kept := s.Regs[:0]
		for _, r := range s.Regs {
			isMe := r.InitiatorPort == myReg.InitiatorPort && r.TargetPort == myReg.TargetPort && r.AllTgPt == myReg.AllTgPt
			drop := !isMe && (keepAllButMe || r.Key == key)
			if drop {
				removed++
				lu.raiseForInitiator(ASCRegistrationsPreempted, r.InitiatorPort)
				lu.noteInitiatorLocked(ASCRegistrationsPreempted, r.InitiatorPort)
				continue
			}
			kept = append(kept, r)
		}
		s.Regs = kept
		return removed
	}
	if !s.Reserved {
		if saKey == 0 {
			return false, errParamField(8, -1)
		}
		if removeKey(saKey, false) == 0 && myReg.Key != saKey {
			return true, nil
		}
		s.Generation++
		return false, nil
	}
	if allRegistrants(s.Type) {
		if saKey == 0 {
			removeKey(0, true)
			s.Reserved, s.Type = true, typ
			s.setHolder(&s.Regs[s.reg(k)])
			s.Generation++
			return false, nil
		}
		if removeKey(saKey, false) == 0 && myReg.Key != saKey {
			return true, nil
		}
		s.Generation++
		return false, nil
	}
	holder := s.holderReg()
	if holder != nil && holder.Key == saKey {
		oldType := s.Type
		removeKey(saKey, false)
		s.Reserved, s.Type = true, typ
		s.setHolder(&s.Regs[s.reg(k)])
		if oldType != typ {
			lu.raiseRegistrantsLocked(ASCReservationsReleased, k)
		}
		s.Generation++
		return false, nil
	}
	if saKey == 0 {
		return false, errParamField(8, -1)
	}
	if removeKey(saKey, false) == 0 && myReg.Key != saKey {
		return true, nil
	}
	s.Generation++
	return false, nil
}

// raiseRegistrantsLocked raises asc on the nexuses of every registrant
// except the nexus skip.
func (lu *LU) raiseRegistrantsLocked(asc ASC, skip nexusKey) {
	lu.noteRegistrantsLocked(asc, skip)
	for kk, ns := range *lu.nexuses.Load() {
		if kk == skip {
			continue
		}
		if lu.pr.reg(kk) >= 0 {
			ns.raise(asc)
		}
	}
}
