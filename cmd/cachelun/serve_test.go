package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachelun/cachelun/conf"
)

func TestRunServeUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := runServe(context.Background(), []string{"--bogus"}, &out, &errb); code != 2 {
		t.Errorf("unknown flag: exit %d", code)
	}
	if code := runServe(context.Background(), []string{"extra"}, &out, &errb); code != 2 {
		t.Errorf("extra argument: exit %d", code)
	}
	p := filepath.Join(t.TempDir(), "bad.toml")
	os.WriteFile(p, []byte("[global]\nlog_level = \"loud\"\n"), 0o644)
	errb.Reset()
	if code := runServe(context.Background(), []string{"--config", p}, &out, &errb); code != 1 ||
		!strings.Contains(errb.String(), p+":2: global.log_level") {
		t.Errorf("bad config: exit %d, %q", code, errb.String())
	}
}

// lockedBuffer is a bytes.Buffer a daemon writes while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// runServe cancelled once it is ready (what SIGTERM does) prints the ready
// lines and shuts down with status 0.
func TestRunServeGracefulExit(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errb lockedBuffer
	done := make(chan int, 1)
	go func() {
		done <- runServe(ctx, []string{"--data-dir", dir, "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"}, &out, &errb)
	}()
	var code int
	deadline := time.After(60 * time.Second)
wait:
	for {
		select {
		case code = <-done:
			break wait
		case <-deadline:
			t.Fatalf("not ready after 60 s:\n%s", errb.String())
		case <-time.After(10 * time.Millisecond):
			if strings.Contains(errb.String(), "msg=\"cachelun ready\"") {
				cancel()
			}
		}
	}
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, errb.String())
	}
	log := errb.String()
	if !strings.Contains(log, "url=iscsi://127.0.0.1:") || !strings.Contains(log, "/"+conf.DemoIQN+"/0") ||
		!strings.Contains(log, "msg=stopped") {
		t.Errorf("log:\n%s", log)
	}
	for _, f := range []string{"demo-cache.img", "demo-backing.img"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("demo file: %v", err)
		}
	}
}
