package admintest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/cachelun/cachelun/admin"
)

// Server is an admin.Server serving in the background for the length of a
// test. The tests of admin, admin/cli, admin/coreadapter and the daemon
// start their servers with StartServer, so each need not repeat the
// goroutine, the wait for Ready and the check of Serve's result.
type Server struct {
	*admin.Server
	t      testing.TB
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// StartServer creates a server from cfg, runs Serve in a goroutine and
// returns once it listens. It fails the test if the server cannot be
// created or Serve returns before it is ready, and registers Stop as a
// cleanup.
func StartServer(t testing.TB, cfg admin.Config) *Server {
	t.Helper()
	srv, err := admin.NewServer(cfg)
	if err != nil {
		t.Fatalf("admin.NewServer: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{Server: srv, t: t, cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- srv.Serve(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-s.done:
		cancel()
		t.Fatalf("admin Serve returned before it was ready: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

// Stop cancels Serve and waits for it to return; the test fails if Serve
// returned an error or did not return within 10 s. Stop is idempotent.
func (s *Server) Stop() {
	s.t.Helper()
	s.once.Do(func() {
		s.cancel()
		select {
		case err := <-s.done:
			if err != nil {
				s.t.Errorf("admin Serve returned %v", err)
			}
		case <-time.After(10 * time.Second):
			s.t.Errorf("admin Serve did not return within 10 s of its cancellation")
		}
	})
}
