package cluster

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the node's cachelun_cluster_* collectors (doc.go lists
// them). Gauges and per-peer counters are read from a Snapshot at scrape
// time; refusals and protocol errors are counted as they happen. A nil
// *metrics (no registry) counts nothing.
type metrics struct {
	reg      prometheus.Registerer
	refusals *prometheus.CounterVec
	protoErr prometheus.Counter
	coll     *collector
	once     sync.Once
}

func newMetrics(reg prometheus.Registerer, n *Node) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &metrics{reg: reg,
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachelun_cluster_handshake_refusals_total",
			Help: "Peer-link handshakes refused, by direction (inbound: this node refused a peer; outbound: a peer refused this node) and reason."},
			[]string{"direction", "reason"}),
		protoErr: prometheus.NewCounter(prometheus.CounterOpts{Name: "cachelun_cluster_protocol_errors_total",
			Help: "Peer-link connections closed after the handshake for garbage (bad checksum, frame or message)."}),
		coll: newCollector(n),
	}
	for _, dir := range []string{"inbound", "outbound"} {
		for _, r := range Reasons() {
			m.refusals.WithLabelValues(dir, r.String())
		}
	}
	for i, c := range []prometheus.Collector{m.refusals, m.protoErr, m.coll} {
		if err := reg.Register(c); err != nil {
			for _, done := range []prometheus.Collector{m.refusals, m.protoErr, m.coll}[:i] {
				reg.Unregister(done)
			}
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) refusal(direction string, r Reason) {
	if m != nil {
		m.refusals.WithLabelValues(direction, r.String()).Inc()
	}
}

func (m *metrics) protocolError() {
	if m != nil {
		m.protoErr.Inc()
	}
}

// unregister removes the collectors (at Close), so that a node started
// again on the same registry can register them.
func (m *metrics) unregister() {
	if m == nil {
		return
	}
	m.once.Do(func() {
		m.reg.Unregister(m.refusals)
		m.reg.Unregister(m.protoErr)
		m.reg.Unregister(m.coll)
	})
}

type collector struct {
	n                                                   *Node
	state, inbound, lagLSN, lagBytes, lagShip, oldest   *prometheus.Desc
	reconnects, shippedBytes, outOfSync, received, dups *prometheus.Desc
	degraded                                            *prometheus.Desc
}

func newCollector(n *Node) *collector {
	peer := []string{"peer"}
	d := func(name, help string, labels []string) *prometheus.Desc {
		return prometheus.NewDesc("cachelun_cluster_"+name, help, labels, nil)
	}
	return &collector{n: n,
		state:        d("peer_state", "1 for the state of this node's link to the peer: down, connected, in_sync, out_of_sync.", []string{"peer", "state"}),
		inbound:      d("peer_inbound_connected", "1 while the peer's link to this node is connected.", peer),
		lagLSN:       d("replication_lag_lsn", "Largest distance, over the volumes, between the last LSN shipped to the peer and the last it acknowledged durable.", peer),
		lagBytes:     d("replication_lag_bytes", "Bytes shipped to the peer and not yet acknowledged durable.", peer),
		lagShip:      d("replication_lag_shipments", "Shipments to the peer not yet acknowledged durable.", peer),
		oldest:       d("replication_oldest_unacked_seconds", "Age of the oldest shipment the peer has not acknowledged; 0 when none.", peer),
		reconnects:   d("reconnects_total", "Connections to the peer made again after one was lost.", peer),
		shippedBytes: d("shipped_bytes_total", "Payload bytes queued for the peer.", peer),
		outOfSync:    d("out_of_sync_total", "Times the peer was put out of sync.", peer),
		received:     d("received_shipments_total", "Shipments from the peer persisted by this node.", peer),
		dups:         d("duplicate_shipments_total", "Shipments from the peer dropped as already persisted (retransmissions).", peer),
		degraded:     d("degraded", "1 while a peer is not in sync (the owner runs degraded per its policy).", nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.state, c.inbound, c.lagLSN, c.lagBytes, c.lagShip, c.oldest,
		c.reconnects, c.shippedBytes, c.outOfSync, c.received, c.dups, c.degraded} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.n.Snapshot()
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	ch <- prometheus.MustNewConstMetric(c.degraded, prometheus.GaugeValue, b2f(!s.AllInSync))
	for _, p := range s.Peers {
		for _, st := range States() {
			ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, b2f(p.State == st), p.Name, string(st))
		}
		g := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, p.Name)
		}
		k := func(d *prometheus.Desc, v uint64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), p.Name)
		}
		g(c.inbound, b2f(p.Inbound))
		g(c.lagLSN, float64(p.LagLSN))
		g(c.lagBytes, float64(p.LagBytes))
		g(c.lagShip, float64(p.LagShipments))
		g(c.oldest, p.OldestUnacked.Seconds())
		k(c.reconnects, p.Reconnects)
		k(c.shippedBytes, p.ShippedBytes)
		k(c.outOfSync, p.OutOfSyncTimes)
		k(c.received, p.Received)
		k(c.dups, p.Duplicates)
	}
}
