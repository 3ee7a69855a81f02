package backend_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/internal/blk"
)

// TestFilePollSize: a file grown with truncate is served up to its new end
// once PollSize saw it; one that shrank fails requests past its new end; a
// device opened with a smaller Size keeps that limit; PollerOf finds the
// File under the Slow and Faulty wrappers.
func TestFilePollSize(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "b.img")
	f, err := backend.OpenFile(path, backend.FileOptions{Create: true, Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dev := backend.NewSlow(backend.NewFaulty(f), backend.SlowOptions{})
	p, ok := backend.PollerOf(dev)
	if !ok {
		t.Fatal("no SizePoller under Slow and Faulty")
	}
	if _, ok := backend.PollerOf(backend.NewMemory(1)); ok {
		t.Fatal("Memory reported as a SizePoller")
	}
	if size, changed, err := p.PollSize(); err != nil || changed || size != 1<<20 {
		t.Fatalf("PollSize unchanged = %d, %v, %v", size, changed, err)
	}
	if err := os.Truncate(path, 3<<20); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	if err := dev.WriteAt(ctx, buf, 2<<20); !errors.Is(err, blk.ErrOutOfRange) {
		t.Fatalf("write past the old size before PollSize: %v", err)
	}
	if size, changed, err := p.PollSize(); err != nil || !changed || size != 3<<20 || dev.Size() != 3<<20 {
		t.Fatalf("PollSize after growth = %d, %v, %v; Size %d", size, changed, err, dev.Size())
	}
	if err := dev.WriteAt(ctx, buf, 2<<20); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 2<<20); err != nil {
		t.Fatal(err)
	}
	if size, changed, err := p.PollSize(); err != nil || !changed || size != 2<<20 {
		t.Fatalf("PollSize after shrink = %d, %v, %v", size, changed, err)
	}
	if err := dev.ReadAt(ctx, buf, 2<<20); !errors.Is(err, blk.ErrOutOfRange) {
		t.Fatalf("read past a shrunk end: %v", err)
	}
	f.Close()
	if _, _, err := p.PollSize(); !errors.Is(err, backend.ErrClosed) {
		t.Fatalf("PollSize after Close: %v", err)
	}

	// Opened with a Size below the file's: the limit stays.
	g, err := backend.OpenFile(path, backend.FileOptions{Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if err := os.Truncate(path, 8<<20); err != nil {
		t.Fatal(err)
	}
	if size, changed, err := g.PollSize(); err != nil || changed || size != 1<<20 {
		t.Fatalf("PollSize of a limited device = %d, %v, %v", size, changed, err)
	}
}
