package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

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
//
// ownerFile (in the data directory, which this daemon holds locked) records
// the image lock's owner, this process's librados address. A daemon
// killed with SIGKILL keeps the lock, and its watch on the image for 30 s,
// so the image would look locked by a live client; the next start names
// the recorded owner dead (it is: the data directory lock proves no
// process of this data directory is running) and takes the image over at
// once. An owner that is not the recorded one (another gateway) is never
// broken, unless the caller names it in breaking: a cluster node taking a
// volume over from a peer whose link is down (see doc.go, "Cluster
// ownership"), which fences that peer.
func openRBDBacking(v conf.Volume, ownerFile string, breaking ...string) (backend.Device, error) {
	spec, err := rbd.ParseSpec(v.Backing)
	if err != nil {
		return nil, err
	}
	dead := append([]string(nil), breaking...)
	if b, err := os.ReadFile(ownerFile); err == nil {
		if s := strings.TrimSpace(string(b)); s != "" {
			dead = append(dead, s)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("backing %s: %w", v.Backing, err)
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
		DeadOwners:     dead,
	})
	if err != nil {
		return nil, fmt.Errorf("backing %s: %w", v.Backing, err)
	}
	if err := recordOwner(ownerFile, dev.LockOwner()); err != nil {
		dev.Close()
		return nil, fmt.Errorf("backing %s: recording the lock owner: %w", v.Backing, err)
	}
	if dev.Size()%int64(v.BlockSize) != 0 {
		dev.Close()
		return nil, fmt.Errorf("backing %s: image size %d is not a multiple of block_size %d", v.Backing, dev.Size(), v.BlockSize)
	}
	return dev, nil
}

// rbdOwnerSuffix names the file next to an RBD backing's path in the data
// directory (DATA_DIR/rbd:POOL/IMAGE.owner) that records its lock owner.
const rbdOwnerSuffix = ".owner"

// recordOwner replaces the owner file atomically (a crash leaves the old
// or the new owner, never a torn one).
func recordOwner(path, owner string) error {
	if owner == "" {
		return nil // no exclusive-lock feature: nothing to take over
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(owner+"\n"), 0o640); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
