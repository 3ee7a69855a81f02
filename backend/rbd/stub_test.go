//go:build !ceph

package rbd

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// A binary without the ceph tag refuses an RBD backing with the advice to
// rebuild.
func TestOpenNotBuilt(t *testing.T) {
	_, err := Open(context.Background(), Spec{Pool: "p", Image: "i"}, Options{})
	if !errors.Is(err, ErrNotBuilt) || !strings.Contains(err.Error(), "go build -tags ceph ./cmd/cachelun") {
		t.Fatalf("Open: %v, want ErrNotBuilt with the rebuild advice", err)
	}
}
