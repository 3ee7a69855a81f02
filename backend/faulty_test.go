package backend

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/blk"
)

func fill(n int, v byte) []byte { return bytes.Repeat([]byte{v}, n) }

func readBack(t *testing.T, d Device, off int64, n int) []byte {
	t.Helper()
	p := make([]byte, n)
	if err := d.ReadAt(context.Background(), p, off); err != nil {
		t.Fatalf("ReadAt(%d,+%d): %v", off, n, err)
	}
	return p
}

func TestFaultyFailOnceAlwaysAfter(t *testing.T) {
	ctx := context.Background()
	f := NewFaulty(NewMemory(1 << 20))
	myErr := errors.New("boom")

	once := f.Inject(Fault{Op: OpWrite, Range: Range{Off: 4096, Len: 4096}, Times: 1, Err: myErr})
	if err := f.WriteAt(ctx, fill(512, 1), 0); err != nil {
		t.Fatalf("write outside the range: %v", err)
	}
	if err := f.WriteAt(ctx, fill(8192, 2), 0); !errors.Is(err, myErr) {
		t.Fatalf("overlapping write: %v, want boom", err)
	}
	if got := readBack(t, f, 4096, 512); !isZero(got) {
		t.Fatal("a failed write landed")
	}
	if err := f.WriteAt(ctx, fill(8192, 2), 0); err != nil {
		t.Fatalf("second overlapping write after fail-once: %v", err)
	}
	if once.Hits() != 1 {
		t.Fatalf("fail-once hits %d", once.Hits())
	}
	once.Remove()

	always := f.Inject(Fault{Op: OpRead | OpFlush})
	for range 3 {
		if err := f.ReadAt(ctx, make([]byte, 1), 0); !errors.Is(err, ErrInjected) || !errors.Is(err, blk.ErrMedium) {
			t.Fatalf("read under fail-always: %v, want ErrInjected wrapping ErrMedium", err)
		}
		if err := f.Flush(ctx); !errors.Is(err, ErrInjected) {
			t.Fatalf("flush under fail-always: %v", err)
		}
	}
	if err := f.Discard(ctx, 0, 512); err != nil {
		t.Fatalf("discard is not selected by the rule: %v", err)
	}
	always.Remove()

	f.Inject(Fault{Op: OpWrite, After: 2})
	for i := range 4 {
		err := f.WriteAt(ctx, fill(512, 3), 0)
		if (err != nil) != (i >= 2) {
			t.Fatalf("write %d under fail-after-2: %v", i, err)
		}
	}
	f.ClearFaults()
	if err := f.WriteAt(ctx, fill(512, 3), 0); err != nil {
		t.Fatalf("after ClearFaults: %v", err)
	}
}

func TestFaultyTornAndDroppedWrites(t *testing.T) {
	ctx := context.Background()
	f := NewFaulty(NewMemory(1 << 20))
	f.Inject(Fault{Op: OpWrite, Action: ActTorn, TornBytes: 1000, Times: 1})
	if err := f.WriteAt(ctx, fill(4096, 7), 8192); !errors.Is(err, ErrInjected) {
		t.Fatalf("torn write: %v", err)
	}
	got := readBack(t, f, 8192, 4096)
	if !bytes.Equal(got[:1000], fill(1000, 7)) || !isZero(got[1000:]) {
		t.Fatal("torn write did not land exactly its prefix")
	}

	f.Inject(Fault{Op: OpWrite | OpDiscard, Action: ActDrop, Times: 2})
	if err := f.WriteAt(ctx, fill(512, 9), 0); err != nil {
		t.Fatalf("dropped write must report success: %v", err)
	}
	if err := f.Discard(ctx, 8192, 512); err != nil {
		t.Fatalf("dropped discard: %v", err)
	}
	if !isZero(readBack(t, f, 0, 512)) {
		t.Fatal("dropped write landed")
	}
	if got := readBack(t, f, 8192, 512); !bytes.Equal(got, fill(512, 7)) {
		t.Fatal("dropped discard took effect")
	}
	if c := f.Counts(); c.Writes != 2 || c.Discards != 1 || c.Reads != 3 {
		t.Fatalf("counts %+v", c)
	}
}

func TestFaultyHangEndsWithContext(t *testing.T) {
	f := NewFaulty(NewMemory(1 << 20))
	f.Inject(Fault{Op: OpAll, Action: ActHang})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := f.Flush(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hung flush returned %v", err)
	}
}

func TestFaultyGate(t *testing.T) {
	ctx := context.Background()
	f := NewFaulty(NewMemory(1 << 20))
	g := f.Gate(OpRead, Range{Off: 65536, Len: 4096})

	// A read elsewhere passes.
	readBack(t, f, 0, 4096)
	if g.Arrived() != 0 {
		t.Fatal("a read outside the range reached the gate")
	}

	done := make(chan error, 1)
	p := make([]byte, 4096)
	go func() { done <- f.ReadAt(ctx, p, 65536) }()
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := g.WaitArrived(wctx, 1); err != nil {
		t.Fatalf("request never reached the gate: %v", err)
	}
	if g.Waiting() != 1 {
		t.Fatalf("Waiting = %d", g.Waiting())
	}
	// While the reader is parked, a write to the same block completes.
	if err := f.WriteAt(ctx, fill(4096, 0xAB), 65536); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("gated read finished before Release: %v", err)
	default:
	}
	g.Release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, fill(4096, 0xAB)) {
		t.Fatal("the released read did not see the write made while it was parked")
	}
	if g.Waiting() != 0 {
		t.Fatalf("Waiting = %d after release", g.Waiting())
	}
	g.Release() // idempotent
	readBack(t, f, 65536, 4096)
	if g.Arrived() != 1 {
		t.Fatalf("a released gate still catches requests: arrived %d", g.Arrived())
	}

	// A parked request returns when its context ends.
	g2 := f.Gate(OpWrite, Range{})
	cctx, ccancel := context.WithCancel(ctx)
	go func() { done <- f.WriteAt(cctx, fill(512, 1), 0) }()
	if err := g2.WaitArrived(wctx, 1); err != nil {
		t.Fatal(err)
	}
	ccancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled parked write: %v", err)
	}
	if !isZero(readBack(t, f, 0, 512)) {
		t.Fatal("cancelled parked write landed")
	}
	// Close releases gates.
	go func() { done <- f.WriteAt(ctx, fill(512, 1), 0) }()
	if err := g2.WaitArrived(wctx, 2); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("parked write after Close: %v, want ErrClosed", err)
	}
}

func TestFaultyPowerCutDropsUnflushed(t *testing.T) {
	ctx := context.Background()
	f := NewFaulty(NewMemory(1 << 20))
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(f.WriteAt(ctx, fill(4096, 1), 0))
	must(f.WriteAt(ctx, fill(4096, 2), 4096))
	must(f.Flush(ctx))
	must(f.WriteAt(ctx, fill(4096, 3), 0))      // overwrite, unflushed
	must(f.WriteAt(ctx, fill(1000, 4), 100000)) // new data, unflushed, unaligned
	must(f.Discard(ctx, 4096, 4096))            // unflushed discard
	if f.UnflushedSectors() == 0 {
		t.Fatal("no unflushed sectors recorded")
	}
	// The live device shows the new state.
	if !bytes.Equal(readBack(t, f, 0, 4096), fill(4096, 3)) || !isZero(readBack(t, f, 4096, 4096)) {
		t.Fatal("live state wrong")
	}
	img, err := f.DurableImage(nil)
	if err != nil {
		t.Fatal(err)
	}
	check := func(d Device) {
		t.Helper()
		if !bytes.Equal(readBack(t, d, 0, 4096), fill(4096, 1)) {
			t.Error("overwrite survived the power cut")
		}
		if !bytes.Equal(readBack(t, d, 4096, 4096), fill(4096, 2)) {
			t.Error("discard survived the power cut")
		}
		if !isZero(readBack(t, d, 99840, 2048)) {
			t.Error("unflushed write survived the power cut")
		}
	}
	check(img)
	// The image is a copy: the live device still has the new data.
	if !bytes.Equal(readBack(t, f, 0, 4096), fill(4096, 3)) {
		t.Fatal("DurableImage changed the device")
	}
	must(f.PowerCut(nil))
	check(f)
	if f.UnflushedSectors() != 0 {
		t.Fatal("undo log kept after power cut")
	}
}

func TestFaultyLostFlush(t *testing.T) {
	ctx := context.Background()
	f := NewFaulty(NewMemory(1 << 20))
	if err := f.WriteAt(ctx, fill(512, 5), 0); err != nil {
		t.Fatal(err)
	}
	f.Inject(Fault{Op: OpFlush, Action: ActDrop, Times: 1})
	if err := f.Flush(ctx); err != nil {
		t.Fatalf("lost flush must report success: %v", err)
	}
	if err := f.PowerCut(nil); err != nil {
		t.Fatal(err)
	}
	if !isZero(readBack(t, f, 0, 512)) {
		t.Fatal("write protected only by a lost flush survived a power cut")
	}
	if err := f.WriteAt(ctx, fill(512, 6), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.PowerCut(nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readBack(t, f, 0, 512), fill(512, 6)) {
		t.Fatal("flushed write lost in a power cut")
	}
}

// TestFaultyTornPowerCut checks that a torn power cut keeps, per sector,
// either the durable or the newest content, and that over many seeds both
// outcomes happen.
func TestFaultyTornPowerCut(t *testing.T) {
	ctx := context.Background()
	f := NewFaulty(NewMemory(64 << 10))
	if err := f.WriteAt(ctx, fill(64<<10, 1), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.WriteAt(ctx, fill(16<<10, 2), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.WriteAt(ctx, fill(8<<10, 3), 0); err != nil {
		t.Fatal(err)
	}
	kept, reverted := 0, 0
	for seed := range uint64(20) {
		img, err := f.DurableImage(rand.New(rand.NewPCG(seed, 1)))
		if err != nil {
			t.Fatal(err)
		}
		all := readBack(t, img, 0, 64<<10)
		for s := 0; s < 64<<10; s += faultySector {
			sec := all[s : s+faultySector]
			var newest byte = 1
			switch {
			case s < 8<<10:
				newest = 3
			case s < 16<<10:
				newest = 2
			}
			switch {
			case bytes.Equal(sec, fill(faultySector, newest)) && newest != 1:
				kept++
			case bytes.Equal(sec, fill(faultySector, 1)):
				if newest != 1 {
					reverted++
				}
			default:
				t.Fatalf("seed %d sector %d holds data that was never durable nor newest: % x", seed, s/faultySector, sec[:4])
			}
		}
	}
	if kept == 0 || reverted == 0 {
		t.Fatalf("torn images not varied: kept %d reverted %d", kept, reverted)
	}
}

func TestFaultyHookSeesEveryRequest(t *testing.T) {
	ctx := context.Background()
	f := NewFaulty(NewMemory(1 << 20))
	var mu sync.Mutex
	var ops []Op
	f.SetHook(func(op Op, off, n int64) {
		mu.Lock()
		ops = append(ops, op)
		mu.Unlock()
		// The hook may take an image.
		if _, err := f.DurableImage(nil); err != nil {
			t.Error(err)
		}
	})
	f.WriteAt(ctx, fill(512, 1), 0)
	f.Flush(ctx)
	f.ReadAt(ctx, make([]byte, 512), 0)
	f.Discard(ctx, 0, 512)
	f.SetHook(nil)
	f.Flush(ctx)
	want := []Op{OpWrite, OpFlush, OpRead, OpDiscard}
	if len(ops) != len(want) {
		t.Fatalf("hook saw %v, want %v", ops, want)
	}
	for i := range want {
		if ops[i] != want[i] {
			t.Fatalf("hook saw %v, want %v", ops, want)
		}
	}
	if OpAll.String() != "read|write|flush|discard" {
		t.Fatalf("OpAll = %q", OpAll)
	}
}

// TestFaultyConcurrentPowerCutImages takes images while writers and flushers
// run; every image must hold, per sector, a value some writer wrote (or
// zero), never a mixture inside a sector.
func TestFaultyConcurrentPowerCutImages(t *testing.T) {
	ctx := context.Background()
	f := NewFaulty(NewMemory(256 << 10))
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 3))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				off := r.Int64N(512) * faultySector
				if err := f.WriteAt(ctx, fill(faultySector, byte(1+r.IntN(250))), off); err != nil {
					t.Error(err)
					return
				}
				if i%16 == 0 {
					if err := f.Flush(ctx); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	for i := range 30 {
		img, err := f.DurableImage(rand.New(rand.NewPCG(uint64(i), 0)))
		if err != nil {
			t.Fatal(err)
		}
		all := readBack(t, img, 0, 256<<10)
		for s := 0; s < len(all); s += faultySector {
			if !bytes.Equal(all[s:s+faultySector], fill(faultySector, all[s])) {
				t.Fatalf("image %d sector %d is a mixture", i, s/faultySector)
			}
		}
	}
	close(stop)
	wg.Wait()
}

func TestFaultyGateAfter(t *testing.T) {
	ctx := context.Background()
	f := NewFaulty(NewMemory(1 << 20))
	if err := f.WriteAt(ctx, fill(4096, 1), 0); err != nil {
		t.Fatal(err)
	}
	g := f.GateAfter(OpRead, Range{Off: 0, Len: 4096})
	p := make([]byte, 4096)
	done := make(chan error, 1)
	go func() { done <- f.ReadAt(ctx, p, 0) }()
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := g.WaitArrived(wctx, 1); err != nil {
		t.Fatal(err)
	}
	// The parked read already read the old data; a write now does not change
	// what it returns.
	if err := f.WriteAt(ctx, fill(4096, 2), 0); err != nil {
		t.Fatal(err)
	}
	g.Release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, fill(4096, 1)) {
		t.Fatal("a read parked after the device returned data written later")
	}
	if f.Counts().Reads != 1 {
		t.Fatalf("counts %+v", f.Counts())
	}
}
