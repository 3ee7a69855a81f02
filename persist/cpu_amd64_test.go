package persist

import "testing"

// TestChooseFlushInstruction: the fallback order CLWB → CLFLUSHOPT →
// CLFLUSH for every combination of the three CPUID bits, and no DAX
// persist (so no DAX) without any of them.
func TestChooseFlushInstruction(t *testing.T) {
	for _, c := range []struct {
		f    cpuFlushFeatures
		want string
	}{
		{cpuFlushFeatures{clwb: true, clflushopt: true, clflush: true}, FlushCLWB},
		{cpuFlushFeatures{clwb: true, clflush: true}, FlushCLWB},
		{cpuFlushFeatures{clwb: true}, FlushCLWB},
		{cpuFlushFeatures{clflushopt: true, clflush: true}, FlushCLFLUSHOPT}, // e.g. Skylake client
		{cpuFlushFeatures{clflushopt: true}, FlushCLFLUSHOPT},
		{cpuFlushFeatures{clflush: true}, FlushCLFLUSH}, // e.g. QEMU's qemu64 model
		{cpuFlushFeatures{}, ""},
	} {
		if got := chooseFlushInstruction(c.f); got != c.want {
			t.Errorf("chooseFlushInstruction(%+v) = %q, want %q", c.f, got, c.want)
		}
	}
}

// TestFlushInstructionFromThisCPU: what FlushInstruction and cacheFlusher
// report is what this CPU's CPUID bits choose (read here independently of
// readCPUFlushFeatures), and the chosen primitive runs without SIGILL.
func TestFlushInstructionFromThisCPU(t *testing.T) {
	_, _, _, edx1 := cpuid(1, 0)
	_, ebx7, _, _ := cpuid(7, 0)
	want := ""
	switch {
	case ebx7&(1<<24) != 0:
		want = "clwb"
	case ebx7&(1<<23) != 0:
		want = "clflushopt"
	case edx1&(1<<19) != 0:
		want = "clflush"
	}
	if got := FlushInstruction(); got != want {
		t.Fatalf("FlushInstruction() = %q, CPUID says %q", got, want)
	}
	flush, name := cacheFlusher()
	if name != want || (flush == nil) != (want == "") {
		t.Fatalf("cacheFlusher() = (%v, %q), want the %q primitive", flush != nil, name, want)
	}
	if flush != nil {
		flush(make([]byte, 4096))
	}
	t.Logf("this CPU persists DAX with %s+sfence", name)
}
