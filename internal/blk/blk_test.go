package blk

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

func TestMiscompareIsSentinel(t *testing.T) {
	err := fmt.Errorf("volume db1: %w", &MiscompareError{Offset: 513})
	if !errors.Is(err, ErrMiscompare) {
		t.Fatalf("errors.Is(%v, ErrMiscompare) = false", err)
	}
	var me *MiscompareError
	if !errors.As(err, &me) || me.Offset != 513 {
		t.Fatalf("errors.As gave %+v", me)
	}
	if errors.Is(err, ErrMedium) {
		t.Fatal("miscompare must not match ErrMedium")
	}
}

func TestStreamRoundTrip(t *testing.T) {
	if got := Stream(context.Background()); got != "" {
		t.Fatalf("empty context gave stream %q", got)
	}
	ctx := WithStream(context.Background(), "init,i,0x1/lun0")
	if got := Stream(ctx); got != "init,i,0x1/lun0" {
		t.Fatalf("Stream = %q", got)
	}
}
