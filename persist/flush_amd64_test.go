package persist

import (
	"bytes"
	"testing"
	"unsafe"
)

// TestCacheFlushPrimitives runs the CPU cache write-back primitives on
// ordinary (anonymous) memory: they must not fault and must keep the data.
func TestCacheFlushPrimitives(t *testing.T) {
	cpu := readCPUFlushFeatures()
	prims := map[string]func(uintptr, uintptr){}
	if cpu.clflush {
		prims["clflush"] = clflushRange
	}
	if cpu.clwb {
		prims["clwb"] = clwbRange
	}
	if cpu.clflushopt {
		prims["clflushopt"] = clflushoptRange
	}
	t.Logf("cpu supports %d primitives; best: %s", len(prims), func() string { _, n := cacheFlusher(); return n }())
	for name, f := range prims {
		buf := make([]byte, 3*4096+77)
		for i := range buf {
			buf[i] = byte(i * 7)
		}
		want := append([]byte(nil), buf...)
		for _, r := range [][2]int{{0, len(buf)}, {5, 1}, {63, 2}, {100, 4000}} {
			f(uintptr(unsafe.Pointer(&buf[r[0]])), uintptr(r[1]))
		}
		if !bytes.Equal(buf, want) {
			t.Fatalf("%s changed the data", name)
		}
	}
	flush, _ := cacheFlusher()
	b := []byte("persist me")
	flush(b)
	flush(nil)
	if string(b) != "persist me" {
		t.Fatal("cacheFlusher changed the data")
	}
}
