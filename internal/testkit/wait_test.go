package testkit

import (
	"bytes"
	"sync/atomic"
	"testing"
	"time"
)

func TestWaitForReturnsOnceTrue(t *testing.T) {
	var n atomic.Int32
	go func() {
		for range 3 {
			time.Sleep(time.Millisecond)
			n.Add(1)
		}
	}()
	WaitFor(t, 10*time.Second, "three increments", func() bool { return n.Load() == 3 })
}

// fatalRecorder records a Fatalf instead of ending the test, so the
// failure path of WaitFor can be checked.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Helper() {}
func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = format
	_ = args
}

func TestWaitForFailsWithWhat(t *testing.T) {
	rec := &fatalRecorder{TB: t}
	// The condition turns true once Fatalf ran, which ends the loop the
	// way t.Fatalf's runtime.Goexit would.
	WaitFor(rec, 5*time.Millisecond, "never", func() bool { return rec.msg != "" })
	if rec.msg == "" {
		t.Fatal("WaitFor did not fail")
	}
}

func TestCDBLayout(t *testing.T) {
	for _, tc := range []struct {
		got, want []byte
	}{
		{Read10(0x01020304, 0x0506), []byte{0x28, 0, 1, 2, 3, 4, 0, 5, 6, 0}},
		{Write10(7, 8), []byte{0x2a, 0, 0, 0, 0, 7, 0, 0, 8, 0}},
		{CDB12(0xa8, 0x08, 1, 2), []byte{0xa8, 0x08, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0}},
		{CDB16(0x8a, 0x08, 1<<32|3, 4), []byte{0x8a, 0x08, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0}},
	} {
		if !bytes.Equal(tc.got, tc.want) {
			t.Errorf("% x, want % x", tc.got, tc.want)
		}
	}
}
