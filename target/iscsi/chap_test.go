package iscsi

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// chapLogin runs a CHAP login from the initiator side. mutualSecret != ""
// asks the target to authenticate itself and verifies its answer.
func (ti *testInitiator) chapLogin(target, algs, user, secret, mutualSecret string) error {
	sec := []string{"InitiatorName", ti.name, "AuthMethod", "CHAP,None"}
	if target == "" {
		sec = append(sec, "SessionType", "Discovery")
	} else {
		sec = append(sec, "TargetName", target)
	}
	r, m, err := ti.loginPDU(0, 1, false, kvText(sec...))
	if err != nil {
		return err
	}
	if st := loginStatus(r); st != 0 {
		return fmt.Errorf("status %#04x", st)
	}
	if m["AuthMethod"] != "CHAP" {
		return fmt.Errorf("AuthMethod=%q", m["AuthMethod"])
	}
	r, m, err = ti.loginPDU(0, 1, false, kvText("CHAP_A", algs))
	if err != nil {
		return err
	}
	if st := loginStatus(r); st != 0 {
		return fmt.Errorf("status %#04x", st)
	}
	alg, _ := strconv.Atoi(m["CHAP_A"])
	id, _ := strconv.Atoi(m["CHAP_I"])
	ch, err := decodeCHAPBinary(m["CHAP_C"])
	if err != nil || chapHash(alg) == nil {
		return fmt.Errorf("bad challenge %v", m)
	}
	resp := chapResponse(alg, byte(id), secret, ch)
	keys := []string{"CHAP_N", user, "CHAP_R", encodeCHAPBinary(resp)}
	myID, myChallenge := byte(0x42), bytes.Repeat([]byte{0x17}, 16)
	if mutualSecret != "" {
		keys = append(keys, "CHAP_I", strconv.Itoa(int(myID)), "CHAP_C", encodeCHAPBinary(myChallenge))
	}
	r, m, err = ti.loginPDU(0, 1, true, kvText(keys...))
	if err != nil {
		return err
	}
	if st := loginStatus(r); st != 0 {
		return fmt.Errorf("status %#04x", st)
	}
	if mutualSecret != "" {
		got, err := decodeCHAPBinary(m["CHAP_R"])
		if err != nil || !bytes.Equal(got, chapResponse(alg, myID, mutualSecret, myChallenge)) {
			return fmt.Errorf("target failed mutual authentication: %v", m)
		}
	}
	if r[1]&0x80 == 0 {
		return fmt.Errorf("no transit after CHAP")
	}
	r, _, err = ti.loginPDU(1, 3, true, nil)
	if err != nil {
		return err
	}
	if st := loginStatus(r); st != 0 {
		return fmt.Errorf("status %#04x", st)
	}
	ti.tsih = r.u16(14)
	if target != "" {
		return ti.clearUA()
	}
	return nil
}

func TestCHAP(t *testing.T) {
	creds := &CHAP{User: "alice", Secret: "alice-secret-12", MutualUser: "target", MutualSecret: "target-secret-34"}
	env := startServer(t, Config{}, func(tc *TargetConfig) { tc.CHAP = creds })
	cases := []struct {
		name, algs, user, secret, mutual string
		ok                               bool
	}{
		{"sha256", "7,5", "alice", creds.Secret, "", true},
		{"md5", "5", "alice", creds.Secret, "", true},
		{"sha1", "6", "alice", creds.Secret, "", true},
		{"mutual-sha256", "7", "alice", creds.Secret, creds.MutualSecret, true},
		{"mutual-md5", "5", "alice", creds.Secret, creds.MutualSecret, true},
		{"wrong-secret", "7", "alice", "nope", "", false},
		{"wrong-user", "5", "bob", creds.Secret, "", false},
		{"no-common-algorithm", "99", "alice", creds.Secret, "", false},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ti := dialInitiator(t, env.addr)
			ti.isid += uint64(i)
			err := ti.chapLogin(env.iqn, tc.algs, tc.user, tc.secret, tc.mutual)
			if tc.ok && err != nil {
				t.Fatal(err)
			}
			if !tc.ok && (err == nil || !strings.Contains(err.Error(), "0x0201")) {
				t.Fatalf("want authentication failure, got %v", err)
			}
			if tc.ok {
				writeRead(t, ti, uint32(i), fill(512, byte(i)), 512)
			}
		})
	}
	t.Run("none-refused", func(t *testing.T) {
		ti := dialInitiator(t, env.addr)
		if err := ti.tryLogin(env.iqn); err == nil || !strings.Contains(err.Error(), "0x0201") {
			t.Fatalf("login without CHAP to a CHAP target: %v", err)
		}
	})
	t.Run("skip-security-stage", func(t *testing.T) {
		ti := dialInitiator(t, env.addr)
		r, _, err := ti.loginPDU(1, 3, true, kvText("InitiatorName", ti.name, "TargetName", env.iqn))
		if err != nil {
			t.Fatal(err)
		}
		if loginStatus(r) != loginAuthFailed {
			t.Fatalf("status %#04x", loginStatus(r))
		}
	})
}

func TestDiscoveryCHAP(t *testing.T) {
	env := startServer(t, Config{}, nil)
	env.srv.SetDiscoveryCHAP(&CHAP{User: "disc", Secret: "discovery-secret"})
	ti := dialInitiator(t, env.addr)
	if err := ti.tryLogin(""); err == nil {
		t.Fatal("discovery without CHAP accepted")
	}
	ti = dialInitiator(t, env.addr)
	if err := ti.chapLogin("", "7", "disc", "discovery-secret", ""); err != nil {
		t.Fatal(err)
	}
	// Normal sessions to a target without CHAP are unaffected.
	n := dialInitiator(t, env.addr)
	n.isid++
	n.login(env.iqn)
}

func TestCHAPReflectedChallengeRefused(t *testing.T) {
	creds := &CHAP{User: "u", Secret: "secret-one-12", MutualUser: "t", MutualSecret: "secret-two-34"}
	s := &chapState{creds: creds}
	if err := s.newChallenge(chapMD5); err != nil {
		t.Fatal(err)
	}
	resp := chapResponse(chapMD5, s.id, creds.Secret, s.challenge)
	_, err := s.verify([]kv{{"CHAP_N", "u"}, {"CHAP_R", encodeCHAPBinary(resp)},
		{"CHAP_I", "1"}, {"CHAP_C", encodeCHAPBinary(s.challenge)}})
	if err != errCHAPReflect {
		t.Fatalf("reflected challenge: %v", err)
	}
}

func TestCHAPBinaryEncodings(t *testing.T) {
	for in, want := range map[string]string{"0x0102ff": "\x01\x02\xff", "0XABC": "\x0a\xbc", "0bAQL/": "\x01\x02\xff"} {
		got, err := decodeCHAPBinary(in)
		if err != nil || string(got) != want {
			t.Errorf("%s: %x %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "0x", "0xzz", "12", "0b!!"} {
		if _, err := decodeCHAPBinary(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
