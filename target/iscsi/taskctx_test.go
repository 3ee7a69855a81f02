package iscsi

import (
	"context"
	"errors"
	"testing"
)

func TestTaskCtxCancel(t *testing.T) {
	var asked taskCtx
	done := asked.Done()
	if asked.Err() != nil {
		t.Fatalf("Err before cancel = %v", asked.Err())
	}
	select {
	case <-done:
		t.Fatal("Done closed before cancel")
	default:
	}
	asked.cancel()
	asked.cancel() // a second cancel does nothing (and does not panic)
	<-done
	if !errors.Is(asked.Err(), context.Canceled) {
		t.Fatalf("Err after cancel = %v, want context.Canceled", asked.Err())
	}

	// Cancelled before anyone asked for Done.
	var unasked taskCtx
	unasked.cancel()
	<-unasked.Done()
	if !errors.Is(unasked.Err(), context.Canceled) {
		t.Fatalf("Err = %v, want context.Canceled", unasked.Err())
	}
}
