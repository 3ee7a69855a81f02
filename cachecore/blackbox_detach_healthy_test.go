package cachecore_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/internal/testkit"
	"github.com/cachelun/cachelun/persist"
)

// TestBlackboxDetachHealthy: detaching a healthy cache with 3 MiB of dirty
// data on a slow backing device writes it all back (reported as progress)
// while a host goes on writing and reading, both beside the dirty data and
// over it; afterwards the backing device alone holds the newest data of
// every block, the volume serves from it in passthrough, and the cache
// file is refused by the next Open.
func TestBlackboxDetachHealthy(t *testing.T) {
	ctx := context.Background()
	s := newSlowDirty(t)
	s.release()
	model := map[int64]uint64{} // offset of a 4 KiB block → write id
	for off := int64(0); off < 6<<20; off += 8192 {
		model[off] = uint64(off/8192 + 1)
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var hostErr error
	hostModel := map[int64]uint64{}
	var hostWrites atomic.Int64 // host writes read back so far
	hostDone := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(hostDone)
		next := uint64(1 << 20)
		buf := make([]byte, 4096)
		for i := 0; i < 5000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			// Every other write overwrites a block that was dirty at the
			// start (it must not be lost to writeback order), the others go
			// beside the dirty data.
			off := 6<<20 + int64(i%64)*4096
			if i%2 == 1 {
				off = int64(i%128) * 8192
			}
			if err := s.v.WriteAt(ctx, tagged(next, off, 4096), off, false); err != nil {
				hostErr = err
				return
			}
			hostModel[off] = next
			next++
			if err := s.v.ReadAt(ctx, buf, off); err != nil || !bytes.Equal(buf, tagged(hostModel[off], off, 4096)) {
				hostErr = errors.Join(errors.New("read after write returned other data"), err)
				return
			}
			hostWrites.Add(1)
			time.Sleep(10 * time.Millisecond) // well below the 2 MiB/s of the backing device
		}
	}()

	var reports []cachecore.Progress
	began := time.Now()
	err := s.c.DetachWithProgress(ctx, false, func(p cachecore.Progress) { reports = append(reports, p) })
	t.Logf("detach took %v", time.Since(began))
	// The host keeps going after the detach: a few more writes read back
	// (or the host stopped, with its error checked below).
	after := hostWrites.Load()
	testkit.WaitFor(t, 10*time.Second, "three more host writes after the detach", func() bool {
		select {
		case <-hostDone:
			return true
		default:
			return hostWrites.Load() >= after+3
		}
	})
	close(stop)
	wg.Wait()
	mustOK(t, "detach", err)
	t.Logf("%d host writes", len(hostModel))
	if hostErr != nil {
		t.Fatalf("host I/O during the detach: %v", hostErr)
	}
	for off, id := range hostModel {
		model[off] = id
	}
	if len(reports) < 3 {
		t.Fatalf("%d progress reports", len(reports))
	}
	if last := reports[len(reports)-1]; !last.Done || last.Fraction() != 1 || last.WrittenBytes < 3<<20 {
		t.Errorf("last report %+v: want done, at least the 3 MiB dirty at the start written back", last)
	}
	for i := 1; i < len(reports); i++ {
		if reports[i].WrittenBytes < reports[i-1].WrittenBytes {
			t.Fatalf("report %d: %d bytes written back after %d", i, reports[i].WrittenBytes, reports[i-1].WrittenBytes)
		}
	}
	if st := s.v.Stats(); st.DirtyBytes != 0 || st.WritebackLag != 0 || s.v.Mode() != cachecore.ModePassthrough {
		t.Errorf("after the detach: %d dirty bytes, lag %v, mode %s", st.DirtyBytes, st.WritebackLag, s.v.Mode())
	}
	// The backing device itself holds the newest data of every block.
	buf := make([]byte, 4096)
	for off, id := range model {
		mustOK(t, "read backing", s.mem.ReadAt(ctx, buf, off))
		if !bytes.Equal(buf, tagged(id, off, 4096)) {
			got, derr := decodeSector(buf[:sector], off/sector)
			t.Fatalf("backing at %d holds write %d (%v), want %d", off, got, derr, id)
		}
	}
	// The volume serves from the backing device: a block changed there
	// directly reads back changed.
	mustOK(t, "write backing", s.mem.WriteAt(ctx, tagged(7777, 0, 4096), 0))
	mustOK(t, "read volume", s.v.ReadAt(ctx, buf, 0))
	if !bytes.Equal(buf, tagged(7777, 0, 4096)) {
		t.Error("after the detach the volume still reads the cache")
	}
	mustOK(t, "write after the detach", s.v.WriteAt(ctx, tagged(8888, 4096, 4096), 4096, true))
	mustOK(t, "read backing", s.mem.ReadAt(ctx, buf, 4096))
	if !bytes.Equal(buf, tagged(8888, 4096, 4096)) {
		t.Error("a write after the detach did not reach the backing device")
	}
	mustOK(t, "close", s.c.Close(ctx))
	store, err := persist.Open(s.media)
	mustOK(t, "persist.Open", err)
	if _, err := cachecore.Open(ctx, store, s.opts.Cfg); !errors.Is(err, cachecore.ErrDetachedCache) {
		t.Fatalf("Open of the detached cache file: %v, want ErrDetachedCache", err)
	}
}

// TestBlackboxDetachHealthyRefusedOnBackingError: when writeback cannot
// write the dirty data (the backing device fails its writes), Detach of a
// healthy cache gives up with the reason, the volume keeps its mode and its
// data, and a later Detach once the device works succeeds.
func TestBlackboxDetachHealthyRefusedOnBackingError(t *testing.T) {
	ctx := context.Background()
	s := newSlowDirty(t)
	s.release()
	rule := s.faulty.Inject(backend.Fault{Op: backend.OpWrite, Range: backend.Range{Off: 0, Len: 64 << 10}})
	dctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	err := s.c.Detach(dctx, false)
	if !errors.Is(err, cachecore.ErrWritebackFailed) || !strings.Contains(err.Error(), "injected fault") {
		t.Fatalf("Detach over a failing backing device: %v, want ErrWritebackFailed with the backing error", err)
	}
	if s.v.Mode() != cachecore.ModeWriteback || s.v.Stats().DirtyBytes == 0 {
		t.Fatalf("after the refused detach: mode %s, %d dirty bytes; want writeback with dirty data kept", s.v.Mode(), s.v.Stats().DirtyBytes)
	}
	buf := make([]byte, 4096)
	mustOK(t, "read after the refused detach", s.v.ReadAt(ctx, buf, 0))
	if !bytes.Equal(buf, tagged(1, 0, 4096)) {
		t.Fatal("the refused detach lost the dirty data of block 0")
	}
	rule.Remove()
	mustOK(t, "detach once the backing device works", s.c.Detach(dctx, false))
	mustOK(t, "read backing", s.mem.ReadAt(ctx, buf, 0))
	if !bytes.Equal(buf, tagged(1, 0, 4096)) {
		t.Fatal("block 0 is not on the backing device after the detach")
	}
}
