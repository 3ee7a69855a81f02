// Command fakedaemon stands in for the daemon in TestGuestDiagnostics: a
// static Go program started in the background by a guest script, so the
// test sees what the Go runtime does with the watchdog's SIGQUIT.
package main

import (
	"fmt"
	"os"
	"time"
)

// waitForever is the frame the test looks for in the stack dump.
func waitForever(ch chan struct{}) { <-ch }

func main() {
	fmt.Fprintln(os.Stderr, "level=INFO msg=fake-daemon-ready")
	go waitForever(make(chan struct{}))
	// A sleeping main goroutine keeps the runtime from reporting a
	// deadlock: the process lives until the signal.
	for {
		time.Sleep(time.Hour)
	}
}
