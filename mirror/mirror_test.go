package mirror_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/cluster"
	"github.com/cachelun/cachelun/internal/testkit"
	"github.com/cachelun/cachelun/mirror"
	"github.com/cachelun/cachelun/persist"
)

const volSize = 32 << 20

func openCache(t *testing.T, dev *backend.Memory) (*cachecore.Cache, *cachecore.Volume) {
	return openCacheOn(t, dev)
}

func openCacheOn(t *testing.T, dev backend.Device) (*cachecore.Cache, *cachecore.Volume) {
	t.Helper()
	ctx := context.Background()
	m := persist.NewCrashMedia(persist.SegmentsOffset+48*(1<<20), persist.TearDAX)
	st, err := persist.Format(m, persist.FormatOptions{SegmentSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	// Writeback only trickles (the dirty target is never reached) and
	// runs flat out when asked (Drain): the backing device holds a prefix
	// of the journal when the owner dies.
	c, err := cachecore.Open(ctx, st, cachecore.Config{JournalFlushInterval: 5 * time.Millisecond,
		Writeback: cachecore.WritebackConfig{IdleAfter: 1 << 62, TargetDirtyPercent: 90, HighWatermarkPercent: 95}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(ctx) })
	v, err := c.AddVolume(ctx, "vol", dev, cachecore.VolumeConfig{Mode: cachecore.ModeWriteback, BlockSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	return c, v
}

// nodeListeners listens for nodes a (127.0.0.2) and b (127.0.0.3).
func nodeListeners(t *testing.T) (net.Listener, net.Listener) {
	t.Helper()
	la, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	lb, err := net.Listen("tcp", "127.0.0.3:0")
	if err != nil {
		t.Fatal(err)
	}
	return la, lb
}

// twoNodes starts nodes a (the owner) and b (the mirror) on loopback.
func twoNodes(t *testing.T, recvB *mirror.Receiver) (*cluster.Node, *cluster.Node) {
	t.Helper()
	la, lb := nodeListeners(t)
	log := slog.New(slog.DiscardHandler)
	start := func(name string, ln net.Listener, peer string, peerAddr string, r cluster.Receiver, h cluster.Handler) *cluster.Node {
		n, err := cluster.Start(context.Background(), cluster.Config{Cluster: "test", Node: name, Listener: ln,
			Peers: []cluster.Peer{{Name: peer, Addr: peerAddr}}, Degraded: cluster.RefuseSync,
			Receiver: r, Handler: h, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		return n
	}
	a := start("a", la, "b", lb.Addr().String(), mirror.NewReceiver(t.TempDir()), nil)
	b := start("b", lb, "a", la.Addr().String(), recvB, recvB)
	testkit.WaitFor(t, 10*time.Second, "a's link to b in sync", func() bool { return a.Link("b").State() == cluster.StateInSync })
	return a, b
}

// TestTakeoverLosesNoDurableWrite: node a owns a volume on a shared
// backing device and ships its journal to node b. A random workload of
// writes (some FUA), discards, flushes and partial writebacks runs on a;
// then a dies (its cache is never used again: what it did not write back
// is lost with it) and b takes over: its own cache on the same backing
// device, the mirror applied. Every write a acknowledged as durable (all
// of them: the workload ends with a flush) reads back from b.
func TestTakeoverLosesNoDurableWrite(t *testing.T) {
	ctx := context.Background()
	shared := backend.NewMemory(volSize)
	recvB := mirror.NewReceiver(t.TempDir())
	defer recvB.Close()
	nodeA, _ := twoNodes(t, recvB)
	// a reaches the shared device through a fault injector: before it
	// dies its writeback stops getting through, so that it dies with dirty
	// data the backing device does not have.
	viewA := backend.NewFaulty(shared)
	_, volA := openCacheOn(t, viewA)
	shipper := mirror.NewShipper(nodeA, "vol", 0, volA.Reship, nil, slog.New(slog.DiscardHandler))
	defer shipper.Close()
	if err := volA.SetReplicator(shipper); err != nil {
		t.Fatal(err)
	}
	ref := make([]byte, volSize) // what a host that saw every acknowledgement expects
	rng := rand.New(rand.NewPCG(5, 5))
	buf := make([]byte, 64<<10)
	for i := range 700 {
		off := rng.Int64N(volSize/4096-16) * 4096
		n := (1 + rng.Int64N(16)) * 4096
		k := rng.IntN(20)
		if i == 600 {
			viewA.Inject(backend.Fault{Op: backend.OpWrite | backend.OpDiscard})
		}
		if i >= 600 && k >= 15 && k < 17 || i >= 600 && k == 19 {
			k = 17 // only writes and flushes once writeback fails
		}
		switch {
		case k < 15:
			for j := range buf[:n] {
				buf[j] = byte(i + j/4096)
			}
			if err := volA.WriteAt(ctx, buf[:n], off, k == 0); err != nil {
				t.Fatal(err)
			}
			copy(ref[off:], buf[:n])
		case k < 17:
			if err := volA.Discard(ctx, off, n); err != nil {
				t.Fatal(err)
			}
			clear(ref[off : off+n])
		case k < 19:
			if err := volA.Flush(ctx); err != nil {
				t.Fatal(err)
			}
		default:
			// Some of it reaches the shared backing device.
			if err := volA.Drain(ctx, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := volA.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	dirty := volA.Stats().DirtyBytes
	if dirty == 0 {
		t.Fatal("a dies with no dirty data: the test would not need the mirror")
	}
	// a dies here. b takes the volume over on the same backing device.
	_, volB := openCache(t, shared)
	log, err := recvB.Log("vol")
	if err != nil {
		t.Fatal(err)
	}
	ships, _ := log.Replay()
	stale := volSize/4096 - sameBlocks(shared, ref)
	if stale == 0 {
		t.Fatal("the backing device already holds everything: the test would not need the mirror")
	}
	t.Logf("a dies with %d dirty bytes, %d blocks of the backing device stale; b's mirror holds %d shipments", dirty, stale, len(ships))
	applied, err := mirror.Apply(ctx, log, volB)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, volSize)
	if err := volB.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, ref) {
		for off := 0; off < volSize; off += 4096 {
			if !bytes.Equal(got[off:off+4096], ref[off:off+4096]) {
				t.Fatalf("after the takeover (%d records applied) block at %d differs from what a acknowledged", applied, off)
			}
		}
	}
	t.Logf("%d records applied at the takeover", applied)
}

// TestTrimmedMirrorStaysSmall: once the owner has written everything
// back, the peers' logs are emptied.
func TestTrimmedMirrorStaysSmall(t *testing.T) {
	ctx := context.Background()
	shared := backend.NewMemory(volSize)
	recvB := mirror.NewReceiver(t.TempDir())
	defer recvB.Close()
	nodeA, _ := twoNodes(t, recvB)
	_, volA := openCache(t, shared)
	shipper := mirror.NewShipper(nodeA, "vol", 0, volA.Reship, nil, slog.New(slog.DiscardHandler))
	defer shipper.Close()
	if err := volA.SetReplicator(shipper); err != nil {
		t.Fatal(err)
	}
	for i := range 64 {
		if err := volA.WriteAt(ctx, bytes.Repeat([]byte{byte(i)}, 4096), int64(i)*8192, true); err != nil {
			t.Fatal(err)
		}
	}
	log, err := recvB.Log("vol")
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := log.Replay(); len(s) == 0 {
		t.Fatal("nothing mirrored after FUA writes")
	}
	if err := volA.Drain(ctx, nil); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "mirror trimmed", func() bool {
		s, err := log.Replay()
		return err == nil && len(s) == 0
	})
	if fi, err := filepath.Glob(filepath.Join(filepath.Dir(log.Path()), "*.mirror")); err != nil || len(fi) != 1 {
		t.Fatalf("mirror files %v %v", fi, err)
	}
}

// sameBlocks counts the blocks of dev equal to ref.
func sameBlocks(dev *backend.Memory, ref []byte) int {
	n := 0
	b := make([]byte, 4096)
	for off := 0; off < len(ref); off += 4096 {
		if dev.ReadAt(context.Background(), b, int64(off)) == nil && bytes.Equal(b, ref[off:off+4096]) {
			n++
		}
	}
	return n
}

// partition controls the connections of a node's dialer: cut closes them
// and makes dials fail until heal.
type partition struct {
	mu    sync.Mutex
	cut   bool
	conns []net.Conn
}

func (p *partition) dial(ctx context.Context, addr string) (net.Conn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut {
		return nil, errors.New("partitioned")
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err == nil {
		p.conns = append(p.conns, c)
	}
	return c, err
}

func (p *partition) set(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for _, c := range p.conns {
			c.Close()
		}
		p.conns = nil
	}
}

// cuttablePair is nodes a (the owner) and b (the mirror) under the serve
// policy with short timeouts, whose dialers the test cuts and heals.
type cuttablePair struct {
	t      *testing.T
	a      *cluster.Node
	recvB  *mirror.Receiver
	pa, pb partition
	log    *slog.Logger
}

func startCuttablePair(t *testing.T) *cuttablePair {
	t.Helper()
	p := &cuttablePair{t: t, recvB: mirror.NewReceiver(t.TempDir()), log: slog.New(slog.DiscardHandler)}
	t.Cleanup(func() { p.recvB.Close() })
	la, lb := nodeListeners(t)
	start := func(name string, ln net.Listener, peer, addr string, pt *partition, r cluster.Receiver, h cluster.Handler) *cluster.Node {
		n, err := cluster.Start(context.Background(), cluster.Config{Cluster: "test", Node: name, Listener: ln,
			Peers: []cluster.Peer{{Name: peer, Addr: addr}}, Degraded: cluster.Serve,
			HeartbeatInterval: 50 * time.Millisecond, PeerTimeout: 400 * time.Millisecond, SyncTimeout: 300 * time.Millisecond,
			ReconnectMin: 20 * time.Millisecond, ReconnectMax: 100 * time.Millisecond,
			Receiver: r, Handler: h, Logger: p.log, Dial: pt.dial})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		return n
	}
	p.a = start("a", la, "b", lb.Addr().String(), &p.pa, mirror.NewReceiver(t.TempDir()), nil)
	start("b", lb, "a", la.Addr().String(), &p.pb, p.recvB, p.recvB)
	p.waitState(cluster.StateInSync, "in sync")
	return p
}

// replicate ships vol's journal (a's) to b.
func (p *cuttablePair) replicate(vol *cachecore.Volume) { p.replicateRecording(vol, nil) }

// replicateRecording ships vol's journal to b, recording the peers behind
// with behind.
func (p *cuttablePair) replicateRecording(vol *cachecore.Volume, behind mirror.BehindRecorder) {
	p.t.Helper()
	shipper := mirror.NewShipper(p.a, "vol", 0, vol.Reship, behind, p.log)
	p.t.Cleanup(shipper.Close)
	if err := vol.SetReplicator(shipper); err != nil {
		p.t.Fatal(err)
	}
}

// shipmentsOnB returns what b's mirror of volume holds.
func (p *cuttablePair) shipmentsOnB(volume string) []mirror.Shipment {
	p.t.Helper()
	lg, err := p.recvB.Log(volume)
	if err != nil {
		p.t.Fatal(err)
	}
	ships, err := lg.Replay()
	if err != nil {
		p.t.Fatal(err)
	}
	return ships
}

// cut partitions (true) or heals (false) the two nodes.
func (p *cuttablePair) cut(on bool) {
	p.pa.set(on)
	p.pb.set(on)
}

func (p *cuttablePair) waitState(st cluster.State, what string) {
	p.t.Helper()
	testkit.WaitFor(p.t, 15*time.Second, what, func() bool { return p.a.Link("b").State() == st })
}

// healAndTakeOver ends the partition, waits for b to be back in sync,
// flushes volA (the flush counts on b again) and has b take the volume
// over.
func (p *cuttablePair) healAndTakeOver(volA *cachecore.Volume, shared *backend.Memory) *cachecore.Volume {
	p.t.Helper()
	p.cut(false)
	p.waitState(cluster.StateInSync, "b back in sync")
	if err := volA.Flush(context.Background()); err != nil {
		p.t.Fatal(err)
	}
	return p.takeover(shared)
}

// takeover is b taking the volume over: its own cache on the shared
// backing device, its mirror of a's journal applied.
func (p *cuttablePair) takeover(shared *backend.Memory) *cachecore.Volume {
	p.t.Helper()
	_, volB := openCache(p.t, shared)
	lg, err := p.recvB.Log("vol")
	if err != nil {
		p.t.Fatal(err)
	}
	if _, err := mirror.Apply(context.Background(), lg, volB); err != nil {
		p.t.Fatal(err)
	}
	return volB
}

// TestResyncAfterPartition: with the serve policy, a goes on while b is
// cut off (b falls out of sync); once the partition heals, b is brought
// back in sync from a's dirty_tail, and a takeover by b then loses no
// durable write, including those acknowledged while b was away.
func TestResyncAfterPartition(t *testing.T) {
	ctx := context.Background()
	shared := backend.NewMemory(volSize)
	pair := startCuttablePair(t)
	viewA := backend.NewFaulty(shared)
	_, volA := openCacheOn(t, viewA)
	pair.replicate(volA)
	// No writeback gets through: everything stays dirty on a.
	viewA.Inject(backend.Fault{Op: backend.OpWrite | backend.OpDiscard})
	ref := make([]byte, volSize)
	write := func(i int) {
		off := int64(i*7%4096) * 4096
		b := bytes.Repeat([]byte{byte(i)}, 4096)
		if err := volA.WriteAt(ctx, b, off, i%3 == 0); err != nil {
			t.Fatal(err)
		}
		copy(ref[off:], b)
	}
	for i := range 50 {
		write(i)
	}
	pair.cut(true)
	testkit.WaitFor(t, 10*time.Second, "b out of sync", func() bool {
		write(1000) // shipments find the peer gone, after sync_timeout
		return pair.a.Link("b").State() == cluster.StateOutOfSync
	})
	for i := 50; i < 120; i++ {
		write(i) // acknowledged while b is away (serve)
	}
	if err := volA.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	volB := pair.healAndTakeOver(volA, shared)
	got := make([]byte, volSize)
	if err := volB.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	for off := 0; off < volSize; off += 4096 {
		if !bytes.Equal(got[off:off+4096], ref[off:off+4096]) {
			t.Fatalf("after resync and takeover, block at %d differs", off)
		}
	}
}

// TestResyncTrimsStaleMirror: while b is cut off, a overwrites a block b's
// mirror holds, writes it back to the backing device and trims (b misses
// the trim). When b is back in sync, a flush on a succeeds: the overwrite
// is durable. b's mirror must not bring the block's older data back at a
// takeover: the resync delivers the trim before b counts as in sync.
func TestResyncTrimsStaleMirror(t *testing.T) {
	ctx := context.Background()
	shared := backend.NewMemory(volSize)
	pair := startCuttablePair(t)
	_, volA := openCacheOn(t, shared)
	pair.replicate(volA)
	old, cur := bytes.Repeat([]byte{1}, 4096), bytes.Repeat([]byte{2}, 4096)
	if err := volA.WriteAt(ctx, old, 0, true); err != nil { // in b's mirror
		t.Fatal(err)
	}
	pair.cut(true)
	testkit.WaitFor(t, 10*time.Second, "b out of sync", func() bool {
		if err := volA.WriteAt(ctx, cur, 0, true); err != nil { // acknowledged while b is away (serve)
			t.Fatal(err)
		}
		return pair.a.Link("b").State() == cluster.StateOutOfSync
	})
	if err := volA.Drain(ctx, nil); err != nil { // the backing device holds cur; the trim does not reach b
		t.Fatal(err)
	}
	volB := pair.healAndTakeOver(volA, shared)
	got := make([]byte, 4096)
	if err := volB.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, cur) {
		t.Fatalf("after the resync and a takeover the block holds %d, the data b's mirror had before a overwrote and wrote it back; want %d", got[0], cur[0])
	}
}

// behindRecord is a BehindRecorder's record (the image's metadata in the
// daemon); fail makes the recording fail.
type behindRecord struct {
	mu    sync.Mutex
	peers []string
	calls int
	fail  error
}

func (r *behindRecord) record(_ context.Context, peers []string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.fail != nil {
		return r.fail
	}
	r.peers = slices.Clone(peers)
	return nil
}

func (r *behindRecord) get() ([]string, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.peers), r.calls
}

func (r *behindRecord) setFail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fail = err
}

// heldWrites is a backing device whose writes wait until open is closed
// (or their context ends).
type heldWrites struct {
	backend.Device
	open chan struct{}
}

func (h *heldWrites) WriteAt(ctx context.Context, p []byte, off int64) error {
	select {
	case <-h.open:
	case <-ctx.Done():
		return ctx.Err()
	}
	return h.Device.WriteAt(ctx, p, off)
}

// TestBehindRecordedBeforeWriteback: while b is cut off, a overwrites a
// block b's mirror holds (acknowledged: serve) and writes it back. No kset
// b missed reaches the backing device before b is recorded as behind
// (writeback fails while the record cannot be written), so a takeover by
// b can tell that its mirror would put the older data back over the
// backing device's (it does, applied), and serve the backing device
// instead; once b is back in sync the record is cleared and b's mirror is
// whole again.
func TestBehindRecordedBeforeWriteback(t *testing.T) {
	ctx := context.Background()
	shared := backend.NewMemory(volSize)
	pair := startCuttablePair(t)
	// Writeback trickles on its own: held until b is cut off, it cannot
	// write old back and trim b's mirror of it first, which would leave
	// nothing for the test to show.
	held := &heldWrites{Device: shared, open: make(chan struct{})}
	_, volA := openCacheOn(t, held)
	rec := &behindRecord{}
	pair.replicateRecording(volA, rec.record)
	old, cur := bytes.Repeat([]byte{1}, 4096), bytes.Repeat([]byte{2}, 4096)
	if err := volA.WriteAt(ctx, old, 0, true); err != nil { // in b's mirror
		t.Fatal(err)
	}
	// a loaded machine can put b out of sync for a moment (sync_timeout is
	// short here) and the write is then b's once the resync is done
	testkit.WaitFor(t, 10*time.Second, "b's mirror holding the write", func() bool {
		return pair.a.Link("b").State() == cluster.StateInSync && len(pair.shipmentsOnB("vol")) > 0
	})
	if peers, calls := rec.get(); calls != 0 {
		t.Fatalf("recorded %v behind while b is in sync", peers)
	}
	rec.setFail(errors.New("the image's metadata cannot be written"))
	pair.cut(true)
	testkit.WaitFor(t, 10*time.Second, "b out of sync", func() bool {
		if err := volA.WriteAt(ctx, old, 4096, false); err != nil { // shipments find the peer gone
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
		return pair.a.Link("b").State() == cluster.StateOutOfSync
	})
	if n := len(pair.shipmentsOnB("vol")); n == 0 {
		t.Fatal("b's mirror lost the write before the cut")
	}
	close(held.open)
	if err := volA.WriteAt(ctx, cur, 0, true); err != nil { // acknowledged while b is away (serve)
		t.Fatal(err)
	}
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	err := volA.Drain(dctx, nil)
	cancel()
	if err == nil {
		t.Fatal("a drained a kset b missed while b could not be recorded as behind")
	}
	got := make([]byte, 4096)
	if err := shared.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(got, cur) {
		t.Fatal("a kset b missed reached the backing device while b could not be recorded as behind")
	}
	rec.setFail(nil)
	if err := volA.Drain(ctx, nil); err != nil { // the backing device holds cur; the trim does not reach b
		t.Fatal(err)
	}
	if peers, _ := rec.get(); !slices.Equal(peers, []string{"b"}) {
		t.Fatalf("a wrote back a kset b missed with %v recorded behind; want [b]", peers)
	}
	// What a takeover by b would do with its mirror: bring the older data back.
	_, volB := openCache(t, backend.NewMemory(volSize))
	if err := volB.WriteAt(ctx, cur, 0, true); err != nil {
		t.Fatal(err)
	}
	lg, err := pair.recvB.Log("vol")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mirror.Apply(ctx, lg, volB); err != nil {
		t.Fatal(err)
	}
	clear(got)
	if err := volB.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, old) {
		t.Fatalf("b's mirror applied over the backing device's data left %d; want the older %d (the hazard the record guards)", got[0], old[0])
	}
	pair.cut(false)
	pair.waitState(cluster.StateInSync, "b back in sync")
	testkit.WaitFor(t, 10*time.Second, "the record cleared", func() bool {
		peers, _ := rec.get()
		return len(peers) == 0
	})
	if err := volA.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	volB2 := pair.takeover(shared)
	if err := volB2.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, cur) {
		t.Fatalf("after the resync and a takeover the block holds %d; want %d", got[0], cur[0])
	}
}

// TestResyncTrimsToReshipStart: writeback moved dirty_tail past ksets b
// holds and past one it missed, but the Shipper was not yet told (Trim
// comes after dirty_tail moves). The resync trims b to the dirty_tail the
// reship starts from, so b keeps none of the ksets before it: neither
// trimmed nor shipped again, they could hold blocks the missed kset
// overwrote.
func TestResyncTrimsToReshipStart(t *testing.T) {
	pair := startCuttablePair(t)
	var dirtyTail atomic.Uint64
	reship := func(_ context.Context, from func(uint64) error, _ func(uint64, []cachecore.MirrorRecord) error) error {
		return from(dirtyTail.Load()) // nothing left to ship again
	}
	shipper := mirror.NewShipper(pair.a, "vol", 0, reship, nil, pair.log)
	t.Cleanup(shipper.Close)
	ship := func(lsn uint64, b byte) error {
		recs := []cachecore.MirrorRecord{{Off: 0, Len: 4096, Data: bytes.Repeat([]byte{b}, 4096)}}
		return shipper.Ship(lsn, recs)(context.Background())
	}
	for lsn := uint64(1); lsn <= 5; lsn++ {
		if err := ship(lsn, 1); err != nil {
			t.Fatal(err)
		}
	}
	pair.cut(true)
	if err := ship(6, 2); err != nil { // b misses it (serve: acknowledged without b)
		t.Fatal(err)
	}
	pair.waitState(cluster.StateOutOfSync, "b out of sync")
	dirtyTail.Store(7) // ksets 1..6 written back; Trim not called yet
	pair.cut(false)
	pair.waitState(cluster.StateInSync, "b back in sync")
	if ships := pair.shipmentsOnB("vol"); len(ships) != 0 {
		t.Fatalf("b back in sync holds %d shipments from before the dirty_tail the resync started from (first link LSN %d); want none", len(ships), ships[0].LSN)
	}
}

// TestAssumedBehindClearedAfterResync: a new owner (epoch 1) takes over a
// record that names b behind; b's log holds the previous owner's (epoch 0)
// ksets. b stays recorded behind until a resync with the new owner has
// trimmed them, then the record is cleared.
func TestAssumedBehindClearedAfterResync(t *testing.T) {
	pair := startCuttablePair(t)
	old := mirror.NewShipper(pair.a, "vol", 0, nil, nil, pair.log)
	for lsn := uint64(1); lsn <= 3; lsn++ {
		recs := []cachecore.MirrorRecord{{Off: 0, Len: 4096, Data: bytes.Repeat([]byte{1}, 4096)}}
		if err := old.Ship(lsn, recs)(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	old.Close()
	rec := &behindRecord{}
	reship := func(_ context.Context, from func(uint64) error, _ func(uint64, []cachecore.MirrorRecord) error) error {
		return from(0) // the new owner's journal: nothing written back yet
	}
	sh := mirror.NewShipper(pair.a, "vol", 1, reship, rec.record, pair.log)
	t.Cleanup(sh.Close)
	sh.AssumeBehind([]string{"b"})
	if got := sh.Behind(); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("behind %v, want [b]", got)
	}
	pair.a.Link("b").MarkOutOfSync("the previous owner recorded its mirror as behind")
	testkit.WaitFor(t, 10*time.Second, "b's record cleared", func() bool {
		peers, calls := rec.get()
		return calls > 0 && len(peers) == 0
	})
	for _, s := range pair.shipmentsOnB("vol") {
		if mirror.Epoch(s.LSN) < 1 {
			t.Fatalf("b's record was cleared while its log still holds epoch %d's shipment %d", mirror.Epoch(s.LSN), s.LSN)
		}
	}
}

// TestResyncEveryVolumeOfALink: a owns two replicated volumes; b falls out
// of sync (one link, both volumes) and comes back. Both volumes' journals
// must be whole in b's mirrors: a takeover of each by b loses no write.
func TestResyncEveryVolumeOfALink(t *testing.T) {
	ctx := context.Background()
	pair := startCuttablePair(t)
	names := []string{"v1", "v2"}
	shared := make([]*backend.Memory, 2)
	vols := make([]*cachecore.Volume, 2)
	refs := make([][]byte, 2)
	for i, name := range names {
		shared[i] = backend.NewMemory(volSize)
		_, vols[i] = openCacheOn(t, shared[i])
		sh := mirror.NewShipper(pair.a, name, 0, vols[i].Reship, nil, pair.log)
		t.Cleanup(sh.Close)
		if err := vols[i].SetReplicator(sh); err != nil {
			t.Fatal(err)
		}
		refs[i] = make([]byte, volSize)
	}
	write := func(i, n int) {
		off := int64(n%512) * 4096
		b := bytes.Repeat([]byte{byte(n)}, 4096)
		if err := vols[i].WriteAt(ctx, b, off, n%3 == 0); err != nil {
			t.Fatal(err)
		}
		copy(refs[i][off:], b)
	}
	for n := range 20 {
		write(0, n)
		write(1, n)
	}
	pair.cut(true)
	testkit.WaitFor(t, 10*time.Second, "b out of sync", func() bool {
		write(0, 1000)
		write(1, 1000)
		return pair.a.Link("b").State() == cluster.StateOutOfSync
	})
	for n := 20; n < 60; n++ { // acknowledged while b is away (serve)
		write(0, n)
		write(1, n)
	}
	pair.cut(false)
	pair.waitState(cluster.StateInSync, "b back in sync")
	for i, name := range names {
		if err := vols[i].Flush(ctx); err != nil {
			t.Fatal(err)
		}
		_, volB := openCache(t, shared[i])
		lg, err := pair.recvB.Log(name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := mirror.Apply(ctx, lg, volB); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, volSize)
		if err := volB.ReadAt(ctx, got, 0); err != nil {
			t.Fatal(err)
		}
		for off := 0; off < volSize; off += 4096 {
			if !bytes.Equal(got[off:off+4096], refs[i][off:off+4096]) {
				t.Fatalf("volume %s after b's resync and a takeover: block at %d holds %d, want %d", name, off, got[off], refs[i][off])
			}
		}
	}
}

// TestBehindRecordDoesNotHoldWrites: while the record of a peer behind is
// being written (a slow or unreachable Ceph), the owner's FUA writes are
// acknowledged as the serve policy says: a kset's wait never waits for
// the record, only writeback does.
func TestBehindRecordDoesNotHoldWrites(t *testing.T) {
	ctx := context.Background()
	pair := startCuttablePair(t)
	_, volA := openCacheOn(t, backend.NewMemory(volSize))
	release := make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	entered := make(chan struct{}, 1)
	defer unblock() // before the cleanups that wait for writeback
	pair.replicateRecording(volA, func(ctx context.Context, _ []string) error {
		select {
		case entered <- struct{}{}:
		default:
		}
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	block := bytes.Repeat([]byte{3}, 4096)
	pair.cut(true)
	testkit.WaitFor(t, 10*time.Second, "b out of sync", func() bool {
		if err := volA.WriteAt(ctx, block, 0, false); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
		return pair.a.Link("b").State() == cluster.StateOutOfSync
	})
	drained := make(chan error, 1)
	go func() { drained <- volA.Drain(ctx, nil) }()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("writeback did not start recording b as behind")
	}
	wrote := make(chan error, 1)
	go func() { wrote <- volA.WriteAt(ctx, block, 8192, true) }()
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a FUA write waited for the record of b behind")
	}
	unblock()
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
}
