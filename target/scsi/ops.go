package scsi

import (
	"encoding/hex"
	"slices"
	"strings"
)

// opFlags describe how the dispatcher treats a command.
type opFlags uint

const (
	// opNoLU: the command works on a LUN that has no logical unit.
	opNoLU opFlags = 1 << iota
	// opNoUA: the command neither reports nor clears unit attentions in
	// dispatch (INQUIRY, REPORT LUNS, REQUEST SENSE handle them).
	opNoUA
	// opNoConflictCheck: never RESERVATION CONFLICT in dispatch.
	opNoConflictCheck
	// opWritesMedium: the command changes the logical unit's data; it
	// fails with DATA PROTECT while software write protect is on (SBC-4
	// 4.11, the Control mode page's SWP).
	opWritesMedium
)

// accessClass says how a command fares against a reservation held by
// another I_T nexus (SPC-4 5.12.1, SBC-3 4.17).
type accessClass uint8

const (
	// accessAlways: allowed under every reservation.
	accessAlways accessClass = iota
	// accessRead: reads; allowed for others under the write exclusive
	// persistent reservation types.
	accessRead
	// accessWrite: everything else; conflicts for non-holders.
	accessWrite
	// accessPR: PERSISTENT RESERVE IN/OUT: allowed under persistent
	// reservations, conflicts under RESERVE(6)/(10).
	accessPR
	// accessRelease: RELEASE(6)/(10) by a non-holder succeeds and does
	// nothing (SPC-2 7.21).
	accessRelease
)

// opEntry is one supported command (one service action for commands that
// have service actions).
type opEntry struct {
	name    string
	opcode  byte
	sa      uint16
	hasSA   bool
	cdbLen  int
	usage   []byte // CDB usage data for REPORT SUPPORTED OPERATION CODES
	flags   opFlags
	access  accessClass
	timeout uint32 // nominal command processing timeout, seconds
	run     func(*task) error
}

// opTable is the immutable command table of a target.
type opTable struct {
	plain  [256]*opEntry
	withSA [256]map[uint16]*opEntry
	all    []*opEntry // sorted by opcode, then service action
}

// lookup finds the command for cdb. An unknown opcode gives INVALID
// COMMAND OPERATION CODE; an unknown service action INVALID FIELD IN CDB.
func (ot *opTable) lookup(cdb []byte) (*opEntry, error) {
	op := cdb[0]
	if e := ot.plain[op]; e != nil {
		return e, nil
	}
	if m := ot.withSA[op]; m != nil {
		if len(cdb) < 2 {
			return nil, errCDBField(1, 4)
		}
		if e := m[uint16(cdb[1]&0x1f)]; e != nil {
			return e, nil
		}
		return nil, errCDBField(1, 4)
	}
	return nil, errInvalidOpcode()
}

// find returns the entry for opcode/service action (RSOC one-command form).
func (ot *opTable) find(opcode byte, sa uint16) (e *opEntry, opHasSA bool) {
	if m := ot.withSA[opcode]; m != nil {
		return m[sa], true
	}
	return ot.plain[opcode], false
}

// usage parses a CDB usage map written as hex bytes separated by spaces.
func usage(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic("scsi: bad usage map " + s) // programming error in the static table
	}
	return b
}

func newOpTable() *opTable {
	entries := []*opEntry{
		{name: "TEST UNIT READY", opcode: 0x00, cdbLen: 6, usage: usage("00 00 00 00 00 07"), access: accessAlways, run: cmdTestUnitReady},
		{name: "REQUEST SENSE", opcode: 0x03, cdbLen: 6, usage: usage("03 01 00 00 ff 07"), flags: opNoLU | opNoUA | opNoConflictCheck, run: cmdRequestSense},
		{name: "READ(6)", opcode: 0x08, cdbLen: 6, usage: usage("08 1f ff ff ff 07"), access: accessRead, timeout: 30, run: cmdRead},
		{name: "WRITE(6)", opcode: 0x0a, cdbLen: 6, usage: usage("0a 1f ff ff ff 07"), flags: opWritesMedium, access: accessWrite, timeout: 30, run: cmdWrite},
		{name: "INQUIRY", opcode: 0x12, cdbLen: 6, usage: usage("12 01 ff ff ff 07"), flags: opNoLU | opNoUA | opNoConflictCheck, run: cmdInquiry},
		{name: "MODE SELECT(6)", opcode: 0x15, cdbLen: 6, usage: usage("15 11 00 00 ff 07"), access: accessWrite, run: cmdModeSelect},
		{name: "RESERVE(6)", opcode: 0x16, cdbLen: 6, usage: usage("16 00 00 00 00 07"), access: accessWrite, run: cmdReserve},
		{name: "RELEASE(6)", opcode: 0x17, cdbLen: 6, usage: usage("17 00 00 00 00 07"), access: accessRelease, run: cmdRelease},
		{name: "MODE SENSE(6)", opcode: 0x1a, cdbLen: 6, usage: usage("1a 08 ff ff ff 07"), access: accessRead, run: cmdModeSense},
		{name: "START STOP UNIT", opcode: 0x1b, cdbLen: 6, usage: usage("1b 01 00 0f f7 07"), access: accessWrite, run: cmdStartStopUnit},
		{name: "PREVENT ALLOW MEDIUM REMOVAL", opcode: 0x1e, cdbLen: 6, usage: usage("1e 00 00 00 03 07"), access: accessWrite, run: cmdPreventAllow},
		{name: "READ CAPACITY(10)", opcode: 0x25, cdbLen: 10, usage: usage("25 00 00 00 00 00 00 00 00 07"), access: accessAlways, run: cmdReadCapacity10},
		{name: "READ(10)", opcode: 0x28, cdbLen: 10, usage: usage("28 fe ff ff ff ff 1f ff ff 07"), access: accessRead, timeout: 30, run: cmdRead},
		{name: "WRITE(10)", opcode: 0x2a, cdbLen: 10, usage: usage("2a fa ff ff ff ff 1f ff ff 07"), flags: opWritesMedium, access: accessWrite, timeout: 30, run: cmdWrite},
		{name: "WRITE AND VERIFY(10)", opcode: 0x2e, cdbLen: 10, usage: usage("2e f2 ff ff ff ff 1f ff ff 07"), flags: opWritesMedium, access: accessWrite, timeout: 30, run: cmdWrite},
		{name: "VERIFY(10)", opcode: 0x2f, cdbLen: 10, usage: usage("2f f6 ff ff ff ff 1f ff ff 07"), access: accessRead, timeout: 30, run: cmdVerify},
		{name: "PRE-FETCH(10)", opcode: 0x34, cdbLen: 10, usage: usage("34 02 ff ff ff ff 1f ff ff 07"), access: accessRead, timeout: 30, run: cmdPrefetch},
		{name: "SYNCHRONIZE CACHE(10)", opcode: 0x35, cdbLen: 10, usage: usage("35 02 ff ff ff ff 1f ff ff 07"), access: accessWrite, timeout: 60, run: cmdSyncCache},
		{name: "WRITE SAME(10)", opcode: 0x41, cdbLen: 10, usage: usage("41 f8 ff ff ff ff 1f ff ff 07"), flags: opWritesMedium, access: accessWrite, timeout: 60, run: cmdWriteSame},
		{name: "SANITIZE / OVERWRITE", opcode: 0x48, sa: 0x01, hasSA: true, cdbLen: 10, usage: usage("48 bf 00 00 00 00 00 ff ff 07"), flags: opWritesMedium, access: accessWrite, timeout: 3600, run: cmdSanitize},
		{name: "SANITIZE / BLOCK ERASE", opcode: 0x48, sa: 0x02, hasSA: true, cdbLen: 10, usage: usage("48 bf 00 00 00 00 00 ff ff 07"), flags: opWritesMedium, access: accessWrite, timeout: 600, run: cmdSanitize},
		{name: "SANITIZE / EXIT FAILURE MODE", opcode: 0x48, sa: 0x1f, hasSA: true, cdbLen: 10, usage: usage("48 bf 00 00 00 00 00 ff ff 07"), access: accessWrite, run: cmdSanitize},
		{name: "UNMAP", opcode: 0x42, cdbLen: 10, usage: usage("42 01 00 00 00 00 1f ff ff 07"), flags: opWritesMedium, access: accessWrite, timeout: 60, run: cmdUnmap},
		{name: "MODE SELECT(10)", opcode: 0x55, cdbLen: 10, usage: usage("55 11 00 00 00 00 00 ff ff 07"), access: accessWrite, run: cmdModeSelect},
		{name: "RESERVE(10)", opcode: 0x56, cdbLen: 10, usage: usage("56 00 00 00 00 00 00 00 00 07"), access: accessWrite, run: cmdReserve},
		{name: "RELEASE(10)", opcode: 0x57, cdbLen: 10, usage: usage("57 00 00 00 00 00 00 00 00 07"), access: accessRelease, run: cmdRelease},
		{name: "MODE SENSE(10)", opcode: 0x5a, cdbLen: 10, usage: usage("5a 18 ff ff 00 00 00 ff ff 07"), access: accessRead, run: cmdModeSense},
		{name: "PERSISTENT RESERVE IN / READ KEYS", opcode: 0x5e, sa: 0x00, hasSA: true, cdbLen: 10, usage: usage("5e 1f 00 00 00 00 00 ff ff 07"), access: accessPR, run: cmdPRIn},
		{name: "PERSISTENT RESERVE IN / READ RESERVATION", opcode: 0x5e, sa: 0x01, hasSA: true, cdbLen: 10, usage: usage("5e 1f 00 00 00 00 00 ff ff 07"), access: accessPR, run: cmdPRIn},
		{name: "PERSISTENT RESERVE IN / REPORT CAPABILITIES", opcode: 0x5e, sa: 0x02, hasSA: true, cdbLen: 10, usage: usage("5e 1f 00 00 00 00 00 ff ff 07"), access: accessPR, run: cmdPRIn},
		{name: "PERSISTENT RESERVE IN / READ FULL STATUS", opcode: 0x5e, sa: 0x03, hasSA: true, cdbLen: 10, usage: usage("5e 1f 00 00 00 00 00 ff ff 07"), access: accessPR, run: cmdPRIn},
		{name: "READ(16)", opcode: 0x88, cdbLen: 16, usage: usage("88 fe ff ff ff ff ff ff ff ff ff ff ff ff 1f 07"), access: accessRead, timeout: 30, run: cmdRead},
		{name: "COMPARE AND WRITE", opcode: 0x89, cdbLen: 16, usage: usage("89 fa ff ff ff ff ff ff ff ff 00 00 00 ff 1f 07"), flags: opWritesMedium, access: accessWrite, timeout: 30, run: cmdCompareAndWrite},
		{name: "WRITE(16)", opcode: 0x8a, cdbLen: 16, usage: usage("8a fa ff ff ff ff ff ff ff ff ff ff ff ff 1f 07"), flags: opWritesMedium, access: accessWrite, timeout: 30, run: cmdWrite},
		{name: "ORWRITE(16)", opcode: 0x8b, cdbLen: 16, usage: usage("8b fa ff ff ff ff ff ff ff ff ff ff ff ff 1f 07"), flags: opWritesMedium, access: accessWrite, timeout: 30, run: cmdOrWrite},
		{name: "WRITE AND VERIFY(16)", opcode: 0x8e, cdbLen: 16, usage: usage("8e f2 ff ff ff ff ff ff ff ff ff ff ff ff 1f 07"), flags: opWritesMedium, access: accessWrite, timeout: 30, run: cmdWrite},
		{name: "VERIFY(16)", opcode: 0x8f, cdbLen: 16, usage: usage("8f f6 ff ff ff ff ff ff ff ff ff ff ff ff 1f 07"), access: accessRead, timeout: 30, run: cmdVerify},
		{name: "PRE-FETCH(16)", opcode: 0x90, cdbLen: 16, usage: usage("90 02 ff ff ff ff ff ff ff ff ff ff ff ff 1f 07"), access: accessRead, timeout: 30, run: cmdPrefetch},
		{name: "SYNCHRONIZE CACHE(16)", opcode: 0x91, cdbLen: 16, usage: usage("91 02 ff ff ff ff ff ff ff ff ff ff ff ff 1f 07"), access: accessWrite, timeout: 60, run: cmdSyncCache},
		{name: "WRITE SAME(16)", opcode: 0x93, cdbLen: 16, usage: usage("93 f9 ff ff ff ff ff ff ff ff ff ff ff ff 1f 07"), flags: opWritesMedium, access: accessWrite, timeout: 60, run: cmdWriteSame},
		{name: "WRITE ATOMIC(16)", opcode: 0x9c, cdbLen: 16, usage: usage("9c f8 ff ff ff ff ff ff ff ff ff ff ff ff 1f 07"), flags: opWritesMedium, access: accessWrite, timeout: 30, run: cmdWriteAtomic},
		{name: "READ CAPACITY(16)", opcode: 0x9e, sa: 0x10, hasSA: true, cdbLen: 16, usage: usage("9e 1f 00 00 00 00 00 00 00 00 ff ff ff ff 00 07"), access: accessAlways, run: cmdReadCapacity16},
		{name: "GET LBA STATUS", opcode: 0x9e, sa: 0x12, hasSA: true, cdbLen: 16, usage: usage("9e 1f ff ff ff ff ff ff ff ff ff ff ff ff 00 07"), access: accessRead, run: cmdGetLBAStatus},
		{name: "EXTENDED COPY(LID1)", opcode: 0x83, sa: 0x00, hasSA: true, cdbLen: 16, usage: usage("83 1f 00 00 00 00 00 00 00 00 ff ff ff ff 00 07"), access: accessWrite, timeout: 120, run: cmdExtendedCopy},
		{name: "POPULATE TOKEN", opcode: 0x83, sa: 0x10, hasSA: true, cdbLen: 16, usage: usage("83 1f 00 00 00 00 ff ff ff ff ff ff ff ff 1f 07"), access: accessRead, timeout: 30, run: cmdPopulateToken},
		{name: "WRITE USING TOKEN", opcode: 0x83, sa: 0x11, hasSA: true, cdbLen: 16, usage: usage("83 1f 00 00 00 00 ff ff ff ff ff ff ff ff 1f 07"), flags: opWritesMedium, access: accessWrite, timeout: 120, run: cmdWriteUsingToken},
		{name: "RECEIVE ROD TOKEN INFORMATION", opcode: 0x84, sa: 0x07, hasSA: true, cdbLen: 16, usage: usage("84 1f ff ff ff ff 00 00 00 00 ff ff ff ff 00 07"), access: accessRead, run: cmdReceiveRODTokenInfo},
		{name: "RECEIVE COPY RESULTS / COPY STATUS", opcode: 0x84, sa: 0x00, hasSA: true, cdbLen: 16, usage: usage("84 1f ff 00 00 00 00 00 00 00 ff ff ff ff 00 07"), access: accessRead, run: cmdReceiveCopyResults},
		{name: "RECEIVE COPY RESULTS / OPERATING PARAMETERS", opcode: 0x84, sa: 0x03, hasSA: true, cdbLen: 16, usage: usage("84 1f 00 00 00 00 00 00 00 00 ff ff ff ff 00 07"), access: accessRead, run: cmdReceiveCopyResults},
		{name: "REPORT LUNS", opcode: 0xa0, cdbLen: 12, usage: usage("a0 00 ff 00 00 00 ff ff ff ff 00 07"), flags: opNoLU | opNoUA | opNoConflictCheck, run: cmdReportLUNs},
		{name: "REPORT TARGET PORT GROUPS", opcode: 0xa3, sa: saReportTargetPortGroups, hasSA: true, cdbLen: 12, usage: usage("a3 ff 00 00 00 00 ff ff ff ff 00 07"), access: accessAlways, run: cmdReportTargetPortGroups},
		{name: "REPORT SUPPORTED OPERATION CODES", opcode: 0xa3, sa: 0x0c, hasSA: true, cdbLen: 12, usage: usage("a3 1f 87 ff ff ff ff ff ff ff 00 07"), access: accessAlways, run: cmdReportSupportedOpcodes},
		{name: "READ(12)", opcode: 0xa8, cdbLen: 12, usage: usage("a8 fe ff ff ff ff ff ff ff ff 1f 07"), access: accessRead, timeout: 30, run: cmdRead},
		{name: "WRITE(12)", opcode: 0xaa, cdbLen: 12, usage: usage("aa fa ff ff ff ff ff ff ff ff 1f 07"), flags: opWritesMedium, access: accessWrite, timeout: 30, run: cmdWrite},
		{name: "WRITE AND VERIFY(12)", opcode: 0xae, cdbLen: 12, usage: usage("ae f2 ff ff ff ff ff ff ff ff 1f 07"), flags: opWritesMedium, access: accessWrite, timeout: 30, run: cmdWrite},
		{name: "VERIFY(12)", opcode: 0xaf, cdbLen: 12, usage: usage("af f6 ff ff ff ff ff ff ff ff 1f 07"), access: accessRead, timeout: 30, run: cmdVerify},
	}
	for sa, name := range []string{"REGISTER", "RESERVE", "RELEASE", "CLEAR", "PREEMPT", "PREEMPT AND ABORT",
		"REGISTER AND IGNORE EXISTING KEY", "REGISTER AND MOVE"} {
		entries = append(entries, &opEntry{
			name: "PERSISTENT RESERVE OUT / " + name, opcode: 0x5f, sa: uint16(sa), hasSA: true, cdbLen: 10,
			usage: usage("5f 1f ff 00 00 ff ff ff ff 07"), access: accessPR, run: cmdPROut,
		})
	}
	ot := &opTable{}
	for _, e := range entries {
		if len(e.usage) != e.cdbLen || e.usage[0] != e.opcode {
			panic("scsi: usage map of " + e.name + " does not match its CDB") // static table bug
		}
		if e.hasSA {
			if ot.withSA[e.opcode] == nil {
				ot.withSA[e.opcode] = map[uint16]*opEntry{}
			}
			ot.withSA[e.opcode][e.sa] = e
		} else {
			ot.plain[e.opcode] = e
		}
	}
	ot.all = entries
	slices.SortFunc(ot.all, func(a, b *opEntry) int {
		if a.opcode != b.opcode {
			return int(a.opcode) - int(b.opcode)
		}
		return int(a.sa) - int(b.sa)
	})
	return ot
}
