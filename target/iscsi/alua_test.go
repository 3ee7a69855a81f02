package iscsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"sync"
	"testing"

	"github.com/cachelun/cachelun/internal/memvol"
	"github.com/cachelun/cachelun/internal/testkit"
	"github.com/cachelun/cachelun/target/scsi"
)

// aluaNode is one gateway of TestALUATwoNodes: its own server, device
// server and logical unit, over the volume both nodes share.
type aluaNode struct {
	lu   *scsi.LU
	addr string
}

func startALUANode(t *testing.T, vol scsi.Volume, tpgt uint16, cfg *scsi.ALUAConfig) *aluaNode {
	t.Helper()
	dev := scsi.NewTarget(scsi.TargetConfig{Name: testIQN})
	id := scsi.LUNIdentity(testIQN, "shared")
	lu, err := dev.AddLU(0, scsi.LUConfig{Volume: vol, WriteCache: true, SerialNumber: id.Serial, DeviceID: id.DeviceID, ALUA: cfg})
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(Config{})
	if err := srv.AddTarget(TargetConfig{Name: testIQN, SCSI: dev, TPGT: tpgt}); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		srv.Serve(ctx, l)
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return &aluaNode{lu: lu, addr: l.Addr().String()}
}

// do runs one command and returns its outcome.
func (ti *testInitiator) do(cdb []byte, read bool, edtl uint32, data []byte) *result {
	ti.t.Helper()
	itt := ti.scsiCmd(0, cdb, read, edtl, data, true)
	res := map[uint32]*result{itt: {}}
	if err := ti.collect(res, map[uint32][]byte{itt: data}); err != nil {
		ti.t.Fatal(err)
	}
	return res[itt]
}

func senseASC(r *result) (key byte, asc uint16) {
	if r.status != 2 || len(r.sense) < 14 {
		return 0, 0
	}
	return r.sense[2] & 0x0f, binary.BigEndian.Uint16(r.sense[12:14])
}

// vpd83Port decodes the relative target port (type 4) and target port
// group (type 5) designators of VPD 83h.
func vpd83Port(t *testing.T, d []byte) (rel, group int) {
	t.Helper()
	rel, group = -1, -1
	if len(d) < 4 || d[1] != 0x83 {
		t.Fatalf("VPD 83h % x", d)
	}
	for p := d[4:]; len(p) >= 4 && len(p) >= 4+int(p[3]); p = p[4+int(p[3]):] {
		v := int(binary.BigEndian.Uint16(p[6:8]))
		switch p[1] & 0x0f {
		case 4:
			rel = v
		case 5:
			group = v
		}
	}
	return rel, group
}

// TestALUATwoNodes is the ALUA of a volume served by two gateways (two
// servers on one machine, one device server each, the backing volume
// shared): each node's target portal group tag is its relative target
// port, both nodes report the same groups, the owner's port serves and the
// other's is in standby, and a failover (both nodes' states set by their
// daemons) moves the I/O with a unit attention on every path.
func TestALUATwoNodes(t *testing.T) {
	vol, err := memvol.New(16<<20, 512)
	if err != nil {
		t.Fatal(err)
	}
	cfg := func() *scsi.ALUAConfig {
		return &scsi.ALUAConfig{TransitionTime: 10, Groups: []scsi.TargetPortGroup{
			{ID: 1, State: scsi.ALUAActiveOptimized, RelativePorts: []uint16{1}},
			{ID: 2, State: scsi.ALUAStandby, RelativePorts: []uint16{2}},
		}}
	}
	a := startALUANode(t, vol, 1, cfg())
	b := startALUANode(t, vol, 2, cfg())
	ia, ib := dialInitiator(t, a.addr), dialInitiator(t, b.addr)
	ia.login(testIQN)
	ib.login(testIQN)

	// Each path reports its own port and group, and the same identity.
	vpd := []byte{0x12, 1, 0x83, 1, 0, 0}
	va, vb := ia.do(vpd, true, 256, nil), ib.do(vpd, true, 256, nil)
	if rel, g := vpd83Port(t, va.data); rel != 1 || g != 1 {
		t.Fatalf("node a: relative port %d group %d", rel, g)
	}
	if rel, g := vpd83Port(t, vb.data); rel != 2 || g != 2 {
		t.Fatalf("node b: relative port %d group %d", rel, g)
	}
	if !bytes.Equal(va.data[4:24], vb.data[4:24]) {
		t.Fatalf("NAA designators differ: % x / % x", va.data[4:24], vb.data[4:24])
	}
	inq := []byte{0x12, 0, 0, 0, 96, 0}
	if r := ia.do(inq, true, 96, nil); r.data[5]&0x30 != 0x10 {
		t.Fatalf("TPGS: byte 5 = %#x", r.data[5])
	}
	rtpg := []byte{0xa3, 0x2a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}
	ra, rb := ia.do(rtpg, true, 256, nil), ib.do(rtpg, true, 256, nil)
	if ra.status != 0 || !bytes.Equal(ra.data, rb.data) {
		t.Fatalf("REPORT TARGET PORT GROUPS: status %#x\n a % x\n b % x", ra.status, ra.data, rb.data)
	}
	if ra.data[5] != 10 || ra.data[8]&0x0f != 0 || ra.data[20]&0x0f != 2 {
		t.Fatalf("REPORT TARGET PORT GROUPS % x", ra.data)
	}

	// The owner serves; the standby path refuses I/O but reads capacity.
	data := bytes.Repeat([]byte{0x5a}, 512)
	if r := ia.do(testkit.Write10(3, 1), false, 512, data); r.status != 0 {
		t.Fatalf("write through the owner: status %#x", r.status)
	}
	if k, asc := senseASC(ib.do(testkit.Read10(3, 1), true, 512, nil)); k != 2 || asc != 0x040b {
		t.Fatalf("read through standby: sense %x/%04x", k, asc)
	}
	if r := ib.do([]byte{0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}, true, 8, nil); r.status != 0 {
		t.Fatalf("READ CAPACITY through standby: status %#x", r.status)
	}

	// Failover: each daemon moves both groups at once.
	for _, n := range []*aluaNode{a, b} {
		if _, err := n.lu.SetTargetPortGroupStates(map[uint16]scsi.ALUAState{1: scsi.ALUAStandby, 2: scsi.ALUAActiveOptimized}); err != nil {
			t.Fatal(err)
		}
	}
	for _, ti := range []*testInitiator{ia, ib} {
		if k, asc := senseASC(ti.do(testkit.Read10(3, 1), true, 512, nil)); k != 6 || asc != 0x2a06 {
			t.Fatalf("first command after the failover: sense %x/%04x", k, asc)
		}
	}
	if r := ib.do(testkit.Read10(3, 1), true, 512, nil); r.status != 0 || !bytes.Equal(r.data, data) {
		t.Fatalf("read through the new owner: status %#x", r.status)
	}
	if k, asc := senseASC(ia.do(testkit.Write10(3, 1), false, 512, data)); k != 2 || asc != 0x040b {
		t.Fatalf("write through the old owner: sense %x/%04x", k, asc)
	}
}
