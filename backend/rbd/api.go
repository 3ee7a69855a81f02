package rbd

import (
	"context"

	"github.com/cachelun/cachelun/backend"
)

// Both builds give Device the same method set, so code that uses it (the
// configuration wiring) compiles with and without the ceph build tag.
var (
	_ backend.Device = (*Device)(nil)
	_ interface {
		WriteZeroes(ctx context.Context, off, n int64) error
		Deallocate(ctx context.Context, off, n int64) error
		PollSize() (size int64, changed bool, err error)
		HoldsLock() (bool, error)
		Spec() Spec
		LockOwner() string
		Stats() Stats
	} = (*Device)(nil)
)
