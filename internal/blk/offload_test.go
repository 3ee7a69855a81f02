package blk

import (
	"context"
	"testing"
)

type plainVol struct{ Volume }

type atomicVol struct{ plainVol }

func (atomicVol) AtomicLimits() AtomicLimits { return AtomicLimits{MaxBytes: 4096} }
func (atomicVol) WriteAtomic(context.Context, []byte, int64, bool) error {
	return nil
}

type wrapper struct {
	Volume
	inner Volume
}

func (w wrapper) Unwrap() Volume { return w.inner }

type loop struct{ plainVol }

func (l *loop) Unwrap() Volume { return l }

func TestOptionalInterfacesThroughWrappers(t *testing.T) {
	if _, ok := AtomicWriterOf(wrapper{inner: wrapper{inner: atomicVol{}}}); !ok {
		t.Fatal("AtomicWriter behind two wrappers not found")
	}
	if _, ok := AtomicWriterOf(wrapper{inner: plainVol{}}); ok {
		t.Fatal("a plain volume reported as AtomicWriter")
	}
	if _, ok := CopierOf(wrapper{inner: atomicVol{}}); ok {
		t.Fatal("Copier found where none is")
	}
	// A wrapper cycle ends instead of hanging.
	if _, ok := AtomicWriterOf(&loop{}); ok {
		t.Fatal("cycle reported an AtomicWriter")
	}
}
