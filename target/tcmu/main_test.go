package tcmu

import (
	"testing"

	"go.uber.org/goleak"
)

// Every device loop, command goroutine and D-Bus connection a test starts
// must be gone when it ends.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
