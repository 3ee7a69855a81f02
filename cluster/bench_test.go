package cluster

import (
	"context"
	"log/slog"
	"testing"
)

// nullReceiver persists nothing: the benchmarks measure the link.
type nullReceiver struct{}

func (nullReceiver) Receive(context.Context, string, []Shipment) error { return nil }

func benchPair(b *testing.B) *Link {
	lnA, lnB := listen(b, "127.0.0.2"), listen(b, "127.0.0.3")
	cfgA := Config{Cluster: "bench", Node: "a", Listener: lnA, Receiver: nullReceiver{}, Logger: slog.New(slog.DiscardHandler),
		Peers: []Peer{{Name: "b", Addr: lnB.Addr().String()}}}
	cfgB := cfgA
	cfgB.Node, cfgB.Listener, cfgB.Peers = "b", lnB, []Peer{{Name: "a", Addr: lnA.Addr().String()}}
	a, err := Start(context.Background(), cfgA)
	if err != nil {
		b.Fatal(err)
	}
	nb, err := Start(context.Background(), cfgB)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { a.Close(); nb.Close() })
	l := a.Link("b")
	if err := l.Replicate(context.Background(), "warm", 1, nil); err != nil {
		b.Fatal(err)
	}
	return l
}

// BenchmarkPipelined4KiB: 4 KiB shipments, up to 1024 in flight (a
// sender faster than the link for long would put the peer beyond max_lag).
func BenchmarkPipelined4KiB(b *testing.B) {
	l := benchPair(b)
	payload := make([]byte, 4096)
	b.SetBytes(int64(len(payload)))
	const window = 1024
	var ring [window]*Pending
	lsn := uint64(0)
	for b.Loop() {
		lsn++
		if old := ring[lsn%window]; old != nil {
			if err := old.Wait(context.Background()); err != nil {
				b.Fatal(err)
			}
		}
		p, err := l.Send("v", lsn, payload)
		if err != nil {
			b.Fatal(err)
		}
		ring[lsn%window] = p
	}
	if err := ring[lsn%window].Wait(context.Background()); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkReplicateRoundTrip: one 4 KiB shipment at a time (a FUA
// write's latency added by one peer).
func BenchmarkReplicateRoundTrip(b *testing.B) {
	l := benchPair(b)
	payload := make([]byte, 4096)
	lsn := uint64(0)
	for b.Loop() {
		lsn++
		if err := l.Replicate(context.Background(), "v", lsn, payload); err != nil {
			b.Fatal(err)
		}
	}
}
