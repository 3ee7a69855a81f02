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
