package rbd

import (
	"log/slog"
	"time"
)

// Defaults of Options.
const (
	DefaultCephConf       = "/etc/ceph/ceph.conf"
	DefaultUser           = "admin"
	DefaultConnectTimeout = 10 * time.Second
	DefaultOpTimeout      = 30 * time.Second
)

// Options configures Open. The zero value is valid: /etc/ceph/ceph.conf,
// client.admin, the keyring ceph.conf names, bounded timeouts, librbd cache
// off, the image's exclusive lock taken.
type Options struct {
	// CephConf is the ceph.conf to read (mon addresses, keyring path).
	CephConf string
	// User is the client id ("admin" for client.admin; a "client." prefix
	// is accepted).
	User string
	// Keyring, if set, overrides the keyring ceph.conf names.
	Keyring string
	// ConnectTimeout bounds connecting to the monitors and authenticating
	// (client_mount_timeout).
	ConnectTimeout time.Duration
	// OpTimeout bounds every operation on the OSDs and monitors
	// (rados_osd_op_timeout, rados_mon_op_timeout): a request to an
	// unreachable OSD fails with ErrTimeout after this long instead of
	// waiting forever, librados' default.
	OpTimeout time.Duration
	// MinSize, if positive, is the size the image must have at least (the
	// volume's configured size); a smaller image is refused with
	// ErrTooSmall.
	MinSize int64
	// LibrbdCache turns librbd's write-back cache on. Off by default: the
	// engine is the cache, and with librbd's cache a completed write is not
	// on the OSDs until Flush.
	LibrbdCache bool
	// NoLock opens the image without taking its exclusive lock (for
	// read-mostly tools). By default Open refuses an image another client
	// holds the lock of, then takes the lock explicitly, so another
	// client's writes fail instead of moving the lock away silently.
	NoLock bool
	// DeadOwners are lock owners (LockOwner of an earlier Device) the
	// caller knows are dead: its own previous incarnation, killed, whose
	// watch on the image lingers for osd_client_watch_timeout (30 s). Open
	// breaks such an owner's lock (blocklisting it) at once instead of
	// refusing the image as locked by a live client. Naming a live
	// client here fences it.
	DeadOwners []string
	// Logger receives open, close and lock events; nil discards them.
	Logger *slog.Logger
}

//lint:ignore U1000 used by Open in device.go, which only the ceph build compiles
func (o Options) withDefaults() Options {
	if o.CephConf == "" {
		o.CephConf = DefaultCephConf
	}
	if o.User == "" {
		o.User = DefaultUser
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.OpTimeout <= 0 {
		o.OpTimeout = DefaultOpTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}
