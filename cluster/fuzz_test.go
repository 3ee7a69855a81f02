package cluster

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"
)

// seeds are valid streams of every message type, and near misses.
func seeds() [][]byte {
	var all bytes.Buffer
	frames := [][]byte{
		frameBytes(MsgHello, rawHello().encode()),
		frameBytes(MsgWelcome, Welcome{Version: 1, Incarnation: 7, Cluster: "test", Node: "a"}.encode()),
		frameBytes(MsgRefuse, Refusal{Reason: ReasonOtherCluster, Detail: "no"}.encode()),
		frameBytes(MsgHeartbeat, heartbeat{Seq: 1, Time: 2}.encode()),
		frameBytes(MsgShip, append(shipHeader("v", 1), "payload"...)),
		frameBytes(MsgAck, ack{Volume: "v", LSN: 1}.encode(false)),
		frameBytes(MsgNack, ack{Volume: "v", LSN: 1, Reason: "disk"}.encode(true)),
		frameBytes(MsgRequest, append(request{ID: 1, Kind: "move"}.encodeHeader(), "db1"...)),
		frameBytes(MsgResponse, append(response{ID: 1}.encodeHeader(), "ok"...)),
		frameBytes(MsgHello, Hello{MinVersion: 2, MaxVersion: 9}.encode()),
	}
	out := [][]byte{nil, []byte("GET / HTTP/1.1\r\n\r\n"), {0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0}, {0xff, 0xff, 0xff, 0xff, 5}}
	for _, f := range frames {
		out = append(out, f)
		all.Write(f)
		bad := bytes.Clone(f)
		bad[len(bad)-1] ^= 1
		out = append(out, bad, f[:len(f)-1])
	}
	return append(out, all.Bytes())
}

// FuzzFrames: any byte stream decodes into frames and messages or an
// error; nothing panics, and what decodes re-encodes to the same bytes.
func FuzzFrames(f *testing.F) {
	for _, s := range seeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fr := newFrameReader(bytes.NewReader(data), 1<<20)
		for {
			typ, p, err := fr.next()
			if err != nil {
				return
			}
			if len(p) > len(data) {
				t.Fatalf("payload of %d bytes from %d bytes of input", len(p), len(data))
			}
			var re []byte
			switch typ {
			case MsgHello:
				h, err := decodeHello(p)
				if err == nil && h.MaxVersion >= MinProtocolVersion && h.MinVersion <= ProtocolVersion {
					re = h.encode()
				}
			case MsgWelcome:
				if w, err := decodeWelcome(p); err == nil {
					re = w.encode()
				}
			case MsgRefuse:
				if r, err := decodeRefusal(p); err == nil && r.Reason.known() && p[0] == byte(r.Reason) {
					re = r.encode()
				}
			case MsgHeartbeat:
				if h, err := decodeHeartbeat(p); err == nil {
					re = h.encode()
				}
			case MsgShip:
				if s, err := decodeShip(p); err == nil {
					re = append(shipHeader(s.Volume, s.LSN), s.Payload...)
				}
			case MsgAck, MsgNack:
				if a, err := decodeAck(p, typ == MsgNack); err == nil {
					re = a.encode(typ == MsgNack)
				}
			case MsgRequest:
				if r, err := decodeRequest(p); err == nil {
					re = append(r.encodeHeader(), r.Body...)
				}
			case MsgResponse:
				if r, err := decodeResponse(p); err == nil {
					re = append(r.encodeHeader(), r.Body...)
				}
			}
			if re != nil && !bytes.Equal(re, p) {
				t.Fatalf("%s: decoded and encoded again:\n%x\nwas\n%x", typ, re, p)
			}
		}
	})
}

// pipeListener hands net.Pipe ends to a Node.
type pipeListener struct {
	ch     chan net.Conn
	once   sync.Once
	closed chan struct{}
}

func newPipeListener() *pipeListener {
	return &pipeListener{ch: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

// FuzzAcceptor feeds any byte stream to a node's accepting side: it never
// panics or hangs, and a stream without a well-formed hello of a known
// peer never reaches the Receiver.
func FuzzAcceptor(f *testing.F) {
	for _, s := range seeds() {
		f.Add(s)
	}
	ln := newPipeListener()
	r := newMemReceiver()
	cfg := Config{Cluster: "test", Node: "a", Listener: ln, Receiver: r, Peers: []Peer{{Name: "b", Addr: "127.0.0.1:1"}},
		ConnectTimeout: time.Second, HeartbeatInterval: 50 * time.Millisecond, PeerTimeout: time.Second,
		ReconnectMin: time.Second, ReconnectMax: time.Second, Logger: slog.New(slog.DiscardHandler)}
	nd, err := Start(context.Background(), cfg)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { nd.Close() })
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		ln.ch <- server
		before := r.callCount()
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, _ = io.Copy(io.Discard, client)
		}()
		_ = client.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_, _ = client.Write(data)
		client.Close()
		<-done
		fr := newFrameReader(bytes.NewReader(data), DefaultMaxFrame)
		typ, p, err := fr.next()
		valid := err == nil && typ == MsgHello
		if valid {
			h, err := decodeHello(p)
			valid = err == nil && h.From == "b" && h.To == "a" && h.Cluster == "test"
		}
		if !valid && r.callCount() != before {
			t.Fatalf("a stream without a valid hello reached the Receiver")
		}
	})
}

// A header announcing the largest frame, followed by little, costs little
// memory: the buffer grows with what arrives.
func TestDecoderAllocatesWhatArrives(t *testing.T) {
	var h [HeaderSize]byte
	putHeader(&h, MsgShip, DefaultMaxFrame)
	data := append(h[:], make([]byte, 1000)...)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range 100 {
		fr := newFrameReader(bytes.NewReader(data), DefaultMaxFrame)
		if _, _, err := fr.next(); !errors.Is(err, ErrMalformed) {
			t.Fatalf("truncated frame: %v", err)
		}
	}
	runtime.ReadMemStats(&after)
	// 100 readers: a 64 KiB bufio buffer and a 64 KiB first step each
	if got := after.TotalAlloc - before.TotalAlloc; got > 100*(200<<10) {
		t.Errorf("allocated %d bytes for 100 truncated frames announcing %d bytes", got, DefaultMaxFrame)
	}
	putHeader(&h, MsgShip, DefaultMaxFrame+1)
	fr := newFrameReader(bytes.NewReader(h[:]), DefaultMaxFrame)
	if _, _, err := fr.next(); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("oversized frame: %v", err)
	}
}
