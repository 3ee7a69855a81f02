package cluster

import (
	"sort"
	"time"
)

// Snapshot describes a node and its links: what `cachelun cluster status`
// prints (nodes, link state, replication lag) and the metrics are made of.
type Snapshot struct {
	Cluster string `json:"cluster"`
	Node    string `json:"node"`   // this node
	Listen  string `json:"listen"` // its peer-link address
	// Policy is the configured degraded policy; AllInSync is true when
	// every peer is in sync; RefuseSync is the decision it gives now: true
	// when FUA writes and SYNCHRONIZE CACHE must fail (policy refuse-sync
	// and a peer not in sync).
	Policy     Policy `json:"policy"`
	AllInSync  bool   `json:"all_in_sync"`
	RefuseSync bool   `json:"refuse_sync"`
	// Peers, by name.
	Peers []PeerSnapshot `json:"peers"`
	// Refused counts the handshakes this node refused, by reason.
	Refused map[string]uint64 `json:"refused,omitempty"`
}

// PeerSnapshot describes one peer: this node's link to it (outbound,
// shipping) and its link to this node (inbound, received).
type PeerSnapshot struct {
	Name  string `json:"name"`
	Addr  string `json:"addr"`
	State State  `json:"state"`
	// StateSince is when State was entered (by the node's Clock).
	StateSince time.Time `json:"state_since"`
	// OutOfSyncReason says why, while State is out_of_sync.
	OutOfSyncReason string `json:"out_of_sync_reason,omitempty"`
	// LastHeard is when the peer last sent anything on this node's link.
	LastHeard time.Time `json:"last_heard,omitzero"`
	// LastError is why the link last failed or was refused ("" while
	// connected); LastRefusal the last handshake refusal's reason.
	LastError   string `json:"last_error,omitempty"`
	LastRefusal string `json:"last_refusal,omitempty"`

	// Replication lag: shipments not yet acknowledged durable, their
	// bytes, the largest distance in LSNs between the last shipped and
	// the last acknowledged LSN of a volume, and the age of the oldest.
	LagShipments  int           `json:"lag_shipments"`
	LagBytes      int64         `json:"lag_bytes"`
	LagLSN        uint64        `json:"lag_lsn"`
	OldestUnacked time.Duration `json:"oldest_unacked_ns"`
	Volumes       []VolumeLag   `json:"volumes,omitempty"`

	Reconnects     uint64 `json:"reconnects"`
	Shipments      uint64 `json:"shipments"`
	ShippedBytes   uint64 `json:"shipped_bytes"`
	Acked          uint64 `json:"acked"`
	OutOfSyncTimes uint64 `json:"out_of_sync_times"`

	// The peer's link to this node.
	Inbound         bool      `json:"inbound"`
	InboundSince    time.Time `json:"inbound_since,omitzero"`
	Received        uint64    `json:"received"`
	Duplicates      uint64    `json:"duplicates"`
	ReceiveFailures uint64    `json:"receive_failures"`
}

// VolumeLag is the replication position of one volume on one peer.
type VolumeLag struct {
	Volume string `json:"volume"`
	// Shipped is the last LSN queued for the peer, Acked the last it
	// acknowledged durable.
	Shipped uint64 `json:"shipped"`
	Acked   uint64 `json:"acked"`
}

// Snapshot describes the link.
func (l *Link) Snapshot() PeerSnapshot {
	now := l.n.cfg.Clock.Now()
	l.mu.Lock()
	s := PeerSnapshot{Name: l.peer.Name, Addr: l.peer.Addr, State: l.stateLocked(), StateSince: l.stateSince,
		LastHeard: l.lastHeard, LastError: l.lastErr, LastRefusal: l.lastRefusal,
		LagShipments: l.unacked, LagBytes: l.unackedBytes,
		Reconnects: l.stats.reconnects, Shipments: l.stats.shipments, ShippedBytes: l.stats.shippedBytes,
		Acked: l.stats.acked, OutOfSyncTimes: l.stats.outOfSync}
	if l.outOfSync {
		s.OutOfSyncReason = l.oosReason
	}
	if l.conn != nil {
		s.LastError = ""
	}
	for _, e := range l.queue {
		if !e.acked {
			s.OldestUnacked = max(0, now.Sub(e.at))
			break
		}
	}
	for v, vs := range l.vols {
		s.Volumes = append(s.Volumes, VolumeLag{Volume: v, Shipped: vs.queued, Acked: vs.acked})
		s.LagLSN = max(s.LagLSN, vs.queued-min(vs.acked, vs.queued))
	}
	l.mu.Unlock()
	sort.Slice(s.Volumes, func(i, j int) bool { return s.Volumes[i].Volume < s.Volumes[j].Volume })
	s.Inbound, s.InboundSince, s.Received, s.Duplicates, s.ReceiveFailures = l.n.inboundSnapshot(l.peer.Name)
	return s
}
