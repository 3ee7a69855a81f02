package conf

import (
	"fmt"
	"net"
	"regexp"
	"strings"
	"time"

	"github.com/cachelun/cachelun/backend/rbd"
)

// Bounds of the [cluster] timing keys: below them a busy node is taken
// for a dead one, above them a host has long given up on its command.
const (
	minMaxLag         = 1 << 20
	maxClusterTimeout = 10 * time.Minute
)

// hostName is an RFC 1123 host name: dot-separated labels of letters,
// digits and '-', not starting or ending with '-'.
var hostName = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)

// Peer is one entry of [cluster] peers.
type Peer struct {
	Name string // the peer's node name
	Addr string // HOST:PORT of its peer link
}

func (p Peer) String() string { return p.Name + "@" + p.Addr }

// ParsePeer parses a peer written NAME@HOST:PORT ("b@127.0.0.3:3270",
// "b@gw-b.example:3270", "b@[fd00::3]:3270"): a node name (object-name
// syntax) and the address of its peer link, where HOST may be a host name.
func ParsePeer(s string) (Peer, error) {
	name, addr, ok := strings.Cut(s, "@")
	if !ok {
		return Peer{}, fmt.Errorf("peer %q is not NAME@HOST:PORT", s)
	}
	if err := CheckNodeName(name); err != nil {
		return Peer{}, fmt.Errorf("peer %q: %w", s, err)
	}
	if err := checkHostPort(addr, false); err != nil {
		return Peer{}, fmt.Errorf("peer %q: %w", s, err)
	}
	if host, _, _ := net.SplitHostPort(addr); net.ParseIP(host) == nil && !hostName.MatchString(host) {
		return Peer{}, fmt.Errorf("peer %q: %q is not a host name or an IP address", s, host)
	}
	return Peer{Name: name, Addr: addr}, nil
}

// CheckNodeName reports whether s can name a node or a cluster: 1 to 63
// bytes of letters, digits, '.', '_' and '-', not starting with one of the
// last three (the names of caches and volumes).
func CheckNodeName(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("empty name")
	case len(s) > maxObjectNameLen:
		return fmt.Errorf("%q is longer than %d bytes", s, maxObjectNameLen)
	case !objectName.MatchString(s):
		return fmt.Errorf("%q: use letters, digits, '.', '_' and '-' (not first)", s)
	}
	return nil
}

// ClusterPeers returns the parsed [cluster] peers (nil for a single node).
// The configuration must be a validated one.
func (c *Config) ClusterPeers() []Peer {
	if c.Cluster == nil {
		return nil
	}
	out := make([]Peer, 0, len(c.Cluster.Peers))
	for _, s := range c.Cluster.Peers {
		if p, err := ParsePeer(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// cluster checks the [cluster] table and fills in its defaults.
func (v *validator) cluster(k string, c *Cluster) {
	if c.Name == "" {
		c.Name = DefaultClusterName
	} else if err := CheckNodeName(c.Name); err != nil {
		v.bad(k+".name", "%v", err)
	}
	switch {
	case c.Node == "":
		v.bad(k+".node", "missing (this node's name, unique in the cluster)")
	default:
		if err := CheckNodeName(c.Node); err != nil {
			v.bad(k+".node", "%v", err)
		}
	}
	if c.Listen == "" {
		v.bad(k+".listen", "missing (HOST:PORT of this node's peer link, e.g. \"10.0.0.1:3270\")")
	} else if err := checkHostPort(c.Listen, true); err != nil {
		v.bad(k+".listen", "%v", err)
	}
	names := map[string]string{}
	if c.Node != "" {
		names[c.Node] = k + ".node, this node"
	}
	addrs := map[string]string{}
	if c.Listen != "" {
		addrs[c.Listen] = "this node's listen address"
	}
	if c.Peers == nil {
		c.Peers = []string{}
	}
	for _, s := range c.Peers {
		p, err := ParsePeer(s)
		if err != nil {
			v.bad(k+".peers", "%v", err)
			continue
		}
		if first, dup := names[p.Name]; dup {
			v.bad(k+".peers", "node name %q used twice (first as %s)", p.Name, first)
		} else {
			names[p.Name] = "peer " + s
		}
		if first, dup := addrs[p.Addr]; dup {
			v.bad(k+".peers", "peer %q: address %s is already %s", s, p.Addr, first)
		} else {
			addrs[p.Addr] = "peer " + p.Name + "'s"
		}
	}
	if c.Degraded == "" {
		c.Degraded = DefaultDegraded
	}
	v.oneOf(k+".degraded", c.Degraded, DegradedPolicies)
	for _, d := range []struct {
		key string
		d   *Duration
		def time.Duration
	}{
		{"heartbeat_interval", &c.HeartbeatInterval, DefaultHeartbeatInterval},
		{"peer_timeout", &c.PeerTimeout, DefaultPeerTimeout},
		{"connect_timeout", &c.ConnectTimeout, DefaultConnectTimeout},
		{"reconnect_min", &c.ReconnectMin, DefaultReconnectMin},
		{"reconnect_max", &c.ReconnectMax, DefaultReconnectMax},
		{"sync_timeout", &c.SyncTimeout, DefaultSyncTimeout},
	} {
		before := len(v.problems)
		v.duration(k+"."+d.key, d.d, d.def)
		if len(v.problems) == before && d.d.D <= 0 || d.d.D > maxClusterTimeout {
			v.bad(k+"."+d.key, "must be more than 0 and at most %s, not %s", maxClusterTimeout, d.d.D)
		}
	}
	if c.HeartbeatInterval.D > 0 && c.PeerTimeout.D <= c.HeartbeatInterval.D {
		v.bad(k+".peer_timeout", "%s is not longer than heartbeat_interval %s", c.PeerTimeout.D, c.HeartbeatInterval.D)
	}
	if c.ReconnectMin.D > 0 && c.ReconnectMax.D < c.ReconnectMin.D {
		v.bad(k+".reconnect_max", "%s is shorter than reconnect_min %s", c.ReconnectMax.D, c.ReconnectMin.D)
	}
	before := len(v.problems)
	v.size(k+".max_lag", &c.MaxLag, DefaultMaxLag)
	if len(v.problems) == before && c.MaxLag.Bytes < minMaxLag {
		v.bad(k+".max_lag", "must be at least %s, not %s", FormatSize(minMaxLag), FormatSize(c.MaxLag.Bytes))
	}
}

// clusterVolumes refuses, on a cluster node, a volume whose backing is not
// a Ceph RBD image: every node serves the same volumes, and another node
// takes a volume over when its owner dies, so the backing must be shared
// by the nodes (a local file or disk is not). The TCMU front end is
// refused too: ownership and ALUA are served over iSCSI only.
func (v *validator) clusterVolumes(c *Config) {
	if c.TCMU.Enabled {
		v.bad("tcmu.enabled", "not on a cluster node ([cluster]): a clustered volume's ownership and ALUA states are served over iSCSI only")
	}
	for i, vo := range c.Volumes {
		if vo.Backing == "" || rbd.IsSpec(vo.Backing) {
			continue
		}
		v.bad(fmt.Sprintf("volume[%d].backing", i), "%q is a local file or device, but this is a cluster node ([cluster]): "+
			"the backing must be shared by every node, which takes the volume over when its owner fails; use a Ceph RBD image (backing = \"rbd:POOL/IMAGE\")", vo.Backing)
	}
}
