//go:build !ceph

package integration

// cephEnabled: without the ceph build tag the daemon is built without
// librbd and the RBD tests (rbd_test.go) are not compiled.
const cephEnabled = false

func stopCeph() error { return nil }
