package backend

import (
	"bytes"
	"context"
	"testing"
)

func TestMemorySparseAndClone(t *testing.T) {
	ctx := context.Background()
	m := NewMemory(1 << 40) // a TiB device costs nothing until written
	if m.AllocatedBytes() != 0 {
		t.Fatal("fresh device allocated memory")
	}
	if err := m.WriteAt(ctx, make([]byte, 1<<20), 1<<39); err != nil {
		t.Fatal(err)
	}
	if m.AllocatedBytes() != 0 {
		t.Fatal("writing zeroes to an empty region allocated memory")
	}
	// A write straddling two chunks.
	p := bytes.Repeat([]byte{0xC3}, 1000)
	off := int64(1<<30 - 500)
	if err := m.WriteAt(ctx, p, off); err != nil {
		t.Fatal(err)
	}
	if m.AllocatedBytes() != 2*memChunkSize {
		t.Fatalf("allocated %d, want two chunks", m.AllocatedBytes())
	}
	c := m.Clone()
	if err := m.WriteAt(ctx, make([]byte, 1000), off); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 1000)
	if err := c.ReadAt(ctx, got, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, p) {
		t.Fatal("clone shares memory with the original")
	}
	// Discarding whole chunks frees them.
	if err := c.Discard(ctx, 1<<30-memChunkSize, 2*memChunkSize); err != nil {
		t.Fatal(err)
	}
	if c.AllocatedBytes() != 0 {
		t.Fatalf("discard kept %d bytes", c.AllocatedBytes())
	}
	if err := c.ReadAt(ctx, got, off); err != nil || !isZero(got) {
		t.Fatalf("discarded range reads %v, %v", got[:4], err)
	}
}
