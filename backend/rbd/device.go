//go:build ceph

package rbd

/*
#cgo LDFLAGS: -lrbd -lrados
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <rbd/librbd.h>

extern void cachelunRBDUpdated(uintptr_t tag);

// cl_updated is librbd's image update callback (rbd_update_watch): the
// image's header changed (a resize by another client, a lock change).
static void cl_updated(void *arg) {
	cachelunRBDUpdated((uintptr_t)arg);
}

int cl_update_watch(rbd_image_t img, uint64_t *handle, uintptr_t tag) {
	return rbd_update_watch(img, handle, cl_updated, (void *)tag);
}

// Completions are polled, not called back: the image notifies an eventfd
// (rbd_set_image_notification) and the Device's poller takes every
// completed request in batches (cl_poll). A completion callback would be
// a call from C into Go for each request, made one at a time from
// librbd's single callback thread, which then waits for a Go P: on a
// loaded machine that serialized the completions of an image.
int cl_set_notification(rbd_image_t img, int fd) {
	return rbd_set_image_notification(img, fd, EVENT_TYPE_EVENTFD);
}

// cl_poll takes up to max (at most 64) completed requests: their tags (a
// runtime/cgo.Handle, an integer, never a Go pointer: librbd keeps it past
// the call that submitted the request) and return values. It returns how
// many, or -errno.
int cl_poll(rbd_image_t img, uintptr_t *tags, ssize_t *rets, int max) {
	rbd_completion_t comps[64];
	int i, n;
	if (max > 64)
		max = 64;
	n = rbd_poll_io_events(img, comps, max);
	for (i = 0; i < n; i++) {
		tags[i] = (uintptr_t)rbd_aio_get_arg(comps[i]);
		rets[i] = rbd_aio_get_return_value(comps[i]);
		rbd_aio_release(comps[i]);
	}
	return n;
}

enum { CL_READ, CL_WRITE, CL_FLUSH, CL_ZEROES, CL_DISCARD };

// cl_submit starts one asynchronous request. On a negative return nothing
// was submitted and nothing will complete.
static int cl_submit(rbd_image_t img, int op, uint64_t off, size_t len, char *buf, uintptr_t tag) {
	rbd_completion_t c;
	int r = rbd_aio_create_completion((void *)tag, NULL, &c);
	if (r < 0)
		return r;
	switch (op) {
	case CL_READ:
		r = rbd_aio_read(img, off, len, buf, c);
		break;
	case CL_WRITE:
		r = rbd_aio_write(img, off, len, buf, c);
		break;
	case CL_FLUSH:
		r = rbd_aio_flush(img, c);
		break;
	case CL_ZEROES:
		r = rbd_aio_write_zeroes(img, off, len, c, 0, 0);
		break;
	case CL_DISCARD:
		r = rbd_aio_discard(img, off, len, c);
		break;
	default:
		r = -EINVAL;
	}
	if (r < 0)
		rbd_aio_release(c);
	return r;
}

// cl_lock_owners returns the number of clients holding the image's lock
// (0 if none) and the first owner's name in owner (size n), or -errno.
static int cl_lock_owners(rbd_image_t img, char *owner, size_t n) {
	rbd_lock_mode_t mode;
	char *owners[8];
	size_t count = 8;
	int r = rbd_lock_get_owners(img, &mode, owners, &count);
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return r;
	if (count > 0 && n > 0) {
		size_t i;
		for (i = 0; i + 1 < n && owners[0][i]; i++)
			owner[i] = owners[0][i];
		owner[i] = 0;
	}
	rbd_lock_get_owners_cleanup(owners, count);
	return (int)count;
}

// cl_is_watcher returns 1 if addr has a watch on the image's header (a live
// client), 0 if not, or -errno.
static int cl_is_watcher(rbd_image_t img, const char *addr) {
	rbd_image_watcher_t w[64];
	size_t n = 64, i;
	int found = 0;
	int r = rbd_watchers_list(img, w, &n);
	if (r < 0)
		return r;
	for (i = 0; i < n; i++)
		if (strcmp(w[i].addr, addr) == 0)
			found = 1;
	rbd_watchers_list_cleanup(w, n);
	return found;
}
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/cgo"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	gorbd "github.com/ceph/go-ceph/rbd"

	"github.com/ceph/go-ceph/rados"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/internal/blk"
)

// Device is an RBD image as a backing device (see the package comment).
type Device struct {
	spec   Spec
	opts   Options
	log    *slog.Logger
	conn   *rados.Conn
	ioctx  *rados.IOContext
	image  C.rbd_image_t
	locked bool   // we took the exclusive lock explicitly
	owner  string // our address as the lock's owner ("" without the lock)

	size atomic.Int64

	// updated receives (at most one pending) a value when librbd reports
	// that the image's header changed; watchTag keys it in
	// updateWatchers; watching says rbd_update_watch took watchHandle.
	updated     chan struct{}
	watchTag    uint64
	watchHandle C.uint64_t
	watching    bool

	mu       sync.RWMutex // guards closed; RLock to start a request, Lock to close
	closed   bool
	inflight sync.WaitGroup // requests submitted and not yet completed, abandoned ones included

	// events is the eventfd librbd notifies when requests complete; the
	// poller goroutine (pollCompletions) ends, closing pollDone, when it
	// is closed (teardown, after the last request completed).
	events   *os.File
	pollDone chan struct{}

	nInflight              atomic.Int64
	timeouts, fenced, errs atomic.Uint64
	lastOK                 atomic.Int64 // unix nanoseconds of the last request that succeeded
	lastErr                atomic.Pointer[failure]
}

// Built reports whether this binary has librbd (the ceph build tag).
const Built = true

type failure struct {
	err error
	at  time.Time
}

// Open connects to the cluster, opens the image and checks that it can be
// used, in bounded time (about ConnectTimeout plus a few OpTimeouts; sooner
// if ctx ends). Every refusal wraps one of ErrConfig, ErrUnreachable,
// ErrPermission, ErrNoPool, ErrNoNamespace, ErrNoImage, ErrTooSmall,
// ErrLocked or ErrTimeout; nothing is written to the image before all
// checks passed. Unless opts.NoLock, the exclusive lock is then taken.
func Open(ctx context.Context, spec Spec, opts Options) (*Device, error) {
	opts = opts.withDefaults()
	if _, err := ParseSpec(spec.String()); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	type result struct {
		d   *Device
		err error
	}
	// librados calls cannot be interrupted; they are bounded by the
	// timeouts set below. If ctx ends first, the open finishes in the
	// background and its device is closed.
	res := make(chan result, 1)
	go func() {
		d, err := open(spec, opts)
		res <- result{d, err}
	}()
	select {
	case r := <-res:
		return r.d, r.err
	case <-ctx.Done():
		go func() {
			if r := <-res; r.d != nil {
				r.d.Close()
			}
		}()
		return nil, fmt.Errorf("rbd: open %s: %w", spec, ctx.Err())
	}
}

func seconds(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) }

func open(spec Spec, opts Options) (_ *Device, err error) {
	user := strings.TrimPrefix(opts.User, "client.")
	where := fmt.Sprintf("rbd: open %s as client.%s", spec, user)
	if _, err := os.Stat(opts.CephConf); err != nil {
		return nil, fmt.Errorf("%s: %w: %w", where, ErrConfig, err)
	}
	if opts.Keyring != "" {
		if _, err := os.Stat(opts.Keyring); err != nil {
			return nil, fmt.Errorf("%s: %w: keyring: %w", where, ErrConfig, err)
		}
	}
	conn, err := rados.NewConnWithUser(user)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", where, ErrConfig, err)
	}
	d := &Device{spec: spec, opts: opts, log: opts.Logger, conn: conn}
	connected := false
	defer func() {
		if err == nil {
			return
		}
		d.stopPoller() // before the image it polls is closed
		if d.image != nil {
			C.rbd_close(d.image)
		}
		if d.ioctx != nil {
			d.ioctx.Destroy()
		}
		if connected {
			conn.Shutdown()
		}
	}()
	if err := conn.ReadConfigFile(opts.CephConf); err != nil {
		return nil, fmt.Errorf("%s: %w: reading %s: %w", where, ErrConfig, opts.CephConf, err)
	}
	settings := [][2]string{
		// librados waits 300 s for the monitors and forever for the
		// OSDs by default: an outage would hang every request.
		{"client_mount_timeout", seconds(opts.ConnectTimeout)},
		{"rados_mon_op_timeout", seconds(opts.OpTimeout)},
		{"rados_osd_op_timeout", seconds(opts.OpTimeout)},
		{"rbd_cache", strconv.FormatBool(opts.LibrbdCache)},
	}
	if opts.Keyring != "" {
		settings = append(settings, [2]string{"keyring", opts.Keyring})
	}
	for _, kv := range settings {
		if err := conn.SetConfigOption(kv[0], kv[1]); err != nil {
			return nil, fmt.Errorf("%s: %w: setting %s=%s: %w", where, ErrConfig, kv[0], kv[1], err)
		}
	}
	if err := conn.Connect(); err != nil {
		switch errnoOf(err) {
		case syscall.ETIMEDOUT:
			return nil, fmt.Errorf("%s: %w: no monitor answered within %v (mon host in %s): %w", where, ErrUnreachable, opts.ConnectTimeout, opts.CephConf, err)
		case syscall.EACCES, syscall.EPERM:
			return nil, fmt.Errorf("%s: %w: authentication failed (unknown user or wrong key): %w", where, ErrPermission, err)
		case syscall.ENOENT:
			return nil, fmt.Errorf("%s: %w: no keyring with a key for client.%s: %w", where, ErrPermission, user, err)
		}
		return nil, fmt.Errorf("%s: %w: connect: %w", where, ErrUnreachable, err)
	}
	connected = true
	ioctx, err := conn.OpenIOContext(spec.Pool)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, openErr(err, ErrNoPool, "pool "+spec.Pool))
	}
	d.ioctx = ioctx
	if spec.Namespace != "" {
		ok, err := gorbd.NamespaceExists(ioctx, spec.Namespace)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, openErr(err, ErrNoNamespace, "namespace "+spec.Namespace))
		}
		if !ok {
			return nil, fmt.Errorf("%s: %w: %s in pool %s", where, ErrNoNamespace, spec.Namespace, spec.Pool)
		}
		ioctx.SetNamespace(spec.Namespace)
	}
	cname := C.CString(spec.Image)
	defer C.free(unsafe.Pointer(cname))
	// The go-ceph rbd package has no asynchronous I/O, so the image is
	// opened here, on the pool handle go-ceph made, and driven through
	// librbd's C API directly.
	if rc := C.rbd_open(C.rados_ioctx_t(ioctx.Pointer()), cname, &d.image, nil); rc < 0 {
		d.image = nil
		return nil, fmt.Errorf("%s: %w", where, openErr(syscall.Errno(-rc), ErrNoImage, "image "+spec.Image))
	}
	if err := d.startPoller(); err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	var size C.uint64_t
	if rc := C.rbd_get_size(d.image, &size); rc < 0 {
		return nil, fmt.Errorf("%s: size: %w", where, openErr(syscall.Errno(-rc), ErrNoImage, "image "+spec.Image))
	}
	d.size.Store(int64(size))
	if opts.MinSize > 0 && int64(size) < opts.MinSize {
		return nil, fmt.Errorf("%s: %w: image has %d bytes, %d required", where, ErrTooSmall, size, opts.MinSize)
	}
	var features C.uint64_t
	if rc := C.rbd_get_features(d.image, &features); rc < 0 {
		return nil, fmt.Errorf("%s: features: %w", where, openErr(syscall.Errno(-rc), ErrNoImage, "image "+spec.Image))
	}
	hasLock := features&C.RBD_FEATURE_EXCLUSIVE_LOCK != 0
	if !opts.NoLock && hasLock {
		var owner [256]C.char
		n := C.cl_lock_owners(d.image, &owner[0], C.size_t(len(owner)))
		if n < 0 {
			return nil, fmt.Errorf("%s: lock owners: %w", where, openErr(syscall.Errno(-n), ErrNoImage, "image "+spec.Image))
		}
		if n > 0 {
			// A client that died holding the lock (a gateway killed
			// with SIGKILL) stays its owner until someone breaks the
			// lock; its watch on the image expires within
			// osd_client_watch_timeout (30 s). An owner without a
			// watch is dead, and rbd_lock_acquire breaks its lock
			// (blocklisting it, so it can never write again).
			alive := C.cl_is_watcher(d.image, &owner[0])
			if alive < 0 {
				return nil, fmt.Errorf("%s: watchers: %w", where, openErr(syscall.Errno(-alive), ErrNoImage, "image "+spec.Image))
			}
			ownerName := C.GoString(&owner[0])
			if alive == 1 && slices.Contains(opts.DeadOwners, ownerName) {
				// The caller knows this owner is dead though its
				// watch lingers (its own previous incarnation):
				// rbd_lock_acquire would wait on the live-looking
				// owner, so the lock is broken here (blocklisting it).
				d.log.Warn("rbd image locked by this gateway's dead predecessor; breaking its lock", "spec", spec.String(), "owner", ownerName)
				if rc := C.rbd_lock_break(d.image, C.RBD_LOCK_MODE_EXCLUSIVE, &owner[0]); rc < 0 && syscall.Errno(-rc) != syscall.ENOENT {
					return nil, fmt.Errorf("%s: breaking the lock of %s: %w", where, ownerName, openErr(syscall.Errno(-rc), ErrNoImage, "image "+spec.Image))
				}
				alive = 0
			}
			if alive == 1 {
				return nil, fmt.Errorf("%s: %w: held by %s, which is alive (it watches the image; a client that died lets go within 30 s, osd_client_watch_timeout)",
					where, ErrLocked, C.GoString(&owner[0]))
			}
			d.log.Warn("rbd image locked by a dead client; breaking its lock", "spec", spec.String(), "owner", C.GoString(&owner[0]))
		}
		// An explicit lock, unlike librbd's implicit one, is not handed
		// over when another client writes: that client's writes fail
		// with EROFS instead.
		if rc := C.rbd_lock_acquire(d.image, C.RBD_LOCK_MODE_EXCLUSIVE); rc < 0 {
			e := syscall.Errno(-rc)
			if e == syscall.EROFS || e == syscall.EBUSY || e == syscall.EAGAIN {
				return nil, fmt.Errorf("%s: %w: taking the exclusive lock: %w", where, ErrLocked, e)
			}
			return nil, fmt.Errorf("%s: taking the exclusive lock: %w", where, openErr(e, ErrNoImage, "image "+spec.Image))
		}
		d.locked = true
		if n := C.cl_lock_owners(d.image, &owner[0], C.size_t(len(owner))); n > 0 {
			d.owner = C.GoString(&owner[0])
		}
	} else if !opts.NoLock {
		d.log.Warn("rbd image has no exclusive-lock feature: another client can write it unnoticed", "spec", spec.String())
	}
	d.watchUpdates()
	d.log.Info("rbd image opened", "spec", spec.String(), "user", user, "size", int64(size),
		"exclusive_lock", d.locked, "librbd_cache", opts.LibrbdCache, "op_timeout", opts.OpTimeout)
	return d, nil
}

// errnoOf returns the errno a go-ceph or librbd error carries, or 0.
func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	var ce interface{ ErrorCode() int }
	if errors.As(err, &ce) {
		c := ce.ErrorCode()
		if c < 0 {
			c = -c
		}
		return syscall.Errno(c)
	}
	return 0
}

// openErr maps an error of an open step; notFound is the sentinel for
// ENOENT at that step.
func openErr(err error, notFound error, what string) error {
	switch errnoOf(err) {
	case syscall.ENOENT:
		return fmt.Errorf("%w: %s: %w", notFound, what, err)
	case syscall.EACCES, syscall.EPERM:
		return fmt.Errorf("%w: %s: %w", ErrPermission, what, err)
	case syscall.ETIMEDOUT:
		return fmt.Errorf("%w: %s: %w", ErrTimeout, what, err)
	case syscall.EROFS, syscall.ESHUTDOWN:
		return fmt.Errorf("%w: %s: %w", ErrFenced, what, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrIO, what, err)
}

// Spec returns the image the device was opened on.
func (d *Device) Spec() Spec { return d.spec }

// LockOwner is this client's address as the owner of the image's exclusive
// lock ("" if it took none): a caller that records it can pass it in
// Options.DeadOwners when it restarts after a crash.
func (d *Device) LockOwner() string { return d.owner }

// Size returns the image size: at Open, or as last seen by PollSize.
func (d *Device) Size() int64 { return d.size.Load() }

// PollSize asks librbd for the image's current size (librbd re-reads the
// image header when another client announced a change, e.g. rbd resize) and
// makes it the device's Size. changed reports a difference from the
// previous Size, a growth the host should be told about or a shrink that
// leaves requests past the new end failing. It blocks at most OpTimeout.
func (d *Device) PollSize() (size int64, changed bool, err error) {
	if err := d.enter(); err != nil {
		return 0, false, err
	}
	defer d.leave()
	var sz C.uint64_t
	if rc := C.rbd_get_size(d.image, &sz); rc < 0 {
		return 0, false, d.ioErr("size", 0, 0, syscall.Errno(-rc))
	}
	old := d.size.Swap(int64(sz))
	return int64(sz), old != int64(sz), nil
}

// HoldsLock reports whether this client owns the image's exclusive lock now.
// It is false, without error, after another client broke the lock and
// blocklisted this one (this client is fenced).
func (d *Device) HoldsLock() (bool, error) {
	if err := d.enter(); err != nil {
		return false, err
	}
	defer d.leave()
	var owner C.int
	if rc := C.rbd_is_exclusive_lock_owner(d.image, &owner); rc < 0 {
		if e := syscall.Errno(-rc); e == syscall.ESHUTDOWN || e == syscall.EROFS {
			// Blocklisted by the client that broke the lock: certainly
			// not the owner.
			return false, nil
		}
		return false, d.ioErr("lock owner", 0, 0, syscall.Errno(-rc))
	}
	return owner != 0, nil
}

// leave ends a request registered by enter.
func (d *Device) leave() {
	d.nInflight.Add(-1)
	d.inflight.Done()
}

// enter registers a request, or fails with ErrClosed.
func (d *Device) enter() error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return backend.ErrClosed
	}
	d.inflight.Add(1)
	d.nInflight.Add(1)
	return nil
}

const (
	statePending = iota
	stateDone
	stateAbandoned
)

// request is one asynchronous librbd request. buf is C memory, so librbd
// may use it after the caller's context ended and the caller went on with
// its own buffer; whoever is last (the waiter, or the completion of an
// abandoned request) frees it.
type request struct {
	d     *Device
	buf   unsafe.Pointer
	state atomic.Int32
	done  chan int64 // capacity 1: the completion never blocks
}

func (r *request) complete(ret int64) {
	if r.state.CompareAndSwap(statePending, stateDone) {
		r.done <- ret
		return
	}
	// The waiter has gone; nobody else refers to r.
	r.finish()
}

func (r *request) finish() {
	if r.buf != nil {
		C.free(r.buf)
		r.buf = nil
	}
	r.d.leave()
}

func (d *Device) checkRange(what string, off, n int64) error {
	size := d.size.Load()
	if off < 0 || n < 0 {
		return fmt.Errorf("rbd: %s %s [%d,+%d): %w", what, d.spec, off, n, blk.ErrMisaligned)
	}
	if off > size || n > size-off {
		return fmt.Errorf("rbd: %s %s [%d,+%d) past end %d: %w", what, d.spec, off, n, size, blk.ErrOutOfRange)
	}
	return nil
}

func (d *Device) ioErr(what string, off, n int64, e syscall.Errno) error {
	var kind error
	switch e {
	case syscall.ETIMEDOUT:
		kind = ErrTimeout
	case syscall.EROFS, syscall.ESHUTDOWN:
		kind = ErrFenced
	default:
		kind = ErrIO
	}
	err := fmt.Errorf("rbd: %s %s [%d,+%d): %w: %w", what, d.spec, off, n, kind, e)
	switch kind {
	case ErrTimeout:
		d.timeouts.Add(1)
	case ErrFenced:
		d.fenced.Add(1)
	default:
		d.errs.Add(1)
	}
	d.lastErr.Store(&failure{err: err, at: time.Now()})
	return err
}

// Stats returns the request counters.
func (d *Device) Stats() Stats {
	st := Stats{
		InFlight: d.nInflight.Load(),
		Timeouts: d.timeouts.Load(),
		Fenced:   d.fenced.Load(),
		Errors:   d.errs.Load(),
	}
	if ns := d.lastOK.Load(); ns != 0 {
		st.LastOK = time.Unix(0, ns)
	}
	if f := d.lastErr.Load(); f != nil {
		st.LastError, st.LastErrorAt = f.err, f.at
	}
	return st
}

// do runs one request: op on [off, off+n), with p the caller's data for
// reads and writes.
func (d *Device) do(ctx context.Context, op C.int, what string, p []byte, off, n int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := d.enter(); err != nil {
		return err
	}
	r := &request{d: d, done: make(chan int64, 1)}
	if p != nil && n > 0 {
		r.buf = C.malloc(C.size_t(n))
		if op == C.CL_WRITE {
			copy(unsafe.Slice((*byte)(r.buf), n), p)
		}
	}
	h := cgo.NewHandle(r)
	if rc := C.cl_submit(d.image, op, C.uint64_t(off), C.size_t(n), (*C.char)(r.buf), C.uintptr_t(h)); rc < 0 {
		h.Delete()
		r.finish()
		return d.ioErr(what, off, n, syscall.Errno(-rc))
	}
	// librados bounds each of its operations by OpTimeout, but librbd may
	// chain several for one request (an object-map update, then the
	// write), so the request itself is bounded here too.
	timer := time.NewTimer(d.opts.OpTimeout)
	defer timer.Stop()
	var ret int64
	select {
	case ret = <-r.done:
	case <-ctx.Done():
		if r.state.CompareAndSwap(statePending, stateAbandoned) {
			// librbd still owns r.buf; the completion frees it.
			return ctx.Err()
		}
		ret = <-r.done
	case <-timer.C:
		if r.state.CompareAndSwap(statePending, stateAbandoned) {
			return d.ioErr(what, off, n, syscall.ETIMEDOUT)
		}
		ret = <-r.done
	}
	defer r.finish()
	if ret < 0 {
		return d.ioErr(what, off, n, syscall.Errno(-ret))
	}
	if op == C.CL_READ {
		if ret != n {
			d.errs.Add(1)
			err := fmt.Errorf("rbd: read %s [%d,+%d): %w: short read of %d bytes", d.spec, off, n, ErrIO, ret)
			d.lastErr.Store(&failure{err: err, at: time.Now()})
			return err
		}
		copy(p, unsafe.Slice((*byte)(r.buf), n))
	}
	d.lastOK.Store(time.Now().UnixNano())
	return nil
}

// ReadAt fills p from off.
func (d *Device) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := d.checkRange("read", off, int64(len(p))); err != nil {
		return err
	}
	if len(p) == 0 {
		return ctx.Err()
	}
	return d.do(ctx, C.CL_READ, "read", p, off, int64(len(p)))
}

// WriteAt writes p at off. With the librbd cache off (the default) the data
// is on the OSDs when WriteAt returns nil.
func (d *Device) WriteAt(ctx context.Context, p []byte, off int64) error {
	if err := d.checkRange("write", off, int64(len(p))); err != nil {
		return err
	}
	if len(p) == 0 {
		return ctx.Err()
	}
	return d.do(ctx, C.CL_WRITE, "write", p, off, int64(len(p)))
}

// Flush is rbd_flush: every write completed before it is durable.
func (d *Device) Flush(ctx context.Context) error {
	return d.do(ctx, C.CL_FLUSH, "flush", nil, 0, 0)
}

// Discard zeroes [off, off+n) with rbd_write_zeroes, which deallocates the
// whole objects in the range and writes zeroes to the partial ones, so the
// range reads as zeroes afterwards, as backend.Device requires.
func (d *Device) Discard(ctx context.Context, off, n int64) error {
	return d.zero(ctx, C.CL_ZEROES, "discard", off, n)
}

// WriteZeroes is Discard under the name of the SCSI command it serves.
func (d *Device) WriteZeroes(ctx context.Context, off, n int64) error {
	return d.zero(ctx, C.CL_ZEROES, "write zeroes", off, n)
}

// Deallocate is rbd_discard: a hint that [off, off+n) is unused. It does NOT
// promise zeroes: a range smaller than librbd's discard granularity inside
// an object keeps its old data. Never advertise LBPRZ on it.
func (d *Device) Deallocate(ctx context.Context, off, n int64) error {
	return d.zero(ctx, C.CL_DISCARD, "deallocate", off, n)
}

func (d *Device) zero(ctx context.Context, op C.int, what string, off, n int64) error {
	if err := d.checkRange(what, off, n); err != nil {
		return err
	}
	if n == 0 {
		return ctx.Err()
	}
	return d.do(ctx, op, what, nil, off, n)
}

// Close waits for every request in flight, abandoned ones included, then
// closes the image, which releases its lock, and the cluster connection.
// During an outage each of librbd's teardown steps waits up to OpTimeout,
// so Close returns after OpTimeout with an error wrapping ErrTimeout and
// lets the teardown finish in the background; until then the image's lock
// stays with this client (when the process exits first, the next client
// breaks the lock of the dead one).
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.mu.Unlock()
	done := make(chan error, 1)
	go func() { done <- d.teardown() }()
	timer := time.NewTimer(d.opts.OpTimeout)
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-timer.C:
		d.log.Warn("rbd image close still waiting for the cluster; finishing in the background", "spec", d.spec.String())
		return fmt.Errorf("rbd: close %s: %w (still closing in the background)", d.spec, ErrTimeout)
	}
}

func (d *Device) teardown() error {
	d.inflight.Wait()
	d.stopPoller()
	d.unwatchUpdates()
	var err error
	if rc := C.rbd_close(d.image); rc < 0 {
		err = d.ioErr("close", 0, 0, syscall.Errno(-rc))
	}
	d.ioctx.Destroy()
	d.conn.Shutdown()
	d.log.Info("rbd image closed", "spec", d.spec.String())
	return err
}
