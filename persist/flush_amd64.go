package persist

import "unsafe"

func cpuid(leaf, sub uint32) (eax, ebx, ecx, edx uint32)

//go:noescape
func clwbRange(addr, n uintptr)

//go:noescape
func clflushoptRange(addr, n uintptr)

//go:noescape
func clflushRange(addr, n uintptr)

// cacheFlusher returns the best CPU cache write-back primitive of this CPU
// (CLWB, else CLFLUSHOPT, else CLFLUSH), each followed by SFENCE, and its name.
func cacheFlusher() (func(p []byte), string) {
	maxLeaf, _, _, _ := cpuid(0, 0)
	var ebx7 uint32
	if maxLeaf >= 7 {
		_, ebx7, _, _ = cpuid(7, 0)
	}
	run := func(f func(addr, n uintptr)) func(p []byte) {
		return func(p []byte) {
			if len(p) > 0 {
				f(uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			}
		}
	}
	switch {
	case ebx7&(1<<24) != 0:
		return run(clwbRange), "clwb+sfence"
	case ebx7&(1<<23) != 0:
		return run(clflushoptRange), "clflushopt+sfence"
	default:
		return run(clflushRange), "clflush+sfence"
	}
}

// daxSupported: this architecture has a user-space persist primitive.
const daxSupported = true
