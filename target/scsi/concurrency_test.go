package scsi

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/memvol"
	"github.com/cachelun/cachelun/internal/testkit"
)

// TestConcurrentStateChanges runs I/O on several nexuses while others
// change mode pages, reservations, unit attentions and the LUN map. It
// asserts that every command ends in a legal outcome and that data written
// is read back; the race detector checks the locking.
func TestConcurrentStateChanges(t *testing.T) {
	f := newFixture(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	report := func(err error) {
		select {
		case errs <- err:
		default:
		}
	}
	legal := func(r Response) bool {
		switch r.Status {
		case StatusGood, StatusReservationConflict:
			return true
		case StatusCheckCondition:
			return r.Sense[2]&0x0f == byte(SenseUnitAttention)
		}
		return false
	}
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := &Nexus{InitiatorPort: fmt.Sprintf("iqn.io:%d,i,0x1", g), TargetPort: "iqn.test:tgt,t,0x0001"}
			data := pattern(testBS, byte(g+1))
			lba := uint32(1000 + g)
			for i := 0; i < 300; i++ {
				r := f.exec(n, testkit.CDB10(0x2a, 0, lba, 1), data, 0)
				if !legal(r) {
					report(fmt.Errorf("write: status %#x sense % x", r.Status, r.Sense))
					return
				}
				if r.Status != StatusGood {
					continue
				}
				r = f.exec(n, testkit.CDB10(0x28, 0, lba, 1), nil, testBS)
				if r.Status == StatusGood && string(r.Data) != string(data) {
					report(fmt.Errorf("nexus %d read back other data", g))
					return
				}
				if i%50 == 0 {
					f.tgt.NexusLost(n)
				}
			}
		}()
	}
	p := cachingPage(t, modeSense6(f, nexusA, pageCaching, pcCurrent))
	sel := append([]byte{0, 0, 0, 0}, p...)
	sel[4] &^= 0x80
	vol, err := memvol.New(64*testBS, testBS)
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() { // state changer
		defer wg.Done()
		for i := 0; i < 100 && ctx.Err() == nil; i++ {
			sel[6] ^= 0x04
			f.exec(nexusA, []byte{0x15, 0x10, 0, 0, byte(len(sel)), 0}, sel, 0)
			f.prout(nexusA, 6, 0, 0, 0xa, 0)
			f.prout(nexusA, 1, prWriteExclusive, 0xa, 0, 0)
			f.prout(nexusA, 2, prWriteExclusive, 0xa, 0, 0)
			f.prout(nexusA, 6, 0, 0, 0, 0)
			f.exec(nexusA, []byte{0x16, 0, 0, 0, 0, 0}, nil, 0)
			f.exec(nexusA, []byte{0x17, 0, 0, 0, 0, 0}, nil, 0)
			f.lu.NotifyCapacityChanged()
			if _, err := f.tgt.AddLU(5, LUConfig{Volume: vol}); err != nil {
				report(err)
				return
			}
			if err := f.tgt.RemoveLU(5); err != nil {
				report(err)
				return
			}
			if err := f.tgt.ResetLU(nexusA, 0); err != nil {
				report(err)
				return
			}
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// gateVol blocks reads until released, to hold tasks in the task set.
type gateVol struct {
	Volume
	started chan struct{}
	release chan struct{}
}

func (v *gateVol) ReadAt(ctx context.Context, p []byte, off int64) error {
	v.started <- struct{}{}
	<-v.release
	return v.Volume.ReadAt(ctx, p, off)
}

func TestOrderedTaskWaitsForEarlierTasks(t *testing.T) {
	var gv *gateVol
	f := newFixture(t, func(c *LUConfig) {
		gv = &gateVol{Volume: c.Volume, started: make(chan struct{}, 4), release: make(chan struct{})}
		c.Volume = gv
	})
	exec := func(attr TaskAttr, cdb []byte, inLen uint32) <-chan Response {
		ch := make(chan Response, 1)
		go func() {
			ch <- f.tgt.Execute(context.Background(), &Command{Nexus: nexusA, CDB: cdb, Attr: attr, DataInLen: inLen})
		}()
		return ch
	}
	simple := exec(TaskSimple, testkit.CDB10(0x28, 0, 0, 1), testBS)
	<-gv.started // the simple READ is inside the volume
	ordered := exec(TaskOrdered, []byte{0, 0, 0, 0, 0, 0}, 0)
	// HEAD OF QUEUE passes everything.
	if r := <-exec(TaskHead, []byte{0, 0, 0, 0, 0, 0}, 0); r.Status != StatusGood {
		t.Fatalf("head of queue status %#x", r.Status)
	}
	// Without the task set the TEST UNIT READY would finish in
	// microseconds; give it ample time to (wrongly) do so.
	select {
	case <-ordered:
		t.Fatal("ORDERED task completed before the earlier SIMPLE task")
	case <-time.After(50 * time.Millisecond):
	}
	close(gv.release)
	if r := <-simple; r.Status != StatusGood {
		t.Fatalf("simple status %#x", r.Status)
	}
	if r := <-ordered; r.Status != StatusGood {
		t.Fatalf("ordered status %#x", r.Status)
	}
}
