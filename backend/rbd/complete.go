//go:build ceph

package rbd

// This file holds only the Go function librbd's update callback calls
// (cgo forbids C definitions next to an //export).

/*
#include <stdint.h>
#include <sys/types.h>
*/
import "C"

import (
	"sync"
)

// updateWatchers maps the tag of an image's update watch to its Device's
// updated channel. A tag is an integer, never a Go pointer; one no longer
// in the map (the watch is being removed) is ignored.
var updateWatchers sync.Map // uint64 → chan struct{}

// cachelunRBDUpdated runs on a librbd thread when an image's header
// changed. It must not block: it leaves at most one pending value.
//
//export cachelunRBDUpdated
func cachelunRBDUpdated(tag C.uintptr_t) {
	v, ok := updateWatchers.Load(uint64(tag))
	if !ok {
		return
	}
	select {
	case v.(chan struct{}) <- struct{}{}:
	default:
	}
}
