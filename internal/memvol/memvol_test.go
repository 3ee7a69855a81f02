package memvol

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/cachelun/cachelun/internal/blk"
)

func TestReadWriteBounds(t *testing.T) {
	ctx := context.Background()
	v, err := New(8192, 512)
	if err != nil {
		t.Fatal(err)
	}
	w := bytes.Repeat([]byte{0xab}, 1024)
	if err := v.WriteAt(ctx, w, 7168, true); err != nil {
		t.Fatal(err)
	}
	r := make([]byte, 1024)
	if err := v.ReadAt(ctx, r, 7168); err != nil || !bytes.Equal(r, w) {
		t.Fatalf("read back %v, %x", err, r[:4])
	}
	if err := v.ReadAt(ctx, r, 7680); !errors.Is(err, blk.ErrOutOfRange) {
		t.Fatalf("read past end: %v", err)
	}
	if err := v.WriteAt(ctx, r[:100], 0, false); !errors.Is(err, blk.ErrMisaligned) {
		t.Fatalf("misaligned write: %v", err)
	}
	if _, fua, _, _ := v.Counters(); fua != 1 {
		t.Fatalf("fua count %d", fua)
	}
}

func TestCompareAndWrite(t *testing.T) {
	ctx := context.Background()
	v, _ := New(4096, 512)
	old := make([]byte, 512)
	nw := bytes.Repeat([]byte{1}, 512)
	if err := v.CompareAndWrite(ctx, 0, old, nw, false); err != nil {
		t.Fatal(err)
	}
	err := v.CompareAndWrite(ctx, 0, old, nw, false)
	var me *blk.MiscompareError
	if !errors.As(err, &me) || me.Offset != 0 {
		t.Fatalf("second CAW: %v", err)
	}
	if err := v.Discard(ctx, 0, 512); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 512)
	_ = v.ReadAt(ctx, got, 0)
	if !bytes.Equal(got, old) {
		t.Fatal("discard did not zero")
	}
}
