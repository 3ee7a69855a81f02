//go:build ceph

package rbd

/*
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <rbd/librbd.h>

// clh_lock_holder writes the first owner of the image's exclusive lock to
// owner (size n) and returns 1, 0 when the lock is free, or -errno; *alive
// is 1 when that owner watches the image's header (a live client).
static int clh_lock_holder(rbd_image_t img, char *owner, size_t n, int *alive) {
	rbd_lock_mode_t mode;
	char *owners[8];
	size_t count = 8, i;
	rbd_image_watcher_t w[64];
	size_t nw = 64;
	int r = rbd_lock_get_owners(img, &mode, owners, &count);
	*alive = 0;
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return r;
	if (count == 0)
		return 0;
	for (i = 0; i + 1 < n && owners[0][i]; i++)
		owner[i] = owners[0][i];
	owner[i] = 0;
	rbd_lock_get_owners_cleanup(owners, count);
	r = rbd_watchers_list(img, w, &nw);
	if (r < 0)
		return r;
	for (i = 0; i < nw; i++)
		if (strcmp(w[i].addr, owner) == 0)
			*alive = 1;
	rbd_watchers_list_cleanup(w, nw);
	return 1;
}
*/
import "C"

import (
	"errors"
	"syscall"
	"unsafe"
)

// LockHolder reports who holds the image's exclusive lock now, as librbd
// names lock owners (the client's address, what LockOwner returns on the
// holder's Device): "" when the lock is free. alive is true when that
// owner still watches the image (a client killed keeps its watch for
// osd_client_watch_timeout, 30 s). It works on a Device opened with
// NoLock, which is how a standby gateway watches an image another one
// owns; it blocks at most about OpTimeout.
func (d *Device) LockHolder() (owner string, alive bool, err error) {
	if err := d.enter(); err != nil {
		return "", false, err
	}
	defer d.leave()
	var buf [256]C.char
	var a C.int
	rc := C.clh_lock_holder(d.image, &buf[0], C.size_t(len(buf)), &a)
	if rc < 0 {
		return "", false, d.ioErr("lock holder", 0, 0, syscall.Errno(-rc))
	}
	if rc == 0 {
		return "", false, nil
	}
	return C.GoString(&buf[0]), a != 0, nil
}

// SetMetadata sets an image metadata key (rbd image-meta set). With the
// exclusive-lock feature only the lock's holder can set one.
func (d *Device) SetMetadata(key, value string) error {
	if err := d.enter(); err != nil {
		return err
	}
	defer d.leave()
	ck, cv := C.CString(key), C.CString(value)
	defer C.free(unsafe.Pointer(ck))
	defer C.free(unsafe.Pointer(cv))
	if rc := C.rbd_metadata_set(d.image, ck, cv); rc < 0 {
		return d.ioErr("metadata set "+key, 0, 0, syscall.Errno(-rc))
	}
	return nil
}

// Metadata reads an image metadata key; ok is false when it is not set.
func (d *Device) Metadata(key string) (value string, ok bool, err error) {
	if err := d.enter(); err != nil {
		return "", false, err
	}
	defer d.leave()
	ck := C.CString(key)
	defer C.free(unsafe.Pointer(ck))
	n := C.size_t(256)
	for range 4 {
		buf := (*C.char)(C.malloc(n))
		l := n
		rc := C.rbd_metadata_get(d.image, ck, buf, &l)
		if rc == 0 {
			v := C.GoString(buf) // NUL-terminated
			C.free(unsafe.Pointer(buf))
			return v, true, nil
		}
		C.free(unsafe.Pointer(buf))
		switch e := syscall.Errno(-rc); e {
		case syscall.ENOENT:
			return "", false, nil
		case syscall.ERANGE:
			n = max(l, 2*n)
			continue
		default:
			return "", false, d.ioErr("metadata get "+key, 0, 0, e)
		}
	}
	return "", false, errors.New("rbd: metadata value keeps growing")
}
