//go:build ceph

package rbd

// This file holds only the Go function librbd's completion callback calls
// (cgo forbids C definitions next to an //export).

/*
#include <stdint.h>
#include <sys/types.h>
*/
import "C"

import "runtime/cgo"

// cachelunRBDComplete runs on a librbd thread when a request completes. It
// must not block (it would stall the image's other completions): it only
// hands the result to the request, over a channel with room for it.
//
//export cachelunRBDComplete
func cachelunRBDComplete(tag C.uintptr_t, ret C.ssize_t) {
	h := cgo.Handle(tag)
	r := h.Value().(*request)
	h.Delete()
	r.complete(int64(ret))
}
