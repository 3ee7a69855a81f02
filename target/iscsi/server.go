package iscsi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachelun/cachelun/target/scsi"
)

// SCSITarget is the device server a target hands its commands to.
// *scsi.Target implements it.
type SCSITarget interface {
	Execute(ctx context.Context, cmd *scsi.Command) scsi.Response
	LUNs() []uint64
	ResetLU(n *scsi.Nexus, lun uint64) error
	ResetTarget(n *scsi.Nexus)
	NexusLost(n *scsi.Nexus)
}

// Config holds the server-wide settings. Zero values take the defaults
// noted on each field.
type Config struct {
	Logger *slog.Logger // nil discards
	// NOPInterval is how long a connection may be idle before the target
	// pings it with a NOP-In (default 5s); NOPTimeout is how long the
	// target then waits for any PDU before dropping it (default 15s).
	// A negative NOPInterval disables pings.
	NOPInterval, NOPTimeout time.Duration
	// MaxSessions bounds the sessions of all targets together (default 1024).
	MaxSessions int
	// LogoutGrace is how long a session asked to log out (its access was
	// revoked or its target removed) has before it is dropped (default 2s).
	LogoutGrace time.Duration

	// Limits the target offers in login.
	MaxRecvDataSegmentLength int // default 262144, at least 8192
	MaxBurstLength           int // default 1 MiB, at least 262144
	FirstBurstLength         int // default 262144, at least 65536
	MaxOutstandingR2T        int // default 8
	// QueueDepth is the CmdSN window: commands in flight per session
	// (default 128).
	QueueDepth int
	// MaxTransferLength bounds one command's expected data transfer
	// length; larger commands get CHECK CONDITION (default 16 MiB).
	MaxTransferLength int
	// InitialR2T makes the target refuse unsolicited Data-Out (default:
	// accepted up to FirstBurstLength).
	InitialR2T bool
	// MaxBufferBytes bounds the data buffers of all commands in flight on
	// all sessions together (default 1 GiB). A command that would exceed it
	// is answered TASK SET FULL at once, so the initiator lowers its queue
	// depth and retries, instead of the process running out of memory.
	MaxBufferBytes int64
}

// TargetConfig describes one iSCSI target.
type TargetConfig struct {
	Name  string // IQN
	Alias string
	SCSI  SCSITarget // the device server for this target
	// Portals are the addresses ("127.0.0.1:3260", "[::1]:3260") of the
	// portal group the target is reachable through. Empty means every
	// listener. An unspecified IP ("0.0.0.0:3260", "[::]:3260") matches any
	// local address on that port.
	Portals []string
	// TPGT is the target portal group tag. It is also the relative target
	// port identifier the device server sees (scsi.Nexus.RelativePortID,
	// 1 for TPGT 0): VPD 83h reports it, and ALUA target port groups list
	// ports by it, so each node of a cluster gives a target its own TPGT
	// and keeps it across restarts.
	TPGT uint16
	// Initiators is the ACL of initiator names; empty allows all.
	Initiators []string
	CHAP       *CHAP // nil: no authentication
}

// SessionInfo describes one logged-in session.
type SessionInfo struct {
	Initiator string
	ISID      string // 12 hex digits
	TSIH      uint16
	Target    string // "" for discovery sessions
	Portal    string // local address the session connected to
	Remote    string
	Discovery bool
	LUNs      []uint64
	InFlight  int
}

// Errors returned by the configuration methods.
var (
	ErrTargetExists   = errors.New("iscsi: target already exists")
	ErrTargetNotFound = errors.New("iscsi: no such target")
	ErrBadConfig      = errors.New("iscsi: invalid configuration")
	ErrServerClosed   = errors.New("iscsi: server shut down")
)

// Server is an iSCSI target server: any number of targets reachable
// through any number of portal listeners.
type Server struct {
	log *slog.Logger
	cfg Config
	lim limits

	bufBytes atomic.Int64 // data buffer bytes reserved by commands in flight
	bufs     bufPool

	// workerIdle is how long a connection's idle task worker waits for
	// work before it ends (at least once, at most twice that).
	workerIdle time.Duration
	// reinstateWait bounds how long a login that reinstates a session
	// waits for the old session's commands to return from the device
	// server before it is answered "service unavailable" (the initiator
	// retries); stuckWarn is how often a wait for aborted commands is
	// logged with the commands still running.
	reinstateWait, stuckWarn time.Duration
	// beforeTMFResponse, when set (tests), runs on a task management
	// function's goroutine after the function was performed and before
	// its response is queued: a scheduling delay there must not change
	// what the initiator sees.
	beforeTMFResponse atomic.Pointer[func()]

	mu            sync.Mutex
	targets       map[string]*targetEntry
	discoveryCHAP *CHAP
	sessions      map[uint16]*session
	// ending holds sessions taken out of sessions by a reinstatement whose
	// connection has not finished its teardown (its commands are still in
	// the device server): a later login of the same initiator port waits
	// for them too.
	ending   map[*session]struct{}
	nextTSIH uint16
	conns    map[*conn]struct{}
	closed   bool
	connWG   sync.WaitGroup
}

// targetEntry is the live configuration of one target. It is replaced, not
// mutated, by UpdateTarget, so a session may keep a pointer to the one it
// logged in under.
type targetEntry struct {
	cfg TargetConfig
	acl map[string]bool
}

func (t *targetEntry) allows(initiator string) bool {
	return len(t.acl) == 0 || t.acl[initiator]
}

// NewServer returns a server with no targets.
func NewServer(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	def := func(v *int, d, lo int) {
		if *v <= 0 {
			*v = d
		}
		*v = max(*v, lo)
	}
	if cfg.NOPInterval == 0 {
		cfg.NOPInterval = 5 * time.Second
	}
	if cfg.NOPTimeout <= 0 {
		cfg.NOPTimeout = 15 * time.Second
	}
	def(&cfg.MaxSessions, 1024, 1)
	if cfg.LogoutGrace <= 0 {
		cfg.LogoutGrace = 2 * time.Second
	}
	def(&cfg.MaxRecvDataSegmentLength, 262144, 8192)
	cfg.MaxRecvDataSegmentLength = min(cfg.MaxRecvDataSegmentLength, 1<<24-1)
	def(&cfg.MaxBurstLength, 1<<20, 262144)
	cfg.MaxBurstLength = min(cfg.MaxBurstLength, 1<<24-1)
	def(&cfg.FirstBurstLength, 262144, 65536)
	cfg.FirstBurstLength = min(cfg.FirstBurstLength, cfg.MaxBurstLength)
	def(&cfg.MaxOutstandingR2T, 8, 1)
	def(&cfg.QueueDepth, 128, 1)
	def(&cfg.MaxTransferLength, 16<<20, 65536)
	if cfg.MaxBufferBytes <= 0 {
		cfg.MaxBufferBytes = 1 << 30
	}
	return &Server{
		log: cfg.Logger,
		cfg: cfg,
		lim: limits{
			MaxRecvDataSegmentLength: cfg.MaxRecvDataSegmentLength,
			MaxBurstLength:           cfg.MaxBurstLength,
			FirstBurstLength:         cfg.FirstBurstLength,
			MaxOutstandingR2T:        cfg.MaxOutstandingR2T,
			InitialR2T:               cfg.InitialR2T,
			ImmediateData:            true,
			QueueDepth:               cfg.QueueDepth,
		},
		targets:  map[string]*targetEntry{},
		sessions: map[uint16]*session{},
		ending:   map[*session]struct{}{},
		conns:    map[*conn]struct{}{},

		workerIdle:    defaultWorkerIdle,
		reinstateWait: defaultReinstateWait,
		stuckWarn:     defaultStuckWarn,
	}
}

// SetDiscoveryCHAP requires CHAP for discovery sessions (nil: none).
func (s *Server) SetDiscoveryCHAP(c *CHAP) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.discoveryCHAP = cloneCHAP(c)
}

func cloneCHAP(c *CHAP) *CHAP {
	if c == nil {
		return nil
	}
	cp := *c
	return &cp
}

func newTargetEntry(tc TargetConfig) (*targetEntry, error) {
	if tc.Name == "" || strings.ContainsAny(tc.Name, "\x00= ") || len(tc.Name) > 223 {
		return nil, fmt.Errorf("%w: target name %q", ErrBadConfig, tc.Name)
	}
	if tc.SCSI == nil {
		return nil, fmt.Errorf("%w: target %s has no device server", ErrBadConfig, tc.Name)
	}
	if tc.CHAP != nil && (tc.CHAP.User == "" || tc.CHAP.Secret == "") {
		return nil, fmt.Errorf("%w: target %s: CHAP needs user and secret", ErrBadConfig, tc.Name)
	}
	if tc.CHAP.mutual() && tc.CHAP.MutualSecret == "" {
		return nil, fmt.Errorf("%w: target %s: mutual CHAP needs a secret", ErrBadConfig, tc.Name)
	}
	if tc.CHAP.mutual() && tc.CHAP.MutualSecret == tc.CHAP.Secret {
		return nil, fmt.Errorf("%w: target %s: mutual CHAP secret must differ from the initiator's", ErrBadConfig, tc.Name)
	}
	for _, p := range tc.Portals {
		if _, err := netip.ParseAddrPort(p); err != nil {
			return nil, fmt.Errorf("%w: target %s portal %q: %v", ErrBadConfig, tc.Name, p, err)
		}
	}
	e := &targetEntry{cfg: tc, acl: map[string]bool{}}
	e.cfg.Portals = slices.Clone(tc.Portals)
	e.cfg.Initiators = slices.Clone(tc.Initiators)
	e.cfg.CHAP = cloneCHAP(tc.CHAP)
	for _, i := range tc.Initiators {
		e.acl[i] = true
	}
	return e, nil
}

// AddTarget adds a target. It is reachable at once.
func (s *Server) AddTarget(tc TargetConfig) error {
	e, err := newTargetEntry(tc)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.targets[tc.Name]; ok {
		return fmt.Errorf("%w: %s", ErrTargetExists, tc.Name)
	}
	s.targets[tc.Name] = e
	return nil
}

// UpdateTarget replaces a target's configuration. Sessions continue unless
// their access was revoked (initiator no longer in the ACL, CHAP
// credentials changed, or their portal dropped): those are asked to log
// out and dropped if they do not.
func (s *Server) UpdateTarget(tc TargetConfig) error {
	e, err := newTargetEntry(tc)
	if err != nil {
		return err
	}
	s.mu.Lock()
	old, ok := s.targets[tc.Name]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrTargetNotFound, tc.Name)
	}
	s.targets[tc.Name] = e
	var revoked []*session
	for _, ss := range s.sessions {
		if ss.target != old {
			continue
		}
		if !e.allows(ss.initiator) || !e.cfg.CHAP.equal(old.cfg.CHAP) || !e.reachableVia(ss.conn.localAddr) {
			revoked = append(revoked, ss)
			continue
		}
		ss.conn.target.Store(e)
	}
	s.mu.Unlock()
	for _, ss := range revoked {
		s.log.Info("iscsi: access revoked, logging session out", "target", tc.Name, "initiator", ss.initiator)
		ss.conn.requestLogout(s.cfg.LogoutGrace)
	}
	return nil
}

// RemoveTarget removes a target and drops its sessions.
func (s *Server) RemoveTarget(name string) error {
	s.mu.Lock()
	e, ok := s.targets[name]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrTargetNotFound, name)
	}
	delete(s.targets, name)
	var victims []*conn
	for _, ss := range s.sessions {
		if ss.target == e {
			victims = append(victims, ss.conn)
		}
	}
	s.mu.Unlock()
	for _, c := range victims {
		c.requestLogout(s.cfg.LogoutGrace)
	}
	return nil
}

// reachableVia reports whether the target is in the portal group of the
// listener address local.
func (t *targetEntry) reachableVia(local netip.AddrPort) bool {
	if len(t.cfg.Portals) == 0 {
		return true
	}
	for _, p := range t.cfg.Portals {
		ap, err := netip.ParseAddrPort(p)
		if err != nil {
			continue
		}
		if ap.Port() != local.Port() {
			continue
		}
		if ap.Addr().IsUnspecified() || ap.Addr().Unmap() == local.Addr().Unmap() {
			return true
		}
	}
	return false
}

// addresses returns the TargetAddress values for SendTargets.
func (t *targetEntry) addresses(local netip.AddrPort) []string {
	tag := fmt.Sprintf(",%d", t.cfg.TPGT)
	if len(t.cfg.Portals) == 0 {
		return []string{local.String() + tag}
	}
	var out []string
	for _, p := range t.cfg.Portals {
		ap, err := netip.ParseAddrPort(p)
		if err != nil {
			continue
		}
		if ap.Addr().IsUnspecified() {
			if ap.Port() != local.Port() {
				continue
			}
			ap = local
		}
		out = append(out, ap.String()+tag)
	}
	return out
}

func (s *Server) lookupTarget(name string) *targetEntry {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.targets[name]
}

// Serve accepts connections on l until ctx ends, then closes l, drops the
// connections it accepted and returns once their goroutines are gone.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	var mine sync.Map
	defer func() {
		mine.Range(func(k, _ any) bool {
			k.(*conn).abort()
			return true
		})
	}()
	var tempDelay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				tempDelay = min(max(2*tempDelay, 5*time.Millisecond), time.Second)
				time.Sleep(tempDelay)
				continue
			}
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			return err
		}
		tempDelay = 0
		c := s.newConn(nc)
		if c == nil {
			nc.Close()
			continue
		}
		mine.Store(c, true)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer mine.Delete(c)
			c.serve()
		}()
	}
}

// Shutdown asks every session to log out (Async Message, "request
// logout"), waits until they have or ctx ends, then drops what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	var cs []*conn
	for c := range s.conns {
		cs = append(cs, c)
	}
	s.mu.Unlock()
	wait := 2 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		wait = max(time.Until(dl), time.Second)
	}
	for _, c := range cs {
		c.requestLogout(wait)
	}
	done := make(chan struct{})
	go func() {
		s.connWG.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	cs = cs[:0]
	for c := range s.conns {
		cs = append(cs, c)
	}
	s.mu.Unlock()
	for _, c := range cs {
		c.abort()
	}
	<-done
	return ctx.Err()
}

// Sessions lists the logged-in sessions.
func (s *Server) Sessions() []SessionInfo {
	s.mu.Lock()
	ss := make([]*session, 0, len(s.sessions))
	for _, x := range s.sessions {
		ss = append(ss, x)
	}
	s.mu.Unlock()
	out := make([]SessionInfo, 0, len(ss))
	for _, x := range ss {
		si := SessionInfo{
			Initiator: x.initiator,
			ISID:      fmt.Sprintf("%012x", x.isid),
			TSIH:      x.tsih,
			Portal:    x.conn.localAddr.String(),
			Remote:    x.conn.nc.RemoteAddr().String(),
			Discovery: x.target == nil,
			InFlight:  x.conn.inFlight(),
		}
		if e := x.conn.target.Load(); e != nil {
			si.Target = e.cfg.Name
			si.LUNs = e.cfg.SCSI.LUNs()
		}
		out = append(out, si)
	}
	slices.SortFunc(out, func(a, b SessionInfo) int { return int(a.TSIH) - int(b.TSIH) })
	return out
}

// session is the registry entry of a logged-in session. With
// MaxConnections=1 a session has exactly one connection.
type session struct {
	tsih      uint16
	cid       uint16 // of its one connection
	isid      uint64 // 48 bits
	initiator string
	target    *targetEntry // at login; nil for discovery
	conn      *conn
}

// registerSession assigns a TSIH and installs the session, reinstating
// (closing) an existing session of the same initiator port and target.
// It returns the sessions to close and an iSCSI login status on failure.
func (s *Server) registerSession(ns *session, wantTSIH, cid uint16) (old []*session, status uint16) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, loginServiceUnavailable
	}
	if x := s.sessions[wantTSIH]; wantTSIH != 0 && x != nil && x.initiator == ns.initiator && x.isid == ns.isid &&
		x.cid != cid {
		// A second connection for the session: MaxConnections is 1.
		return nil, loginTooManyConns
	}
	samePort := func(x *session) bool {
		return x.initiator == ns.initiator && x.isid == ns.isid && x.target == nil == (ns.target == nil) &&
			(x.target == nil || x.target.cfg.Name == ns.target.cfg.Name)
	}
	for tsih, x := range s.sessions {
		if samePort(x) {
			old = append(old, x)
			delete(s.sessions, tsih)
			s.ending[x] = struct{}{}
		}
	}
	for x := range s.ending {
		if samePort(x) && !slices.Contains(old, x) {
			old = append(old, x)
		}
	}
	if len(s.sessions) >= s.cfg.MaxSessions {
		return old, loginOutOfResources
	}
	tsih := wantTSIH
	if tsih != 0 && s.sessions[tsih] != nil {
		// The TSIH names a session of this initiator port, but to another
		// target: not one this login can continue.
		return old, loginNoSession
	}
	if tsih == 0 {
		for {
			s.nextTSIH++
			if s.nextTSIH != 0 && s.sessions[s.nextTSIH] == nil {
				break
			}
		}
		tsih = s.nextTSIH
	}
	ns.tsih = tsih
	s.sessions[tsih] = ns
	return old, 0
}

// sessionExists reports whether tsih names a live session of this
// initiator port.
func (s *Server) sessionExists(tsih uint16, initiator string, isid uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	x := s.sessions[tsih]
	return x != nil && x.initiator == initiator && x.isid == isid
}

func (s *Server) unregisterSession(ss *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sessions[ss.tsih] == ss {
		delete(s.sessions, ss.tsih)
	}
	delete(s.ending, ss)
}
