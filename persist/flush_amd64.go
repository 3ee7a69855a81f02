package persist

import "unsafe"

func cpuid(leaf, sub uint32) (eax, ebx, ecx, edx uint32)

//go:noescape
func clwbRange(addr, n uintptr)

//go:noescape
func clflushoptRange(addr, n uintptr)

//go:noescape
func clflushRange(addr, n uintptr)

// FlushInstruction names the instruction a DAX persist on this CPU writes
// cache lines back with (FlushCLWB, FlushCLFLUSHOPT or FlushCLFLUSH; each
// followed by SFENCE), chosen from CPUID; "" when this CPU or architecture
// has none, and then OpenFile never selects DAX.
func FlushInstruction() string { return chooseFlushInstruction(readCPUFlushFeatures()) }

// cacheFlusher returns the persist primitive of FlushInstruction and its
// name; nil and "" when there is none.
func cacheFlusher() (func(p []byte), string) {
	name := FlushInstruction()
	var f func(addr, n uintptr)
	switch name {
	case FlushCLWB:
		f = clwbRange
	case FlushCLFLUSHOPT:
		f = clflushoptRange
	case FlushCLFLUSH:
		f = clflushRange
	default:
		return nil, ""
	}
	return func(p []byte) {
		if len(p) > 0 {
			f(uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		}
	}, name
}

// daxSupported: this architecture has a user-space persist primitive.
const daxSupported = true
