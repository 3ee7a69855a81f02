package admin_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves a goroutine behind: the
// server must stop everything it started when Serve returns.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
