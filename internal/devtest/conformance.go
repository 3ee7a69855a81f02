// Package devtest holds the conformance checks every backing device
// (backend.Device) must pass, shared by package backend's tests and by
// backends in their own packages (backend/rbd).
package devtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/cachelun/cachelun/internal/blk"
)

// Device is backend.Device, restated so that package backend's own tests
// can use this package without an import cycle.
type Device interface {
	ReadAt(ctx context.Context, p []byte, off int64) error
	WriteAt(ctx context.Context, p []byte, off int64) error
	Flush(ctx context.Context) error
	Discard(ctx context.Context, off, n int64) error
	Size() int64
	Close() error
}

// CheckDevice runs the behaviour every backend.Device must show against dev,
// which must be zero-filled, at least 1 MiB, with size a multiple of align.
// errClosed is the error requests after Close must wrap (backend.ErrClosed,
// which wraps blk.ErrNotReady). It closes dev.
func CheckDevice(t testing.TB, dev Device, align int64, errClosed error) {
	t.Helper()
	ctx := context.Background()
	size := dev.Size()
	ref := make([]byte, size)

	got := make([]byte, 4*align)
	if err := dev.ReadAt(ctx, got, size-int64(len(got))); err != nil {
		t.Fatalf("read of last blocks: %v", err)
	}
	if !bytes.Equal(got, make([]byte, len(got))) {
		t.Fatal("fresh device is not zero-filled")
	}

	// Out of range, in every shape.
	for _, c := range []struct{ off, n int64 }{{size, align}, {size - align, 2 * align}, {size + 1<<30, align}} {
		if err := dev.ReadAt(ctx, make([]byte, c.n), c.off); !errors.Is(err, blk.ErrOutOfRange) {
			t.Errorf("ReadAt [%d,+%d) of %d: %v, want ErrOutOfRange", c.off, c.n, size, err)
		}
		if err := dev.WriteAt(ctx, make([]byte, c.n), c.off); !errors.Is(err, blk.ErrOutOfRange) {
			t.Errorf("WriteAt [%d,+%d): %v, want ErrOutOfRange", c.off, c.n, err)
		}
		if err := dev.Discard(ctx, c.off, c.n); !errors.Is(err, blk.ErrOutOfRange) {
			t.Errorf("Discard [%d,+%d): %v, want ErrOutOfRange", c.off, c.n, err)
		}
	}
	if err := dev.ReadAt(ctx, make([]byte, align), -align); err == nil {
		t.Error("ReadAt at a negative offset succeeded")
	}

	// A cancelled context must not touch the device.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := dev.WriteAt(cctx, bytes.Repeat([]byte{0xEE}, int(align)), 0); !errors.Is(err, context.Canceled) {
		t.Errorf("WriteAt with cancelled context: %v", err)
	}

	// Random single-threaded operations against a reference.
	rng := rand.New(rand.NewPCG(1, 2))
	blocks := size / align
	for i := range 300 {
		off := rng.Int64N(blocks) * align
		n := min((1+rng.Int64N(32))*align, size-off)
		switch rng.IntN(5) {
		case 0, 1:
			p := make([]byte, n)
			for j := range p {
				p[j] = byte(rng.Uint32())
			}
			if err := dev.WriteAt(ctx, p, off); err != nil {
				t.Fatalf("op %d write [%d,+%d): %v", i, off, n, err)
			}
			copy(ref[off:], p)
		case 2:
			if err := dev.Discard(ctx, off, n); err != nil {
				t.Fatalf("op %d discard: %v", i, err)
			}
			clear(ref[off : off+n])
		case 3:
			if err := dev.Flush(ctx); err != nil {
				t.Fatalf("op %d flush: %v", i, err)
			}
		case 4:
			p := make([]byte, n)
			if err := dev.ReadAt(ctx, p, off); err != nil {
				t.Fatalf("op %d read: %v", i, err)
			}
			if !bytes.Equal(p, ref[off:off+n]) {
				t.Fatalf("op %d read [%d,+%d): data differs from reference", i, off, n)
			}
		}
	}
	all := make([]byte, size)
	if err := dev.ReadAt(ctx, all, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(all, ref) {
		t.Fatal("final image differs from reference")
	}

	// Concurrent writers on disjoint stripes, readers everywhere; run with
	// -race. Each writer owns the blocks i ≡ w (mod writers) and checks its
	// own data at the end.
	const writers = 4
	var wg sync.WaitGroup
	errc := make(chan error, 2*writers)
	for w := range writers {
		wg.Add(2)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			mine := map[int64]byte{}
			for range 200 {
				b := r.Int64N(blocks/writers)*writers + int64(w)
				v := byte(r.Uint32()) | 1
				if err := dev.WriteAt(ctx, bytes.Repeat([]byte{v}, int(align)), b*align); err != nil {
					errc <- err
					return
				}
				mine[b] = v
			}
			p := make([]byte, align)
			for b, v := range mine {
				if err := dev.ReadAt(ctx, p, b*align); err != nil {
					errc <- err
					return
				}
				if !bytes.Equal(p, bytes.Repeat([]byte{v}, int(align))) {
					errc <- fmt.Errorf("writer %d block %d: lost its data", w, b)
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 9))
			p := make([]byte, 8*align)
			for range 200 {
				off := r.Int64N(blocks-8) * align
				if err := dev.ReadAt(ctx, p, off); err != nil {
					errc <- err
					return
				}
				if r.IntN(20) == 0 {
					if err := dev.Flush(ctx); err != nil {
						errc <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}

	if err := dev.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := dev.ReadAt(ctx, make([]byte, align), 0); !errors.Is(err, errClosed) || !errors.Is(err, blk.ErrNotReady) {
		t.Errorf("ReadAt after Close: %v, want ErrClosed wrapping ErrNotReady", err)
	}
	if err := dev.WriteAt(ctx, make([]byte, align), 0); !errors.Is(err, errClosed) {
		t.Errorf("WriteAt after Close: %v, want ErrClosed", err)
	}
}
