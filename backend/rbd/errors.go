package rbd

import (
	"errors"
	"fmt"

	"github.com/cachelun/cachelun/internal/blk"
)

// ErrNotBuilt is returned by Open in a binary built without the ceph build
// tag. Its text is the advice an operator needs.
var ErrNotBuilt = errors.New("this binary was built without Ceph support; rebuild with `go build -tags ceph ./cmd/cachelun`")

// Errors of Open. Each names one reason an image cannot be used, so a
// configuration check can say precisely what is wrong; Open wraps them with
// the spec, the user and librados' own message.
var (
	// ErrBadSpec: the backing spec is malformed (ParseSpec).
	ErrBadSpec = errors.New("rbd: bad backing spec")
	// ErrConfig: ceph.conf or the keyring cannot be read, or an option is
	// invalid.
	ErrConfig = errors.New("rbd: bad ceph configuration")
	// ErrUnreachable: no monitor answered within the connect timeout.
	ErrUnreachable = errors.New("rbd: ceph cluster unreachable")
	// ErrPermission: the cluster refused the user: unknown user, wrong key,
	// or no capability on the pool or image.
	ErrPermission = errors.New("rbd: permission denied")
	// ErrNoPool, ErrNoNamespace, ErrNoImage: the named pool, RBD namespace
	// or image does not exist.
	ErrNoPool      = errors.New("rbd: no such pool")
	ErrNoNamespace = errors.New("rbd: no such namespace")
	ErrNoImage     = errors.New("rbd: no such image")
	// ErrTooSmall: the image is smaller than Options.MinSize.
	ErrTooSmall = errors.New("rbd: image smaller than required")
	// ErrLocked: another client holds the image's exclusive lock (another
	// gateway, a VM, an rbd command writing to it).
	ErrLocked = errors.New("rbd: image locked by another client")
)

// Errors of requests. They wrap the internal/blk sentinel a host should see.
var (
	// ErrTimeout: the cluster did not answer within Options.OpTimeout
	// (rados_osd_op_timeout); the OSDs serving the range are down or
	// unreachable. The request may or may not have reached the image.
	ErrTimeout = fmt.Errorf("rbd: request timed out, cluster not answering: %w", blk.ErrNotReady)
	// ErrFenced: this client lost the image's exclusive lock to another
	// client (EROFS) or was blocklisted by it (ESHUTDOWN); it can no
	// longer write the image.
	ErrFenced = fmt.Errorf("rbd: client fenced, image lock lost to another client: %w", blk.ErrNotReady)
	// ErrIO: any other failure of a request; the data could not be read or
	// written.
	ErrIO = fmt.Errorf("rbd: I/O error: %w", blk.ErrMedium)
)
