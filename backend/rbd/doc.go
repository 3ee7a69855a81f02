// Package rbd is a backing device (backend.Device) on a Ceph RBD image,
// through librbd. It is built only with the ceph build tag
// (`go build -tags ceph ./cmd/cachelun`), which needs cgo and librbd-dev /
// librados-dev; without the tag Open fails with ErrNotBuilt, whose text is
// the advice to rebuild, and the package needs no C library.
//
// A backing spec names the image: "rbd:POOL/IMAGE" or
// "rbd:POOL/NAMESPACE/IMAGE" (ParseSpec). Options name the ceph.conf
// (default /etc/ceph/ceph.conf), the client id (default admin), an optional
// keyring and the timeouts.
//
// # Open
//
// Open connects with go-ceph's rados package, opens the pool (and RBD
// namespace) and then the image through librbd's C API on that pool handle
// (go-ceph's rbd package has no asynchronous I/O). Each reason an image
// cannot be used is a distinct error: ErrConfig (ceph.conf or keyring
// unreadable), ErrUnreachable (no monitor answered within ConnectTimeout),
// ErrPermission (unknown user, wrong key, no capability on the pool or
// image), ErrNoPool, ErrNoNamespace, ErrNoImage, ErrTooSmall (smaller than
// MinSize), ErrLocked (another live client holds the image's exclusive
// lock, named in the message). All of them come before anything is
// written. A lock owner without a watch on the image is dead (a gateway
// killed with SIGKILL keeps its lock, and its watch for
// osd_client_watch_timeout, 30 s): its lock is broken and the dead client
// blocklisted, so a restart after a crash takes the image over. A caller
// that recorded its own LockOwner can name it in Options.DeadOwners after a
// crash: that lock is broken at once, without waiting for the watch to
// expire. Then
// Open takes the exclusive lock explicitly (unless NoLock): unlike librbd's
// implicit lock, which moves to whichever client writes, an explicit lock
// makes another client's writes fail with EROFS, so two gateways never
// write one image. Open is bounded by ConnectTimeout plus a few OpTimeouts,
// or by ctx if it ends sooner (the open then finishes in the background and
// is closed).
//
// # Requests
//
// Every request is asynchronous in librbd (rbd_aio_*): a caller's
// goroutine submits and waits, so as many requests are in flight as there
// are callers. WriteAt completes when the OSDs acknowledged the write;
// with the librbd cache off (the default: the engine is the cache) that
// data is durable. Flush is rbd_aio_flush (it matters with LibrbdCache).
//
// Buffers: librbd reads and writes C memory that the request owns, never
// the caller's slice. A request whose context ends, or that exceeds
// OpTimeout, returns to its caller at once (ctx.Err(), or ErrTimeout) while
// librbd may still hold the request's buffer; librbd's late completion then
// frees the C buffer and touches nothing of the caller's. This costs one
// copy per request and spares pinning Go memory for an unbounded time.
// Completions are polled, not called back: librbd notifies an eventfd
// (rbd_set_image_notification) and one goroutine per image takes the
// completed requests in batches of up to 64 per C call
// (rbd_poll_io_events). librbd makes C-API callbacks one at a time from a
// single thread, and each would be a call into Go that must wait for a P:
// on a busy machine that serialized an image's completions. The poller
// never blocks on a request: it hands the result over a channel with room
// for it (or frees the buffer of an abandoned request); a request's tag
// is a runtime/cgo.Handle, never a Go pointer. Close waits for every
// request to complete, then stops the poller, then closes the image.
//
// # Timeouts and outages
//
// librados waits forever for an OSD by default and 300 s for the monitors.
// Open sets client_mount_timeout to ConnectTimeout (default 10 s) and
// rados_osd_op_timeout and rados_mon_op_timeout to OpTimeout (default 30
// s); and since librbd may chain several OSD operations for one request
// (an object-map update, then the write), each request is also bounded by
// OpTimeout here. A request to an unreachable OSD fails with ErrTimeout
// (wrapping blk.ErrNotReady) after OpTimeout, never hangs; it may or may
// not have reached the image. When the OSDs return, the same Device works
// again; nothing needs reopening. A client that lost the lock to another
// (EROFS) or was blocklisted (ESHUTDOWN) gets ErrFenced (blk.ErrNotReady);
// other failures are ErrIO (blk.ErrMedium). Every error wraps the errno.
//
// # Discard and zeroes (LBPRZ)
//
// rbd_discard of a range smaller than its granularity inside an object
// leaves the old data; only rbd_write_zeroes always zeroes (it deallocates
// whole objects and writes zeroes to partial ones). Discard and
// WriteZeroes therefore both use rbd_write_zeroes, so a discarded range
// reads as zeroes, as backend.Device requires, and a front end may
// advertise LBPRZ=1. Deallocate is the raw rbd_discard, a hint that
// promises nothing; never advertise zeroes on it.
//
// # Size
//
// Size is the image size at Open. PollSize asks librbd again (librbd
// re-reads the header once another client announced a change, e.g. rbd
// resize) and reports a change, growth to be announced to hosts as a
// capacity change, or a shrink after which requests past the new end fail
// with blk.ErrOutOfRange. Updated fires (one pending value) when librbd's
// update watch (rbd_update_watch) reports a change of the image's header,
// which `rbd resize` announces: a caller waiting on it calls PollSize at
// once instead of at its next poll. Its callback, like the completion
// callback, runs on a librbd thread and never blocks; the watch is removed
// before the image closes. HoldsLock says whether this client still owns
// the exclusive lock. Stats counts timeouts, fenced and failed requests and
// keeps the last failure and the time of the last success: a backing whose
// last failure is newer than its last success is degraded, for that reason.
//
// # Concurrency
//
// A Device is safe for concurrent use. mu guards closed (read-locked only
// to register a request); inflight counts submitted requests until their
// completion, abandoned ones included, so the teardown waits for all of
// them (each ends within a few OpTimeouts) before rbd_close, which releases
// the lock. Close itself returns within OpTimeout: during an outage it
// reports ErrTimeout and the teardown finishes in the background. Requests
// after Close fail with backend.ErrClosed.
package rbd
