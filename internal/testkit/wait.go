package testkit

import (
	"testing"
	"time"
)

// maxPoll bounds the interval between two checks of a WaitFor condition:
// short enough that a test does not idle long after the event, long enough
// that a condition taking a lock does not compete with the code under test.
const maxPoll = 10 * time.Millisecond

// WaitFor calls cond until it returns true and fails the test (t.Fatalf)
// if it has not after timeout, saying how long it waited for what: what
// names the awaited event ("every writer's key in the open kset").
// The first check is immediate; then the interval grows from 100µs to
// 10ms. It must be called from the test's goroutine, like t.Fatal.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for poll := 100 * time.Microsecond; !cond(); poll = min(2*poll, maxPoll) {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s: it did not happen", timeout, what)
		}
		time.Sleep(poll)
	}
}
