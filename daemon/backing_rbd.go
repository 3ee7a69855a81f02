package daemon

import (
	"context"
	"fmt"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/backend/rbd"
	"github.com/cachelun/cachelun/conf"
)

// openRBDBacking opens the Ceph RBD image a volume names (backing =
// "rbd:..."), with the volume's ceph_* settings. The volume's size is the
// image's. Every reason the image cannot be used (cluster unreachable, no
// such pool or image, permission denied, locked by another live gateway)
// is an error of backend/rbd naming it, returned within about
// ceph_connect_timeout plus a few ceph_op_timeout, before anything is
// written; a binary without -tags ceph returns rbd.ErrNotBuilt (conf
// refuses such a file before, this is the backstop).
func openRBDBacking(v conf.Volume) (backend.Device, error) {
	spec, err := rbd.ParseSpec(v.Backing)
	if err != nil {
		return nil, err
	}
	// rbd.Open bounds itself by the timeouts; the context only bounds
	// the whole open against a cluster slower than them at every step
	ctx, cancel := context.WithTimeout(context.Background(), v.CephConnectTimeout.D+4*v.CephOpTimeout.D)
	defer cancel()
	dev, err := rbd.Open(ctx, spec, rbd.Options{
		CephConf:       v.CephConf,
		User:           v.CephUser,
		Keyring:        v.CephKeyring,
		ConnectTimeout: v.CephConnectTimeout.D,
		OpTimeout:      v.CephOpTimeout.D,
	})
	if err != nil {
		return nil, fmt.Errorf("backing %s: %w", v.Backing, err)
	}
	if dev.Size()%int64(v.BlockSize) != 0 {
		dev.Close()
		return nil, fmt.Errorf("backing %s: image size %d is not a multiple of block_size %d", v.Backing, dev.Size(), v.BlockSize)
	}
	return dev, nil
}
