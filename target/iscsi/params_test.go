package iscsi

import "testing"

func TestNegotiationRules(t *testing.T) {
	lim := limits{MaxRecvDataSegmentLength: 65536, MaxBurstLength: 1 << 20, FirstBurstLength: 131072,
		MaxOutstandingR2T: 4, ImmediateData: true, QueueDepth: 64}
	cases := []struct{ key, offer, want string }{
		{"HeaderDigest", "CRC32C,None", "CRC32C"},
		{"HeaderDigest", "None,CRC32C", "None"},
		{"DataDigest", "MD5,CRC32C", "CRC32C"},
		{"DataDigest", "MD5", "Reject"},
		{"MaxConnections", "8", "1"},
		{"ErrorRecoveryLevel", "2", "0"},
		{"InitialR2T", "No", "No"},
		{"InitialR2T", "Yes", "Yes"},
		{"ImmediateData", "No", "No"},
		{"ImmediateData", "Yes", "Yes"},
		{"MaxBurstLength", "16777215", "1048576"},
		{"MaxBurstLength", "65536", "65536"},
		{"FirstBurstLength", "262144", "131072"},
		{"MaxOutstandingR2T", "16", "4"},
		{"DataPDUInOrder", "No", "Yes"},
		{"DataSequenceInOrder", "No", "Yes"},
		{"DefaultTime2Wait", "0", "2"},
		{"DefaultTime2Retain", "20", "0"},
		{"IFMarker", "Yes", "No"},
		{"OFMarkInt", "2048~8192", "Irrelevant"},
		{"X-com.example.thing", "1", "NotUnderstood"},
		{"SomethingElse", "1", "NotUnderstood"},
		{"MaxRecvDataSegmentLength", "4096", ""},
		{"MaxBurstLength", "12", "Reject"},
		{"InitialR2T", "Maybe", "Reject"},
		{"iSCSIProtocolLevel", "2", "1"},
		{"iSCSIProtocolLevel", "0", "0"},
	}
	for _, c := range cases {
		n := negotiator{lim: lim, p: defaultSessionParams(lim)}
		if got := n.negotiate(c.key, c.offer); got != c.want {
			t.Errorf("%s=%s: answered %q, want %q", c.key, c.offer, got, c.want)
		}
	}
	// Cross-key rules: FirstBurstLength never exceeds MaxBurstLength, in
	// either order of the keys.
	for _, order := range [][2]string{{"MaxBurstLength", "FirstBurstLength"}, {"FirstBurstLength", "MaxBurstLength"}} {
		n := negotiator{lim: lim, p: defaultSessionParams(lim)}
		vals := map[string]string{"MaxBurstLength": "65536", "FirstBurstLength": "131072"}
		for _, k := range order {
			n.negotiate(k, vals[k])
		}
		p := n.finish()
		if p.FirstBurstLength > p.MaxBurstLength || p.MaxBurstLength != 65536 {
			t.Errorf("order %v: first %d max %d", order, p.FirstBurstLength, p.MaxBurstLength)
		}
	}
	// The target refuses unsolicited data when configured to.
	strict := lim
	strict.InitialR2T = true
	n := negotiator{lim: strict, p: defaultSessionParams(strict)}
	if got := n.negotiate("InitialR2T", "No"); got != "Yes" {
		t.Errorf("InitialR2T with a strict target: %q", got)
	}
}

// TestCmdSNWindowAccounting drives acceptCmdSN directly: slots are taken
// when ExpCmdSN passes a command, in one step with ExpCmdSN, and freed
// when it is answered, so MaxCmdSN never exceeds what the target accepts.
func TestCmdSNWindowAccounting(t *testing.T) {
	srv := NewServer(Config{QueueDepth: 4})
	c := &conn{srv: srv, log: srv.log, ahead: map[uint32]bool{}, tasks: map[uint32]*task{}, aheadT: map[uint32]*task{}}
	c.win.Store(uint64(10) << 32)
	check := func(wantExp, wantMax uint32) {
		t.Helper()
		if exp, maxSN := c.window(); exp != wantExp || maxSN != wantMax {
			t.Fatalf("window %d..%d, want %d..%d", exp, maxSN, wantExp, wantMax)
		}
	}
	check(10, 13)
	if ok, counted := c.acceptCmdSN(10, false, true); !ok || !counted {
		t.Fatal("in-order command not accepted and counted")
	}
	check(11, 13) // one slot used: MaxCmdSN unchanged
	if ok, _ := c.acceptCmdSN(14, false, true); ok {
		t.Fatal("CmdSN beyond MaxCmdSN accepted")
	}
	if ok, _ := c.acceptCmdSN(10, false, true); ok {
		t.Fatal("duplicate CmdSN accepted")
	}
	// 13 arrives before 11 and 12: accepted, not counted yet.
	ok, counted := c.acceptCmdSN(13, false, true)
	if !ok || counted {
		t.Fatalf("ahead command: ok %v counted %v", ok, counted)
	}
	ahead := &task{cmdSN: 13, itt: 1}
	c.register(ahead)
	check(11, 13)
	c.acceptCmdSN(11, false, false) // a NOP-Out: takes no slot
	check(12, 14)
	c.acceptCmdSN(12, false, true) // closes the gap: 12 and 13 counted
	check(14, 14)
	if !ahead.counted {
		t.Fatal("command passed by ExpCmdSN not counted")
	}
	c.releaseSlot()
	c.releaseSlot()
	c.releaseSlot()
	check(14, 17)
	// An ahead command aborted before the gap closes never takes a slot.
	c.acceptCmdSN(16, false, true)
	lost := &task{cmdSN: 16, itt: 2}
	c.register(lost)
	c.abortTasks(func(x *task) bool { return x == lost })
	c.acceptCmdSN(14, false, false)
	c.acceptCmdSN(15, false, false)
	check(17, 20)
}
