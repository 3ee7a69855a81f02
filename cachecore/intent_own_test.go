package cachecore

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cachelun/cachelun/internal/flock"
)

// An intent log is claimed by its opener: a second opener (another daemon
// on the same cache, or on a copy with the same UUID) is refused with the
// pid and leaves the file as it is, and only the holder removes it.
func TestIntentFileClaimed(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.intent")
	a, err := OpenIntentFile(path)
	if err != nil {
		t.Fatal(err)
	}
	copy(a.mem, "owner's records")
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = OpenIntentFile(path)
	if !errors.Is(err, flock.ErrLocked) || !errors.Is(err, ErrIntentLog) {
		t.Fatalf("second open: %v, want ErrIntentLog and flock.ErrLocked", err)
	}
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("%q does not name the file and the holder", err)
	}
	after, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(before, after) {
		t.Fatalf("the refused opener changed the owner's intent log (%v)", err)
	}
	if err := a.closeClean(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("clean close kept the file: %v", err)
	}
	// A crash-like Close keeps the file, and releases it for the next
	// owner.
	b, err := OpenIntentFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	c, err := OpenIntentFile(path)
	if err != nil {
		t.Fatalf("after Close: %v", err)
	}
	c.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("Close removed the file: %v", err)
	}
}
