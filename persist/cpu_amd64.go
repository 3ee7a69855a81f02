package persist

// cpuFlushFeatures are the CPUID bits that decide how a DAX persist writes
// cache lines back. They are read from the CPU the process runs on, never
// assumed from the build target: a virtual machine's CPU model can lack
// CLWB (QEMU's qemu64 does), and executing it there raises SIGILL.
type cpuFlushFeatures struct {
	clwb       bool // CPUID.(EAX=7,ECX=0):EBX bit 24
	clflushopt bool // CPUID.(EAX=7,ECX=0):EBX bit 23
	clflush    bool // CPUID.01H:EDX bit 19
}

// readCPUFlushFeatures asks this CPU. A leaf above the highest one the CPU
// reports (CPUID.0:EAX) is not queried: its answer would be undefined.
func readCPUFlushFeatures() cpuFlushFeatures {
	maxLeaf, _, _, _ := cpuid(0, 0)
	var f cpuFlushFeatures
	if maxLeaf >= 1 {
		_, _, _, edx1 := cpuid(1, 0)
		f.clflush = edx1&(1<<19) != 0
	}
	if maxLeaf >= 7 {
		_, ebx7, _, _ := cpuid(7, 0)
		f.clwb = ebx7&(1<<24) != 0
		f.clflushopt = ebx7&(1<<23) != 0
	}
	return f
}

// chooseFlushInstruction is the fallback order of doc.go ("Media"): CLWB
// (writes the line back and may keep it cached), else CLFLUSHOPT (writes
// back and evicts, weakly ordered), else CLFLUSH (writes back and evicts,
// ordered with other CLFLUSHes: slower). "" when the CPU has none of them:
// OpenFile then never selects DAX.
func chooseFlushInstruction(f cpuFlushFeatures) string {
	switch {
	case f.clwb:
		return FlushCLWB
	case f.clflushopt:
		return FlushCLFLUSHOPT
	case f.clflush:
		return FlushCLFLUSH
	}
	return ""
}
