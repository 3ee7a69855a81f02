package cachecore_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/internal/blk"
)

// regInput is one operation on a one-block register.
type regInput struct {
	block  int
	kind   string // "read", "write", "caw"
	value  uint64 // written value (write, caw); 0 means zeroes (a discard)
	expect uint64 // caw: the value compared against
}

// regOutput is its result.
type regOutput struct {
	value uint64 // read: the value read
	ok    bool   // caw: matched and wrote
}

// registerModel: every block is an independent register holding the id of
// the write whose data it holds (0: zeroes). Partitioned by block.
var registerModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		by := map[int][]porcupine.Operation{}
		for _, op := range history {
			b := op.Input.(regInput).block
			by[b] = append(by[b], op)
		}
		out := make([][]porcupine.Operation, 0, len(by))
		for _, ops := range by {
			out = append(out, ops)
		}
		return out
	},
	Init: func() any { return uint64(0) },
	Step: func(state, input, output any) (bool, any) {
		st, in, out := state.(uint64), input.(regInput), output.(regOutput)
		switch in.kind {
		case "read":
			return out.value == st, st
		case "write":
			return true, in.value
		default: // caw
			if st == in.expect {
				return out.ok, in.value
			}
			return !out.ok, st
		}
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(regInput), output.(regOutput)
		switch in.kind {
		case "read":
			return fmt.Sprintf("read(b%d) -> %d", in.block, out.value)
		case "write":
			return fmt.Sprintf("write(b%d, %d)", in.block, in.value)
		default:
			return fmt.Sprintf("caw(b%d, %d -> %d) -> %v", in.block, in.expect, in.value, out.ok)
		}
	},
}

// TestBlackboxLinearizable runs concurrent clients doing reads, writes,
// discards and compare-and-writes of whole blocks, while a chaos goroutine
// flushes, switches modes, drains and changes the GC threshold on a small
// cache (so GC and writeback run), and checks the history against a
// per-block register model with porcupine.
func TestBlackboxLinearizable(t *testing.T) {
	seed := testSeed()
	t.Logf("seed %d", seed)
	opsPerClient := 400
	if longRun() {
		opsPerClient = 2000
	}
	ctx := context.Background()
	const bs = 4096
	const blocks = 8
	const clients = 4
	r := newRig(t, rigOptions{Segments: 16, BackingSize: 2 << 20, Cfg: cachecore.Config{GCPercent: 30},
		VC: cachecore.VolumeConfig{Mode: cachecore.ModeWriteback, Policy: cachecore.Policy2Q}}, nil)
	defer r.close()
	offs := make([]int64, blocks)
	for b := range offs {
		offs[b] = int64(b) * 256 << 10
	}

	var clock atomic.Int64
	var mu sync.Mutex
	var history []porcupine.Operation
	record := func(client int, in regInput, out regOutput, call, ret int64) {
		mu.Lock()
		history = append(history, porcupine.Operation{ClientId: client, Input: in, Output: out, Call: call, Return: ret})
		mu.Unlock()
	}
	var nextID atomic.Uint64
	errc := make(chan error, clients+1)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(c)))
			lastSeen := make([]uint64, blocks)
			p := make([]byte, bs)
			for range opsPerClient {
				b := rng.IntN(blocks)
				off := offs[b]
				switch k := rng.IntN(10); {
				case k < 4:
					call := clock.Add(1)
					err := r.vol.ReadAt(ctx, p, off)
					ret := clock.Add(1)
					if err != nil {
						errc <- fmt.Errorf("client %d read: %w", c, err)
						return
					}
					id, err := blockID(p, off)
					if err != nil {
						errc <- fmt.Errorf("client %d: %w", c, err)
						return
					}
					lastSeen[b] = id
					record(c, regInput{block: b, kind: "read"}, regOutput{value: id}, call, ret)
				case k < 7:
					id := nextID.Add(1)
					call := clock.Add(1)
					err := r.vol.WriteAt(ctx, tagged(id, off, bs), off, rng.IntN(4) == 0)
					ret := clock.Add(1)
					if err != nil {
						errc <- fmt.Errorf("client %d write: %w", c, err)
						return
					}
					record(c, regInput{block: b, kind: "write", value: id}, regOutput{}, call, ret)
				case k < 8:
					call := clock.Add(1)
					err := r.vol.Discard(ctx, off, bs)
					ret := clock.Add(1)
					if err != nil {
						errc <- fmt.Errorf("client %d discard: %w", c, err)
						return
					}
					record(c, regInput{block: b, kind: "write", value: 0}, regOutput{}, call, ret)
				default:
					id := nextID.Add(1)
					expect := lastSeen[b]
					cmp := tagged(expect, off, bs)
					if expect == 0 {
						clear(cmp)
					}
					call := clock.Add(1)
					err := r.vol.CompareAndWrite(ctx, off, cmp, tagged(id, off, bs), false)
					ret := clock.Add(1)
					if err != nil && !errors.Is(err, blk.ErrMiscompare) {
						errc <- fmt.Errorf("client %d compare-and-write: %w", c, err)
						return
					}
					if err == nil {
						lastSeen[b] = id
					}
					record(c, regInput{block: b, kind: "caw", value: id, expect: expect}, regOutput{ok: err == nil}, call, ret)
				}
			}
		}()
	}
	var chaos sync.WaitGroup
	chaos.Add(1)
	go func() {
		defer chaos.Done()
		rng := rand.New(rand.NewPCG(seed, 1000))
		modes := []cachecore.Mode{cachecore.ModeWriteback, cachecore.ModeWritethrough, cachecore.ModeWritearound, cachecore.ModeWriteonly, cachecore.ModePassthrough}
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(rng.IntN(3000)) * time.Microsecond):
			}
			var err error
			switch rng.IntN(4) {
			case 0:
				err = r.vol.Flush(ctx)
			case 1:
				err = r.vol.SetMode(ctx, modes[rng.IntN(len(modes))], nil)
			case 2:
				err = r.vol.Drain(ctx, nil)
			case 3:
				cfg := r.opts.Cfg
				cfg.GCPercent = 10 + rng.IntN(60)
				err = r.cache.SetConfig(cfg)
			}
			if err != nil {
				errc <- fmt.Errorf("chaos: %w", err)
				return
			}
		}
	}()
	wg.Wait()
	close(stop)
	chaos.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	res, info := porcupine.CheckOperationsVerbose(registerModel, history, 60*time.Second)
	switch res {
	case porcupine.Ok:
		st := r.cache.Stats()
		t.Logf("%d operations linearizable (gc runs %d, segments freed %d)", len(history), st.GCRuns, st.GCSegmentsFreed)
	case porcupine.Unknown:
		t.Fatalf("porcupine timed out on %d operations: no verdict", len(history))
	default:
		path := t.ArtifactDir() + "/history.html"
		if err := porcupine.VisualizePath(registerModel, info, path); err == nil {
			t.Logf("visualization: %s (kept with -artifacts)", path)
		}
		t.Fatalf("history of %d operations is not linearizable against a per-block register", len(history))
	}
}

// TestBlackboxRegisterModelRejectsStaleRead shows that the checker used
// above can fail: a read that returns an overwritten value after the
// overwrite completed is not linearizable.
func TestBlackboxRegisterModelRejectsStaleRead(t *testing.T) {
	history := []porcupine.Operation{
		{ClientId: 0, Input: regInput{block: 1, kind: "write", value: 5}, Output: regOutput{}, Call: 1, Return: 2},
		{ClientId: 0, Input: regInput{block: 1, kind: "write", value: 6}, Output: regOutput{}, Call: 3, Return: 4},
		{ClientId: 1, Input: regInput{block: 1, kind: "read"}, Output: regOutput{value: 5}, Call: 5, Return: 6},
	}
	if porcupine.CheckOperations(registerModel, history) {
		t.Fatal("a stale read was accepted")
	}
	history[2].Call = 3 // concurrent with the overwrite: fine
	if !porcupine.CheckOperations(registerModel, history) {
		t.Fatal("a read concurrent with the overwrite was rejected")
	}
}
