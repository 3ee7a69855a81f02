package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cachelun/cachelun/conf"
)

// Policy is what the owner of a volume does while a peer is not in sync
// ([cluster] degraded).
type Policy string

// Policies.
const (
	// Serve acknowledges FUA writes and SYNCHRONIZE CACHE once they are
	// durable locally and on the peers in sync: the volume keeps working,
	// un-replicated, and a loss of this node meanwhile loses them.
	Serve Policy = conf.DegradedServe
	// RefuseSync fails FUA writes and SYNCHRONIZE CACHE while a peer is
	// not in sync: nothing is acknowledged durable that only this node
	// holds, at the price of errors on the hosts.
	RefuseSync Policy = conf.DegradedRefuseSync
)

// Peer is another node: its name and the address of its peer link.
type Peer struct {
	Name string
	Addr string
}

// Receiver persists what a peer ships. The engine's mirror implements it;
// Receive is called for one peer at a time, in the order the peer shipped
// (for each volume, ascending LSN), never with an LSN the link already
// acknowledged since this Node started.
type Receiver interface {
	// Receive persists batch, shipments of the node from, and returns
	// when every one of them is durable (the link acknowledges them
	// then), or an error (the link reports it to the peer, which marks
	// this node out of sync; nothing is acknowledged). ctx ends when the
	// connection or the node closes.
	Receive(ctx context.Context, from string, batch []Shipment) error
}

// Handler answers control requests (Link.Call) from a peer. Requests run
// concurrently with each other and with shipments.
type Handler interface {
	Handle(ctx context.Context, from, kind string, body []byte) ([]byte, error)
}

// Clock is the time source of lag ages, state times and the sync timeout.
// Socket deadlines and backoff sleeps use the real clock.
type Clock interface{ Now() time.Time }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// Config configures a Node. Zero durations and sizes take the defaults of
// package conf.
type Config struct {
	Cluster string // the cluster's identity
	Node    string // this node's name
	Listen  string // HOST:PORT of the peer link, unless Listener is set
	// Listener, if set, is used instead of listening on Listen (tests,
	// socket activation); the Node closes it.
	Listener net.Listener
	Peers    []Peer
	Degraded Policy

	HeartbeatInterval time.Duration
	PeerTimeout       time.Duration
	ConnectTimeout    time.Duration
	ReconnectMin      time.Duration
	ReconnectMax      time.Duration
	SyncTimeout       time.Duration
	MaxLag            int64 // bytes
	MaxFrame          int   // largest frame payload; default DefaultMaxFrame

	Receiver Receiver // required
	Handler  Handler  // nil: every request fails with ErrNoHandler
	Logger   *slog.Logger
	Clock    Clock
	// Registry receives the cachelun_cluster_* metrics; nil registers
	// nothing.
	Registry prometheus.Registerer
	// Dial opens a connection; nil uses a net.Dialer.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
}

// ConfigFrom returns the Config of a [cluster] table of a validated
// configuration; the caller adds the Receiver, Handler, Logger, Clock and
// Registry.
func ConfigFrom(c *conf.Cluster) Config {
	cfg := Config{
		Cluster:           c.Name,
		Node:              c.Node,
		Listen:            c.Listen,
		Degraded:          Policy(c.Degraded),
		HeartbeatInterval: c.HeartbeatInterval.D,
		PeerTimeout:       c.PeerTimeout.D,
		ConnectTimeout:    c.ConnectTimeout.D,
		ReconnectMin:      c.ReconnectMin.D,
		ReconnectMax:      c.ReconnectMax.D,
		SyncTimeout:       c.SyncTimeout.D,
		MaxLag:            c.MaxLag.Bytes,
	}
	for _, s := range c.Peers {
		if p, err := conf.ParsePeer(s); err == nil {
			cfg.Peers = append(cfg.Peers, Peer{Name: p.Name, Addr: p.Addr})
		}
	}
	return cfg
}

// ErrConfig is wrapped by New's errors for an unusable Config.
var ErrConfig = errors.New("cluster: bad configuration")

// withDefaults checks cfg and fills in its defaults.
func (cfg Config) withDefaults() (Config, error) {
	bad := func(format string, args ...any) (Config, error) {
		return cfg, fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, args...))
	}
	if cfg.Cluster == "" {
		cfg.Cluster = conf.DefaultClusterName
	}
	if err := conf.CheckNodeName(cfg.Cluster); err != nil {
		return bad("cluster name: %v", err)
	}
	if err := conf.CheckNodeName(cfg.Node); err != nil {
		return bad("node name: %v", err)
	}
	if cfg.Listener == nil && cfg.Listen == "" {
		return bad("no listen address")
	}
	seen := map[string]bool{cfg.Node: true}
	for _, p := range cfg.Peers {
		if err := conf.CheckNodeName(p.Name); err != nil {
			return bad("peer name: %v", err)
		}
		if seen[p.Name] {
			return bad("node name %q used twice", p.Name)
		}
		seen[p.Name] = true
		if p.Addr == "" {
			return bad("peer %s has no address", p.Name)
		}
	}
	switch cfg.Degraded {
	case "":
		cfg.Degraded = Serve
	case Serve, RefuseSync:
	default:
		return bad("degraded policy %q", cfg.Degraded)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.HeartbeatInterval, conf.DefaultHeartbeatInterval)
	def(&cfg.PeerTimeout, conf.DefaultPeerTimeout)
	def(&cfg.ConnectTimeout, conf.DefaultConnectTimeout)
	def(&cfg.ReconnectMin, conf.DefaultReconnectMin)
	def(&cfg.ReconnectMax, conf.DefaultReconnectMax)
	def(&cfg.SyncTimeout, conf.DefaultSyncTimeout)
	if cfg.PeerTimeout <= cfg.HeartbeatInterval {
		return bad("peer timeout %s is not longer than the heartbeat interval %s", cfg.PeerTimeout, cfg.HeartbeatInterval)
	}
	if cfg.ReconnectMax < cfg.ReconnectMin {
		cfg.ReconnectMax = cfg.ReconnectMin
	}
	if cfg.MaxLag <= 0 {
		cfg.MaxLag = conf.DefaultMaxLag
	}
	if cfg.MaxFrame <= 0 {
		cfg.MaxFrame = DefaultMaxFrame
	}
	if cfg.MaxFrame < minMaxFrame {
		return bad("max frame %d is below %d", cfg.MaxFrame, minMaxFrame)
	}
	if cfg.Receiver == nil {
		return bad("no Receiver")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.Dial == nil {
		cfg.Dial = func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		}
	}
	return cfg, nil
}

// Reason is why a handshake was refused.
type Reason uint8

// Refusal reasons, as sent on the wire and counted in
// cachelun_cluster_handshake_refusals_total{reason}.
const (
	ReasonGarbage      Reason = 1 // not this protocol: bad magic, checksum, frame or message
	ReasonOtherCluster Reason = 2 // the sender belongs to another cluster
	ReasonUnknownNode  Reason = 3 // the sender is not among the receiver's peers
	ReasonWrongNode    Reason = 4 // the receiver is not the node the sender expected
	ReasonNameInUse    Reason = 5 // the sender's name is connected already (another process), or is the receiver's own
	ReasonOlderVersion Reason = 6 // the sender speaks only protocol versions older than the receiver accepts
	ReasonNewerVersion Reason = 7 // the sender speaks only protocol versions newer than the receiver knows
	ReasonShuttingDown Reason = 8 // the receiver is closing
	maxReason                 = ReasonShuttingDown
)

var reasonNames = [...]string{"", "garbage", "other_cluster", "unknown_node", "wrong_node", "name_in_use",
	"older_version", "newer_version", "shutting_down"}

func (r Reason) known() bool { return r >= 1 && r <= maxReason }

func (r Reason) String() string {
	if r.known() {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason-%d", uint8(r))
}

// Reasons lists every refusal reason.
func Reasons() []Reason {
	out := make([]Reason, 0, maxReason)
	for r := Reason(1); r <= maxReason; r++ {
		out = append(out, r)
	}
	return out
}

// RefusedError is a handshake refusal: by the peer (Remote), or by this
// node on the peer's answer. errors.Is(err, ErrRefused) is true.
type RefusedError struct {
	Refusal
	Remote bool
}

func (e *RefusedError) Error() string {
	who := "refused the peer"
	if e.Remote {
		who = "refused by the peer"
	}
	return fmt.Sprintf("cluster: handshake %s: %s: %s", who, e.Reason, e.Detail)
}

// Unwrap makes errors.Is(err, ErrRefused) true.
func (e *RefusedError) Unwrap() error { return ErrRefused }

// Errors of the link.
var (
	ErrRefused   = errors.New("cluster: handshake refused")
	ErrOutOfSync = errors.New("cluster: peer out of sync")
	// ErrDeposed: a peer refused a shipment because another node owns
	// the volume now (a Receiver's error wrapping ErrDeposed). Unlike a
	// peer out of sync, no degraded policy lets a wait succeed past it:
	// this node must not acknowledge the volume's writes any more.
	ErrDeposed    = errors.New("cluster: another node owns the volume now; this node was deposed")
	ErrClosed     = errors.New("cluster: node closed")
	ErrLSNOrder   = errors.New("cluster: LSN not above the last one shipped for the volume")
	ErrTooLarge   = errors.New("cluster: shipment larger than a frame")
	ErrBadName    = errors.New("cluster: bad volume or request name")
	ErrNoHandler  = errors.New("cluster: the peer has no request handler")
	ErrDisconnect = errors.New("cluster: connection lost before the answer")
	ErrRemote     = errors.New("cluster: the peer's handler failed")
)
