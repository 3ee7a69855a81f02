package scsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/testkit"
)

// The ALUA fixture: group 10 holds relative port 1 (nexusA, nexusB), group
// 20 holds ports 2 and 5 (nexusC on port 2, nexusD on port 5); port 9
// (nexusX) is in no group.
var (
	nexusC = &Nexus{InitiatorName: "iqn.test:c", InitiatorPort: "iqn.test:c,i,0x000000000003", TargetPort: "iqn.test:tgt,t,0x0002", RelativePortID: 2}
	nexusD = &Nexus{InitiatorName: "iqn.test:d", InitiatorPort: "iqn.test:d,i,0x000000000004", TargetPort: "iqn.test:tgt,t,0x0005", RelativePortID: 5}
	nexusX = &Nexus{InitiatorName: "iqn.test:x", InitiatorPort: "iqn.test:x,i,0x000000000009", TargetPort: "iqn.test:tgt,t,0x0009", RelativePortID: 9}
)

func testALUAConfig() *ALUAConfig {
	return &ALUAConfig{
		TransitionTime: 30,
		Groups: []TargetPortGroup{
			{ID: 20, State: ALUAStandby, RelativePorts: []uint16{5, 2}},
			{ID: 10, State: ALUAActiveOptimized, Preferred: true, RelativePorts: []uint16{1}},
		},
	}
}

func newALUAFixture(t *testing.T) *fixture {
	t.Helper()
	f := newFixture(t, func(c *LUConfig) { c.ALUA = testALUAConfig() })
	for _, n := range []*Nexus{nexusC, nexusD, nexusX} {
		f.clearUA(n)
	}
	return f
}

func rtpgCDB(format byte, alloc uint32) []byte {
	c := []byte{0xa3, format<<5 | 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(c[6:10], alloc)
	return c
}

// rtpgGroup is one decoded target port group descriptor.
type rtpgGroup struct {
	pref   bool
	state  ALUAState
	sup    byte
	id     uint16
	status byte
	ports  []uint16
}

// decodeRTPG reads REPORT TARGET PORT GROUPS parameter data as a host does
// (Linux scsi_dh_alua, sg_rtpg): RETURN DATA LENGTH + 4 bytes in all, the
// descriptors after the 4- or 8-byte header.
func decodeRTPG(t *testing.T, d []byte, extended bool) (transition byte, groups []rtpgGroup) {
	t.Helper()
	if len(d) < 4 {
		t.Fatalf("RTPG data of %d bytes", len(d))
	}
	n := int(binary.BigEndian.Uint32(d[0:4])) + 4
	if n != len(d) {
		t.Fatalf("RETURN DATA LENGTH %d + 4 for %d bytes", n-4, len(d))
	}
	off := 4
	if extended {
		if d[4]&0x70 != 0x10 {
			t.Fatalf("FORMAT TYPE %#x, want 001b", d[4]>>4&7)
		}
		if d[4]&0x8f != 0 || d[6] != 0 || d[7] != 0 {
			t.Fatalf("reserved bits set in the extended header % x", d[4:8])
		}
		transition, off = d[5], 8
	}
	for off < n {
		if off+8 > n {
			t.Fatalf("descriptor header cut at %d of %d", off, n)
		}
		h := d[off : off+8]
		if h[0]&0x70 != 0 || h[1]&0x20 != 0 || h[4] != 0 || h[6] != 0 {
			t.Fatalf("reserved bits set in descriptor % x", h)
		}
		g := rtpgGroup{pref: h[0]&0x80 != 0, state: ALUAState(h[0] & 0x0f), sup: h[1], id: binary.BigEndian.Uint16(h[2:4]), status: h[5]}
		off += 8
		for range int(h[7]) {
			if off+4 > n {
				t.Fatalf("port descriptor cut at %d of %d", off, n)
			}
			if d[off] != 0 || d[off+1] != 0 {
				t.Fatalf("reserved bytes set in port descriptor % x", d[off:off+4])
			}
			g.ports = append(g.ports, binary.BigEndian.Uint16(d[off+2:off+4]))
			off += 4
		}
		groups = append(groups, g)
	}
	return transition, groups
}

func TestALUAReportTargetPortGroupsBytes(t *testing.T) {
	f := newALUAFixture(t)
	want := map[byte]string{
		0: "0000001c" + "808f000a00000001" + "00000001" + "028f001400000002" + "00000002" + "00000005",
		1: "00000020" + "101e0000" + "808f000a00000001" + "00000001" + "028f001400000002" + "00000002" + "00000005",
	}
	for _, n := range []*Nexus{nexusA, nexusC, nexusX} {
		for format, w := range want {
			r := f.exec(n, rtpgCDB(format, 4096), nil, 4096)
			f.good(r)
			if got := hex.EncodeToString(r.Data); got != w {
				t.Fatalf("port %d format %d:\n got  %s\n want %s", n.RelativePortID, format, got, w)
			}
			if r.TransferLen != uint32(len(r.Data)) {
				t.Fatalf("TransferLen %d for %d bytes", r.TransferLen, len(r.Data))
			}
			tt, groups := decodeRTPG(t, r.Data, format == 1)
			if format == 1 && tt != 30 {
				t.Fatalf("implicit transition time %d", tt)
			}
			wantGroups := []rtpgGroup{
				{pref: true, state: ALUAActiveOptimized, sup: 0x8f, id: 10, ports: []uint16{1}},
				{state: ALUAStandby, sup: 0x8f, id: 20, ports: []uint16{2, 5}},
			}
			if fmt.Sprint(groups) != fmt.Sprint(wantGroups) {
				t.Fatalf("groups %+v, want %+v", groups, wantGroups)
			}
		}
	}
	// Supported states: T_SUP, U_SUP, S_SUP, AN_SUP, AO_SUP; no offline,
	// no logical block dependent.
	if supportedALUAStates != 0x8f {
		t.Fatalf("supported states %#x", supportedALUAStates)
	}
	// PARAMETER DATA FORMAT 010b..111b: INVALID FIELD IN CDB, byte 1 bit 7.
	for format := byte(2); format < 8; format++ {
		r := f.exec(nexusA, rtpgCDB(format, 4096), nil, 4096)
		f.sense(r, SenseIllegalRequest, ASCInvalidFieldInCDB)
		if r.Sense[15] != 0xcf || r.Sense[16] != 0 || r.Sense[17] != 1 {
			t.Fatalf("format %d: field pointer % x", format, r.Sense[15:18])
		}
	}
}

func TestALUAReportTargetPortGroupsAllocationLength(t *testing.T) {
	f := newALUAFixture(t)
	for _, format := range []byte{0, 1} {
		full := f.exec(nexusA, rtpgCDB(format, 4096), nil, 4096)
		f.good(full)
		for _, alloc := range []uint32{0, 1, 3, 4, 7, 8, 9, 12, uint32(len(full.Data)) - 1, uint32(len(full.Data)), uint32(len(full.Data)) + 10, 1 << 31} {
			r := f.exec(nexusA, rtpgCDB(format, alloc), nil, 4096)
			f.good(r)
			want := full.Data[:min(int(alloc), len(full.Data))]
			if !bytes.Equal(r.Data, want) {
				t.Fatalf("format %d alloc %d: % x, want % x", format, alloc, r.Data, want)
			}
			if r.TransferLen != uint32(len(want)) {
				t.Fatalf("format %d alloc %d: TransferLen %d", format, alloc, r.TransferLen)
			}
		}
		// The transport's buffer is smaller than the allocation length.
		r := f.exec(nexusA, rtpgCDB(format, 4096), nil, 6)
		f.good(r)
		if !bytes.Equal(r.Data, full.Data[:6]) || r.TransferLen != uint32(len(full.Data)) {
			t.Fatalf("format %d DataInLen 6: % x TransferLen %d", format, r.Data, r.TransferLen)
		}
	}
}

// designator is one decoded VPD 83h designation descriptor.
type designator struct {
	proto, codeSet byte
	piv            bool
	assoc, typ     byte
	id             []byte
}

func decodeVPD83(t *testing.T, d []byte) []designator {
	t.Helper()
	if len(d) < 4 || d[1] != 0x83 || int(binary.BigEndian.Uint16(d[2:4]))+4 != len(d) {
		t.Fatalf("VPD 83h header % x for %d bytes", d[:min(len(d), 4)], len(d))
	}
	var out []designator
	for p := d[4:]; len(p) > 0; {
		if len(p) < 4 || len(p) < 4+int(p[3]) {
			t.Fatalf("designator cut: % x", p)
		}
		out = append(out, designator{proto: p[0] >> 4, codeSet: p[0] & 0x0f, piv: p[1]&0x80 != 0, assoc: p[1] >> 4 & 3, typ: p[1] & 0x0f, id: p[4 : 4+int(p[3])]})
		p = p[4+int(p[3]):]
	}
	return out
}

func TestALUAInquiryAndVPD83(t *testing.T) {
	f := newALUAFixture(t)
	plain := newFixture(t, nil) // same identity, no ALUA
	for _, n := range []*Nexus{nexusA, nexusC, nexusD, nexusX} {
		plain.clearUA(n)
	}
	// Standard INQUIRY: TPGS=01b (byte 5 bits 5-4), everything else as
	// without ALUA.
	r := f.exec(nexusC, []byte{0x12, 0, 0, 0, 255, 0}, nil, 255)
	f.good(r)
	p := plain.exec(nexusC, []byte{0x12, 0, 0, 0, 255, 0}, nil, 255)
	if r.Data[5] != 0x18 || p.Data[5] != 0x08 {
		t.Fatalf("byte 5: %#x with ALUA, %#x without", r.Data[5], p.Data[5])
	}
	if r.Data[5]>>4&3 != 1 {
		t.Fatalf("TPGS %d, want 01b (implicit)", r.Data[5]>>4&3)
	}
	r.Data[5] = p.Data[5]
	f.mustEqual(r.Data, p.Data)

	wantGroup := map[uint16]int{1: 10, 2: 20, 5: 20, 9: -1}
	for _, n := range []*Nexus{nexusA, nexusC, nexusD, nexusX} {
		r := f.exec(n, []byte{0x12, 1, 0x83, 1, 0, 0}, nil, 256)
		f.good(r)
		p := plain.exec(n, []byte{0x12, 1, 0x83, 1, 0, 0}, nil, 256)
		got, base := decodeVPD83(t, r.Data), decodeVPD83(t, p.Data)
		var rel, tpg []designator
		var other, baseOther []designator
		for _, d := range got {
			switch d.typ {
			case 4:
				rel = append(rel, d)
			case 5:
				tpg = append(tpg, d)
			}
			if d.typ != 5 {
				other = append(other, d)
			}
		}
		for _, d := range base {
			if d.typ != 5 {
				baseOther = append(baseOther, d)
			}
		}
		// NAA, T10 vendor ID, relative port and SCSI names as without
		// ALUA: identity stays the same on every node and path.
		if fmt.Sprint(other) != fmt.Sprint(baseOther) {
			t.Fatalf("port %d: designators other than the group differ:\n%v\n%v", n.RelativePortID, got, base)
		}
		if len(rel) != 1 || !rel[0].piv || rel[0].assoc != 1 || rel[0].proto != 5 || rel[0].codeSet != 1 ||
			!bytes.Equal(rel[0].id, []byte{0, 0, byte(n.RelativePortID >> 8), byte(n.RelativePortID)}) {
			t.Fatalf("port %d: relative target port designator %+v", n.RelativePortID, rel)
		}
		g := wantGroup[n.RelativePortID]
		if g < 0 {
			if len(tpg) != 0 {
				t.Fatalf("port %d in no group has a target port group designator %+v", n.RelativePortID, tpg)
			}
			continue
		}
		if len(tpg) != 1 || !tpg[0].piv || tpg[0].assoc != 1 || tpg[0].proto != 5 || tpg[0].codeSet != 1 ||
			!bytes.Equal(tpg[0].id, []byte{0, 0, 0, byte(g)}) {
			t.Fatalf("port %d: target port group designator %+v, want group %d", n.RelativePortID, tpg, g)
		}
	}
}

// TestALUAInquiryDecodedBySg3Utils lets sg3-utils decode what cachelun
// sends, when installed: sg_inq must see TPGS=1, sg_vpd the relative port
// and the target port group.
func TestALUAInquiryDecodedBySg3Utils(t *testing.T) {
	if !haveCommand("sg_inq") || !haveCommand("sg_vpd") {
		t.Skip("sg3-utils not installed")
	}
	f := newALUAFixture(t)
	std := f.exec(nexusD, []byte{0x12, 0, 0, 0, 255, 0}, nil, 255)
	f.good(std)
	out := runWithHex(t, std.Data, "sg_inq", "--inhex=%s")
	if !strings.Contains(out, "TPGS=1") {
		t.Fatalf("sg_inq does not see TPGS=1:\n%s", out)
	}
	vpd := f.exec(nexusD, []byte{0x12, 1, 0x83, 1, 0, 0}, nil, 256)
	f.good(vpd)
	out = runWithHex(t, vpd.Data, "sg_vpd", "--inhex=%s")
	for _, want := range []string{"Relative target port: 0x5", "Target port group: 0x14"} {
		if !strings.Contains(out, want) {
			t.Fatalf("sg_vpd output lacks %q:\n%s", want, out)
		}
	}
}

// aluaProbe is a command of the access matrix: a CDB (with its data-out)
// that completes with GOOD on an accessible port.
type aluaProbe struct {
	name string
	cdb  []byte
	out  []byte
	in   uint32
	undo *aluaProbe // run by the same nexus afterwards, when set
}

func aluaProbes() []aluaProbe {
	_, regParams := prout(6, 0, 0, 0x77, 0)
	_, unregParams := prout(6, 0, 0, 0, 0)
	return []aluaProbe{
		{"INQUIRY", []byte{0x12, 0, 0, 0, 96, 0}, nil, 96, nil},
		{"INQUIRY VPD 83h", []byte{0x12, 1, 0x83, 1, 0, 0}, nil, 256, nil},
		{"REPORT LUNS", []byte{0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, nil, 256, nil},
		{"REQUEST SENSE", []byte{0x03, 0, 0, 0, 18, 0}, nil, 18, nil},
		{"REPORT TARGET PORT GROUPS", rtpgCDB(1, 256), nil, 256, nil},
		{"MODE SENSE(6)", []byte{0x1a, 0, 0x3f, 0, 255, 0}, nil, 255, nil},
		{"MODE SENSE(10)", []byte{0x5a, 0, 0x3f, 0, 0, 0, 0, 1, 0, 0}, nil, 256, nil},
		{"MODE SELECT(6)", []byte{0x15, 0x10, 0, 0, 0, 0}, nil, 0, nil},
		{"MODE SELECT(10)", []byte{0x55, 0x10, 0, 0, 0, 0, 0, 0, 0, 0}, nil, 0, nil},
		{"PERSISTENT RESERVE IN", []byte{0x5e, 0, 0, 0, 0, 0, 0, 1, 0, 0}, nil, 256, nil},
		{"PERSISTENT RESERVE OUT", []byte{0x5f, 6, 0, 0, 0, 0, 0, 0, 24, 0}, regParams, 0,
			&aluaProbe{cdb: []byte{0x5f, 6, 0, 0, 0, 0, 0, 0, 24, 0}, out: unregParams}},
		{"READ CAPACITY(10)", []byte{0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil, 8, nil},
		{"READ CAPACITY(16)", []byte{0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}, nil, 32, nil},
		{"TEST UNIT READY", []byte{0, 0, 0, 0, 0, 0}, nil, 0, nil},
		{"READ(10)", testkit.Read10(0, 1), nil, 512, nil},
		{"WRITE(10)", testkit.Write10(0, 1), make([]byte, 512), 0, nil},
		{"READ(16)", testkit.CDB16(0x88, 0, 0, 1), nil, 512, nil},
		{"WRITE(16)", testkit.CDB16(0x8a, 0, 0, 1), make([]byte, 512), 0, nil},
		{"VERIFY(10)", testkit.CDB10(0x2f, 0, 0, 1), nil, 0, nil},
		{"SYNCHRONIZE CACHE(10)", testkit.CDB10(0x35, 0, 0, 0), nil, 0, nil},
		{"WRITE SAME(16)", testkit.CDB16(0x93, 0, 0, 1), make([]byte, 512), 0, nil},
		{"COMPARE AND WRITE", testkit.CDB16(0x89, 0, 0, 1), make([]byte, 1024), 0, nil},
		{"GET LBA STATUS", []byte{0x9e, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}, nil, 32, nil},
		{"REPORT SUPPORTED OPERATION CODES", rsoc(0, false, 0, 0), nil, 65536, nil},
		{"START STOP UNIT", []byte{0x1b, 0, 0, 0, 1, 0}, nil, 0, nil},
		{"PREVENT ALLOW MEDIUM REMOVAL", []byte{0x1e, 0, 0, 0, 0, 0}, nil, 0, nil},
		{"RESERVE(6)", []byte{0x16, 0, 0, 0, 0, 0}, nil, 0, &aluaProbe{cdb: []byte{0x17, 0, 0, 0, 0, 0}}},
		{"RELEASE(6)", []byte{0x17, 0, 0, 0, 0, 0}, nil, 0, nil},
	}
}

func TestALUAAccessMatrix(t *testing.T) {
	inaccessible := map[string]bool{"INQUIRY": true, "INQUIRY VPD 83h": true, "REPORT LUNS": true, "REQUEST SENSE": true, "REPORT TARGET PORT GROUPS": true}
	standby := map[string]bool{"MODE SENSE(6)": true, "MODE SENSE(10)": true, "MODE SELECT(6)": true, "MODE SELECT(10)": true,
		"PERSISTENT RESERVE IN": true, "PERSISTENT RESERVE OUT": true, "READ CAPACITY(10)": true, "READ CAPACITY(16)": true}
	for name := range inaccessible {
		standby[name] = true
	}
	cases := []struct {
		state   ALUAState
		allowed func(string) bool
		refusal ASC
	}{
		{ALUAActiveOptimized, func(string) bool { return true }, 0},
		{ALUAActiveNonOptimized, func(string) bool { return true }, 0},
		{ALUAStandby, func(n string) bool { return standby[n] }, ASCLUNotAccessibleStandby},
		{ALUAUnavailable, func(n string) bool { return inaccessible[n] }, ASCLUNotAccessibleUnavailable},
		{ALUATransitioning, func(n string) bool { return inaccessible[n] }, ASCLUNotAccessibleTransition},
	}
	f := newALUAFixture(t)
	for _, c := range cases {
		if _, err := f.lu.SetTargetPortGroupState(20, c.state); err != nil {
			t.Fatal(err)
		}
		for _, n := range []*Nexus{nexusA, nexusB, nexusC, nexusD, nexusX} {
			f.clearUA(n)
		}
		for _, p := range aluaProbes() {
			// Port 2 is in group 20, whose state is under test.
			r := f.exec(nexusC, p.cdb, p.out, p.in)
			if p.undo != nil {
				f.exec(nexusC, p.undo.cdb, p.undo.out, 0)
			}
			if c.allowed(p.name) {
				if r.Status != StatusGood {
					t.Fatalf("%v: %s: status %#x sense % x, want GOOD", c.state, p.name, r.Status, r.Sense)
				}
			} else {
				checkSense(t, r, SenseNotReady, c.refusal)
				if len(r.Data) != 0 || r.Sense[0] != 0x70 || r.Sense[15] != 0 {
					t.Fatalf("%v: %s: refusal carries data or a field pointer: % x", c.state, p.name, r.Sense)
				}
			}
			// Port 1 (group 10, active/optimized) serves everything.
			if r := f.exec(nexusA, p.cdb, p.out, p.in); r.Status != StatusGood {
				t.Fatalf("%v: %s on the active/optimized port: status %#x sense % x", c.state, p.name, r.Status, r.Sense)
			}
			if p.undo != nil {
				f.exec(nexusA, p.undo.cdb, p.undo.out, 0)
			}
			// Port 9 is in no group: unavailable, whatever the states.
			r = f.exec(nexusX, p.cdb, p.out, p.in)
			if inaccessible[p.name] {
				f.good(r)
			} else {
				checkSense(t, r, SenseNotReady, ASCLUNotAccessibleUnavailable)
			}
		}
	}
	// A refused write wrote nothing.
	if _, err := f.lu.SetTargetPortGroupState(20, ALUAStandby); err != nil {
		t.Fatal(err)
	}
	f.clearUA(nexusC)
	f.sense(f.exec(nexusC, testkit.Write10(100, 1), pattern(512, 9), 0), SenseNotReady, ASCLUNotAccessibleStandby)
	f.mustEqual(f.readBack(100, 1), make([]byte, 512))
}

// TestALUAStateChangeUnitAttention: a state change raises ASYMMETRIC ACCESS
// STATE CHANGED once on every I_T nexus of the logical unit (the ports of
// the changed group and the others alike: with implicit ALUA no nexus
// caused it), before the new state refuses anything; nexuses of other
// logical units and a no-op change raise nothing.
func TestALUAStateChangeUnitAttention(t *testing.T) {
	f := newALUAFixture(t)
	vol, err := memvolNew(64*testBS, testBS)
	if err != nil {
		t.Fatal(err)
	}
	other, err := f.tgt.AddLU(1, LUConfig{Volume: vol, ALUA: testALUAConfig()})
	if err != nil {
		t.Fatal(err)
	}
	// AddLU raised REPORTED LUNS DATA HAS CHANGED on LUN 0.
	for _, n := range []*Nexus{nexusA, nexusB, nexusC, nexusD, nexusX} {
		f.clearUA(n)
	}
	exec1 := func(n *Nexus, cdb []byte) Response {
		return f.tgt.Execute(context.Background(), &Command{Nexus: n, LUN: 1, CDB: cdb, DataInLen: 255})
	}
	for range 8 { // LUN 1: POWER ON on nexusA
		if r := exec1(nexusA, []byte{0x03, 0, 0, 0, 18, 0}); r.Data[2]&0x0f == 0 {
			break
		}
	}

	changed, err := f.lu.SetTargetPortGroupStates(map[uint16]ALUAState{10: ALUAStandby, 20: ALUAActiveOptimized})
	if err != nil || !changed {
		t.Fatalf("changed %v err %v", changed, err)
	}
	tur := []byte{0, 0, 0, 0, 0, 0}
	// Port 1's group went to standby: first the UA, then the refusal.
	f.sense(f.exec(nexusA, tur, nil, 0), SenseUnitAttention, ASCAsymmetricAccessChanged)
	f.sense(f.exec(nexusA, tur, nil, 0), SenseNotReady, ASCLUNotAccessibleStandby)
	// Port 2's group went active: the UA, then service.
	f.sense(f.exec(nexusC, tur, nil, 0), SenseUnitAttention, ASCAsymmetricAccessChanged)
	f.good(f.exec(nexusC, tur, nil, 0))
	// REQUEST SENSE reports (and clears) it too.
	r := f.exec(nexusD, []byte{0x03, 0, 0, 0, 18, 0}, nil, 18)
	f.good(r)
	if r.Data[2] != byte(SenseUnitAttention) || r.Data[12] != 0x2a || r.Data[13] != 0x06 {
		t.Fatalf("REQUEST SENSE % x", r.Data)
	}
	f.good(f.exec(nexusD, tur, nil, 0))
	// INQUIRY neither reports nor clears it.
	f.good(f.exec(nexusB, []byte{0x12, 0, 0, 0, 96, 0}, nil, 96))
	f.sense(f.exec(nexusB, tur, nil, 0), SenseUnitAttention, ASCAsymmetricAccessChanged)
	// The port in no group gets it as well (the unavailable refusal after).
	f.sense(f.exec(nexusX, tur, nil, 0), SenseUnitAttention, ASCAsymmetricAccessChanged)
	f.sense(f.exec(nexusX, tur, nil, 0), SenseNotReady, ASCLUNotAccessibleUnavailable)
	// Once only.
	for _, n := range []*Nexus{nexusA, nexusB, nexusC, nexusD, nexusX} {
		r := f.exec(n, []byte{0x03, 0, 0, 0, 18, 0}, nil, 18)
		f.good(r)
		if r.Data[2] != 0 || r.Data[12] != 0 {
			t.Fatalf("port %d: sense after the UA was reported: % x", n.RelativePortID, r.Data)
		}
	}
	// The other logical unit saw nothing.
	if r := exec1(nexusA, tur); r.Status != StatusGood {
		t.Fatalf("LUN 1: status %#x sense % x", r.Status, r.Sense)
	}
	if other.ALUA().Groups[0].State != ALUAActiveOptimized {
		t.Fatal("LUN 1's states moved")
	}

	// Setting the states they already have changes nothing, raises nothing.
	changed, err = f.lu.SetTargetPortGroupStates(map[uint16]ALUAState{10: ALUAStandby, 20: ALUAActiveOptimized})
	if err != nil || changed {
		t.Fatalf("no-op change: changed %v err %v", changed, err)
	}
	f.good(f.exec(nexusC, tur, nil, 0))
	f.sense(f.exec(nexusA, tur, nil, 0), SenseNotReady, ASCLUNotAccessibleStandby)

	// STATUS CODE: 02h (implicit) on the groups whose state changed.
	_, groups := decodeRTPG(t, f.exec(nexusC, rtpgCDB(0, 256), nil, 256).Data, false)
	if groups[0].status != 2 || groups[1].status != 2 || groups[0].state != ALUAStandby || groups[1].state != ALUAActiveOptimized {
		t.Fatalf("groups after failover %+v", groups)
	}
	if _, err := f.lu.SetTargetPortGroupState(20, ALUAActiveNonOptimized); err != nil {
		t.Fatal(err)
	}
	f.sense(f.exec(nexusC, rtpgCDB(0, 256), nil, 256), SenseUnitAttention, ASCAsymmetricAccessChanged)
	_, groups = decodeRTPG(t, f.exec(nexusC, rtpgCDB(0, 256), nil, 256).Data, false)
	if groups[0].status != 2 || groups[1].status != 2 || groups[1].state != ALUAActiveNonOptimized {
		t.Fatalf("groups %+v", groups)
	}
	_, groups = decodeRTPG(t, exec1(nexusA, rtpgCDB(0, 256)).Data, false)
	if groups[0].status != 0 || groups[1].status != 0 {
		t.Fatalf("LUN 1 status codes %+v", groups)
	}
}

func TestALUAConfigErrors(t *testing.T) {
	f := newALUAFixture(t)
	bad := map[string]*ALUAConfig{
		"no groups":      {},
		"duplicate id":   {Groups: []TargetPortGroup{{ID: 1, RelativePorts: []uint16{1}}, {ID: 1, RelativePorts: []uint16{2}}}},
		"duplicate port": {Groups: []TargetPortGroup{{ID: 1, RelativePorts: []uint16{1}}, {ID: 2, RelativePorts: []uint16{1}}}},
		"port twice":     {Groups: []TargetPortGroup{{ID: 1, RelativePorts: []uint16{3, 3}}}},
		"port 0":         {Groups: []TargetPortGroup{{ID: 1, RelativePorts: []uint16{0}}}},
		"no ports":       {Groups: []TargetPortGroup{{ID: 1}}},
		"256 ports":      {Groups: []TargetPortGroup{{ID: 1, RelativePorts: make([]uint16, 256)}}},
		"offline":        {Groups: []TargetPortGroup{{ID: 1, State: 0xe, RelativePorts: []uint16{1}}}},
		"lba dependent":  {Groups: []TargetPortGroup{{ID: 1, State: 0x4, RelativePorts: []uint16{1}}}},
	}
	for i := range bad["256 ports"].Groups[0].RelativePorts {
		bad["256 ports"].Groups[0].RelativePorts[i] = uint16(i + 1)
	}
	before := f.lu.ALUA()
	for name, cfg := range bad {
		if err := f.lu.SetALUA(cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Fatalf("%s: SetALUA: %v", name, err)
		}
		vol, _ := memvolNew(64*testBS, testBS)
		if _, err := f.tgt.AddLU(7, LUConfig{Volume: vol, ALUA: cfg}); !errors.Is(err, ErrInvalidConfig) {
			t.Fatalf("%s: AddLU: %v", name, err)
		}
	}
	if fmt.Sprint(f.lu.ALUA()) != fmt.Sprint(before) {
		t.Fatal("a refused configuration changed the logical unit")
	}
	if _, err := f.lu.SetTargetPortGroupState(99, ALUAStandby); !errors.Is(err, ErrNoSuchPortGroup) {
		t.Fatalf("unknown group: %v", err)
	}
	if _, err := f.lu.SetTargetPortGroupStates(map[uint16]ALUAState{10: ALUAStandby, 99: ALUAStandby}); !errors.Is(err, ErrNoSuchPortGroup) {
		t.Fatalf("unknown group among known: %v", err)
	}
	if _, err := f.lu.SetTargetPortGroupState(10, 0xe); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("offline: %v", err)
	}
	if fmt.Sprint(f.lu.ALUA()) != fmt.Sprint(before) {
		t.Fatal("a refused state change changed the logical unit")
	}
	for _, n := range []*Nexus{nexusA, nexusC} {
		f.good(f.exec(n, []byte{0x03, 0, 0, 0, 18, 0}, nil, 18))
		if r := f.exec(n, []byte{0x03, 0, 0, 0, 18, 0}, nil, 18); r.Data[2] != 0 {
			t.Fatalf("a refused change raised a unit attention: % x", r.Data)
		}
	}
	plain := newFixture(t, nil)
	if _, err := plain.lu.SetTargetPortGroupState(10, ALUAStandby); !errors.Is(err, ErrNoALUA) {
		t.Fatalf("no ALUA: %v", err)
	}
	if plain.lu.ALUA() != nil {
		t.Fatal("ALUA() without ALUA")
	}
	if st, ok := plain.lu.TargetPortState(1); ok || st != ALUAActiveOptimized {
		t.Fatalf("TargetPortState without ALUA: %v %v", st, ok)
	}
	if st, ok := f.lu.TargetPortState(5); !ok || st != ALUAStandby {
		t.Fatalf("TargetPortState(5): %v %v", st, ok)
	}
	if st, _ := f.lu.TargetPortState(9); st != ALUAUnavailable {
		t.Fatalf("TargetPortState(9): %v", st)
	}
	// The configuration handed out is a copy.
	c := f.lu.ALUA()
	c.Groups[0].RelativePorts[0] = 77
	c.Groups[0].State = ALUATransitioning
	if fmt.Sprint(f.lu.ALUA()) != fmt.Sprint(before) {
		t.Fatal("ALUA() shares memory with the logical unit")
	}
	if s := ALUAState(0x7).String(); s != "ALUAState(0x7)" {
		t.Fatal(s)
	}
}

// TestALUAOnAndOff: enabling ALUA on a running logical unit raises INQUIRY
// DATA HAS CHANGED and ASYMMETRIC ACCESS STATE CHANGED; disabling it raises
// INQUIRY DATA HAS CHANGED, and the logical unit answers byte for byte as
// one that never had ALUA.
func TestALUAOnAndOff(t *testing.T) {
	f := newFixture(t, nil)
	f.clearUA(nexusC)
	if err := f.lu.SetALUA(testALUAConfig()); err != nil {
		t.Fatal(err)
	}
	tur := []byte{0, 0, 0, 0, 0, 0}
	f.sense(f.exec(nexusA, tur, nil, 0), SenseUnitAttention, ASCInquiryDataChanged)
	f.sense(f.exec(nexusA, tur, nil, 0), SenseUnitAttention, ASCAsymmetricAccessChanged)
	f.good(f.exec(nexusA, tur, nil, 0))
	f.good(f.exec(nexusA, rtpgCDB(0, 256), nil, 256))

	// Replacing the groups (a node joins) raises only the state change.
	cfg := testALUAConfig()
	cfg.Groups = append(cfg.Groups, TargetPortGroup{ID: 30, State: ALUAStandby, RelativePorts: []uint16{3}})
	if err := f.lu.SetALUA(cfg); err != nil {
		t.Fatal(err)
	}
	f.sense(f.exec(nexusA, tur, nil, 0), SenseUnitAttention, ASCAsymmetricAccessChanged)
	f.good(f.exec(nexusA, tur, nil, 0))
	// The same groups again: nothing.
	if err := f.lu.SetALUA(cfg); err != nil {
		t.Fatal(err)
	}
	f.good(f.exec(nexusA, tur, nil, 0))

	if err := f.lu.SetALUA(nil); err != nil {
		t.Fatal(err)
	}
	f.sense(f.exec(nexusA, tur, nil, 0), SenseUnitAttention, ASCInquiryDataChanged)
	f.good(f.exec(nexusA, tur, nil, 0))
	for _, n := range []*Nexus{nexusB, nexusC} {
		f.clearUA(n)
	}
	if err := f.lu.SetALUA(nil); err != nil { // already off: nothing
		t.Fatal(err)
	}
	f.good(f.exec(nexusA, tur, nil, 0))
	// Same transcript as the golden one of a logical unit without ALUA
	// (thick half).
	got := noALUATranscript(f, false)
	want, err := readGolden("noalua.golden")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(want, got) {
		t.Fatalf("after ALUA was turned off:\n%s", firstLineDiff(got, want[:min(len(want), len(got))]))
	}
}

// TestALUARSOCListsRTPG: REPORT SUPPORTED OPERATION CODES lists REPORT
// TARGET PORT GROUPS only with ALUA, and nothing else differs.
func TestALUARSOCListsRTPG(t *testing.T) {
	withALUA, plain := newALUAFixture(t), newFixture(t, nil)
	for _, rctd := range []bool{false, true} {
		a := withALUA.exec(nexusA, rsoc(0, rctd, 0, 0), nil, 65536)
		p := plain.exec(nexusA, rsoc(0, rctd, 0, 0), nil, 65536)
		withALUA.good(a)
		plain.good(p)
		size := 8
		if rctd {
			size = 20
		}
		var extra [][]byte
		rest := a.Data[:4:4]
		for d := a.Data[4:]; len(d) >= size; d = d[size:] {
			if d[0] == 0xa3 && binary.BigEndian.Uint16(d[2:4]) == 0x0a {
				extra = append(extra, d[:size])
				continue
			}
			rest = append(rest, d[:size]...)
		}
		want := "a3" + "00" + "000a" + "00" + "01" + "000c" // SERVACTV, CDB length 12
		if rctd {
			want = "a3" + "00" + "000a" + "00" + "03" + "000c" + "000a" + "0000" + "00000000" + "00000000" // CTDP, timeouts 0
		}
		if len(extra) != 1 || hex.EncodeToString(extra[0]) != want {
			t.Fatalf("RCTD=%v: RTPG descriptors %x, want one %s", rctd, extra, want)
		}
		if binary.BigEndian.Uint32(a.Data[0:4]) != binary.BigEndian.Uint32(p.Data[0:4])+uint32(size) {
			t.Fatal("COMMAND DATA LENGTH")
		}
		if !bytes.Equal(rest[4:], p.Data[4:]) {
			t.Fatalf("RCTD=%v: the other descriptors differ", rctd)
		}
	}
	one := withALUA.exec(nexusA, rsoc(2, false, 0xa3, 0x0a), nil, 4096)
	withALUA.good(one)
	if got := hex.EncodeToString(one.Data); got != "0003000c"+"a3ff00000000ffffffff0007" {
		t.Fatalf("one-command RTPG: %s", got)
	}
}

// TestALUAStatesChangeAtomically: while a failover flips two groups back
// and forth, every REPORT TARGET PORT GROUPS sees exactly one active
// group, and every command on a port is served or refused as a whole.
func TestALUAStatesChangeAtomically(t *testing.T) {
	f := newALUAFixture(t)
	var stop atomic.Bool
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	for _, n := range []*Nexus{nexusA, nexusC} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				r := f.exec(n, rtpgCDB(byte(i&1), 256), nil, 256)
				if r.Status == StatusCheckCondition && r.Sense[2]&0x0f == byte(SenseUnitAttention) {
					continue
				}
				if r.Status != StatusGood {
					errc <- fmt.Errorf("RTPG status %#x sense % x", r.Status, r.Sense)
					return
				}
				off := 4 + 4*(i&1)
				active := 0
				for d := r.Data[off:]; len(d) >= 8; d = d[8+4*int(d[7]):] {
					if d[0]&0x0f == byte(ALUAActiveOptimized) {
						active++
					}
				}
				if active != 1 {
					errc <- fmt.Errorf("%d active groups: % x", active, r.Data)
					return
				}
				w := f.exec(n, testkit.Write10(uint32(8+i%8), 1), pattern(512, byte(i)), 0)
				if w.Status != StatusGood && !(w.Status == StatusCheckCondition &&
					(w.Sense[2]&0x0f == byte(SenseUnitAttention) || w.Sense[12] == 0x04 && w.Sense[13] == 0x0b)) {
					errc <- fmt.Errorf("write status %#x sense % x", w.Status, w.Sense)
					return
				}
			}
		}()
	}
	flips := 2000
	if testkit.RaceEnabled {
		flips = 300
	}
	for i := range flips {
		a, b := ALUAActiveOptimized, ALUAStandby
		if i&1 == 1 {
			a, b = b, a
		}
		if _, err := f.lu.SetTargetPortGroupStates(map[uint16]ALUAState{10: a, 20: b}); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
}

// FuzzExecuteALUA runs arbitrary CDBs against a logical unit with ALUA,
// from ports in each group and in none, with the groups' states set from
// the input: no command crashes the device server, none gets more data-in
// than allowed, and a refused command is refused with the sense of the
// port's state.
func FuzzExecuteALUA(f *testing.F) {
	tgt := fuzzTarget(f)
	lu := tgt.LU(0)
	if err := lu.SetALUA(testALUAConfig()); err != nil {
		f.Fatal(err)
	}
	for i, s := range [][]byte{
		rtpgCDB(0, 256), rtpgCDB(1, 256), rtpgCDB(1, 5), rtpgCDB(3, 256),
		{0x12, 1, 0x83, 1, 0, 0}, {0x12, 0, 0, 0, 96, 0},
		{0, 0, 0, 0, 0, 0}, testkit.Read10(0, 1), testkit.Write10(0, 1),
		{0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0},
		{0xa4, 0x0a, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0},
		rsoc(2, true, 0xa3, 0x0a),
	} {
		f.Add(s, make([]byte, 512), uint16(4096), byte(i), byte(0x20))
	}
	nexuses := []*Nexus{
		{InitiatorPort: "iqn.fuzz:i,i,0x1", TargetPort: "iqn.fuzz:t,t,0x1", RelativePortID: 1},
		{InitiatorPort: "iqn.fuzz:j,i,0x2", TargetPort: "iqn.fuzz:t,t,0x2", RelativePortID: 2},
		{InitiatorPort: "iqn.fuzz:k,i,0x3", TargetPort: "iqn.fuzz:t,t,0x9", RelativePortID: 9},
		nil,
	}
	states := []ALUAState{ALUAActiveOptimized, ALUAActiveNonOptimized, ALUAStandby, ALUAUnavailable, ALUATransitioning}
	f.Fuzz(func(t *testing.T, cdb, out []byte, inLen uint16, who, st byte) {
		if _, err := lu.SetTargetPortGroupStates(map[uint16]ALUAState{10: states[int(st&0x0f)%len(states)], 20: states[int(st>>4)%len(states)]}); err != nil {
			t.Fatal(err)
		}
		n := nexuses[int(who)%len(nexuses)]
		r := tgt.Execute(context.Background(), &Command{Nexus: n, CDB: cdb, DataOut: out, DataInLen: uint32(inLen)})
		checkNoInternalFailure(t, r)
		if len(r.Data) > int(inLen) {
			t.Fatalf("%d bytes of data-in for DataInLen %d", len(r.Data), inLen)
		}
		if r.Status == StatusCheckCondition && r.Sense[2]&0x0f == byte(SenseNotReady) && r.Sense[12] == 0x04 {
			var rel uint16
			if n != nil {
				rel = n.RelativePortID
			}
			want := map[ALUAState]byte{ALUAStandby: 0x0b, ALUAUnavailable: 0x0c, ALUATransitioning: 0x0a}
			ps, _ := lu.TargetPortState(rel)
			if want[ps] != r.Sense[13] {
				t.Fatalf("port %d in state %v refused with 04h/%02xh", rel, ps, r.Sense[13])
			}
		}
	})
}

// TestALUACheckedWhenTheCommandStarts: a command held back in the task set
// by an ORDERED task is served or refused by the state of its port when it
// starts, not when it arrived.
func TestALUACheckedWhenTheCommandStarts(t *testing.T) {
	var gv *gateVol
	f := newFixture(t, func(c *LUConfig) {
		gv = &gateVol{Volume: c.Volume, started: make(chan struct{}, 4), release: make(chan struct{})}
		c.Volume = gv
		c.ALUA = testALUAConfig()
		c.ALUA.Groups[0].State = ALUAActiveNonOptimized // group 20
	})
	f.clearUA(nexusC)
	exec := func(n *Nexus, attr TaskAttr, cdb []byte, inLen uint32) <-chan Response {
		ch := make(chan Response, 1)
		go func() {
			ch <- f.tgt.Execute(context.Background(), &Command{Nexus: n, CDB: cdb, Attr: attr, DataInLen: inLen})
		}()
		return ch
	}
	first := exec(nexusA, TaskSimple, testkit.Read10(0, 1), testBS)
	<-gv.started // inside the volume
	ordered := exec(nexusA, TaskOrdered, []byte{0, 0, 0, 0, 0, 0}, 0)
	time.Sleep(20 * time.Millisecond) // the ORDERED task waits for the READ
	queued := exec(nexusC, TaskSimple, testkit.Read10(0, 1), testBS)
	time.Sleep(20 * time.Millisecond) // the READ on port 2 waits behind it
	if _, err := f.lu.SetTargetPortGroupState(20, ALUAStandby); err != nil {
		t.Fatal(err)
	}
	close(gv.release)
	for _, ch := range []<-chan Response{first, ordered} {
		f.good(<-ch)
	}
	f.sense(<-queued, SenseNotReady, ASCLUNotAccessibleStandby)
}
