package iscsi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/memvol"
	"github.com/cachelun/cachelun/internal/testkit"
	"github.com/cachelun/cachelun/target/scsi"
)

func fill(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)*31 + seed
	}
	return b
}

// writeRead writes payload at lba with the given data path and reads it back.
func writeRead(t *testing.T, ti *testInitiator, lba uint32, payload []byte, immediate int) {
	t.Helper()
	blocks := uint16(len(payload) / 512)
	w := ti.scsiCmd(0, testkit.Write10(lba, blocks), false, uint32(len(payload)), payload[:immediate], true)
	res := map[uint32]*result{w: {}}
	if err := ti.collect(res, map[uint32][]byte{w: payload}); err != nil {
		t.Fatal(err)
	}
	if res[w].status != 0 || res[w].flags&0x06 != 0 {
		t.Fatalf("write: status %#x flags %#x sense %x", res[w].status, res[w].flags, res[w].sense)
	}
	r := ti.scsiCmd(0, testkit.Read10(lba, blocks), true, uint32(len(payload)), nil, true)
	res = map[uint32]*result{r: {}}
	if err := ti.collect(res, nil); err != nil {
		t.Fatal(err)
	}
	if res[r].status != 0 || !bytes.Equal(res[r].data, payload) {
		t.Fatalf("read back: status %#x, %d bytes, equal %v", res[r].status, len(res[r].data), bytes.Equal(res[r].data, payload))
	}
}

func TestDigestsAndSolicitedData(t *testing.T) {
	env := startServer(t, Config{}, nil)
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn, "HeaderDigest", "CRC32C,None", "DataDigest", "CRC32C", "MaxRecvDataSegmentLength", "4096",
		"InitialR2T", "Yes", "ImmediateData", "No", "MaxBurstLength", "16384", "MaxOutstandingR2T", "2")
	if ti.params["HeaderDigest"] != "CRC32C" || ti.params["DataDigest"] != "CRC32C" {
		t.Fatalf("digests not negotiated: %v", ti.params)
	}
	if ti.params["InitialR2T"] != "Yes" || ti.params["ImmediateData"] != "No" || ti.params["MaxOutstandingR2T"] != "2" {
		t.Fatalf("negotiation: %v", ti.params)
	}
	writeRead(t, ti, 100, fill(128<<10, 3), 0)
}

func TestImmediateAndUnsolicitedData(t *testing.T) {
	env := startServer(t, Config{}, nil)
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn, "InitialR2T", "No", "ImmediateData", "Yes", "FirstBurstLength", "65536")
	writeRead(t, ti, 7, fill(8192, 9), 8192) // all immediate
	writeRead(t, ti, 40, fill(256<<10, 1), 4096)
}

// TestDataInHonoursMRDSL checks Data-In segmentation against the
// initiator's MaxRecvDataSegmentLength and phase collapse.
func TestDataInHonoursMRDSL(t *testing.T) {
	env := startServer(t, Config{}, nil)
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn, "MaxRecvDataSegmentLength", "4096")
	itt := ti.scsiCmd(0, testkit.Read10(0, 64), true, 32768, nil, true)
	var pdus, statusPDUs int
	for {
		h, data, err := ti.readPDU()
		if err != nil {
			t.Fatal(err)
		}
		if h.opcode() == opSCSIResp {
			t.Fatal("separate SCSI Response although status could be collapsed into Data-In")
		}
		if h.opcode() != opDataIn || h.itt() != itt {
			t.Fatalf("unexpected opcode %#x", h.opcode())
		}
		if len(data) > 4096 {
			t.Fatalf("Data-In segment of %d bytes > MRDSL 4096", len(data))
		}
		if h.u32(offDataSN) != uint32(pdus) || h.u32(offBufOff) != uint32(pdus*4096) {
			t.Fatalf("pdu %d: DataSN %d offset %d", pdus, h.u32(offDataSN), h.u32(offBufOff))
		}
		pdus++
		if h[1]&0x01 != 0 {
			statusPDUs++
			break
		}
	}
	if pdus != 8 || statusPDUs != 1 {
		t.Fatalf("%d Data-In PDUs, %d with status; want 8 and 1", pdus, statusPDUs)
	}
}

func TestResiduals(t *testing.T) {
	env := startServer(t, Config{}, nil)
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn)
	// READ of 2 blocks with EDTL of 1 block: overflow, 512 bytes residual.
	r := ti.scsiCmd(0, testkit.Read10(0, 2), true, 512, nil, true)
	res := map[uint32]*result{r: {}}
	if err := ti.collect(res, nil); err != nil {
		t.Fatal(err)
	}
	if res[r].flags&0x04 == 0 || res[r].residual != 512 || len(res[r].data) != 512 {
		t.Fatalf("read overflow: flags %#x residual %d data %d", res[r].flags, res[r].residual, len(res[r].data))
	}
	// READ of 1 block with EDTL of 3 blocks: underflow, 1024 residual.
	r = ti.scsiCmd(0, testkit.Read10(0, 1), true, 1536, nil, true)
	res = map[uint32]*result{r: {}}
	if err := ti.collect(res, nil); err != nil {
		t.Fatal(err)
	}
	if res[r].flags&0x02 == 0 || res[r].residual != 1024 {
		t.Fatalf("read underflow: flags %#x residual %d", res[r].flags, res[r].residual)
	}
	// WRITE of 1 block with 2 blocks of data: underflow, and the second
	// block must not be written.
	data := fill(1024, 0x5a)
	w := ti.scsiCmd(0, testkit.Write10(200, 1), false, 1024, data, true)
	res = map[uint32]*result{w: {}}
	if err := ti.collect(res, nil); err != nil {
		t.Fatal(err)
	}
	if res[w].flags&0x02 == 0 || res[w].residual != 512 {
		t.Fatalf("write underflow: flags %#x residual %d", res[w].flags, res[w].residual)
	}
	r = ti.scsiCmd(0, testkit.Read10(201, 1), true, 512, nil, true)
	res = map[uint32]*result{r: {}}
	if err := ti.collect(res, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(res[r].data, make([]byte, 512)) {
		t.Fatal("write past the commanded range reached the next block")
	}
}

// TestNonImmediateNOPOutConsumesCmdSN: a NOP-Out with I=0 takes a CmdSN;
// commands after it must still run (the bug that hangs gotgt sessions).
func TestNonImmediateNOPOutConsumesCmdSN(t *testing.T) {
	env := startServer(t, Config{}, nil)
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn)
	for i := range 3 {
		var h bhs
		h[0] = opNOPOut
		h[1] = 0x80
		itt := ti.nextITT()
		h.putU32(16, itt)
		h.putU32(offTTT, reservedTag)
		h.putU32(offCmdSN, ti.cmdSN)
		ti.cmdSN++
		ping := []byte("ping-data")
		if err := ti.writePDU(&h, ping); err != nil {
			t.Fatal(err)
		}
		r, data, err := ti.readPDU()
		if err != nil {
			t.Fatal(err)
		}
		if r.opcode() != opNOPIn || r.itt() != itt || string(data) != "ping-data" {
			t.Fatalf("NOP-In %d: opcode %#x itt %d data %q", i, r.opcode(), r.itt(), data)
		}
		if r.u32(offExpSN) != ti.cmdSN {
			t.Fatalf("ExpCmdSN %d after NOP-Out, want %d", r.u32(offExpSN), ti.cmdSN)
		}
		writeRead(t, ti, uint32(i*8), fill(4096, byte(i)), 4096)
	}
}

func TestStatSNPerConnection(t *testing.T) {
	env := startServer(t, Config{}, nil)
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn)
	var last uint32
	for i := range 5 {
		r := ti.scsiCmd(0, testkit.Read10(0, 1), true, 512, nil, true)
		res := map[uint32]*result{r: {}}
		if err := ti.collect(res, nil); err != nil {
			t.Fatal(err)
		}
		if i > 0 && res[r].statSN != last+1 {
			t.Fatalf("StatSN %d after %d", res[r].statSN, last)
		}
		last = res[r].statSN
	}
}

// TestOutOfOrderCompletion holds one command inside the device server and
// checks that later commands complete meanwhile (a slow miss never blocks
// a hit).
func TestOutOfOrderCompletion(t *testing.T) {
	env := startServer(t, Config{}, nil)
	release := make(chan struct{})
	env.vol.SetGate(func(ctx context.Context, off int64) error {
		if off == 1000*512 {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn)
	slow := ti.scsiCmd(0, testkit.Read10(1000, 1), true, 512, nil, true)
	want := map[uint32]*result{}
	for i := range 16 {
		want[ti.scsiCmd(0, testkit.Read10(uint32(i), 1), true, 512, nil, true)] = &result{}
	}
	if err := ti.collect(want, nil); err != nil {
		t.Fatal(err)
	}
	if env.vol.MaxRunning.Load() < 2 {
		t.Fatalf("max concurrent commands %d: commands are serialized", env.vol.MaxRunning.Load())
	}
	close(release)
	res := map[uint32]*result{slow: {}}
	if err := ti.collect(res, nil); err != nil {
		t.Fatal(err)
	}
	if res[slow].status != 0 {
		t.Fatalf("slow command status %#x", res[slow].status)
	}
}

func tmfRequest(ti *testInitiator, fn byte, lun uint64, ref, refCmdSN uint32, immediate bool) uint32 {
	var h bhs
	h[0] = opTaskMgmt
	if immediate {
		h[0] |= 0x40
	}
	h[1] = 0x80 | fn
	h.putU64LUN(encodeLUN(lun))
	itt := ti.nextITT()
	h.putU32(16, itt)
	h.putU32(offTTT, ref)
	h.putU32(offCmdSN, ti.cmdSN)
	if !immediate {
		ti.cmdSN++
	}
	h.putU32(offExpSN, ti.statSN)
	h.putU32(32, refCmdSN)
	if err := ti.writePDU(&h, nil); err != nil {
		ti.t.Fatal(err)
	}
	return itt
}

// TestAbortTask aborts a command held in the device server: its context
// is cancelled, the TMF answers "function complete" and the aborted
// command gets no response.
func TestAbortTask(t *testing.T) {
	env := startServer(t, Config{}, nil)
	entered := make(chan struct{}, 1)
	cancelled := make(chan struct{}, 1)
	env.vol.SetGate(func(ctx context.Context, off int64) error {
		if off != 77*512 {
			return nil
		}
		entered <- struct{}{}
		<-ctx.Done()
		cancelled <- struct{}{}
		return ctx.Err()
	})
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn)
	sn := ti.cmdSN
	victim := ti.scsiCmd(0, testkit.Read10(77, 1), true, 512, nil, true)
	<-entered
	tmf := tmfRequest(ti, tmfAbortTask, 0, victim, sn, true)
	h, _, err := ti.readPDU()
	if err != nil {
		t.Fatal(err)
	}
	if h.opcode() != opTaskMgmtRsp || h.itt() != tmf || h[2] != tmfRespComplete {
		t.Fatalf("got opcode %#x itt %d response %d", h.opcode(), h.itt(), h[2])
	}
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("aborted command's context not cancelled")
	}
	// Aborting it again: the task no longer exists.
	tmf = tmfRequest(ti, tmfAbortTask, 0, victim, sn, true)
	if h, _, err = ti.readPDU(); err != nil || h.itt() != tmf || h[2] != tmfRespNoTask {
		t.Fatalf("second abort: err %v response %d", err, h[2])
	}
	// The session carries on, and the aborted command never answers.
	r := ti.scsiCmd(0, testkit.Read10(1, 1), true, 512, nil, true)
	res := map[uint32]*result{r: {}}
	if err := ti.collect(res, nil); err != nil {
		t.Fatal(err)
	}
}

func TestLUNResetAbortsAndResets(t *testing.T) {
	env := startServer(t, Config{}, nil)
	var entered sync.WaitGroup
	entered.Add(4)
	env.vol.SetGate(func(ctx context.Context, off int64) error {
		entered.Done()
		<-ctx.Done()
		return ctx.Err()
	})
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn)
	for i := range 4 {
		ti.scsiCmd(0, testkit.Read10(uint32(i), 1), true, 512, nil, true)
	}
	entered.Wait()
	for _, fn := range []byte{tmfAbortTaskSet, tmfLUNReset, tmfTargetWarm} {
		tmf := tmfRequest(ti, fn, 0, reservedTag, 0, false)
		h, _, err := ti.readPDU()
		if err != nil {
			t.Fatal(err)
		}
		if h.opcode() != opTaskMgmtRsp || h.itt() != tmf || h[2] != tmfRespComplete {
			t.Fatalf("fn %d: opcode %#x response %d", fn, h.opcode(), h[2])
		}
		if fn == tmfAbortTaskSet && env.vol.Running.Load() != 0 {
			t.Fatal("ABORT TASK SET returned while commands still run")
		}
	}
	if env.dev.Resets.Load() != 2 {
		t.Fatalf("device saw %d resets, want 2 (LU + target)", env.dev.Resets.Load())
	}
	// Unknown LUN.
	tmf := tmfRequest(ti, tmfLUNReset, 9, reservedTag, 0, true)
	if h, _, err := ti.readPDU(); err != nil || h.itt() != tmf || h[2] != tmfRespNoLUN {
		t.Fatalf("reset of missing LUN: err %v response %d", err, h[2])
	}
	env.vol.SetGate(nil)
	// The resets raised BUS DEVICE RESET FUNCTION OCCURRED on this nexus
	// too (SAM-5): the next command reports it, then the LU is usable.
	res := map[uint32]*result{ti.scsiCmd(0, make([]byte, 6), false, 0, nil, true): {}}
	if err := ti.collect(res, nil); err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.status != 0x02 || len(r.sense) < 14 || r.sense[2]&0x0f != 0x06 || r.sense[12] != 0x29 {
			t.Fatalf("first command after LU reset: status %#x sense % x, want UNIT ATTENTION 29h", r.status, r.sense)
		}
	}
	writeRead(t, ti, 3, fill(512, 1), 512)
}

// TestCmdSNWindow: commands outside [ExpCmdSN, MaxCmdSN] are ignored and
// the session continues.
func TestCmdSNWindow(t *testing.T) {
	env := startServer(t, Config{QueueDepth: 8}, nil)
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn)
	r := ti.scsiCmd(0, testkit.Read10(0, 1), true, 512, nil, true)
	res := map[uint32]*result{r: {}}
	if err := ti.collect(res, nil); err != nil {
		t.Fatal(err)
	}
	saved := ti.cmdSN
	for _, sn := range []uint32{saved + 8, saved - 1, saved + 1000} {
		ti.cmdSN = sn
		ti.scsiCmd(0, testkit.Read10(0, 1), true, 512, nil, true)
	}
	ti.cmdSN = saved
	r = ti.scsiCmd(0, testkit.Read10(2, 1), true, 512, nil, true)
	h, _, err := ti.readPDU()
	if err != nil {
		t.Fatal(err)
	}
	if h.itt() != r {
		t.Fatalf("answer for itt %d, want only the in-window command %d", h.itt(), r)
	}
	if exp, maxSN := h.u32(offExpSN), h.u32(offMaxCmdSN); exp != saved+1 || maxSN != exp+7 {
		t.Fatalf("ExpCmdSN %d MaxCmdSN %d, want %d and %d", exp, maxSN, saved+1, saved+8)
	}
}

// TestCmdSNGapHoldsLaterCommands: a command with CmdSN beyond a gap waits
// until the gap is filled.
func TestCmdSNGapHoldsLaterCommands(t *testing.T) {
	env := startServer(t, Config{}, nil)
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn)
	base := ti.cmdSN
	ti.cmdSN = base + 1
	later := ti.scsiCmd(0, testkit.Read10(5, 1), true, 512, nil, true)
	ti.nc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, _, err := ti.readPDU(); err == nil {
		t.Fatal("command after a CmdSN gap ran before the gap was filled")
	}
	ti.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	ti.cmdSN = base
	first := ti.scsiCmd(0, testkit.Read10(6, 1), true, 512, nil, true)
	ti.cmdSN = base + 2
	res := map[uint32]*result{later: {}, first: {}}
	if err := ti.collect(res, nil); err != nil {
		t.Fatal(err)
	}
}

func TestSessionReinstatement(t *testing.T) {
	env := startServer(t, Config{}, nil)
	old := dialInitiator(t, env.addr)
	old.login(env.iqn)
	held := make(chan struct{})
	env.vol.SetGate(func(ctx context.Context, off int64) error {
		close(held)
		<-ctx.Done()
		return ctx.Err()
	})
	old.scsiCmd(0, testkit.Read10(0, 1), true, 512, nil, true)
	<-held
	env.vol.SetGate(nil)
	nu := dialInitiator(t, env.addr)
	nu.login(env.iqn) // same initiator name and ISID
	if env.dev.Lost.Load() != 1 {
		t.Fatalf("NexusLost called %d times, want 1 (old session closed)", env.dev.Lost.Load())
	}
	if env.vol.Running.Load() != 0 {
		t.Fatal("old session's task still running after reinstatement")
	}
	old.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := old.readPDU(); err == nil {
		t.Fatal("old connection still delivers PDUs")
	}
	writeRead(t, nu, 0, fill(512, 4), 512)
	if s := env.srv.Sessions(); len(s) != 1 || s[0].TSIH != nu.tsih || s[0].Target != env.iqn {
		t.Fatalf("sessions: %+v", s)
	}
}

func TestLogout(t *testing.T) {
	env := startServer(t, Config{}, nil)
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn)
	var h bhs
	h[0] = 0x40 | opLogoutReq
	h[1] = 0x80
	itt := ti.nextITT()
	h.putU32(16, itt)
	h.putU32(offCmdSN, ti.cmdSN)
	if err := ti.writePDU(&h, nil); err != nil {
		t.Fatal(err)
	}
	r, _, err := ti.readPDU()
	if err != nil || r.opcode() != opLogoutResp || r.itt() != itt || r[2] != 0 {
		t.Fatalf("logout response: err %v opcode %#x response %d", err, r.opcode(), r[2])
	}
	// the nexus ended before the response (its RESERVE(6) is released
	// for whoever comes next), and only once
	if n := env.dev.Lost.Load(); n != 1 {
		t.Fatalf("NexusLost called %d times when the logout response arrived, want 1", n)
	}
	if _, _, err := ti.readPDU(); !errors.Is(err, io.EOF) {
		t.Fatalf("connection not closed after logout: %v", err)
	}
	testkit.WaitFor(t, 10*time.Second, "no session left", func() bool { return len(env.srv.Sessions()) == 0 })
	if n := env.dev.Lost.Load(); n != 1 {
		t.Fatalf("NexusLost called %d times after the session ended, want 1", n)
	}
}

func TestSendTargetsAndACL(t *testing.T) {
	env := startServer(t, Config{}, func(tc *TargetConfig) { tc.Initiators = []string{"iqn.2026-11.test:initiator"} })
	other := TargetConfig{Name: "iqn.2026-11.test.cachelun:private", SCSI: env.dev, TPGT: 2,
		Initiators: []string{"iqn.2026-11.test:someone-else"}, Portals: []string{env.addr, "[::1]:3260"}}
	if err := env.srv.AddTarget(other); err != nil {
		t.Fatal(err)
	}
	pub := TargetConfig{Name: "iqn.2026-11.test.cachelun:multi", SCSI: env.dev, TPGT: 3,
		Portals: []string{env.addr, "[::1]:3260"}}
	if err := env.srv.AddTarget(pub); err != nil {
		t.Fatal(err)
	}
	ti := dialInitiator(t, env.addr)
	ti.login("")
	var h bhs
	h[0] = 0x40 | opTextReq
	h[1] = 0x80
	itt := ti.nextITT()
	h.putU32(16, itt)
	h.putU32(offTTT, reservedTag)
	h.putU32(offCmdSN, ti.cmdSN)
	if err := ti.writePDU(&h, kvText("SendTargets", "All")); err != nil {
		t.Fatal(err)
	}
	r, data, err := ti.readPDU()
	if err != nil || r.opcode() != opTextResp || r.itt() != itt {
		t.Fatalf("text response: %v %#x", err, r.opcode())
	}
	got := strings.ReplaceAll(string(data), "\x00", "\n")
	want := "TargetName=iqn.2026-11.test.cachelun:multi\nTargetAddress=" + env.addr + ",3\nTargetAddress=[::1]:3260,3\n" +
		"TargetName=" + env.iqn + "\nTargetAddress=" + env.addr + ",1\n"
	if got != want {
		t.Fatalf("SendTargets:\n%s\nwant:\n%s", got, want)
	}
	// The hidden target refuses this initiator.
	ti2 := dialInitiator(t, env.addr)
	ti2.isid++
	if err := ti2.tryLogin(other.Name); err == nil || !strings.Contains(err.Error(), "0x0202") {
		t.Fatalf("login to target outside ACL: %v", err)
	}
	// Unknown target.
	ti3 := dialInitiator(t, env.addr)
	if err := ti3.tryLogin("iqn.2026-11.nothing:here"); err == nil || !strings.Contains(err.Error(), "0x0203") {
		t.Fatalf("login to unknown target: %v", err)
	}
}

// TestPortalGroups: a target is reachable only through its portals; IPv6
// and IPv4 listeners serve the same server.
func TestPortalGroups(t *testing.T) {
	env := startServer(t, Config{}, func(tc *TargetConfig) { tc.Portals = []string{"127.0.0.1:1"} })
	ti := dialInitiator(t, env.addr)
	if err := ti.tryLogin(env.iqn); err == nil || !strings.Contains(err.Error(), "0x0203") {
		t.Fatalf("login through a portal outside the target's group: %v", err)
	}
	l6, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { env.srv.Serve(ctx, l6); close(done) }()
	defer func() { cancel(); <-done }()
	tc := TargetConfig{Name: "iqn.2026-11.test.cachelun:v6", SCSI: env.dev, Portals: []string{l6.Addr().String()}}
	if err := env.srv.AddTarget(tc); err != nil {
		t.Fatal(err)
	}
	ti6 := dialInitiator(t, l6.Addr().String())
	ti6.login(tc.Name)
	writeRead(t, ti6, 9, fill(1024, 6), 1024)
}

func TestUnknownTSIHRejected(t *testing.T) {
	env := startServer(t, Config{}, nil)
	ti := dialInitiator(t, env.addr)
	ti.tsih = 7
	r, _, err := ti.loginPDU(0, 1, true, kvText("InitiatorName", ti.name, "TargetName", env.iqn, "AuthMethod", "None"))
	if err != nil {
		t.Fatal(err)
	}
	if st := loginStatus(r); st != loginNoSession {
		t.Fatalf("status %#04x, want session does not exist", st)
	}
	// The server is fine.
	ok := dialInitiator(t, env.addr)
	ok.login(env.iqn)
}

func TestMaxSessions(t *testing.T) {
	env := startServer(t, Config{MaxSessions: 1}, nil)
	a := dialInitiator(t, env.addr)
	a.login(env.iqn)
	b := dialInitiator(t, env.addr)
	b.isid++
	if err := b.tryLogin(env.iqn); err == nil || !strings.Contains(err.Error(), "0x0302") {
		t.Fatalf("second session beyond MaxSessions: %v", err)
	}
}

// TestContinuedLoginText splits the security keys over two Login PDUs
// with the C bit.
func TestContinuedLoginText(t *testing.T) {
	env := startServer(t, Config{}, nil)
	ti := dialInitiator(t, env.addr)
	var h bhs
	h[0] = 0x40 | opLoginReq
	h[1] = 0x40 // C, CSG=0
	h.putU32(16, ti.nextITT())
	h.putU64LUN(ti.isid << 16)
	if err := ti.writePDU(&h, []byte("InitiatorName="+ti.name+"\x00Target")); err != nil {
		t.Fatal(err)
	}
	r, data, err := ti.readPDU()
	if err != nil || r.opcode() != opLoginResp || len(data) != 0 || loginStatus(r) != 0 {
		t.Fatalf("continuation ack: %#x %q %v", r.opcode(), data, err)
	}
	rsp, m, err := ti.loginPDU(0, 1, true, []byte("Name="+env.iqn+"\x00AuthMethod=None\x00"))
	if err != nil || loginStatus(rsp) != 0 || m["AuthMethod"] != "None" || m["TargetPortalGroupTag"] != "1" {
		t.Fatalf("login: %v %#04x %v", err, loginStatus(rsp), m)
	}
	rsp, m, err = ti.loginPDU(1, 3, true, kvText("MaxConnections", "4"))
	if err != nil || loginStatus(rsp) != 0 || m["MaxConnections"] != "1" || m["MaxRecvDataSegmentLength"] == "" {
		t.Fatalf("operational: %v %v", err, m)
	}
}

// TestSendTargetsInNormalSessionAndContinuation: SendTargets= (empty) in a
// normal session names its own target; a long answer comes in pieces.
func TestSendTargetsInNormalSessionAndContinuation(t *testing.T) {
	env := startServer(t, Config{}, nil)
	for i := range 300 {
		name := fmt.Sprintf("iqn.2026-11.test.cachelun:many-%03d", i)
		if err := env.srv.AddTarget(TargetConfig{Name: name, SCSI: env.dev}); err != nil {
			t.Fatal(err)
		}
	}
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn, "MaxRecvDataSegmentLength", "512")
	text := func(ttt uint32, body []byte) (bhs, []byte) {
		var h bhs
		h[0] = 0x40 | opTextReq
		h[1] = 0x80
		h.putU32(16, ti.nextITT())
		h.putU32(offTTT, ttt)
		h.putU32(offCmdSN, ti.cmdSN)
		if err := ti.writePDU(&h, body); err != nil {
			t.Fatal(err)
		}
		r, data, err := ti.readPDU()
		if err != nil || r.opcode() != opTextResp {
			t.Fatalf("text response %#x %v", r.opcode(), err)
		}
		return r, data
	}
	r, data := text(reservedTag, kvText("SendTargets", ""))
	if r[1]&0x80 == 0 || string(data) != "TargetName="+env.iqn+"\x00TargetAddress="+env.addr+",1\x00" {
		t.Fatalf("SendTargets=: flags %#x %q", r[1], data)
	}
	var all []byte
	r, data = text(reservedTag, kvText("SendTargets", "All"))
	all = append(all, data...)
	pieces := 1
	for r[1]&0x80 == 0 {
		if len(data) > 512 || r[1]&0x40 == 0 {
			t.Fatalf("piece of %d bytes, flags %#x", len(data), r[1])
		}
		r, data = text(r.u32(offTTT), nil)
		all = append(all, data...)
		pieces++
	}
	kvs, err := parseText(all)
	if err == nil {
		t.Fatal("duplicate TargetName keys parsed as unique")
	}
	if n := bytes.Count(all, []byte("TargetName=")); n != 301 || pieces < 10 {
		t.Fatalf("%d targets in %d pieces (%d kvs)", n, pieces, len(kvs))
	}
}

// TestClearTaskSetAndColdReset: task management reaches other sessions of
// the target; a cold reset drops every connection after answering.
func TestClearTaskSetAndColdReset(t *testing.T) {
	env := startServer(t, Config{}, nil)
	a := dialInitiator(t, env.addr)
	a.login(env.iqn)
	b := dialInitiator(t, env.addr)
	b.name = "iqn.2026-11.test:other"
	b.login(env.iqn)
	entered := make(chan struct{}, 1)
	env.vol.SetGate(func(ctx context.Context, off int64) error {
		entered <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	})
	b.scsiCmd(0, testkit.Read10(0, 1), true, 512, nil, true)
	<-entered
	itt := tmfRequest(a, tmfClearTaskSet, 0, reservedTag, 0, true)
	h, _, err := a.readPDU()
	if err != nil || h.itt() != itt || h[2] != tmfRespComplete {
		t.Fatalf("CLEAR TASK SET: %v %d", err, h[2])
	}
	if env.vol.Running.Load() != 0 {
		t.Fatal("other session's task survived CLEAR TASK SET")
	}
	env.vol.SetGate(nil)
	itt = tmfRequest(a, tmfTargetCold, 0, reservedTag, 0, true)
	h, _, err = a.readPDU()
	if err != nil || h.itt() != itt || h[2] != tmfRespComplete {
		t.Fatalf("TARGET COLD RESET: %v %d", err, h[2])
	}
	drain(t, a)
	drain(t, b)
	testkit.WaitFor(t, 10*time.Second, "no session left", func() bool { return len(env.srv.Sessions()) == 0 })
}

// TestColdResetAnswersBeforeClosing: the cold reset's answer reaches the
// initiator before its connection is closed, however late the goroutine
// that performed the reset gets to queue it (a loaded machine).
func TestColdResetAnswersBeforeClosing(t *testing.T) {
	env := startServer(t, Config{}, nil)
	a := dialInitiator(t, env.addr)
	a.login(env.iqn)
	late := func() { time.Sleep(200 * time.Millisecond) }
	env.srv.beforeTMFResponse.Store(&late)
	itt := tmfRequest(a, tmfTargetCold, 0, reservedTag, 0, true)
	a.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	h, _, err := a.readPDU()
	if err != nil {
		t.Fatalf("TARGET COLD RESET: no answer before the connection ended: %v", err)
	}
	if h.opcode() != opTaskMgmtRsp || h.itt() != itt || h[2] != tmfRespComplete {
		t.Fatalf("TARGET COLD RESET: got opcode %#x itt %#x response %d", h.opcode(), h.itt(), h[2])
	}
	drain(t, a)
	testkit.WaitFor(t, 10*time.Second, "no session left", func() bool { return len(env.srv.Sessions()) == 0 })
}

// TestWindowFilledToAdvertisedMax keeps the initiator's queue filled up to
// every MaxCmdSN the target advertises: a MaxCmdSN stamped ahead of what
// the target accepts would drop a command and stall the session.
func TestWindowFilledToAdvertisedMax(t *testing.T) {
	env := startServer(t, Config{QueueDepth: 4, NOPInterval: -1}, nil)
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn)
	maxSN := ti.cmdSN + 3
	const total = 3000
	sent, done := 0, 0
	ti.nc.SetReadDeadline(time.Now().Add(30 * time.Second))
	for done < total {
		for sent < total && !serialLess(maxSN, ti.cmdSN) {
			ti.scsiCmd(0, testkit.Read10(uint32(sent%64), 1), true, 512, nil, true)
			sent++
		}
		h, _, err := ti.readPDU()
		if err != nil {
			t.Fatalf("after %d of %d answers (%d sent): %v", done, total, sent, err)
		}
		if m := h.u32(offMaxCmdSN); serialLess(maxSN, m) {
			maxSN = m
		}
		if h.opcode() == opDataIn && h[1]&1 != 0 || h.opcode() == opSCSIResp {
			done++
		}
	}
}

// TestSessionsAndLiveLUNChange: Sessions reports what the daemon shows, and
// a LUN added to the device server is visible to a live session.
func TestSessionsAndLiveLUNChange(t *testing.T) {
	env := startServer(t, Config{}, nil)
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn)
	d := dialInitiator(t, env.addr)
	d.isid = 0x2a
	d.login("")
	ss := env.srv.Sessions()
	if len(ss) != 2 {
		t.Fatalf("%d sessions", len(ss))
	}
	var normal, disc SessionInfo
	for _, s := range ss {
		if s.Discovery {
			disc = s
		} else {
			normal = s
		}
	}
	if normal.Initiator != ti.name || normal.ISID != fmt.Sprintf("%012x", ti.isid) || normal.TSIH != ti.tsih ||
		normal.Target != env.iqn || normal.Portal != env.addr || len(normal.LUNs) != 1 || normal.InFlight != 0 {
		t.Fatalf("normal session: %+v", normal)
	}
	if disc.Target != "" || disc.ISID != "00000000002a" || disc.LUNs != nil {
		t.Fatalf("discovery session: %+v", disc)
	}
	v, err := memvol.New(1<<20, 512)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.dev.AddLU(5, scsi.LUConfig{Volume: v, WriteCache: true}); err != nil {
		t.Fatal(err)
	}
	if got := env.srv.Sessions(); len(got[0].LUNs)+len(got[1].LUNs) != 2 {
		t.Fatalf("LUNs after AddLU: %+v", got)
	}
	// The new LUN answers on the live session (after its REPORTED LUNS
	// DATA HAS CHANGED unit attention, if any).
	for range 2 {
		r := ti.scsiCmd(5, testkit.Read10(0, 1), true, 512, nil, true)
		res := map[uint32]*result{r: {}}
		if err := ti.collect(res, nil); err != nil {
			t.Fatal(err)
		}
		if res[r].status == 0 {
			return
		}
	}
	t.Fatal("new LUN not readable from a live session")
}

// TestServeLeavesNoGoroutines: once Serve has returned, every goroutine the
// server started (readers, writers, workers, keepalives, TMF and logout
// helpers) is gone.
func TestServeLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	env := startServer(t, Config{NOPInterval: 20 * time.Millisecond}, nil)
	for i := range 4 {
		ti := dialInitiator(t, env.addr)
		ti.isid = uint64(100 + i)
		ti.login(env.iqn)
		writeRead(t, ti, uint32(i*16), fill(8192, byte(i)), 4096)
		tmfRequest(ti, tmfAbortTaskSet, 0, reservedTag, 0, true)
		if i%2 == 0 {
			ti.nc.Close()
		}
	}
	half := dialInitiator(t, env.addr)
	half.nc.Write(make([]byte, 20))
	env.stop()
	defer func() {
		if t.Failed() { // WaitFor gave up: show who is left
			buf := make([]byte, 1<<20)
			t.Logf("%d goroutines before, %d after:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
	}()
	testkit.WaitFor(t, 10*time.Second, "the goroutine count back to its start", func() bool { return runtime.NumGoroutine() <= before })
}

// TestReloginWithTSIH: an initiator reconnecting with its session's TSIH
// (as open-iscsi does after a connection failure) gets the session back
// under the same TSIH; the old connection is closed.
func TestReloginWithTSIH(t *testing.T) {
	env := startServer(t, Config{}, nil)
	old := dialInitiator(t, env.addr)
	old.login(env.iqn)
	nu := dialInitiator(t, env.addr)
	nu.tsih = old.tsih
	nu.login(env.iqn)
	if nu.tsih != old.tsih {
		t.Fatalf("TSIH %d after reinstating %d", nu.tsih, old.tsih)
	}
	drain(t, old)
	writeRead(t, nu, 0, fill(512, 7), 512)
	// A second connection (another CID) for the session is refused:
	// MaxConnections is 1.
	second := dialInitiator(t, env.addr)
	second.tsih = nu.tsih
	second.cid = 1
	if err := second.tryLogin(env.iqn); err == nil || !strings.Contains(err.Error(), "0x0206") {
		t.Fatalf("second connection: %v", err)
	}
	writeRead(t, nu, 1, fill(512, 9), 512)
	// Another initiator cannot take that session over.
	thief := dialInitiator(t, env.addr)
	thief.name = "iqn.2026-11.test:thief"
	thief.tsih = nu.tsih
	if err := thief.tryLogin(env.iqn); err == nil || !strings.Contains(err.Error(), "0x020a") {
		t.Fatalf("foreign TSIH: %v", err)
	}
}

// TestOrderedTaskAttribute: an ORDERED command waits for the commands
// before it, later SIMPLE commands wait for it, HEAD OF QUEUE passes all.
func TestOrderedTaskAttribute(t *testing.T) {
	env := startServer(t, Config{}, nil)
	var mu sync.Mutex
	var order []int64
	release := make(chan struct{})
	env.vol.SetGate(func(ctx context.Context, off int64) error {
		mu.Lock()
		order = append(order, off/512)
		mu.Unlock()
		if off == 0 {
			<-release
		}
		return nil
	})
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn)
	first := ti.scsiCmd(0, testkit.Read10(0, 1), true, 512, nil, true) // held in the volume
	testkit.WaitFor(t, 10*time.Second, "one command running in the volume", func() bool { return env.vol.Running.Load() == 1 })
	ti.attr = byte(scsi.TaskOrdered)
	ord := ti.scsiCmd(0, testkit.Read10(1, 1), true, 512, nil, true)
	ti.attr = byte(scsi.TaskSimple)
	after := ti.scsiCmd(0, testkit.Read10(2, 1), true, 512, nil, true)
	ti.attr = byte(scsi.TaskHead)
	head := ti.scsiCmd(0, testkit.Read10(3, 1), true, 512, nil, true)
	ti.attr = 0
	res := map[uint32]*result{head: {}}
	if err := ti.collect(res, nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	early := slices.Clone(order)
	mu.Unlock()
	if !slices.Equal(early, []int64{0, 3}) {
		t.Fatalf("before the first command finished, the volume saw %v; want [0 3]", early)
	}
	close(release)
	res = map[uint32]*result{first: {}, ord: {}, after: {}}
	if err := ti.collect(res, nil); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(order, []int64{0, 3, 1, 2}) {
		t.Fatalf("volume saw %v; want [0 3 1 2]", order)
	}
}

// TestIdleWorkersEnd runs commands concurrently, so that the connection
// starts several task workers, and checks that they end once idle and that
// the connection serves commands again afterwards.
func TestIdleWorkersEnd(t *testing.T) {
	env := startServer(t, Config{}, nil)
	env.srv.workerIdle = 50 * time.Millisecond
	release := make(chan struct{})
	var held sync.WaitGroup
	held.Add(4)
	env.vol.SetGate(func(ctx context.Context, off int64) error {
		if off >= 100*512 && off < 104*512 {
			held.Done()
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn)
	want := map[uint32]*result{}
	for i := range 4 {
		want[ti.scsiCmd(0, testkit.Read10(uint32(100+i), 1), true, 512, nil, true)] = &result{}
	}
	held.Wait()
	c := onlyConn(t, env.srv)
	if n := c.workers.Load(); n < 4 {
		t.Fatalf("%d workers run 4 held commands", n)
	}
	close(release)
	if err := ti.collect(want, nil); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 5*time.Second, "every idle worker (idle period 50 ms) to exit", func() bool { return c.workers.Load() <= 0 })
	again := map[uint32]*result{ti.scsiCmd(0, testkit.Read10(1, 1), true, 512, nil, true): {}}
	if err := ti.collect(again, nil); err != nil {
		t.Fatal(err)
	}
	for _, r := range again {
		if r.status != 0 {
			t.Fatalf("status %#x after the workers ended", r.status)
		}
	}
}

// onlyConn returns the server's one connection.
func onlyConn(t *testing.T, srv *Server) *conn {
	t.Helper()
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if len(srv.conns) != 1 {
		t.Fatalf("%d connections, want 1", len(srv.conns))
	}
	for c := range srv.conns {
		return c
	}
	return nil
}

// TestDroppedConnectionCancelsTasks closes the socket while a command is
// held in the device server: the command's context is cancelled.
func TestDroppedConnectionCancelsTasks(t *testing.T) {
	env := startServer(t, Config{}, nil)
	entered := make(chan struct{})
	cancelled := make(chan struct{})
	giveUp := make(chan struct{})
	t.Cleanup(func() { close(giveUp) }) // before the server's shutdown
	env.vol.SetGate(func(ctx context.Context, off int64) error {
		close(entered)
		select {
		case <-ctx.Done():
			close(cancelled)
			return ctx.Err()
		case <-giveUp:
			return errors.New("not cancelled")
		}
	})
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn)
	ti.scsiCmd(0, testkit.Read10(5, 1), true, 512, nil, true)
	<-entered
	ti.nc.Close()
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the command of a dropped connection was not cancelled")
	}
}
