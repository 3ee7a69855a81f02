//go:build !ceph

package rbd

import "context"

// Built reports whether this binary has librbd (the ceph build tag): a
// configuration naming an RBD backing is refused up front, with
// ErrNotBuilt's advice, when it has not.
const Built = false

// Device is an RBD image as a backing device. This binary was built without
// the ceph build tag: Open always fails with ErrNotBuilt, and no Device
// exists.
type Device struct{}

// Open fails with ErrNotBuilt: this binary has no librbd.
func Open(ctx context.Context, spec Spec, opts Options) (*Device, error) {
	return nil, ErrNotBuilt
}

func (*Device) ReadAt(context.Context, []byte, int64) error     { return ErrNotBuilt }
func (*Device) WriteAt(context.Context, []byte, int64) error    { return ErrNotBuilt }
func (*Device) Flush(context.Context) error                     { return ErrNotBuilt }
func (*Device) Discard(context.Context, int64, int64) error     { return ErrNotBuilt }
func (*Device) WriteZeroes(context.Context, int64, int64) error { return ErrNotBuilt }
func (*Device) Deallocate(context.Context, int64, int64) error  { return ErrNotBuilt }
func (*Device) PollSize() (int64, bool, error)                  { return 0, false, ErrNotBuilt }
func (*Device) Updated() <-chan struct{}                        { return nil }
func (*Device) HoldsLock() (bool, error)                        { return false, ErrNotBuilt }
func (*Device) Stats() Stats                                    { return Stats{} }
func (*Device) Size() int64                                     { return 0 }
func (*Device) LockOwner() string                               { return "" }
func (*Device) Spec() Spec                                      { return Spec{} }
func (*Device) Close() error                                    { return nil }
