//go:build ceph

package rbd

/*
#include <stdint.h>
#include <rbd/librbd.h>

extern int cl_update_watch(rbd_image_t img, uint64_t *handle, uintptr_t tag);
*/
import "C"

import (
	"sync/atomic"
	"syscall"
)

// updateTags numbers update watches (the tags librbd hands back).
var updateTags atomic.Uint64

// Updated receives a value (at most one pending) whenever librbd reports
// that the image's header changed: another client resized it (rbd resize),
// took or released its lock, made a snapshot. librbd learns it through
// its watch on the header object (the notification `rbd resize` sends),
// so a caller that waits on Updated and then calls PollSize sees a resize
// within moments instead of at its next poll. Without a watch (it could
// not be registered; logged) the channel never fires and polling alone
// remains.
func (d *Device) Updated() <-chan struct{} { return d.updated }

// watchUpdates registers the update watch (rbd_update_watch). A failure is
// logged: polling still sees every change, later.
func (d *Device) watchUpdates() {
	d.updated = make(chan struct{}, 1)
	d.watchTag = updateTags.Add(1)
	updateWatchers.Store(d.watchTag, d.updated)
	if rc := C.cl_update_watch(d.image, &d.watchHandle, C.uintptr_t(d.watchTag)); rc < 0 {
		updateWatchers.Delete(d.watchTag)
		d.log.Warn("rbd image update watch not registered; resizes are seen at the next size poll", "spec", d.spec.String(), "err", syscall.Errno(-rc))
		return
	}
	d.watching = true
}

// unwatchUpdates removes the update watch (teardown, before the image
// closes). librbd waits for a callback in progress; the tag leaves the
// map first, so a late one does nothing.
func (d *Device) unwatchUpdates() {
	updateWatchers.Delete(d.watchTag)
	if d.watching {
		C.rbd_update_unwatch(d.image, d.watchHandle)
		d.watching = false
	}
}
