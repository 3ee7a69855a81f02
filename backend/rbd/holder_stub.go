//go:build !ceph

package rbd

// LockHolder fails with ErrNotBuilt: this binary has no librbd.
func (*Device) LockHolder() (string, bool, error) { return "", false, ErrNotBuilt }

// SetMetadata fails with ErrNotBuilt.
func (*Device) SetMetadata(string, string) error { return ErrNotBuilt }

// Metadata fails with ErrNotBuilt.
func (*Device) Metadata(string) (string, bool, error) { return "", false, ErrNotBuilt }
