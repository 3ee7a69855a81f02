package daemon

import (
	"bytes"
	"context"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachelun/cachelun/conf"
)

// syncBuffer is a bytes.Buffer the daemon's logger and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The start says per cache what it replayed and how much dirty data it
// found; a graceful shutdown says per volume (and per cache) how much
// dirty data it leaves for the next start. (The line after a crash, with
// the writes recovered from the intent log, is checked through a SIGKILL
// in integration's TestCrashKeepsAcknowledgedWrites.)
func TestStartAndShutdownReport(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	config := func() *conf.Config {
		c := testConfig(t, dir, "writeback")
		// no writeback while the test runs: the dirty figure is exact
		c.Caches[0].Writeback.IdleAfter = conf.Duration{D: time.Hour}
		return c
	}
	log := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(log, nil))
	d, err := startDaemon(ctx, config(), "127.0.0.1:0", logger)
	if err != nil {
		t.Fatal(err)
	}
	if want := `level=INFO msg="cache replayed" cache=c0 keys_replayed=0 dirty_bytes=0 dirty=0 intent_recovered_keys=0`; !strings.Contains(log.String(), want) {
		t.Errorf("fresh start: no %s in\n%s", want, log.String())
	}
	vol, _ := d.eng.volume("v0")
	if err := vol.WriteAt(ctx, bytes.Repeat([]byte{0x77}, 64<<10), 1<<20, false); err != nil {
		t.Fatal(err)
	}
	if err := d.shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	// Writeback may still trickle some of it out before the shutdown: the
	// figures must agree with each other and with the next start.
	left := regexp.MustCompile(`msg="shutdown: dirty data left in the cache file" cache=c0 dirty_bytes=(\d+) `).FindStringSubmatch(log.String())
	if left == nil {
		t.Fatalf("shutdown: no cache line in\n%s", log.String())
	}
	if want := `msg="shutdown: dirty data left in the cache for the next start" volume=v0 cache=c0 dirty_bytes=` + left[1] + " "; !strings.Contains(log.String(), want) {
		t.Errorf("shutdown: no %s in\n%s", want, log.String())
	}
	log2 := &syncBuffer{}
	d2, err := startDaemon(ctx, config(), "127.0.0.1:0", slog.New(slog.NewTextHandler(log2, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer d2.shutdown(ctx)
	if want := `level=INFO msg="cache replayed" cache=c0 keys_replayed=1 dirty_bytes=` + left[1] + " "; !strings.Contains(log2.String(), want) {
		t.Errorf("restart: no %s in\n%s", want, log2.String())
	}
}
