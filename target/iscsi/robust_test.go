package iscsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/testkit"
)

// drain reads PDUs until the target closes the connection and returns the
// Reject reasons seen. It fails if the connection stays open.
func drain(t *testing.T, ti *testInitiator) []byte {
	t.Helper()
	ti.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	var reasons []byte
	for {
		h, _, err := ti.readPDU()
		if err != nil {
			var ne net.Error
			if ok := asNetErr(err, &ne); ok && ne.Timeout() {
				t.Fatal("connection not closed by the target")
			}
			return reasons
		}
		if h.opcode() == opReject {
			reasons = append(reasons, h[2])
		}
	}
}

func asNetErr(err error, ne *net.Error) bool {
	e, ok := err.(net.Error)
	if ok {
		*ne = e
	}
	return ok
}

// background keeps one healthy session doing verified I/O while a test
// abuses the server, and reports how many round trips succeeded.
func background(t *testing.T, env *testEnv) (stop func() int) {
	ti := dialInitiator(t, env.addr)
	ti.isid = 0x999
	ti.name = "iqn.2026-11.test:bystander"
	ti.login(env.iqn)
	var n atomic.Int32
	done := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		defer close(errc)
		payload := fill(4096, 0x33)
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			w := ti.scsiCmd(0, testkit.Write10(4000, 8), false, 4096, payload, true)
			res := map[uint32]*result{w: {}}
			if err := ti.collect(res, nil); err != nil {
				errc <- err
				return
			}
			r := ti.scsiCmd(0, testkit.Read10(4000, 8), true, 4096, nil, true)
			res[r] = &result{}
			if err := ti.collect(map[uint32]*result{r: res[r]}, nil); err != nil {
				errc <- err
				return
			}
			if res[w].status != 0 || !bytes.Equal(res[r].data, payload) {
				errc <- errBystander
				return
			}
			n.Add(1)
		}
	}()
	return func() int {
		// Let the bystander finish at least one more round trip after
		// the abuse, however loaded the machine is.
		base := n.Load()
		deadline := time.Now().Add(10 * time.Second)
		for n.Load() <= base && time.Now().Before(deadline) && len(errc) == 0 {
			time.Sleep(time.Millisecond)
		}
		close(done)
		if err := <-errc; err != nil {
			t.Fatalf("healthy session disturbed: %v", err)
		}
		return int(n.Load())
	}
}

type bystanderError struct{}

func (bystanderError) Error() string { return "bystander I/O returned wrong data" }

var errBystander = bystanderError{}

func TestRobustnessBeforeLogin(t *testing.T) {
	env := startServer(t, Config{}, nil)
	stop := background(t, env)
	cases := map[string]func(ti *testInitiator){
		"garbage": func(ti *testInitiator) {
			b := make([]byte, 4096)
			for i := range b {
				b[i] = byte(rand.IntN(256))
			}
			ti.nc.Write(b)
		},
		"truncated-header": func(ti *testInitiator) {
			ti.nc.Write(make([]byte, 20))
			ti.nc.(*net.TCPConn).CloseWrite()
		},
		"oversized-segment": func(ti *testInitiator) {
			var h bhs
			h[0] = 0x40 | opLoginReq
			h.setDataLen(1<<24 - 1)
			ti.nc.Write(h[:])
		},
		"command-before-login": func(ti *testInitiator) {
			var h bhs
			h[0] = opSCSICmd
			h[1] = 0x80
			copy(h[32:], testkit.Read10(0, 1))
			ti.nc.Write(h[:])
		},
		"bad-text": func(ti *testInitiator) {
			var h bhs
			h[0] = 0x40 | opLoginReq
			h[1] = 0x80 | 1
			ti.pw.write(&h, []byte("=novalue\x00\x00\xff"))
			ti.bw.Flush()
		},
		"huge-ahs": func(ti *testInitiator) {
			var h bhs
			h[0] = 0x40 | opLoginReq
			h[4] = 255
			ti.nc.Write(h[:])
			ti.nc.Write(make([]byte, 255*4))
		},
	}
	for name, f := range cases {
		t.Run(name, func(t *testing.T) {
			ti := dialInitiator(t, env.addr)
			f(ti)
			drain(t, ti)
		})
	}
	if stop() == 0 {
		t.Fatal("healthy session made no progress")
	}
}

func TestRobustnessFullFeature(t *testing.T) {
	env := startServer(t, Config{}, nil)
	stop := background(t, env)
	login := func(t *testing.T, keys ...string) *testInitiator {
		ti := dialInitiator(t, env.addr)
		ti.isid = uint64(rand.Uint32())
		ti.login(env.iqn, keys...)
		return ti
	}
	t.Run("unknown-opcode", func(t *testing.T) {
		ti := login(t)
		var h bhs
		h[0] = 0x1c
		ti.writePDU(&h, nil)
		if r := drain(t, ti); len(r) != 1 || r[0] != rejectProtocolError {
			t.Fatalf("rejects %v", r)
		}
	})
	t.Run("oversized-segment", func(t *testing.T) {
		ti := login(t)
		var h bhs
		h[0] = opNOPOut
		h[1] = 0x80
		h.setDataLen(1<<24 - 1)
		ti.nc.Write(h[:])
		if r := drain(t, ti); len(r) != 1 || r[0] != rejectProtocolError {
			t.Fatalf("rejects %v", r)
		}
	})
	t.Run("bad-header-digest", func(t *testing.T) {
		ti := login(t, "HeaderDigest", "CRC32C")
		var h bhs
		h[0] = 0x40 | opNOPOut
		h[1] = 0x80
		h.putU32(16, 1)
		ti.nc.Write(append(h[:], 1, 2, 3, 4))
		drain(t, ti)
	})
	t.Run("bad-data-digest-on-data-out", func(t *testing.T) {
		ti := login(t, "DataDigest", "CRC32C", "InitialR2T", "No", "ImmediateData", "No")
		itt := ti.scsiCmd(0, testkit.Write10(300, 1), false, 512, nil, false)
		var h bhs
		h[0] = opDataOut
		h[1] = 0x80
		h.putU32(16, itt)
		h.putU32(offTTT, reservedTag)
		h.setDataLen(512)
		ti.nc.Write(h[:])
		ti.nc.Write(bytes.Repeat([]byte{0xee}, 512))
		ti.nc.Write([]byte{0, 0, 0, 0}) // wrong CRC32C
		// RFC 7143 §7.8: Reject, then the task ends with a protocol
		// service CRC error; the connection stays.
		expectDataOutFailure(t, env, ti, itt, rejectDataDigest, 0x47, 0x05)
		checkZero(t, env, 300)
	})
	t.Run("data-out-past-edtl", func(t *testing.T) {
		ti := login(t, "InitialR2T", "No", "ImmediateData", "No")
		itt := ti.scsiCmd(0, testkit.Write10(310, 1), false, 512, nil, false)
		ti.dataOut(itt, reservedTag, 0, 0, bytes.Repeat([]byte{0xee}, 1024), true)
		expectDataOutFailure(t, env, ti, itt, 0, 0x0c, 0x0c)
		checkZero(t, env, 310)
		checkZero(t, env, 311)
	})
	t.Run("unsolicited-data-with-initial-r2t", func(t *testing.T) {
		ti := login(t, "InitialR2T", "Yes", "ImmediateData", "No")
		itt := ti.scsiCmd(0, testkit.Write10(320, 1), false, 512, nil, true)
		// Skip the R2T and push unsolicited data.
		h, _, err := ti.readPDU()
		if err != nil || h.opcode() != opR2T {
			t.Fatalf("want R2T, got %#x %v", h.opcode(), err)
		}
		ti.dataOut(itt, reservedTag, 0, 0, bytes.Repeat([]byte{0xee}, 512), true)
		expectDataOutFailure(t, env, ti, itt, 0, 0x0c, 0x0c)
		checkZero(t, env, 320)
	})
	t.Run("data-out-with-unknown-ttt", func(t *testing.T) {
		ti := login(t, "InitialR2T", "Yes", "ImmediateData", "No")
		itt := ti.scsiCmd(0, testkit.Write10(330, 1), false, 512, nil, true)
		h, _, err := ti.readPDU()
		if err != nil || h.opcode() != opR2T {
			t.Fatalf("want R2T, got %#x %v", h.opcode(), err)
		}
		ti.dataOut(itt, h.u32(offTTT)+1, 0, 0, bytes.Repeat([]byte{0xee}, 512), true)
		expectDataOutFailure(t, env, ti, itt, 0, 0x4b, 0x01)
		checkZero(t, env, 330)
	})
	t.Run("data-out-for-held-complete-task", func(t *testing.T) {
		// A write with all its data, held behind a CmdSN gap, gets more
		// Data-Out: it is already queued to run, so the connection is
		// dropped (it must not be queued a second time).
		ti := login(t, "InitialR2T", "No", "ImmediateData", "Yes")
		ti.cmdSN++ // leave a gap: the write waits for the missing CmdSN
		itt := ti.scsiCmd(0, testkit.Write10(340, 1), false, 512, bytes.Repeat([]byte{0xee}, 512), true)
		ti.dataOut(itt, reservedTag, 0, 512, bytes.Repeat([]byte{0xee}, 512), true)
		if r := drain(t, ti); len(r) != 1 || r[0] != rejectProtocolError {
			t.Fatalf("rejects %v", r)
		}
		checkZero(t, env, 340)
	})
	t.Run("data-out-for-unknown-task", func(t *testing.T) {
		ti := login(t)
		ti.dataOut(12345, 77, 0, 0, make([]byte, 512), true)
		h, _, err := ti.readPDU()
		if err != nil || h.opcode() != opReject || h[2] != rejectInvalidField {
			t.Fatalf("want Reject(invalid field), got %#x %v", h.opcode(), err)
		}
		writeRead(t, ti, 330, fill(512, 2), 512) // session continues
	})
	t.Run("immediate-data-beyond-edtl", func(t *testing.T) {
		ti := login(t)
		ti.scsiCmd(0, testkit.Write10(340, 1), false, 512, make([]byte, 1024), true)
		h, _, err := ti.readPDU()
		if err != nil || h.opcode() != opReject || h[2] != rejectInvalidField {
			t.Fatalf("want Reject(invalid field), got %#x %v", h.opcode(), err)
		}
		checkZero(t, env, 341)
		writeRead(t, ti, 342, fill(512, 2), 512)
	})
	t.Run("huge-transfer-length", func(t *testing.T) {
		ti := login(t)
		r := ti.scsiCmd(0, testkit.Read10(0, 1), true, 1<<30, nil, true)
		res := map[uint32]*result{r: {}}
		if err := ti.collect(res, nil); err != nil {
			t.Fatal(err)
		}
		if res[r].status != 0x02 || len(res[r].sense) < 13 || res[r].sense[12] != 0x24 {
			t.Fatalf("status %#x sense %x", res[r].status, res[r].sense)
		}
	})
	t.Run("login-pdu-in-full-feature", func(t *testing.T) {
		ti := login(t)
		ti.loginPDU(0, 1, true, kvText("InitiatorName", ti.name))
		drain(t, ti)
	})
	t.Run("duplicate-itt", func(t *testing.T) {
		ti := login(t)
		held := make(chan struct{})
		_ = held
		itt := ti.scsiCmd(0, testkit.Read10(0, 1), true, 512, nil, true)
		ti.itt--
		ti.scsiCmd(0, testkit.Read10(0, 1), true, 512, nil, true)
		// Either the first already finished (then the second is a new
		// task) or the second is rejected; the session goes on.
		seen := 0
		ti.nc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		for {
			h, _, err := ti.readPDU()
			if err != nil {
				break
			}
			if h.itt() == itt || h.opcode() == opReject {
				seen++
			}
		}
		ti.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		if seen < 2 {
			t.Fatalf("saw %d answers", seen)
		}
	})
	if stop() == 0 {
		t.Fatal("healthy session made no progress")
	}
}

// expectDataOutFailure reads the answer to a write whose Data-Out went
// wrong: an optional Reject with reason wantReject first, then CHECK
// CONDITION, ABORTED COMMAND with the asc/ascq given. The connection stays
// up: a write and read on it afterwards work.
func expectDataOutFailure(t *testing.T, env *testEnv, ti *testInitiator, itt uint32, wantReject byte, asc, ascq byte) {
	t.Helper()
	ti.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if wantReject != 0 {
		h, _, err := ti.readPDU()
		if err != nil || h.opcode() != opReject || h[2] != wantReject {
			t.Fatalf("want Reject(%#x), got opcode %#x reason %#x, %v", wantReject, h.opcode(), h[2], err)
		}
	}
	res := map[uint32]*result{itt: {}}
	if err := ti.collect(res, nil); err != nil {
		t.Fatal(err)
	}
	r := res[itt]
	if r.status != 0x02 || len(r.sense) < 14 || r.sense[2]&0x0f != 0x0b || r.sense[12] != asc || r.sense[13] != ascq {
		t.Fatalf("status %#x sense %x, want CHECK CONDITION, ABORTED COMMAND %02x/%02x", r.status, r.sense, asc, ascq)
	}
	ti.nc.SetReadDeadline(time.Time{})
	writeRead(t, ti, 900, fill(1024, 9), 0)
}

func checkZero(t *testing.T, env *testEnv, lba uint32) {
	t.Helper()
	ti := dialInitiator(t, env.addr)
	ti.isid = 0x777
	ti.name = "iqn.2026-11.test:checker"
	ti.login(env.iqn)
	r := ti.scsiCmd(0, testkit.Read10(lba, 1), true, 512, nil, true)
	res := map[uint32]*result{r: {}}
	if err := ti.collect(res, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(res[r].data, make([]byte, 512)) {
		t.Fatalf("block %d was written by a rejected PDU", lba)
	}
}

// TestThousandConnections opens and drops a thousand connections, some
// mid-login, some after login, while a session keeps doing I/O.
func TestThousandConnections(t *testing.T) {
	env := startServer(t, Config{}, nil)
	stop := background(t, env)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range 1000 {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			nc, err := net.Dial("tcp", env.addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer nc.Close()
			switch i % 3 {
			case 0: // nothing
			case 1: // half a header
				nc.Write(make([]byte, 30))
			case 2: // a full login, then drop
				ti := &testInitiator{t: t, nc: nc, isid: uint64(i), name: "iqn.2026-11.test:flood"}
				ti.br, ti.bw = newBuf(nc)
				ti.pr = pduReader{r: ti.br, maxData: 1 << 24}
				ti.pw = pduWriter{w: ti.bw}
				nc.SetDeadline(time.Now().Add(10 * time.Second))
				if err := ti.tryLogin(env.iqn); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if stop() == 0 {
		t.Fatal("healthy session made no progress")
	}
	testkit.WaitFor(t, 10*time.Second, "at most one session left", func() bool { return len(env.srv.Sessions()) <= 1 })
}

// TestTargetPingsIdleInitiators: an initiator that answers NOP-Ins stays;
// one that ignores them is dropped after NOPTimeout.
func TestTargetPingsIdleInitiators(t *testing.T) {
	env := startServer(t, Config{NOPInterval: 50 * time.Millisecond, NOPTimeout: 150 * time.Millisecond}, nil)
	alive := dialInitiator(t, env.addr)
	alive.login(env.iqn)
	dead := dialInitiator(t, env.addr)
	dead.isid++
	dead.login(env.iqn)
	pings := 0
	deadline := time.Now().Add(600 * time.Millisecond)
	for time.Now().Before(deadline) {
		alive.nc.SetReadDeadline(deadline)
		h, _, err := alive.readPDU()
		if err != nil {
			break
		}
		if h.opcode() == opNOPIn && h.itt() == reservedTag {
			pings++
			var o bhs
			o[0] = 0x40 | opNOPOut
			o[1] = 0x80
			o.putU32(16, reservedTag)
			o.putU32(offTTT, h.u32(offTTT))
			o.putU32(offCmdSN, alive.cmdSN)
			alive.writePDU(&o, nil)
		}
	}
	if pings < 2 {
		t.Fatalf("%d pings in 600ms with a 50ms interval", pings)
	}
	alive.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	writeRead(t, alive, 0, fill(512, 1), 512)
	// The silent one was dropped.
	dead.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		if _, _, err := dead.readPDU(); err != nil {
			var ne net.Error
			if asNetErr(err, &ne) && ne.Timeout() {
				t.Fatal("silent initiator not dropped")
			}
			break
		}
	}
}

func TestShutdownRequestsLogout(t *testing.T) {
	env := startServer(t, Config{}, nil)
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn)
	errc := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		errc <- env.srv.Shutdown(ctx)
	}()
	h, _, err := ti.readPDU()
	if err != nil || h.opcode() != opAsync || h[36] != 1 {
		t.Fatalf("want Async Message (request logout), got %#x event %d, %v", h.opcode(), h[36], err)
	}
	if p3 := binary.BigEndian.Uint16(h[42:44]); p3 == 0 {
		t.Fatal("no time to logout given")
	}
	var l bhs
	l[0] = 0x40 | opLogoutReq
	l[1] = 0x80
	l.putU32(16, ti.nextITT())
	l.putU32(offCmdSN, ti.cmdSN)
	ti.writePDU(&l, nil)
	if h, _, err = ti.readPDU(); err != nil || h.opcode() != opLogoutResp {
		t.Fatalf("logout response: %#x %v", h.opcode(), err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if _, err := net.DialTimeout("tcp", env.addr, time.Second); err == nil {
		// The listener is still open until Serve's context ends, but new
		// connections must not get a session.
		ti2 := dialInitiator(t, env.addr)
		if err := ti2.tryLogin(env.iqn); err == nil {
			t.Fatal("login accepted after Shutdown")
		}
	}
}

func TestUpdateTargetRevokesAccess(t *testing.T) {
	env := startServer(t, Config{LogoutGrace: 200 * time.Millisecond}, nil)
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn)
	keep := dialInitiator(t, env.addr)
	keep.name = "iqn.2026-11.test:kept"
	keep.login(env.iqn)
	err := env.srv.UpdateTarget(TargetConfig{Name: env.iqn, SCSI: env.dev, TPGT: 1, Initiators: []string{keep.name}})
	if err != nil {
		t.Fatal(err)
	}
	h, _, err := ti.readPDU()
	if err != nil || h.opcode() != opAsync || h[36] != 1 {
		t.Fatalf("revoked session: want logout request, got %#x %v", h.opcode(), err)
	}
	ti.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	drain(t, ti)
	writeRead(t, keep, 0, fill(512, 3), 512)
	if err := env.srv.RemoveTarget(env.iqn); err != nil {
		t.Fatal(err)
	}
	if err := env.srv.RemoveTarget(env.iqn); err == nil {
		t.Fatal("removing a missing target succeeded")
	}
}

// TestPeerThatNeverReads: a peer that floods immediate NOP-Outs and never
// reads the answers is dropped instead of growing the server's memory.
func TestPeerThatNeverReads(t *testing.T) {
	env := startServer(t, Config{}, nil)
	stop := background(t, env)
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn)
	ti.nc.(*net.TCPConn).SetReadBuffer(4096)
	var h bhs
	h[0] = 0x40 | opNOPOut
	h[1] = 0x80
	ping := make([]byte, 4096)
	dropped := false
	for i := 0; i < 200000; i++ {
		h.putU32(16, uint32(i))
		ti.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
		err := ti.pw.write(&h, ping)
		if err == nil && i%64 == 0 {
			err = ti.bw.Flush()
		}
		if err != nil {
			var ne net.Error
			if asNetErr(err, &ne) && ne.Timeout() {
				t.Fatal("server stopped reading instead of dropping the connection")
			}
			dropped = true
			break
		}
	}
	if !dropped {
		t.Fatal("server kept reading from a peer that never reads")
	}
	if stop() == 0 {
		t.Fatal("healthy session made no progress")
	}
}

// TestDataSNChecked: Data-Out PDUs must carry DataSN 0, 1, ... within each
// sequence, at the offsets asked for. A repeated, skipped or reversed
// DataSN or a wrong offset fails the command with CHECK CONDITION (ERL 0
// cannot ask for the data again), nothing of it is written, the rest of
// its Data-Out is dropped quietly, and the connection carries on.
func TestDataSNChecked(t *testing.T) {
	env := startServer(t, Config{}, nil)
	type dataOut struct{ sn, off uint32 }
	cases := map[string]struct {
		pdus      [2]dataOut
		asc, ascq byte
	}{
		"repeat-0":   {[2]dataOut{{0, 0}, {0, 512}}, 0x47, 0x05},
		"jump-27":    {[2]dataOut{{27, 0}, {1, 512}}, 0x47, 0x05},
		"minus-1":    {[2]dataOut{{0xffffffff, 0}, {0, 512}}, 0x47, 0x05},
		"reversed":   {[2]dataOut{{1, 0}, {0, 512}}, 0x47, 0x05},
		"offset":     {[2]dataOut{{0, 512}, {1, 0}}, 0x4b, 0x05},
		"overlap":    {[2]dataOut{{0, 0}, {1, 256}}, 0x4b, 0x05},
		"past-burst": {[2]dataOut{{0, 0}, {1, 1024}}, 0x4b, 0x05},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			ti := dialInitiator(t, env.addr)
			ti.isid = uint64(rand.Uint32())
			ti.login(env.iqn, "InitialR2T", "Yes", "ImmediateData", "No", "MaxRecvDataSegmentLength", "512")
			itt := ti.scsiCmd(0, testkit.Write10(500, 2), false, 1024, nil, true)
			h, _, err := ti.readPDU()
			if err != nil || h.opcode() != opR2T {
				t.Fatalf("want R2T, got %#x %v", h.opcode(), err)
			}
			ttt := h.u32(offTTT)
			ti.dataOut(itt, ttt, tc.pdus[0].sn, tc.pdus[0].off, bytes.Repeat([]byte{0xee}, 512), false)
			ti.dataOut(itt, ttt, tc.pdus[1].sn, tc.pdus[1].off, bytes.Repeat([]byte{0xee}, 512), true)
			expectDataOutFailure(t, env, ti, itt, 0, tc.asc, tc.ascq)
			checkZero(t, env, 500)
			checkZero(t, env, 501)
		})
	}
	// The correct sequence works on the same target.
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn, "InitialR2T", "Yes", "ImmediateData", "No", "MaxRecvDataSegmentLength", "512")
	writeRead(t, ti, 500, fill(1024, 8), 0)
}

// TestBufferBudget: commands whose buffers would exceed MaxBufferBytes are
// answered TASK SET FULL at once; the budget comes back when commands end.
func TestBufferBudget(t *testing.T) {
	env := startServer(t, Config{MaxBufferBytes: 1 << 20}, nil)
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn)
	release := make(chan struct{})
	env.vol.SetGate(func(ctx context.Context, off int64) error {
		if off == 0 {
			<-release
		}
		return nil
	})
	held := ti.scsiCmd(0, testkit.Read10(0, 1024), true, 512<<10, nil, true) // 512 KiB reserved
	testkit.WaitFor(t, 10*time.Second, "one command running in the volume", func() bool { return env.vol.Running.Load() == 1 })
	full := ti.scsiCmd(0, testkit.Read10(2048, 1536), true, 768<<10, nil, true)
	res := map[uint32]*result{full: {}}
	if err := ti.collect(res, nil); err != nil {
		t.Fatal(err)
	}
	if res[full].status != 0x28 {
		t.Fatalf("status %#x, want TASK SET FULL", res[full].status)
	}
	// A write beyond the budget: its unsolicited data is dropped quietly.
	w := ti.scsiCmd(0, testkit.Write10(4096, 1536), false, 768<<10, make([]byte, 4096), true)
	res = map[uint32]*result{w: {}}
	if err := ti.collect(res, nil); err != nil {
		t.Fatal(err)
	}
	if res[w].status != 0x28 {
		t.Fatalf("write status %#x, want TASK SET FULL", res[w].status)
	}
	close(release)
	res = map[uint32]*result{held: {}}
	if err := ti.collect(res, nil); err != nil || res[held].status != 0 {
		t.Fatalf("held read: %v status %#x", err, res[held].status)
	}
	testkit.WaitFor(t, 10*time.Second, "every command's data buffer released", func() bool { return env.srv.bufBytes.Load() == 0 })
	// With the budget back, a 768 KiB command fits again.
	r := ti.scsiCmd(0, testkit.Read10(2048, 1536), true, 768<<10, nil, true)
	res = map[uint32]*result{r: {}}
	if err := ti.collect(res, nil); err != nil || res[r].status != 0 || len(res[r].data) != 768<<10 {
		t.Fatalf("read after the budget came back: %v status %#x", err, res[r].status)
	}
}
