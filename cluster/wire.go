package cluster

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Wire constants (see doc.go, "Wire format").
const (
	// Magic opens the payload of every Hello and Welcome.
	Magic = "CLUNPEER"
	// ProtocolVersion is the peer-link protocol this build speaks;
	// MinProtocolVersion the oldest it still accepts.
	ProtocolVersion    uint16 = 1
	MinProtocolVersion uint16 = 1
	// HeaderSize is the size of a frame header.
	HeaderSize = 12
	// DefaultMaxFrame is the largest frame payload a node accepts unless
	// configured otherwise.
	DefaultMaxFrame = 16 << 20
	// minMaxFrame leaves room for the largest control message.
	minMaxFrame = 4 << 10
	// maxName bounds the names (cluster, node, volume, request kind).
	maxName = 255
)

// MsgType is a frame's type.
type MsgType uint8

// Message types.
const (
	MsgHello     MsgType = 1 // dialer → acceptor: who I am, who I expect you to be
	MsgWelcome   MsgType = 2 // acceptor → dialer: accepted
	MsgRefuse    MsgType = 3 // acceptor → dialer (or dialer → acceptor): refused, with the reason
	MsgHeartbeat MsgType = 4 // either way; the acceptor echoes the dialer's
	MsgShip      MsgType = 5 // dialer → acceptor: a kset shipment {volume, LSN, payload}
	MsgAck       MsgType = 6 // acceptor → dialer: {volume, LSN} and every LSN before it are durable
	MsgNack      MsgType = 7 // acceptor → dialer: {volume, LSN} could not be persisted, with the reason
	MsgRequest   MsgType = 8 // dialer → acceptor: {id, kind, body}
	MsgResponse  MsgType = 9 // acceptor → dialer: {id, status, body}
	maxMsgType           = MsgResponse
)

var msgNames = [...]string{"", "hello", "welcome", "refuse", "heartbeat", "ship", "ack", "nack", "request", "response"}

func (t MsgType) String() string {
	if t >= 1 && t <= maxMsgType {
		return msgNames[t]
	}
	return fmt.Sprintf("type-%d", uint8(t))
}

// Decoding errors. A connection that yields one is garbage: it is refused
// (during the handshake) or closed (after it).
var (
	ErrFrameTooLarge = errors.New("cluster: frame larger than the maximum")
	ErrChecksum      = errors.New("cluster: frame checksum mismatch")
	ErrMalformed     = errors.New("cluster: malformed frame")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// frameHeader encodes the header of a frame of type t whose payload is n
// bytes and whose CRC32C over header bytes 0..8 and payload is crc.
func putHeader(h *[HeaderSize]byte, t MsgType, n int) {
	binary.BigEndian.PutUint32(h[0:4], uint32(n))
	h[4] = byte(t)
	h[5] = 0 // flags
	h[6], h[7] = 0, 0
}

// writeFrame writes one frame to w.
func writeFrame(w io.Writer, t MsgType, parts ...[]byte) error {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	var h [HeaderSize]byte
	putHeader(&h, t, n)
	crc := crc32.Update(0, castagnoli, h[:8])
	for _, p := range parts {
		crc = crc32.Update(crc, castagnoli, p)
	}
	binary.BigEndian.PutUint32(h[8:12], crc)
	if _, err := w.Write(h[:]); err != nil {
		return err
	}
	for _, p := range parts {
		if _, err := w.Write(p); err != nil {
			return err
		}
	}
	return nil
}

// frameReader reads frames. It never allocates more than the bytes that
// actually arrived plus one growth step: a header announcing a large frame
// costs nothing until its payload comes.
type frameReader struct {
	r   *bufio.Reader
	max int
	hdr [HeaderSize]byte
}

// growStep is the most a frame's buffer grows ahead of the data received.
const growStep = 64 << 10

func newFrameReader(r io.Reader, max int) *frameReader {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReaderSize(r, 64<<10)
	}
	return &frameReader{r: br, max: max}
}

// next reads one frame and checks its header and checksum. io.EOF means
// the stream ended cleanly between frames.
func (fr *frameReader) next() (MsgType, []byte, error) {
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, nil, fmt.Errorf("%w: truncated header", ErrMalformed)
		}
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(fr.hdr[0:4])
	t := MsgType(fr.hdr[4])
	switch {
	case int64(n) > int64(fr.max):
		return 0, nil, fmt.Errorf("%w: %d bytes announced, at most %d", ErrFrameTooLarge, n, fr.max)
	case t < 1 || t > maxMsgType:
		return 0, nil, fmt.Errorf("%w: unknown type %d", ErrMalformed, fr.hdr[4])
	case fr.hdr[5] != 0 || fr.hdr[6] != 0 || fr.hdr[7] != 0:
		return 0, nil, fmt.Errorf("%w: flags or reserved bytes set", ErrMalformed)
	}
	size := int(n)
	buf := make([]byte, 0, min(size, growStep))
	for len(buf) < size {
		if len(buf) == cap(buf) {
			// at most twice what arrived: garbage announcing a large
			// frame and sending little costs little
			nb := make([]byte, len(buf), min(size, 2*cap(buf)))
			copy(nb, buf)
			buf = nb
		}
		m, err := io.ReadFull(fr.r, buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return 0, nil, fmt.Errorf("%w: truncated payload", ErrMalformed)
			}
			return 0, nil, err
		}
	}
	crc := crc32.Update(0, castagnoli, fr.hdr[:8])
	crc = crc32.Update(crc, castagnoli, buf)
	if crc != binary.BigEndian.Uint32(fr.hdr[8:12]) {
		return 0, nil, ErrChecksum
	}
	return t, buf, nil
}

// wholeFrameBuffered reports whether the next frame is entirely in the
// read buffer (so reading it will not block).
func (fr *frameReader) wholeFrameBuffered() bool {
	if fr.r.Buffered() < HeaderSize {
		return false // Peek would wait for the rest of the header
	}
	b, err := fr.r.Peek(HeaderSize)
	if err != nil {
		return false
	}
	n := binary.BigEndian.Uint32(b[0:4])
	return int64(fr.r.Buffered()) >= int64(HeaderSize)+int64(n)
}

// ---- message payloads ----

// dec reads a payload; the first failure sticks.
type dec struct {
	b   []byte
	err error
}

func (d *dec) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrMalformed, what)
	}
}

func (d *dec) bytes(n int, what string) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || len(d.b) < n {
		d.fail("short " + what)
		return nil
	}
	out := d.b[:n:n]
	d.b = d.b[n:]
	return out
}

func (d *dec) u8(what string) uint8 {
	if b := d.bytes(1, what); b != nil {
		return b[0]
	}
	return 0
}

func (d *dec) u16(what string) uint16 {
	if b := d.bytes(2, what); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (d *dec) u64(what string) uint64 {
	if b := d.bytes(8, what); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

// name reads a string of 1..255 printable ASCII bytes after its length.
func (d *dec) name(what string) string {
	n := int(d.u8(what + " length"))
	b := d.bytes(n, what)
	if d.err != nil {
		return ""
	}
	if n == 0 {
		d.fail("empty " + what)
		return ""
	}
	for _, c := range b {
		if c <= ' ' || c >= 0x7f {
			d.fail("non-printable byte in " + what)
			return ""
		}
	}
	return string(b)
}

// text reads a UTF-8-agnostic message of up to 65535 bytes.
func (d *dec) text(what string) string {
	n := int(d.u16(what + " length"))
	return string(d.bytes(n, what))
}

func (d *dec) rest() []byte {
	if d.err != nil {
		return nil
	}
	out := d.b
	d.b = nil
	return out
}

func (d *dec) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail(fmt.Sprintf("%d trailing bytes", len(d.b)))
	}
	return d.err
}

func putName(b []byte, s string) []byte { return append(append(b, byte(len(s))), s...) }

func putText(b []byte, s string) []byte {
	if len(s) > 0xffff {
		s = s[:0xffff]
	}
	return append(binary.BigEndian.AppendUint16(b, uint16(len(s))), s...)
}

// validName reports whether s can travel as a name.
func validName(s string) bool {
	if s == "" || len(s) > maxName {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// Hello opens a connection: the dialer's protocol range, cluster, name,
// incarnation (random per Link, the same across its reconnects) and the
// name it expects the acceptor to have. Its first 12 bytes (magic,
// versions) keep their place in every protocol version.
type Hello struct {
	MinVersion, MaxVersion uint16
	Incarnation            uint64
	Cluster, From, To      string
}

func (h Hello) encode() []byte {
	b := append([]byte(Magic), 0, 0, 0, 0)
	binary.BigEndian.PutUint16(b[8:], h.MinVersion)
	binary.BigEndian.PutUint16(b[10:], h.MaxVersion)
	b = binary.BigEndian.AppendUint64(b, h.Incarnation)
	b = putName(b, h.Cluster)
	b = putName(b, h.From)
	return putName(b, h.To)
}

// errBadMagic: the first frame is not this protocol's.
var errBadMagic = fmt.Errorf("%w: bad magic", ErrMalformed)

func decodeHello(p []byte) (Hello, error) {
	d := dec{b: p}
	if string(d.bytes(len(Magic), "magic")) != Magic {
		return Hello{}, errBadMagic
	}
	h := Hello{MinVersion: d.u16("min version"), MaxVersion: d.u16("max version")}
	if d.err == nil && h.MinVersion > h.MaxVersion {
		d.fail("min version above max version")
	}
	if d.err != nil {
		return Hello{}, d.err
	}
	// a version this build does not speak may lay out the rest otherwise:
	// the versions are enough to refuse it
	if h.MaxVersion < MinProtocolVersion || h.MinVersion > ProtocolVersion {
		return h, nil
	}
	h.Incarnation = d.u64("incarnation")
	h.Cluster, h.From, h.To = d.name("cluster"), d.name("from"), d.name("to")
	return h, d.end()
}

// Welcome accepts a Hello: the version both will speak, and the
// acceptor's cluster, name and incarnation.
type Welcome struct {
	Version       uint16
	Incarnation   uint64
	Cluster, Node string
}

func (w Welcome) encode() []byte {
	b := binary.BigEndian.AppendUint16([]byte(Magic), w.Version)
	b = binary.BigEndian.AppendUint64(b, w.Incarnation)
	b = putName(b, w.Cluster)
	return putName(b, w.Node)
}

func decodeWelcome(p []byte) (Welcome, error) {
	d := dec{b: p}
	if string(d.bytes(len(Magic), "magic")) != Magic {
		return Welcome{}, errBadMagic
	}
	w := Welcome{Version: d.u16("version"), Incarnation: d.u64("incarnation")}
	w.Cluster, w.Node = d.name("cluster"), d.name("node")
	return w, d.end()
}

// Refusal is a refused handshake: the reason and a sentence for the log.
type Refusal struct {
	Reason Reason
	Detail string
}

func (r Refusal) encode() []byte { return putText([]byte{byte(r.Reason)}, r.Detail) }

func decodeRefusal(p []byte) (Refusal, error) {
	d := dec{b: p}
	r := Refusal{Reason: Reason(d.u8("reason"))}
	r.Detail = d.text("detail")
	if d.err == nil && !r.Reason.known() {
		r.Reason = ReasonGarbage
	}
	return r, d.end()
}

// heartbeat carries a sequence number and the sender's clock (for the log;
// nothing depends on the clocks agreeing).
type heartbeat struct {
	Seq  uint64
	Time int64 // Unix nanoseconds
}

func (h heartbeat) encode() []byte {
	b := binary.BigEndian.AppendUint64(nil, h.Seq)
	return binary.BigEndian.AppendUint64(b, uint64(h.Time))
}

func decodeHeartbeat(p []byte) (heartbeat, error) {
	d := dec{b: p}
	h := heartbeat{Seq: d.u64("seq"), Time: int64(d.u64("time"))}
	return h, d.end()
}

// Shipment is one kset shipped to a peer: the volume (its name, the same
// on every node), the LSN and the opaque bytes the Receiver persists.
type Shipment struct {
	Volume  string
	LSN     uint64
	Payload []byte
}

// shipHeader encodes a shipment's header; the payload follows it in the
// same frame.
func shipHeader(volume string, lsn uint64) []byte {
	return binary.BigEndian.AppendUint64(putName(nil, volume), lsn)
}

func decodeShip(p []byte) (Shipment, error) {
	d := dec{b: p}
	s := Shipment{Volume: d.name("volume"), LSN: d.u64("lsn")}
	if d.err == nil && s.LSN == 0 {
		d.fail("LSN 0")
	}
	s.Payload = d.rest()
	return s, d.err
}

// ack acknowledges (or, in a nack, fails) {volume, LSN}.
type ack struct {
	Volume string
	LSN    uint64
	Reason string // nack only
}

func (a ack) encode(nack bool) []byte {
	b := binary.BigEndian.AppendUint64(putName(nil, a.Volume), a.LSN)
	if nack {
		b = putText(b, a.Reason)
	}
	return b
}

func decodeAck(p []byte, nack bool) (ack, error) {
	d := dec{b: p}
	a := ack{Volume: d.name("volume"), LSN: d.u64("lsn")}
	if nack {
		a.Reason = d.text("reason")
	}
	return a, d.end()
}

// request is a control call (ownership moves and the like, later).
type request struct {
	ID   uint64
	Kind string
	Body []byte
}

func (r request) encodeHeader() []byte {
	return putName(binary.BigEndian.AppendUint64(nil, r.ID), r.Kind)
}

func decodeRequest(p []byte) (request, error) {
	d := dec{b: p}
	r := request{ID: d.u64("id"), Kind: d.name("kind")}
	r.Body = d.rest()
	return r, d.err
}

// response answers a request: status 0 and the body, or status 1 and an
// error message as the body.
type response struct {
	ID     uint64
	Failed bool
	Body   []byte
}

func (r response) encodeHeader() []byte {
	st := byte(0)
	if r.Failed {
		st = 1
	}
	return append(binary.BigEndian.AppendUint64(nil, r.ID), st)
}

func decodeResponse(p []byte) (response, error) {
	d := dec{b: p}
	r := response{ID: d.u64("id")}
	switch d.u8("status") {
	case 0:
	case 1:
		r.Failed = true
	default:
		d.fail("bad status")
	}
	r.Body = d.rest()
	return r, d.err
}
