//go:build ceph

package rbd

/*
#include <stdint.h>
#include <sys/types.h>
#include <rbd/librbd.h>

int cl_set_notification(rbd_image_t img, int fd);
int cl_poll(rbd_image_t img, uintptr_t *tags, ssize_t *rets, int max);
*/
import "C"

import (
	"fmt"
	"os"
	"runtime/cgo"

	"golang.org/x/sys/unix"
)

// pollBatch is the most completions one cl_poll call takes.
const pollBatch = 64

// startPoller makes the image notify an eventfd when requests complete and
// starts the goroutine that takes the completions (pollCompletions).
func (d *Device) startPoller() error {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("%w: completion eventfd: %w", ErrIO, err)
	}
	if rc := C.cl_set_notification(d.image, C.int(fd)); rc < 0 {
		unix.Close(fd)
		return fmt.Errorf("%w: rbd_set_image_notification: %w", ErrIO, unix.Errno(-rc))
	}
	// non-blocking: reads wait in the runtime's poller, not in a thread
	d.events = os.NewFile(uintptr(fd), "rbd-completions")
	d.pollDone = make(chan struct{})
	go d.pollCompletions()
	return nil
}

// stopPoller stops the poller (every request has completed) and waits for
// it. Idempotent.
func (d *Device) stopPoller() {
	if d.events == nil {
		return
	}
	d.events.Close()
	<-d.pollDone
	d.events = nil
}

// pollCompletions takes the completed requests whenever the eventfd says
// there are some, in batches, and hands each its result. It never blocks
// on a request (request.complete does not).
func (d *Device) pollCompletions() {
	defer close(d.pollDone)
	var tags [pollBatch]C.uintptr_t
	var rets [pollBatch]C.ssize_t
	var counter [8]byte
	for {
		for {
			n := C.cl_poll(d.image, &tags[0], &rets[0], pollBatch)
			if n <= 0 {
				if n < 0 {
					d.log.Error("rbd: polling completions failed", "spec", d.spec.String(), "err", unix.Errno(-n))
				}
				break
			}
			for i := range int(n) {
				h := cgo.Handle(tags[i])
				r := h.Value().(*request)
				h.Delete()
				r.complete(int64(rets[i]))
			}
			if n < pollBatch {
				break
			}
		}
		// librbd adds to the counter after queuing a completion, so one
		// queued after the poll above wakes this read
		if _, err := d.events.Read(counter[:]); err != nil {
			return // closed by stopPoller
		}
	}
}
