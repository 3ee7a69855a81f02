package tcmu

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/cachelun/cachelun/internal/testkit"
)

func TestParseMailbox(t *testing.T) {
	k := newFakeKernel(4096, 4, 4096, mbFlagOOOC|mbFlagReadLen)
	l, err := parseMailbox(k.mm)
	if err != nil {
		t.Fatal(err)
	}
	if l.cmdrOff != 128 || l.cmdrSize != 4096 || l.dataOff != 128+4096 || l.mapLen != uint64(len(k.mm)) || !l.outOfOrder() {
		t.Fatalf("layout %+v", l)
	}

	bad := func(name string, mutate func(b []byte) []byte) {
		t.Helper()
		b := mutate(append([]byte(nil), k.mm...))
		if _, err := parseMailbox(b); !errors.Is(err, errRing) {
			t.Errorf("%s: err = %v, want errRing", name, err)
		}
	}
	bad("short", func(b []byte) []byte { return b[:40] })
	bad("version 1", func(b []byte) []byte { binary.LittleEndian.PutUint16(b[mbVersion:], 1); return b })
	bad("ring overlaps mailbox", func(b []byte) []byte { binary.LittleEndian.PutUint32(b[mbCmdrOff:], 8); return b })
	bad("ring beyond mapping", func(b []byte) []byte { binary.LittleEndian.PutUint32(b[mbCmdrSize:], 1<<30); return b })
	bad("ring size not aligned", func(b []byte) []byte { binary.LittleEndian.PutUint32(b[mbCmdrSize:], 4095); return b })

	noOOOC := newFakeKernel(4096, 4, 4096, 0)
	if _, err := newRing(noOOOC.mm); !errors.Is(err, errRing) {
		t.Errorf("ring without OOOC: err = %v", err)
	}
}

func TestCDBLength(t *testing.T) {
	for _, tc := range []struct {
		cdb  []byte
		want int
	}{
		{[]byte{0x00}, 6}, {[]byte{0x12}, 6}, {[]byte{0x28}, 10}, {[]byte{0x5a}, 10},
		{[]byte{0x88}, 16}, {[]byte{0x9e}, 16}, {[]byte{0xa0}, 12}, {[]byte{0xa8}, 12},
		{[]byte{0xc0}, 10}, {[]byte{0xff}, 10}, {[]byte{0x60}, 12},
		{[]byte{0x7f, 0, 0, 0, 0, 0, 0, 0x18}, 32}, {[]byte{0x7f, 0}, 0}, {nil, 0},
	} {
		if got := cdbLength(tc.cdb); got != tc.want {
			t.Errorf("cdbLength(% x) = %d, want %d", tc.cdb, got, tc.want)
		}
	}
}

// TestRingOutOfOrder queues commands, completes them in a random order and
// checks that the (simulated) kernel matches every completion to its
// command, across many wraps of a small ring with PAD entries.
func TestRingOutOfOrder(t *testing.T) {
	k := newFakeKernel(2048, 64, 512, mbFlagOOOC|mbFlagReadLen)
	r, err := newRing(k.mm)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	completed, wraps := 0, 0
	for round := 0; round < 300; round++ {
		var queued []*fakeCmd
		headBefore := k.head
		for range 1 + rng.IntN(8) {
			inLen := 512 * (1 + rng.IntN(6))
			c, err := k.queue(testkit.Read10(uint32(round), uint16(inLen/512)), nil, inLen)
			if errors.Is(err, errRingFull) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			queued = append(queued, c)
		}
		if k.head < headBefore {
			wraps++
		}
		reqs, tmrs, err := r.consume(nil, nil)
		if err != nil {
			t.Fatalf("round %d: consume: %v", round, err)
		}
		if len(tmrs) != 0 || len(reqs) != len(queued) {
			t.Fatalf("round %d: consumed %d commands %d tmrs, queued %d", round, len(reqs), len(tmrs), len(queued))
		}
		byID := map[uint16]cmdRequest{}
		for i, req := range reqs {
			q := queued[i]
			if req.id != q.id || !bytes.Equal(req.cdb, q.cdb) || len(req.iovs) != len(q.iovs) {
				t.Fatalf("round %d: decoded %+v, queued id %d cdb % x iovs %v", round, req, q.id, q.cdb, q.iovs)
			}
			for j := range req.iovs {
				if req.iovs[j] != q.iovs[j] {
					t.Fatalf("iovec %d: %v != %v", j, req.iovs[j], q.iovs[j])
				}
			}
			byID[req.id] = req
		}
		rng.Shuffle(len(reqs), func(i, j int) { reqs[i], reqs[j] = reqs[j], reqs[i] })
		for _, req := range reqs {
			// Write a per-command pattern and a status derived from the id.
			for _, seg := range r.dataSlices(&req, false) {
				for i := range seg {
					seg[i] = byte(req.id)
				}
			}
			n := uint32(req.dataLen()) - 1
			if err := r.complete(completion{id: req.id, status: byte(req.id % 7), sense: []byte{0x70, byte(req.id)}, readLen: n, hasReadLen: true}); err != nil {
				t.Fatal(err)
			}
		}
		done, err := k.reap()
		if err != nil {
			t.Fatal(err)
		}
		if len(done) != len(queued) {
			t.Fatalf("round %d: kernel reaped %d of %d", round, len(done), len(queued))
		}
		for _, c := range done {
			if c.status != byte(c.id%7) || c.sense[0] != 0x70 || c.sense[1] != byte(c.id) || c.uflags != uflagReadLen {
				t.Fatalf("cmd %d: status %d sense % x uflags %#x", c.id, c.status, c.sense[:2], c.uflags)
			}
			if len(c.data) != c.inLen-1 || bytes.Count(c.data, []byte{byte(c.id)}) != len(c.data) {
				t.Fatalf("cmd %d: data-in %d bytes, want %d of %#x", c.id, len(c.data), c.inLen-1, byte(c.id))
			}
			if _, ok := byID[c.id]; !ok {
				t.Fatalf("kernel reaped unknown id %d", c.id)
			}
		}
		completed += len(done)
		if r.inFlight() != 0 {
			t.Fatalf("in flight %d", r.inFlight())
		}
	}
	if completed < 1000 || wraps < 20 {
		t.Fatalf("only %d commands and %d ring wraps went through", completed, wraps)
	}
}

func TestRingCompletionNeedsConsumedEntry(t *testing.T) {
	k := newFakeKernel(2048, 8, 512, mbFlagOOOC)
	r, err := newRing(k.mm)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.complete(completion{id: 1}); !errors.Is(err, errRing) {
		t.Fatalf("completion with nothing consumed: %v", err)
	}
	if _, err := k.queue(testkit.Read10(0, 1), nil, 512); err != nil {
		t.Fatal(err)
	}
	// Queued but not consumed: the slot must not be reused.
	if err := r.complete(completion{id: 1}); !errors.Is(err, errRing) {
		t.Fatalf("completion of an unconsumed entry: %v", err)
	}
}

func TestRingTMRAndPadOnly(t *testing.T) {
	k := newFakeKernel(2048, 8, 512, mbFlagOOOC)
	r, err := newRing(k.mm)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := k.queue(testkit.Read10(1, 1), nil, 512)
	b, _ := k.queue(testkit.Read10(2, 1), nil, 512)
	if err := k.queueTMR(tmrAbortTask, []uint16{a.id}); err != nil {
		t.Fatal(err)
	}
	reqs, tmrs, err := r.consume(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(reqs) != 2 || len(tmrs) != 1 || tmrs[0].kind != tmrAbortTask || len(tmrs[0].cmdIDs) != 1 || tmrs[0].cmdIDs[0] != a.id {
		t.Fatalf("reqs %d tmrs %+v", len(reqs), tmrs)
	}
	for _, id := range []uint16{b.id, a.id} {
		if err := r.complete(completion{id: id}); err != nil {
			t.Fatal(err)
		}
	}
	done, err := k.reap()
	if err != nil || len(done) != 2 {
		t.Fatalf("reaped %d, err %v", len(done), err)
	}
	// All completed: the TMR entry's space went back with the last completion
	// or the next consume.
	if _, _, err := r.consume(nil, nil); err != nil {
		t.Fatal(err)
	}
	if tail := binary.LittleEndian.Uint32(k.mm[mbCmdTail:]); tail != k.head {
		t.Fatalf("tail %d, head %d: TMR entry not released", tail, k.head)
	}
}

func TestDecodeCommandRejectsCorruptEntries(t *testing.T) {
	k := newFakeKernel(2048, 8, 512, mbFlagOOOC)
	c, err := k.queue(testkit.Read10(0, 2), nil, 1024)
	if err != nil {
		t.Fatal(err)
	}
	_ = c
	l, _ := parseMailbox(k.mm)
	entry := k.mm[k.cmdrOff:]
	good := append([]byte(nil), k.mm...)
	for _, tc := range []struct {
		name   string
		mutate func()
	}{
		{"iovec outside data area", func() { binary.LittleEndian.PutUint64(entry[reqIov:], 16) }},
		{"iovec past mapping", func() { binary.LittleEndian.PutUint64(entry[reqIov+8:], 1<<40) }},
		{"too many iovecs", func() { binary.LittleEndian.PutUint32(entry[reqIovCnt:], 1000) }},
		{"cdb offset outside entry", func() { binary.LittleEndian.PutUint64(entry[reqCdbOff:], 0) }},
		{"length beyond ring", func() { binary.LittleEndian.PutUint32(entry[entLenOp:], 4096|opCmd) }},
		{"zero length", func() { binary.LittleEndian.PutUint32(entry[entLenOp:], opCmd) }},
	} {
		copy(k.mm, good)
		tc.mutate()
		h, err := l.readHeader(k.mm, 0)
		if err == nil {
			_, err = l.decodeCommand(k.mm, 0, h)
		}
		if !errors.Is(err, errRing) {
			t.Errorf("%s: err = %v, want errRing", tc.name, err)
		}
	}
}

// FuzzRingConsume feeds arbitrary ring contents to the consumer: it must
// return commands whose CDB and iovecs lie inside the mapping, or an error,
// and never panic.
func FuzzRingConsume(f *testing.F) {
	k := newFakeKernel(1024, 4, 512, mbFlagOOOC)
	k.queue(testkit.Read10(7, 1), nil, 512)
	k.queue([]byte{0x2a, 0, 0, 0, 0, 1, 0, 0, 1, 0}, make([]byte, 512), 0)
	k.queueTMR(tmrLUNReset, []uint16{1, 2})
	f.Add(k.mm[k.cmdrOff:k.dataOff], k.head, uint32(0))
	f.Add(make([]byte, 1024), uint32(8), uint32(0))
	f.Fuzz(func(t *testing.T, ringBytes []byte, head, tail uint32) {
		k := newFakeKernel(1024, 4, 512, mbFlagOOOC|mbFlagReadLen)
		copy(k.mm[k.cmdrOff:k.dataOff], ringBytes)
		binary.LittleEndian.PutUint32(k.mm[mbCmdHead:], head)
		binary.LittleEndian.PutUint32(k.mm[mbCmdTail:], tail)
		r, err := newRing(k.mm)
		if err != nil {
			return
		}
		reqs, _, _ := r.consume(nil, nil)
		for _, req := range reqs {
			if len(req.cdb) == 0 {
				t.Fatalf("empty CDB accepted")
			}
			for _, v := range req.iovs {
				if v.len > 0 && (v.off < uint64(k.dataOff) || v.off+v.len > uint64(len(k.mm))) {
					t.Fatalf("iovec %v outside data area", v)
				}
			}
			r.dataSlices(&req, false)
			if err := r.complete(completion{id: req.id, sense: make([]byte, 200)}); err != nil && !errors.Is(err, errRing) {
				t.Fatal(err)
			}
		}
	})
}
