package iscsi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"
)

// Login status (class<<8 | detail), RFC 7143 §11.13.5.
const (
	loginSuccess            = 0x0000
	loginAuthFailed         = 0x0201
	loginForbidden          = 0x0202
	loginNotFound           = 0x0203
	loginUnsupportedVersion = 0x0205
	loginTooManyConns       = 0x0206
	loginMissingParam       = 0x0207
	loginSessionTypeUnsupp  = 0x0209
	loginNoSession          = 0x020a
	loginInvalidRequest     = 0x020b
	loginTargetError        = 0x0300
	loginServiceUnavailable = 0x0301
	loginOutOfResources     = 0x0302
)

// Login stages (CSG/NSG).
const (
	stageSecurity    = 0
	stageOperational = 1
	stageFullFeature = 3
)

var (
	errNotLogin    = errors.New("iscsi: first PDU is not a login request")
	errLoginFailed = errors.New("iscsi: login failed")
)

// loginState tracks one connection's login phase.
type loginState struct {
	started     bool
	isid        uint64
	tsih        uint16
	cid         uint16
	itt         uint32
	cmdSN       uint32
	statSN      uint32
	stage       int
	initiator   string
	discovery   bool
	target      *targetEntry
	creds       *CHAP
	authChosen  string // "", "None", "CHAP"
	authDone    bool
	chap        *chapState
	neg         negotiator
	sentTPGT    bool
	declaredMRD bool
	text        []byte // accumulated continued text
}

// login runs the login phase. On success the connection is ready for the
// full-feature phase (session registered, parameters applied).
func (c *conn) login() error {
	ls := &loginState{neg: negotiator{lim: c.srv.lim, p: defaultSessionParams(c.srv.lim)}}
	c.pr.maxData = loginMaxDataSegment
	var h pduHeader
	buf := make([]byte, loginMaxDataSegment)
	for {
		if err := c.pr.readHeader(&h); err != nil {
			return err
		}
		if h.bhs.opcode() != opLoginReq {
			return fmt.Errorf("%w: opcode %#x", errNotLogin, h.bhs.opcode())
		}
		n := h.bhs.dataLen()
		if err := c.pr.readData(&h, buf[:n]); err != nil {
			return err
		}
		if len(ls.text)+n > maxTextBytes {
			return c.loginReject(ls, &h, loginInvalidRequest)
		}
		ls.text = append(ls.text, buf[:n]...)
		flags := h.bhs.flags()
		if !ls.started {
			ls.started = true
			ls.isid = binary.BigEndian.Uint64(h.bhs[8:16]) >> 16
			ls.tsih = h.bhs.u16(14)
			ls.cid = h.bhs.u16(20)
			ls.itt = h.bhs.itt()
			ls.cmdSN = h.bhs.u32(offCmdSN)
			ls.statSN = h.bhs.u32(offExpSN)
			ls.stage = int(flags>>2) & 3
			if h.bhs[3] > 0 { // VersionMin
				return c.loginReject(ls, &h, loginUnsupportedVersion)
			}
		}
		if int(flags>>2)&3 != ls.stage {
			return c.loginReject(ls, &h, loginInvalidRequest)
		}
		if flags&0x40 != 0 { // C: more text follows; acknowledge with an empty response
			if flags&0x80 != 0 {
				return c.loginReject(ls, &h, loginInvalidRequest)
			}
			if err := c.sendLoginResponse(ls, &h, 0, false, 0, nil); err != nil {
				return err
			}
			continue
		}
		kvs, err := parseText(ls.text)
		ls.text = ls.text[:0]
		if err != nil {
			c.log.Debug("iscsi: bad login text", "err", err)
			return c.loginReject(ls, &h, loginInvalidRequest)
		}
		reply, status, transit, nsg := c.loginStep(ls, &h, kvs)
		if status != loginSuccess {
			return c.loginReject(ls, &h, status)
		}
		if transit && nsg == stageFullFeature {
			if st := c.enterFullFeature(ls); st != loginSuccess {
				return c.loginReject(ls, &h, st)
			}
		}
		if err := c.sendLoginResponse(ls, &h, 0, transit, nsg, reply); err != nil {
			return err
		}
		if transit {
			ls.stage = nsg
			if nsg == stageFullFeature {
				c.statSN = ls.statSN
				c.win.Store(uint64(ls.cmdSN) << 32)
				c.applyParams()
				return nil
			}
		}
	}
}

// loginStep processes the keys of one complete login request.
func (c *conn) loginStep(ls *loginState, h *pduHeader, kvs []kv) (reply []kv, status uint16, transit bool, nsg int) {
	flags := h.bhs.flags()
	wantTransit := flags&0x80 != 0
	nsg = int(flags & 3)
	if ls.initiator == "" {
		name, ok := lookup(kvs, "InitiatorName")
		if !ok || name == "" {
			return nil, loginMissingParam, false, 0
		}
		ls.initiator = name
		st, ok := lookup(kvs, "SessionType")
		switch {
		case !ok || st == "Normal":
		case st == "Discovery":
			ls.discovery = true
		default:
			return nil, loginSessionTypeUnsupp, false, 0
		}
		if ls.tsih != 0 && !c.srv.sessionExists(ls.tsih, ls.initiator, ls.isid) {
			return nil, loginNoSession, false, 0
		}
		if ls.discovery {
			c.srv.mu.Lock()
			ls.creds = cloneCHAP(c.srv.discoveryCHAP)
			c.srv.mu.Unlock()
		} else {
			tn, ok := lookup(kvs, "TargetName")
			if !ok || tn == "" {
				return nil, loginMissingParam, false, 0
			}
			e := c.srv.lookupTarget(tn)
			if e == nil || !e.reachableVia(c.localAddr) {
				return nil, loginNotFound, false, 0
			}
			if !e.allows(ls.initiator) {
				return nil, loginForbidden, false, 0
			}
			ls.target = e
			ls.creds = e.cfg.CHAP
		}
	}
	if ls.target != nil && !ls.sentTPGT {
		ls.sentTPGT = true
		reply = append(reply, kv{"TargetPortalGroupTag", strconv.Itoa(int(ls.target.cfg.TPGT))})
		if ls.target.cfg.Alias != "" {
			reply = append(reply, kv{"TargetAlias", ls.target.cfg.Alias})
		}
	}

	switch ls.stage {
	case stageSecurity:
		r, st := c.securityKeys(ls, kvs)
		if st != loginSuccess {
			return nil, st, false, 0
		}
		reply = append(reply, r...)
		if !ls.authDone {
			wantTransit = false
		}
		if wantTransit && nsg != stageOperational && nsg != stageFullFeature {
			return nil, loginInvalidRequest, false, 0
		}
	case stageOperational:
		if ls.creds != nil && !ls.authDone {
			return nil, loginAuthFailed, false, 0
		}
		if wantTransit && nsg != stageFullFeature {
			return nil, loginInvalidRequest, false, 0
		}
	default:
		return nil, loginInvalidRequest, false, 0
	}
	for _, e := range kvs {
		switch e.Key {
		case "InitiatorName", "SessionType", "TargetName", "InitiatorAlias", "AuthMethod":
			continue
		}
		if len(e.Key) > 5 && e.Key[:5] == "CHAP_" {
			continue
		}
		if v := ls.neg.negotiate(e.Key, e.Value); v != "" {
			reply = append(reply, kv{e.Key, v})
		}
	}
	if (ls.stage == stageOperational || (wantTransit && nsg == stageFullFeature)) && !ls.declaredMRD {
		ls.declaredMRD = true
		reply = append(reply, kv{"MaxRecvDataSegmentLength", strconv.Itoa(c.srv.lim.MaxRecvDataSegmentLength)})
	}
	return reply, loginSuccess, wantTransit, nsg
}

// securityKeys handles AuthMethod and the CHAP exchange.
func (c *conn) securityKeys(ls *loginState, kvs []kv) ([]kv, uint16) {
	if am, ok := lookup(kvs, "AuthMethod"); ok && ls.authChosen == "" {
		offers := splitList(am)
		switch {
		case ls.creds != nil && slices.Contains(offers, "CHAP"):
			ls.authChosen = "CHAP"
			return []kv{{"AuthMethod", "CHAP"}}, loginSuccess
		case ls.creds == nil && slices.Contains(offers, "None"):
			ls.authChosen = "None"
			ls.authDone = true
			return []kv{{"AuthMethod", "None"}}, loginSuccess
		default:
			return nil, loginAuthFailed
		}
	}
	if ls.authChosen == "" {
		// No AuthMethod offered: the default is None, acceptable only
		// when the target requires no authentication.
		if ls.creds != nil {
			return nil, loginAuthFailed
		}
		ls.authDone = true
		return nil, loginSuccess
	}
	if ls.authChosen != "CHAP" || ls.authDone {
		return nil, loginSuccess
	}
	if ls.chap == nil {
		a, ok := lookup(kvs, "CHAP_A")
		if !ok {
			return nil, loginAuthFailed
		}
		alg, ok := chooseCHAPAlgorithm(a)
		if !ok {
			return nil, loginAuthFailed
		}
		ls.chap = &chapState{creds: ls.creds}
		if err := ls.chap.newChallenge(alg); err != nil {
			return nil, loginTargetError
		}
		return []kv{
			{"CHAP_A", strconv.Itoa(alg)},
			{"CHAP_I", strconv.Itoa(int(ls.chap.id))},
			{"CHAP_C", encodeCHAPBinary(ls.chap.challenge)},
		}, loginSuccess
	}
	r, err := ls.chap.verify(kvs)
	if err != nil {
		c.log.Info("iscsi: CHAP failed", "initiator", ls.initiator, "err", err)
		return nil, loginAuthFailed
	}
	ls.authDone = true
	return r, loginSuccess
}

// enterFullFeature registers the session, reinstating an older one of the
// same initiator port.
func (c *conn) enterFullFeature(ls *loginState) uint16 {
	if ls.creds != nil && !ls.authDone {
		return loginAuthFailed
	}
	if ls.target != nil {
		// The configuration may have changed during login.
		e := c.srv.lookupTarget(ls.target.cfg.Name)
		if e == nil {
			return loginNotFound
		}
		if !e.allows(ls.initiator) {
			return loginForbidden
		}
		ls.target = e
	}
	c.params = ls.neg.finish()
	ss := &session{isid: ls.isid, cid: ls.cid, initiator: ls.initiator, target: ls.target, conn: c}
	old, st := c.srv.registerSession(ss, ls.tsih, ls.cid)
	for _, o := range old {
		c.log.Info("iscsi: reinstating session", "initiator", o.initiator, "tsih", o.tsih)
		o.conn.abort()
	}
	if !c.awaitEnded(old) {
		if st == loginSuccess {
			c.srv.unregisterSession(ss)
		}
		return loginServiceUnavailable
	}
	if st != loginSuccess {
		return st
	}
	ls.tsih = ss.tsih
	c.sess = ss
	c.discovery = ls.discovery
	c.initiator = ls.initiator
	c.cid = ls.cid
	if ls.target != nil {
		c.target.Store(ls.target)
		tpgt := ls.target.cfg.TPGT
		c.nexus.InitiatorName = ls.initiator
		c.nexus.InitiatorPort = fmt.Sprintf("%s,i,0x%012x", ls.initiator, ls.isid)
		c.nexus.TargetPort = fmt.Sprintf("%s,t,0x%04x", ls.target.cfg.Name, tpgt)
		c.nexus.RelativePortID = max(tpgt, 1)
	}
	return loginSuccess
}

// awaitEnded waits until the connections of the sessions a login
// reinstates have ended: their commands must have returned from the device
// server before the new session starts, or an old write could land after
// a new one. A device server that does not return within
// Server.reinstateWait gets the login answered "service unavailable"
// instead of a login left unanswered; the initiator retries (open-iscsi
// retries target errors), and the retry waits for the same sessions, which
// stay in Server.ending until their teardown ends.
func (c *conn) awaitEnded(old []*session) bool {
	if len(old) == 0 {
		return true
	}
	t := time.NewTimer(c.srv.reinstateWait)
	defer t.Stop()
	for _, o := range old {
		select {
		case <-o.conn.done:
		case <-t.C:
			o.conn.tmu.Lock()
			running := o.conn.active
			o.conn.tmu.Unlock()
			c.log.Warn("iscsi: session reinstatement: the old session's commands have not returned from the device server; login answered 'service unavailable', the initiator retries",
				"initiator", o.initiator, "tsih", o.tsih, "running", running, "waited", c.srv.reinstateWait)
			return false
		}
	}
	return true
}

func (c *conn) sendLoginResponse(ls *loginState, req *pduHeader, status uint16, transit bool, nsg int, reply []kv) error {
	var h bhs
	h[0] = opLoginResp
	f := byte(ls.stage&3) << 2
	if transit {
		f |= 0x80 | byte(nsg&3)
	}
	h[1] = f
	binary.BigEndian.PutUint64(h[8:16], ls.isid<<16)
	if status == loginSuccess && transit && nsg == stageFullFeature {
		h.putU16(14, ls.tsih)
	}
	h.putU32(16, req.bhs.itt())
	h.putU32(offCmdSN, ls.statSN)
	ls.statSN++
	h.putU32(offExpSN, ls.cmdSN)
	h.putU32(offMaxCmdSN, ls.cmdSN+uint32(c.srv.lim.QueueDepth)-1)
	h[36] = byte(status >> 8)
	h[37] = byte(status)
	var tb textBuilder
	for _, e := range reply {
		tb.add(e.Key, e.Value)
	}
	if err := c.pw.write(&h, tb.bytes()); err != nil {
		return err
	}
	return c.bw.Flush()
}

func (c *conn) loginReject(ls *loginState, req *pduHeader, status uint16) error {
	c.log.Info("iscsi: login rejected", "initiator", ls.initiator, "status", fmt.Sprintf("%#04x", status),
		"remote", c.nc.RemoteAddr().String())
	if err := c.sendLoginResponse(ls, req, status, false, 0, nil); err != nil {
		return err
	}
	return fmt.Errorf("%w: status %#04x", errLoginFailed, status)
}
