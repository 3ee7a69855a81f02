package iscsi

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/memvol"
	"github.com/cachelun/cachelun/internal/testkit"
	"github.com/cachelun/cachelun/target/scsi"
)

// testInitiator is a minimal raw iSCSI initiator for tests: it builds PDUs
// by hand so tests can also send malformed ones.
type testInitiator struct {
	t      testing.TB
	nc     net.Conn
	br     *bufio.Reader
	pr     pduReader
	pw     pduWriter
	bw     *bufio.Writer
	cmdSN  uint32
	statSN uint32
	itt    uint32
	isid   uint64
	tsih   uint16
	name   string
	params map[string]string
	attr   byte // task attribute of the next commands; 0 means SIMPLE
	cid    uint16
}

func dialInitiator(t testing.TB, addr string) *testInitiator {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ti := &testInitiator{t: t, nc: nc, isid: 0x400001370000, name: "iqn.2026-11.test:initiator"}
	ti.br = bufio.NewReader(nc)
	ti.bw = bufio.NewWriter(nc)
	ti.pr = pduReader{r: ti.br, maxData: 1 << 24}
	ti.pw = pduWriter{w: ti.bw}
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { nc.Close() })
	return ti
}

func (ti *testInitiator) nextITT() uint32 { ti.itt++; return ti.itt }

func (ti *testInitiator) writePDU(h *bhs, data []byte) error {
	if err := ti.pw.write(h, data); err != nil {
		return err
	}
	return ti.bw.Flush()
}

// readPDU reads one PDU with its data.
func (ti *testInitiator) readPDU() (bhs, []byte, error) {
	var h pduHeader
	if err := ti.pr.readHeader(&h); err != nil {
		return bhs{}, nil, err
	}
	data := make([]byte, h.bhs.dataLen())
	if err := ti.pr.readData(&h, data); err != nil {
		return bhs{}, nil, err
	}
	return h.bhs, data, nil
}

func kvText(kvs ...string) []byte {
	var tb textBuilder
	for i := 0; i+1 < len(kvs); i += 2 {
		tb.add(kvs[i], kvs[i+1])
	}
	return tb.bytes()
}

// loginPDU sends one login request and returns the response header and keys.
func (ti *testInitiator) loginPDU(csg, nsg int, transit bool, text []byte) (bhs, map[string]string, error) {
	var h bhs
	h[0] = 0x40 | opLoginReq
	f := byte(csg) << 2
	if transit {
		f |= 0x80 | byte(nsg)
	}
	h[1] = f
	binary.BigEndian.PutUint64(h[8:16], ti.isid<<16)
	h.putU16(14, ti.tsih)
	h.putU32(16, ti.nextITT())
	h.putU16(20, ti.cid)
	h.putU32(offCmdSN, ti.cmdSN)
	h.putU32(offExpSN, ti.statSN)
	if err := ti.writePDU(&h, text); err != nil {
		return bhs{}, nil, err
	}
	r, data, err := ti.readPDU()
	if err != nil {
		return bhs{}, nil, err
	}
	if r.opcode() != opLoginResp {
		return r, nil, fmt.Errorf("got opcode %#x", r.opcode())
	}
	ti.statSN = r.u32(offCmdSN) + 1
	kvs, err := parseText(data)
	if err != nil {
		return r, nil, err
	}
	m := map[string]string{}
	for _, e := range kvs {
		m[e.Key] = e.Value
	}
	return r, m, nil
}

func loginStatus(r bhs) uint16 { return uint16(r[36])<<8 | uint16(r[37]) }

// login performs a no-auth login to target ("" = discovery) with extra
// operational keys, and fails the test on error.
func (ti *testInitiator) login(target string, opKeys ...string) {
	ti.t.Helper()
	if err := ti.tryLogin(target, opKeys...); err != nil {
		ti.t.Fatal(err)
	}
}

func (ti *testInitiator) tryLogin(target string, opKeys ...string) error {
	sec := []string{"InitiatorName", ti.name, "AuthMethod", "None"}
	if target == "" {
		sec = append(sec, "SessionType", "Discovery")
	} else {
		sec = append(sec, "TargetName", target)
	}
	r, _, err := ti.loginPDU(0, 1, true, kvText(sec...))
	if err != nil {
		return err
	}
	if st := loginStatus(r); st != 0 {
		return fmt.Errorf("security stage status %#04x", st)
	}
	r, m, err := ti.loginPDU(1, 3, true, kvText(opKeys...))
	if err != nil {
		return err
	}
	if st := loginStatus(r); st != 0 {
		return fmt.Errorf("operational stage status %#04x", st)
	}
	if r[1]&0x80 == 0 || r[1]&3 != 3 {
		return fmt.Errorf("no transit to full feature: flags %#x", r[1])
	}
	ti.tsih = r.u16(14)
	ti.params = m
	if m["HeaderDigest"] == "CRC32C" {
		ti.pr.headerDigest, ti.pw.headerDigest = true, true
	}
	if m["DataDigest"] == "CRC32C" {
		ti.pr.dataDigest, ti.pw.dataDigest = true, true
	}
	if target != "" {
		return ti.clearUA()
	}
	return nil
}

// clearUA consumes the power-on unit attention every new nexus gets.
func (ti *testInitiator) clearUA() error {
	tur := ti.scsiCmd(0, make([]byte, 6), false, 0, nil, true)
	return ti.collect(map[uint32]*result{tur: {}}, nil)
}

// scsiCmd sends a SCSI command (immediate data in data) and returns its ITT.
func (ti *testInitiator) scsiCmd(lun uint64, cdb []byte, read bool, edtl uint32, data []byte, final bool) uint32 {
	var h bhs
	h[0] = opSCSICmd
	f := byte(1) // SIMPLE
	if ti.attr != 0 {
		f = ti.attr
	}
	if final {
		f |= 0x80
	}
	if read {
		f |= 0x40
	}
	if !read && edtl > 0 {
		f |= 0x20
	}
	h[1] = f
	h.putU64LUN(encodeLUN(lun))
	itt := ti.nextITT()
	h.putU32(16, itt)
	h.putU32(offTTT, edtl)
	h.putU32(offCmdSN, ti.cmdSN)
	ti.cmdSN++
	h.putU32(offExpSN, ti.statSN)
	copy(h[32:48], cdb)
	if err := ti.pw.write(&h, data); err != nil {
		ti.t.Fatal(err)
	}
	if err := ti.bw.Flush(); err != nil {
		ti.t.Fatal(err)
	}
	return itt
}

func (ti *testInitiator) dataOut(itt, ttt, datasn, off uint32, data []byte, final bool) error {
	var h bhs
	h[0] = opDataOut
	if final {
		h[1] = 0x80
	}
	h.putU32(16, itt)
	h.putU32(offTTT, ttt)
	h.putU32(offExpSN, ti.statSN)
	h.putU32(offDataSN, datasn)
	h.putU32(offBufOff, off)
	return ti.writePDU(&h, data)
}

// result collects one command's outcome.
type result struct {
	status   byte
	data     []byte
	sense    []byte
	flags    byte
	residual uint32
	statSN   uint32
}

// collect reads PDUs until every ITT in want has its status, answering R2Ts
// from the write buffers given.
func (ti *testInitiator) collect(want map[uint32]*result, writes map[uint32][]byte) error {
	pending := len(want)
	for pending > 0 {
		h, data, err := ti.readPDU()
		if err != nil {
			return err
		}
		itt := h.itt()
		switch h.opcode() {
		case opDataIn:
			r := want[itt]
			if r == nil {
				return fmt.Errorf("Data-In for unknown itt %d", itt)
			}
			off := h.u32(offBufOff)
			if need := int(off) + len(data); need > len(r.data) {
				r.data = append(r.data, make([]byte, need-len(r.data))...)
			}
			copy(r.data[off:], data)
			if h[1]&0x01 != 0 {
				r.status, r.flags, r.residual, r.statSN = h[3], h[1], h.u32(offResidual), h.u32(offCmdSN)
				pending--
			}
		case opSCSIResp:
			r := want[itt]
			if r == nil {
				return fmt.Errorf("response for unknown itt %d", itt)
			}
			r.status, r.flags, r.residual, r.statSN = h[3], h[1], h.u32(offResidual), h.u32(offCmdSN)
			if len(data) >= 2 {
				n := int(binary.BigEndian.Uint16(data))
				r.sense = data[2 : 2+n]
			}
			pending--
		case opR2T:
			buf := writes[itt]
			off, n := h.u32(offBufOff), h.u32(offResidual)
			seg := ti.maxSeg()
			var sn uint32
			for p := off; p < off+n; p += seg {
				k := min(seg, off+n-p)
				if err := ti.dataOut(itt, h.u32(offTTT), sn, p, buf[p:p+k], p+k == off+n); err != nil {
					return err
				}
				sn++
			}
		case opNOPIn:
			if itt == reservedTag {
				var o bhs
				o[0] = 0x40 | opNOPOut
				o[1] = 0x80
				o.putU32(16, reservedTag)
				o.putU32(offTTT, h.u32(offTTT))
				o.putU32(offCmdSN, ti.cmdSN)
				if err := ti.writePDU(&o, nil); err != nil {
					return err
				}
			}
		case opReject:
			return fmt.Errorf("reject reason %#x", h[2])
		default:
			return fmt.Errorf("unexpected opcode %#x", h.opcode())
		}
	}
	return nil
}

func (ti *testInitiator) maxSeg() uint32 {
	if v, ok := ti.params["MaxRecvDataSegmentLength"]; ok {
		var n uint32
		fmt.Sscan(v, &n)
		if n > 0 {
			return n
		}
	}
	return 8192
}

// testEnv is a server on 127.0.0.1:0 with one target over memvol.
type testEnv struct {
	srv  *Server
	dev  *countingTarget
	vol  *gatedVolume
	addr string
	iqn  string
	stop func()
}

const testIQN = "iqn.2026-11.test.cachelun:t1"

func startServer(t testing.TB, cfg Config, tweak func(*TargetConfig)) *testEnv {
	t.Helper()
	mv, err := memvol.New(16<<20, 512)
	if err != nil {
		t.Fatal(err)
	}
	vol := &gatedVolume{Volume: mv}
	dev := &countingTarget{Target: scsi.NewTarget(scsi.TargetConfig{Name: testIQN})}
	if _, err := dev.AddLU(0, scsi.LUConfig{Volume: vol, WriteCache: true, SerialNumber: "t1"}); err != nil {
		t.Fatal(err)
	}
	srv := NewServer(cfg)
	tc := TargetConfig{Name: testIQN, SCSI: dev, TPGT: 1}
	if tweak != nil {
		tweak(&tc)
	}
	if err := srv.AddTarget(tc); err != nil {
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
	env := &testEnv{srv: srv, dev: dev, vol: vol, addr: l.Addr().String(), iqn: testIQN}
	var once sync.Once
	env.stop = func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			// Every path that ends a command gives its buffer budget back.
			if n := srv.bufBytes.Load(); n != 0 {
				t.Errorf("%d buffer bytes still reserved after every connection ended", n)
			}
		})
	}
	t.Cleanup(env.stop)
	return env
}

func TestLoginReadWrite(t *testing.T) {
	env := startServer(t, Config{}, nil)
	ti := dialInitiator(t, env.addr)
	ti.login(env.iqn, "MaxRecvDataSegmentLength", "8192", "ImmediateData", "Yes", "InitialR2T", "No",
		"FirstBurstLength", "65536", "MaxBurstLength", "262144")
	payload := make([]byte, 64<<10)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	w := ti.scsiCmd(0, testkit.Write10(8, 128), false, uint32(len(payload)), payload[:8192], false)
	// unsolicited data up to FirstBurstLength is not sent by this client; R2Ts answer the rest.
	res := map[uint32]*result{w: {}}
	// With F=0 the target expects unsolicited Data-Out for [8192, 65536).
	var sn uint32
	for off := 8192; off < len(payload); off += 8192 {
		if err := ti.dataOut(w, reservedTag, sn, uint32(off), payload[off:off+8192], off+8192 == len(payload)); err != nil {
			t.Fatal(err)
		}
		sn++
	}
	if err := ti.collect(res, map[uint32][]byte{w: payload}); err != nil {
		t.Fatal(err)
	}
	if res[w].status != 0 {
		t.Fatalf("write status %#x sense %x", res[w].status, res[w].sense)
	}
	r := ti.scsiCmd(0, testkit.Read10(8, 128), true, uint32(len(payload)), nil, true)
	res = map[uint32]*result{r: {}}
	if err := ti.collect(res, nil); err != nil {
		t.Fatal(err)
	}
	if res[r].status != 0 || string(res[r].data) != string(payload) {
		t.Fatalf("read back: status %#x, %d bytes, equal=%v", res[r].status, len(res[r].data), string(res[r].data) == string(payload))
	}
}

var _ = io.EOF
var _ = strings.Contains

func newBuf(nc net.Conn) (*bufio.Reader, *bufio.Writer) {
	return bufio.NewReader(nc), bufio.NewWriter(nc)
}
