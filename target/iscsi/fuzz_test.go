package iscsi

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"net"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/testkit"
)

// FuzzPDUReader feeds arbitrary bytes to the PDU reader with and without
// digests: it must return PDUs or errors, never panic, never read past
// the negotiated data segment limit.
func FuzzPDUReader(f *testing.F) {
	var h bhs
	h[0] = opSCSICmd
	h[1] = 0xc1
	h.setDataLen(5)
	f.Add(append(h[:], 1, 2, 3, 4, 5, 0, 0, 0), byte(0))
	h[4] = 1
	f.Add(append(append(h[:], 0, 5, 1, 0), make([]byte, 12)...), byte(3))
	f.Add(make([]byte, 47), byte(1))
	f.Fuzz(func(t *testing.T, in []byte, mode byte) {
		pr := pduReader{r: bytes.NewReader(in), headerDigest: mode&1 != 0, dataDigest: mode&2 != 0, maxData: 8192}
		buf := make([]byte, 8192)
		for range 64 {
			var ph pduHeader
			if err := pr.readHeader(&ph); err != nil {
				return
			}
			n := ph.bhs.dataLen()
			if n > pr.maxData {
				t.Fatalf("accepted %d-byte segment with limit %d", n, pr.maxData)
			}
			if len(ph.ahs) > 0 {
				parseAHS(ph.ahs)
			}
			var dst []byte
			if mode&4 != 0 {
				dst = buf[:n]
			}
			if err := pr.readData(&ph, dst); err != nil {
				return
			}
		}
	})
}

// FuzzPDURoundTrip: what the writer encodes, the reader decodes to the
// same header and data, with digests verified.
func FuzzPDURoundTrip(f *testing.F) {
	f.Add(make([]byte, 48), []byte("hello"), true, true)
	f.Fuzz(func(t *testing.T, hdr, data []byte, hd, dd bool) {
		if len(data) > 1<<16 {
			return
		}
		var h bhs
		copy(h[:], hdr)
		var out bytes.Buffer
		pw := pduWriter{w: &out, headerDigest: hd, dataDigest: dd}
		if err := pw.write(&h, data); err != nil {
			t.Fatal(err)
		}
		pr := pduReader{r: &out, headerDigest: hd, dataDigest: dd, maxData: 1 << 16}
		var ph pduHeader
		if err := pr.readHeader(&ph); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, ph.bhs.dataLen())
		if err := pr.readData(&ph, got); err != nil {
			t.Fatal(err)
		}
		if ph.bhs != h || !bytes.Equal(got, data) || out.Len() != 0 {
			t.Fatal("round trip changed the PDU")
		}
	})
}

// FuzzParseText: the key=value parser never panics and what it accepts
// re-encodes to text it parses identically.
func FuzzParseText(f *testing.F) {
	f.Add([]byte("InitiatorName=iqn.x\x00AuthMethod=CHAP,None\x00"))
	f.Add([]byte("a=\x00=b\x00c"))
	f.Add([]byte("k=v\x00k=w\x00"))
	f.Fuzz(func(t *testing.T, in []byte) {
		kvs, err := parseText(in)
		if err != nil {
			return
		}
		var tb textBuilder
		for _, e := range kvs {
			tb.add(e.Key, e.Value)
		}
		again, err := parseText(tb.bytes())
		if err != nil || len(again) != len(kvs) {
			t.Fatalf("re-parse: %v (%d vs %d keys)", err, len(again), len(kvs))
		}
		for i := range kvs {
			if kvs[i] != again[i] {
				t.Fatalf("key %d: %q vs %q", i, kvs[i], again[i])
			}
		}
	})
}

// FuzzNegotiation drives the operational negotiation with arbitrary keys:
// results always respect the target's limits and the RFC's cross-key rules.
func FuzzNegotiation(f *testing.F) {
	f.Add([]byte("MaxBurstLength=512\x00FirstBurstLength=99999999\x00MaxRecvDataSegmentLength=4096\x00"))
	f.Add([]byte("HeaderDigest=CRC32C,None\x00DataDigest=Foo\x00ErrorRecoveryLevel=2\x00MaxConnections=8\x00"))
	f.Add([]byte("InitialR2T=No\x00ImmediateData=Yes\x00MaxOutstandingR2T=100\x00X-foo=bar\x00"))
	f.Fuzz(func(t *testing.T, in []byte) {
		kvs, err := parseText(in)
		if err != nil {
			return
		}
		lim := limits{MaxRecvDataSegmentLength: 262144, MaxBurstLength: 1 << 20, FirstBurstLength: 262144,
			MaxOutstandingR2T: 8, ImmediateData: true, QueueDepth: 128}
		n := negotiator{lim: lim, p: defaultSessionParams(lim)}
		for _, e := range kvs {
			v := n.negotiate(e.Key, e.Value)
			if v != "" && n.negotiate(e.Key, e.Value) != v {
				t.Fatalf("%s answered twice differently", e.Key)
			}
		}
		p := n.finish()
		if p.MaxBurstLength > lim.MaxBurstLength || p.FirstBurstLength > p.MaxBurstLength ||
			p.FirstBurstLength > lim.FirstBurstLength || p.MaxOutstandingR2T > lim.MaxOutstandingR2T ||
			p.MaxOutstandingR2T < 1 || p.MaxXmitDataSegment < 512 || p.MaxRecvDataSegment != lim.MaxRecvDataSegmentLength ||
			p.MaxBurstLength < 512 || p.FirstBurstLength < 512 {
			t.Fatalf("negotiated out of bounds: %+v", p)
		}
	})
}

// FuzzLoginStream sends arbitrary bytes as the first PDUs of a connection
// and then, if the server is still talking, arbitrary full-feature PDUs
// after a real login. The server must survive and keep serving.
func FuzzLoginStream(f *testing.F) {
	env := startServer(f, Config{NOPInterval: -1}, nil)
	var h bhs
	h[0] = 0x40 | opLoginReq
	h[1] = 0x87
	login := append([]byte(nil), h[:]...)
	f.Add([]byte{}, false)
	f.Add(login, false)
	var d bhs
	d[0] = opDataOut
	d.putU32(16, 1)
	d.setDataLen(8)
	f.Add(append(d[:], make([]byte, 8)...), true)
	var c bhs
	c[0] = opSCSICmd
	c[1] = 0xa1
	c.putU32(offTTT, 512)
	copy(c[32:], testkit.Write10(0, 1))
	c.setDataLen(512)
	f.Add(append(c[:], make([]byte, 512)...), true)
	f.Fuzz(func(t *testing.T, in []byte, afterLogin bool) {
		ti := dialInitiator(t, env.addr)
		if afterLogin {
			if err := ti.tryLogin(env.iqn); err != nil {
				t.Fatal(err)
			}
		}
		ti.nc.Write(in)
		ti.nc.(*net.TCPConn).CloseWrite()
		ti.nc.SetReadDeadline(time.Now().Add(3 * time.Second))
		for {
			if _, _, err := ti.readPDU(); err != nil {
				break
			}
		}
		ok := dialInitiator(t, env.addr)
		ok.isid = 0xabc
		if err := ok.tryLogin(env.iqn); err != nil {
			t.Fatalf("server unusable after stream: %v", err)
		}
	})
}

func TestDigestIsCRC32C(t *testing.T) {
	// RFC 3720 B.4 test vector: 32 bytes of zero -> 0x8a9136aa.
	if got := crc32.Checksum(make([]byte, 32), castagnoli); got != 0x8a9136aa {
		t.Fatalf("crc32c(zeros) = %#x", got)
	}
	var out bytes.Buffer
	pw := pduWriter{w: &out, headerDigest: true}
	var h bhs
	pw.write(&h, nil)
	if d := binary.LittleEndian.Uint32(out.Bytes()[48:]); d != crc32.Checksum(make([]byte, 48), castagnoli) {
		t.Fatalf("header digest %#x", d)
	}
}

func TestLUNEncoding(t *testing.T) {
	for _, l := range []uint64{0, 1, 255, 256, 1000, 16383} {
		if got := decodeLUN(encodeLUN(l)); got != l {
			t.Errorf("lun %d -> %d", l, got)
		}
	}
	if decodeLUN(0xc1<<56) < 1<<63 {
		t.Error("unsupported addressing method decoded to a plain LUN")
	}
}
