package admin

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Defaults for the daemon's configuration.
const (
	DefaultSocketPath    = "/run/cachelun/admin.sock"
	DefaultMetricsListen = "127.0.0.1:9420"
	// DefaultReadBudget is how long an API call waits for a fresh read of
	// the backend before it answers from the previous snapshot.
	DefaultReadBudget      = 50 * time.Millisecond
	DefaultShutdownTimeout = 5 * time.Second
)

// Errors returned by NewServer and Serve.
var (
	ErrNoBackend   = errors.New("admin: Config.Backend is nil")
	ErrNoToken     = errors.New("admin: a TCP listener needs a bearer token")
	ErrSocketInUse = errors.New("admin: socket is in use by a running process")
	ErrNotSocket   = errors.New("admin: socket path exists and is not a socket")
	ErrShutdown    = errors.New("admin: goroutines did not stop within the shutdown timeout")
	ErrServed      = errors.New("admin: Serve called more than once")
	// ErrMetricsListen wraps the error of binding MetricsListen, so the
	// daemon can say which setting to change.
	ErrMetricsListen = errors.New("admin: cannot listen for /metrics")
)

// Config configures a Server.
type Config struct {
	Backend Backend
	// Registry receives the cachelun collectors and is served on /metrics.
	// nil → a private registry (never the global default).
	Registry *prometheus.Registry
	Logger   *slog.Logger // nil → discard
	Clock    Clock        // nil → real clock
	// SocketPath is the unix socket of the API (mode 0600). "" →
	// DefaultSocketPath.
	SocketPath string
	// NoSocket disables the unix socket (configuration "admin_socket =
	// off"); the server then serves only the TCP and metrics listeners.
	NoSocket bool
	// TCPListen, when set, also serves the API on TCP; every request there
	// must carry "Authorization: Bearer <Token>".
	TCPListen string
	Token     string
	// MetricsListen, when set, serves /metrics (only) on TCP without
	// authentication. "" → off; the daemon's default is
	// DefaultMetricsListen. /metrics is always served on the socket.
	MetricsListen string
	// ReadBudget bounds how long a call waits for the backend before it
	// answers from the last snapshot. 0 → DefaultReadBudget.
	ReadBudget time.Duration
	// ShutdownTimeout bounds how long Serve waits, after its context ends,
	// for open requests, jobs and backend reads. 0 → DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// Version is reported by /v1/status.
	Version string
}

// Server is the admin API. Create it with NewServer and run it with Serve.
type Server struct {
	cfg     Config
	logger  *slog.Logger
	clock   Clock
	started time.Time
	snaps   *snapshotter
	jobs    *jobManager
	handler http.Handler
	metrics *collector
	page    *template.Template

	explainSlots chan struct{} // bounds backend calls that may be outstanding past their budget
	base         baseline      // the counters at the last `stats reset`

	ready chan struct{}

	mu      sync.Mutex
	served  bool
	closing bool
	wg      sync.WaitGroup
	baseCtx context.Context
	addrs   map[string]net.Addr // "socket", "tcp", "metrics"
}

// NewServer validates cfg, registers the collectors on cfg.Registry and
// returns a server. It starts nothing.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Backend == nil {
		return nil, ErrNoBackend
	}
	if cfg.TCPListen != "" && cfg.Token == "" {
		return nil, ErrNoToken
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.SocketPath == "" {
		cfg.SocketPath = DefaultSocketPath
	}
	if cfg.ReadBudget <= 0 {
		cfg.ReadBudget = DefaultReadBudget
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	s := &Server{
		cfg:          cfg,
		logger:       cfg.Logger,
		clock:        cfg.Clock,
		started:      cfg.Clock.Now(),
		explainSlots: make(chan struct{}, 4),
		ready:        make(chan struct{}),
		baseCtx:      context.Background(),
		addrs:        make(map[string]net.Addr),
		page:         newPageTemplate(),
	}
	s.snaps = &snapshotter{
		backend: cfg.Backend,
		clock:   cfg.Clock,
		logger:  cfg.Logger,
		budget:  cfg.ReadBudget,
		spawn:   s.spawn,
	}
	s.jobs = newJobManager(cfg.Clock, cfg.Logger, s.spawn, s.jobContext)
	s.metrics = newCollector(s.snaps)
	if err := cfg.Registry.Register(s.metrics); err != nil {
		return nil, fmt.Errorf("admin: register collector: %w", err)
	}
	s.handler = s.routes()
	return s, nil
}

// Handler is the API handler (as served on the unix socket), for tests and
// for embedding.
func (s *Server) Handler() http.Handler { return s.handler }

// Ready is closed once Serve has bound all its listeners.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addr returns the bound address of a listener ("socket", "tcp" or
// "metrics") once Ready is closed, or nil.
func (s *Server) Addr(which string) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addrs[which]
}

// spawn runs f on a goroutine that Serve waits for. It returns false, and
// does not run f, once shutdown has begun.
func (s *Server) spawn(f func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
	return true
}

func (s *Server) jobContext() context.Context {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.baseCtx
}

// Serve binds the listeners and serves until ctx ends. Then it stops
// accepting, cancels running jobs and waits (at most ShutdownTimeout) for
// requests, jobs and backend reads to finish, removes the socket and
// returns. A listener that cannot be bound is an error returned at once.
// Serve may be called once.
func (s *Server) Serve(ctx context.Context) error {
	jobCtx, cancelJobs := context.WithCancel(ctx)
	defer cancelJobs()
	s.mu.Lock()
	if s.served {
		s.mu.Unlock()
		return ErrServed
	}
	s.served = true
	s.baseCtx = jobCtx
	s.mu.Unlock()

	var (
		servers   []*http.Server
		listeners []net.Listener
	)
	closeAll := func() {
		for _, l := range listeners {
			l.Close()
		}
	}
	if !s.cfg.NoSocket {
		sock, err := listenUnixSecure(s.cfg.SocketPath)
		if err != nil {
			return err
		}
		defer os.Remove(s.cfg.SocketPath)
		listeners = append(listeners, sock)
		servers = append(servers, s.newHTTPServer(s.handler))
		s.setAddr("socket", sock.Addr())
	}

	if s.cfg.TCPListen != "" {
		l, err := net.Listen("tcp", s.cfg.TCPListen)
		if err != nil {
			closeAll()
			return fmt.Errorf("admin: listen %s: %w", s.cfg.TCPListen, err)
		}
		listeners = append(listeners, l)
		servers = append(servers, s.newHTTPServer(requireToken(s.cfg.Token, s.handler)))
		s.setAddr("tcp", l.Addr())
	}
	if s.cfg.MetricsListen != "" {
		l, err := net.Listen("tcp", s.cfg.MetricsListen)
		if err != nil {
			closeAll()
			return fmt.Errorf("%w on %s: %w", ErrMetricsListen, s.cfg.MetricsListen, err)
		}
		listeners = append(listeners, l)
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", s.metricsHandler())
		mux.HandleFunc("GET /{$}", s.handlePage)
		mux.HandleFunc("GET /explain", s.handlePage)
		servers = append(servers, s.newHTTPServer(mux))
		s.setAddr("metrics", l.Addr())
	}
	close(s.ready)
	socket := s.cfg.SocketPath
	if s.cfg.NoSocket {
		socket = "off"
	}
	s.logger.Info("admin: serving", "socket", socket, "tcp", s.cfg.TCPListen, "metrics", s.cfg.MetricsListen)

	errc := make(chan error, len(servers))
	var serveWG sync.WaitGroup
	for i, srv := range servers {
		serveWG.Add(1)
		go func() {
			defer serveWG.Done()
			if err := srv.Serve(listeners[i]); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}

	shutdownCtx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	cancelJobs()
	for _, srv := range servers {
		if err := srv.Shutdown(shutdownCtx); err != nil {
			srv.Close()
		}
	}
	serveWG.Wait()

	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-shutdownCtx.Done():
		s.logger.Error("admin: jobs or backend reads still running at shutdown")
		serveErr = errors.Join(serveErr, ErrShutdown)
	}
	return serveErr
}

func (s *Server) setAddr(which string, a net.Addr) {
	s.mu.Lock()
	s.addrs[which] = a
	s.mu.Unlock()
}

func (s *Server) newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelWarn),
	}
}

func (s *Server) metricsHandler() http.Handler {
	return promhttp.HandlerFor(s.cfg.Registry, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(s.logger.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
	})
}

// requireToken admits only requests carrying the bearer token.
func requireToken(token string, next http.Handler) http.Handler {
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(got, want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="cachelun"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", "missing or wrong bearer token")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// listenUnixSecure creates the API socket with mode 0600. The socket is
// bound under a temporary name, restricted, then renamed into place, so the
// final path never exists with wider permissions. A live socket at path
// (another daemon answering) is an error; a stale one is replaced.
func listenUnixSecure(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("admin: socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%w: %s", ErrNotSocket, path)
		}
		if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
			c.Close()
			return nil, fmt.Errorf("%w: %s", ErrSocketInUse, path)
		}
	}
	tmp := filepath.Join(dir, "."+filepath.Base(path)+".tmp"+strconv.Itoa(os.Getpid()))
	_ = os.Remove(tmp)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("admin: listen %s: %w", path, err)
	}
	l.SetUnlinkOnClose(false)
	fail := func(err error) (net.Listener, error) {
		l.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("admin: socket %s: %w", path, err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	return l, nil
}

// closeBody drains and closes a request body so the connection can be reused.
func closeBody(r io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(r, 1<<16))
	r.Close()
}
