package iscsi

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/memvol"
	"github.com/cachelun/cachelun/internal/testkit"
	"github.com/cachelun/cachelun/target/scsi"
)

// restartTarget runs one Server after another on one loopback address over
// one volume, as the daemon does when it is killed and started again: kill
// drops every connection at once without a word to the initiator (SIGKILL),
// start brings up a new Server and device server that know nothing of the
// old sessions.
type restartTarget struct {
	t    *testing.T
	addr string
	vol  *gatedVolume
	srv  *Server
	dev  *countingTarget
	kill func()
}

func newRestartTarget(t *testing.T) *restartTarget {
	mv, err := memvol.New(16<<20, 512)
	if err != nil {
		t.Fatal(err)
	}
	rt := &restartTarget{t: t, vol: &gatedVolume{Volume: mv}, addr: "127.0.0.1:0"}
	rt.start(Config{})
	return rt
}

func (rt *restartTarget) start(cfg Config) {
	t := rt.t
	t.Helper()
	dev := &countingTarget{Target: scsi.NewTarget(scsi.TargetConfig{Name: testIQN})}
	if _, err := dev.AddLU(0, scsi.LUConfig{Volume: rt.vol, WriteCache: true, SerialNumber: "t1"}); err != nil {
		t.Fatal(err)
	}
	srv := NewServer(cfg)
	if err := srv.AddTarget(TargetConfig{Name: testIQN, SCSI: dev, TPGT: 1}); err != nil {
		t.Fatal(err)
	}
	// The port of the killed server may take a moment to be free again.
	var l net.Listener
	var err error
	for i := 0; i < 100; i++ {
		if l, err = net.Listen("tcp", rt.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	rt.addr = l.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		srv.Serve(ctx, l)
	}()
	var once sync.Once
	rt.srv, rt.dev = srv, dev
	rt.kill = func() {
		once.Do(func() {
			cancel()
			wg.Wait()
		})
	}
	t.Cleanup(rt.kill)
}

// restart kills the running server and starts a new one on its address.
func (rt *restartTarget) restart() {
	rt.kill()
	rt.start(Config{})
}

// expect reads PDUs for up to 5 seconds, answering target NOP-In pings,
// until one with opcode op and ITT itt arrives; every other PDU fails the
// test. An initiator that waited longer would have started its error
// handling.
func expect(t *testing.T, ti *testInitiator, op byte, itt uint32) bhs {
	t.Helper()
	ti.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer ti.nc.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		h, _, err := ti.readPDU()
		if err != nil {
			t.Fatalf("waiting for opcode %#x itt %d: %v", op, itt, err)
		}
		if h.opcode() == opNOPIn && h.itt() == reservedTag {
			continue
		}
		if h.opcode() != op || h.itt() != itt {
			t.Fatalf("waiting for opcode %#x itt %d, got opcode %#x itt %d (byte 2: %d)", op, itt, h.opcode(), h.itt(), h[2])
		}
		return h
	}
}

// relogin logs in again with the same initiator port (ISID), TSIH 0 and
// the CmdSN the initiator has reached, as open-iscsi does after a dropped
// connection, and returns the window of the final login response.
func relogin(t *testing.T, ti *testInitiator, addr string) (exp, maxSN uint32) {
	t.Helper()
	nu := dialInitiator(t, addr)
	nu.cmdSN, nu.itt, nu.isid, nu.name = ti.cmdSN, ti.itt, ti.isid, ti.name
	if _, _, err := nu.loginPDU(0, 1, true, kvText("InitiatorName", nu.name, "AuthMethod", "None", "TargetName", testIQN)); err != nil {
		t.Fatal(err)
	}
	r, m, err := nu.loginPDU(1, 3, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st := loginStatus(r); st != 0 || r[1]&0x80 == 0 {
		t.Fatalf("relogin: status %#04x flags %#x", st, r[1])
	}
	nu.tsih, nu.params = r.u16(14), m
	*ti = *nu
	return r.u32(offExpSN), r.u32(offMaxCmdSN)
}

// TestRestartAnswersEveryRequest kills the target while commands are in its
// device server and a write waits for Data-Out, starts a new one on the same
// address, and plays what open-iscsi and the SCSI error handler send after
// the reconnect: a NOP-Out ping, ABORT TASK for the lost commands (unknown
// to the new target), ABORT TASK for a command lost on the wire, Data-Out
// for the old write, LUN RESET and TARGET WARM RESET with commands in the
// new device server, and the retried commands. Each gets its answer within
// 5 seconds, and the window the new target opens is never behind the one
// the old target advertised (the Linux initiator ignores a MaxCmdSN that
// goes back).
func TestRestartAnswersEveryRequest(t *testing.T) {
	rt := newRestartTarget(t)
	ti := dialInitiator(t, rt.addr)
	ti.login(testIQN, "InitialR2T", "Yes", "ImmediateData", "No")
	entered := make(chan struct{}, 8)
	rt.vol.SetGate(func(ctx context.Context, off int64) error {
		entered <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	})
	type sent struct{ itt, cmdSN uint32 }
	var old []sent
	for i := range 3 {
		old = append(old, sent{cmdSN: ti.cmdSN})
		old[i].itt = ti.scsiCmd(0, testkit.Read10(uint32(10+i), 1), true, 512, nil, true)
	}
	for range 3 {
		<-entered
	}
	w := ti.scsiCmd(0, testkit.Write10(40, 8), false, 4096, nil, true)
	r2t := expect(t, ti, opR2T, w)
	// The old target's window, as the initiator last saw it.
	oldMax := r2t.u32(offMaxCmdSN)

	rt.restart()
	rt.vol.SetGate(nil)
	exp, maxSN := relogin(t, ti, rt.addr)
	if exp != ti.cmdSN || serialLess(maxSN, exp) || serialLess(maxSN, oldMax) {
		t.Fatalf("window after relogin [%d, %d], initiator at CmdSN %d, old MaxCmdSN %d", exp, maxSN, ti.cmdSN, oldMax)
	}
	if err := ti.clearUA(); err != nil {
		t.Fatal(err)
	}

	// The initiator's transport check.
	var nop bhs
	nop[0] = 0x40 | opNOPOut
	nop[1] = 0x80
	pingITT := ti.nextITT()
	nop.putU32(16, pingITT)
	nop.putU32(offTTT, reservedTag)
	nop.putU32(offCmdSN, ti.cmdSN)
	if err := ti.writePDU(&nop, nil); err != nil {
		t.Fatal(err)
	}
	expect(t, ti, opNOPIn, pingITT)

	// ABORT TASK for commands the killed target had: their CmdSNs are
	// below the new window, so the task does not exist (RFC 7143 §11.6.1).
	for _, o := range old {
		tmf := tmfRequest(ti, tmfAbortTask, 0, o.itt, o.cmdSN, true)
		if h := expect(t, ti, opTaskMgmtRsp, tmf); h[2] != tmfRespNoTask {
			t.Fatalf("ABORT TASK of a command of the killed target: response %d, want %d", h[2], tmfRespNoTask)
		}
	}
	// ABORT TASK for a command lost on the wire after the relogin: its
	// CmdSN is in the window and before the TMF's, so it counts as received
	// (§11.5.1) and the commands after it are not held back by the gap.
	lost := ti.cmdSN
	ti.cmdSN++
	tmf := tmfRequest(ti, tmfAbortTask, 0, 0xabcdef, lost, true)
	if h := expect(t, ti, opTaskMgmtRsp, tmf); h[2] != tmfRespComplete {
		t.Fatalf("ABORT TASK of a command lost on the wire: response %d, want %d", h[2], tmfRespComplete)
	}
	after := ti.scsiCmd(0, testkit.Read10(1, 1), true, 512, nil, true)
	if h := expect(t, ti, opDataIn, after); h[1]&0x01 == 0 {
		t.Fatal("read after the aborted gap: no status")
	}

	// Data-Out for the write the killed target had asked for: the new
	// target has no such task and says so, and carries on.
	if err := ti.dataOut(w, r2t.u32(offTTT), 0, 0, fill(4096, 9), true); err != nil {
		t.Fatal(err)
	}
	if h := expect(t, ti, opReject, reservedTag); h[2] != rejectInvalidField {
		t.Fatalf("Data-Out for an unknown task: reject reason %#x", h[2])
	}

	// LUN RESET and TARGET WARM RESET while commands are in the new device
	// server: they are aborted and the TMF is answered.
	rt.vol.SetGate(func(ctx context.Context, off int64) error {
		entered <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	})
	for _, fn := range []byte{tmfLUNReset, tmfTargetWarm} {
		// The reset before raised a unit attention; the TUR takes it.
		if err := ti.clearUA(); err != nil {
			t.Fatal(err)
		}
		held := ti.scsiCmd(0, testkit.Read10(20, 1), true, 512, nil, true)
		<-entered
		tmf := tmfRequest(ti, fn, 0, reservedTag, 0, true)
		if h := expect(t, ti, opTaskMgmtRsp, tmf); h[2] != tmfRespComplete {
			t.Fatalf("TMF %d with a command in the device server: response %d (held itt %d)", fn, h[2], held)
		}
	}
	rt.vol.SetGate(nil)

	// The retried commands: the first reports the reset (UNIT ATTENTION),
	// as the initiator expects, then they run.
	if err := ti.clearUA(); err != nil {
		t.Fatal(err)
	}
	payload := fill(4096, 7)
	w2 := ti.scsiCmd(0, testkit.Write10(40, 8), false, 4096, nil, true)
	res := map[uint32]*result{w2: {}}
	if err := ti.collect(res, map[uint32][]byte{w2: payload}); err != nil {
		t.Fatal(err)
	}
	if res[w2].status != 0 {
		t.Fatalf("retried write: status %#x sense % x", res[w2].status, res[w2].sense)
	}
	for i := range old {
		r := ti.scsiCmd(0, testkit.Read10(uint32(10+i), 1), true, 512, nil, true)
		res := map[uint32]*result{r: {}}
		if err := ti.collect(res, nil); err != nil || res[r].status != 0 {
			t.Fatalf("retried read %d: err %v status %#x", i, err, res[r].status)
		}
	}
}

// syncBuffer is a log sink tests read while the server writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = append(s.b, p...)
	return len(p), nil
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.b)
}

// stuckServer is a server whose device server holds the read of block 5
// until release is closed, whatever its context says: a command that does
// not return when it is aborted.
func stuckServer(t *testing.T) (env *testEnv, logs *syncBuffer, entered chan struct{}, release func()) {
	logs = &syncBuffer{}
	env = startServer(t, Config{Logger: slog.New(slog.NewTextHandler(logs, nil))}, nil)
	env.srv.reinstateWait = 300 * time.Millisecond
	env.srv.stuckWarn = 100 * time.Millisecond
	entered = make(chan struct{}, 1)
	gate := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(gate) }) }
	t.Cleanup(release) // before the server's shutdown
	env.vol.SetGate(func(ctx context.Context, off int64) error {
		if off != 5*512 {
			return nil
		}
		entered <- struct{}{}
		<-gate
		return nil
	})
	return env, logs, entered, release
}

// TestReinstatementAnswersLoginWhileOldCommandsRun: open-iscsi reconnects
// (same ISID) while a command of the old session is still in the device
// server and does not return when aborted. The new session must not start
// before that command has returned (an old write could land after a new
// one), but the login is answered within a bounded time, "service
// unavailable", which open-iscsi retries, instead of being left unanswered
// until the initiator's login timeout; the daemon log names the command.
// Once the command returns, the retry logs in.
func TestReinstatementAnswersLoginWhileOldCommandsRun(t *testing.T) {
	env, logs, entered, release := stuckServer(t)
	old := dialInitiator(t, env.addr)
	old.login(env.iqn)
	old.scsiCmd(0, testkit.Read10(5, 1), true, 512, nil, true)
	<-entered
	for try := range 2 {
		nu := dialInitiator(t, env.addr)
		nu.nc.SetDeadline(time.Now().Add(5 * time.Second))
		start := time.Now()
		err := nu.tryLogin(env.iqn)
		if err == nil || !strings.Contains(err.Error(), "0x0301") {
			t.Fatalf("login %d while the old session's command runs: %v after %v, want status 0x0301 (service unavailable)", try, err, time.Since(start))
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("login %d answered after %v", try, d)
		}
	}
	for _, want := range []string{"session reinstatement: the old session's commands have not returned", "cdb=[28 00 00 00 00 05"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
	release()
	var err error
	for range 50 {
		nu := dialInitiator(t, env.addr)
		if err = nu.tryLogin(env.iqn); err == nil {
			writeRead(t, nu, 0, fill(512, 4), 512)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("no login after the old command returned: %v", err)
	}
	if env.vol.Running.Load() != 0 {
		t.Fatal("old session's command still running after the new session started")
	}
}

// TestAbortWaitingForDeviceServerIsLogged: an ABORT TASK for a command the
// device server does not return is answered only once it has returned (no
// response may go out while the command can still change the medium), and
// meanwhile the daemon log names the command, period after period.
func TestAbortWaitingForDeviceServerIsLogged(t *testing.T) {
	env, logs, entered, release := stuckServer(t)
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn)
	sn := ti.cmdSN
	victim := ti.scsiCmd(0, testkit.Read10(5, 1), true, 512, nil, true)
	<-entered
	tmf := tmfRequest(ti, tmfAbortTask, 0, victim, sn, true)
	ti.nc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if h, _, err := ti.readPDU(); err == nil {
		t.Fatalf("answer (opcode %#x) while the aborted command still runs", h.opcode())
	}
	if n := strings.Count(logs.String(), "aborted commands have not returned from the device server"); n < 2 {
		t.Fatalf("%d warnings about the running aborted command, want one a period:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), fmt.Sprintf("itt=%#x lun=0 cdb=[28 00 00 00 00 05", victim)) {
		t.Errorf("warning does not name the command:\n%s", logs.String())
	}
	release()
	if h := expect(t, ti, opTaskMgmtRsp, tmf); h[2] != tmfRespComplete {
		t.Fatalf("ABORT TASK response %d", h[2])
	}
}

// TestRefusedLogoutLeavesCommandsAlone: a Logout the target refuses
// (removing the connection for recovery needs ErrorRecoveryLevel 2) leaves
// the session as it was. A write still collecting its Data-Out then, and
// the commands after it, are all answered.
func TestRefusedLogoutLeavesCommandsAlone(t *testing.T) {
	env := startServer(t, Config{}, nil)
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn, "InitialR2T", "No", "ImmediateData", "Yes", "FirstBurstLength", "65536")
	payload := fill(16384, 3)
	w := ti.scsiCmd(0, testkit.Write10(30, 32), false, uint32(len(payload)), payload[:4096], false)
	var h bhs
	h[0] = 0x40 | opLogoutReq
	h[1] = 0x80 | 2 // remove the connection for recovery
	itt := ti.nextITT()
	h.putU32(16, itt)
	h.putU32(offCmdSN, ti.cmdSN)
	if err := ti.writePDU(&h, nil); err != nil {
		t.Fatal(err)
	}
	if r := expect(t, ti, opLogoutResp, itt); r[2] != 2 {
		t.Fatalf("logout for recovery: response %d, want 2 (not supported)", r[2])
	}
	if err := ti.dataOut(w, reservedTag, 0, 4096, payload[4096:], true); err != nil {
		t.Fatal(err)
	}
	res := map[uint32]*result{w: {}}
	ti.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := ti.collect(res, nil); err != nil {
		t.Fatalf("write collecting data at the refused logout: %v", err)
	}
	if res[w].status != 0 {
		t.Fatalf("write status %#x sense % x", res[w].status, res[w].sense)
	}
	writeRead(t, ti, 60, fill(512, 5), 512)
}

// TestOutOfWindowCommandLogged: a command outside the CmdSN window is
// ignored, as RFC 7143 says, so it is never answered; the first one of a
// connection is logged at WARN so that an initiator waiting for it can be
// understood, the rest at DEBUG only.
func TestOutOfWindowCommandLogged(t *testing.T) {
	logs := &syncBuffer{}
	env := startServer(t, Config{Logger: slog.New(slog.NewTextHandler(logs, nil)), QueueDepth: 8}, nil)
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn)
	saved := ti.cmdSN
	for _, sn := range []uint32{saved - 1, saved + 8, saved + 100} {
		ti.cmdSN = sn
		ti.scsiCmd(0, testkit.Read10(0, 1), true, 512, nil, true)
	}
	ti.cmdSN = saved
	writeRead(t, ti, 2, fill(512, 6), 512)
	if n := strings.Count(logs.String(), "level=WARN msg=\"iscsi: CmdSN outside the window"); n != 1 {
		t.Fatalf("%d warnings for 3 commands outside the window, want 1:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), fmt.Sprintf("cmdsn=%d exp=%d max=%d", saved-1, saved, saved+7)) {
		t.Errorf("warning lacks the CmdSN and the window:\n%s", logs.String())
	}
}

// TestLogoutWaitingForDeviceServerIsLogged: a Logout waits for the
// session's running commands, so that their responses go out first; while
// one does not return, the daemon log names it, period after period, and
// the Logout Response follows once it has returned.
func TestLogoutWaitingForDeviceServerIsLogged(t *testing.T) {
	env, logs, entered, release := stuckServer(t)
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn)
	r := ti.scsiCmd(0, testkit.Read10(5, 1), true, 512, nil, true)
	<-entered
	var h bhs
	h[0] = 0x40 | opLogoutReq
	h[1] = 0x80
	itt := ti.nextITT()
	h.putU32(16, itt)
	h.putU32(offCmdSN, ti.cmdSN)
	if err := ti.writePDU(&h, nil); err != nil {
		t.Fatal(err)
	}
	ti.nc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if h, _, err := ti.readPDU(); err == nil {
		t.Fatalf("answer (opcode %#x) while a command still runs", h.opcode())
	}
	want := fmt.Sprintf("itt=%#x lun=0 cdb=[28 00 00 00 00 05", r)
	if n := strings.Count(logs.String(), "logout waits for commands still running"); n < 2 || !strings.Contains(logs.String(), want) {
		t.Fatalf("%d warnings naming %q, want one a period:\n%s", n, want, logs.String())
	}
	release()
	expect(t, ti, opDataIn, r)
	if h := expect(t, ti, opLogoutResp, itt); h[2] != 0 {
		t.Fatalf("logout response %d", h[2])
	}
}
