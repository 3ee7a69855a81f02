// Package cluster is the peer link between the nodes (gateways) of a
// cachelun cluster (issue 18): the owner of a volume ships its write-back
// journal — ksets with their data — to every peer over it, and counts a
// flush durable only when the peers in sync acknowledged it. The package
// moves opaque payloads; what they hold, the mirror that persists them
// (Receiver) and the degraded policy's enforcement are the engine's.
//
// # Shape
//
// A Node (Start) listens on the [cluster] listen address and has one Link
// per configured peer. A Link dials its peer and ships over that
// connection; the peer's Node accepts it and hands the shipments to its
// Receiver. So between two nodes a and b there are two TCP connections, a's
// link to b and b's link to a, each carrying one direction of replication;
// nothing needs to decide which node dials.
//
// # Guarantees
//
//   - Acknowledgement means durable: a Pending is done with a nil error
//     (Replicate returns nil) only after the peer's Receiver returned from
//     persisting that shipment and every earlier one of its volume. Acks
//     are cumulative per volume ({volume, LSN} covers every LSN at or below
//     it); many shipments are in flight at once (pipelining) and complete
//     in LSN order.
//   - Delivery is at least once, deduplicated by LSN on the receiver: a
//     link keeps every shipment until its ack and ships all unacknowledged
//     ones again, in order, on each new connection. The accepting node
//     remembers, per peer incarnation (process) and volume, the highest
//     LSN its Receiver persisted, and acknowledges at once, without
//     calling the Receiver, any shipment at or below it. So, while both
//     processes run, a Receiver sees each LSN of a peer's volume once, in
//     ascending order. The exceptions, which a Receiver that persists a
//     mirror must absorb by ignoring LSNs it holds already: after either
//     process restarts the memory starts afresh, and the shipments of a
//     batch whose Receive failed may be offered again after a Resync.
//   - No hole: when Receive fails, the accepting node nacks every volume
//     of the batch and closes the connection, so nothing shipped behind
//     the failure is persisted or acknowledged; the sender is out of
//     sync. An ack for an LSN the sender never shipped closes the
//     connection as garbage.
//   - Per volume, LSNs must be shipped in ascending order (Send refuses
//     others with ErrLSNOrder); they need not be contiguous. Volumes are
//     independent.
//   - Out of sync is explicit and sticky. A peer is out of sync when a
//     shipment waited longer than sync_timeout for its ack (the peer is
//     down, or too slow), when the unacknowledged bytes would exceed
//     max_lag, when the peer failed to persist a shipment (a nack), or
//     when the peer restarted (its welcome carries a new incarnation:
//     what its previous process acknowledged may be lost with its cache
//     file, so the link forgets every ack and Resync reports 0).
//     Then every unacknowledged shipment fails with ErrOutOfSync and is
//     dropped, and Send fails at once until Resync: nothing the peer may
//     have missed is ever reported as replicated. A peer that is down but
//     missed nothing is "down", not out of sync; a flush waits at most
//     sync_timeout (checked every tenth of it) for a peer before it
//     is declared out of sync.
//   - Bad input changes nothing. A connection is refused, with the reason
//     sent back when the other side can read it, logged and counted
//     (cachelun_cluster_handshake_refusals_total{direction,reason}), and
//     closed, before any of its frames reaches the Receiver or the Handler:
//     garbage (bad magic, checksum, frame or message), another cluster's
//     name, a sender that is not among the peers (unknown_node), a
//     receiver that is not the node the sender expected (wrong_node), a
//     node name used twice — the receiver's own name, or a name whose link
//     is connected already from another process (name_in_use) —, a
//     protocol version range that does not meet this node's (older_version
//     or newer_version). After the handshake a frame that does not decode
//     closes the connection (cachelun_cluster_protocol_errors_total);
//     shipments decoded before it stand, those after it are retransmitted
//     on the next connection.
//   - A connection must finish its handshake within connect_timeout; at
//     most 64 handshakes run at once (more connections are closed at
//     once), so a flood of silent connections delays a peer's dial by
//     about one connect_timeout and holds no memory beyond that.
//   - The decoder never panics and never allocates more than twice the
//     bytes that arrived plus 64 KiB, and never more than the maximum
//     frame (FuzzFrames).
//   - Another config for the same volume is the Receiver's to refuse: it
//     gets the volume's name with every shipment and fails the batch for a
//     volume it does not mirror, which the peer logs and turns into out of
//     sync.
//
// # Degraded policy
//
// While a peer is not in sync the owner of a volume runs degraded. The
// [cluster] degraded key chooses what it does with FUA writes and
// SYNCHRONIZE CACHE:
//
//   - "serve" (default) completes them once they are durable locally and
//     on the peers in sync: the volume keeps working, and a loss of the
//     owner meanwhile loses what only it held;
//   - "refuse-sync" fails them while any peer is not in sync: nothing is
//     acknowledged durable that a single node holds, at the price of
//     errors on the hosts.
//
// Node.Replicate applies the policy to one kset (it ships to every peer,
// waits for those not out of sync, and returns ErrDegraded under
// refuse-sync); Node.ShipAcks waits the same way and returns the peers
// that missed the kset instead, for a caller that records them first
// (mirror.Shipper) and then applies DegradedErr; Snapshot.RefuseSync is
// the current decision, for status.
// Either way the state is in the Snapshot, the cachelun_cluster_degraded
// metric and the log. A peer out of sync comes back through Resync: the
// engine re-ships its ksets above the LSN the peer acknowledged, calls
// ResyncDone, and the link is in sync once they are acknowledged.
// Node.ResyncLink does it for every volume at once (a link is out of sync
// for all the volumes it ships): it runs each volume's Resyncer
// (AddResyncer) between Resync and ResyncDone.
//
// # Wire format
//
// Every message is a frame: a 12-byte header and a payload, integers
// big-endian.
//
//	0  u32  payload length (at most the maximum frame, 16 MiB by default)
//	4  u8   type: 1 hello, 2 welcome, 3 refuse, 4 heartbeat, 5 ship, 6 ack,
//	        7 nack, 8 request, 9 response
//	5  u8   flags (0)
//	6  u16  reserved (0)
//	8  u32  CRC32C (Castagnoli) of bytes 0..8 and the payload
//
// Payloads ("name" is a u8 length and 1..255 printable ASCII bytes, "text"
// a u16 length and bytes):
//
//	hello     "CLUNPEER", u16 min version, u16 max version, u64 incarnation,
//	          name cluster, name from, name to (the first 12 bytes keep
//	          their place in every version, so any version can refuse)
//	welcome   "CLUNPEER", u16 chosen version, u64 incarnation, name cluster, name node
//	refuse    u8 reason (Reason), text detail
//	heartbeat u64 sequence, u64 sender's Unix time in ns (the acceptor echoes it)
//	ship      name volume, u64 LSN (not 0), payload bytes (the rest)
//	ack       name volume, u64 LSN: every LSN of the volume up to it is durable
//	nack      name volume, u64 LSN, text reason: it could not be persisted
//	request   u64 id, name kind, body (the rest)
//	response  u64 id, u8 status (0 ok, 1 failed), body or error text (the rest)
//
// A connection starts with the dialer's hello; the acceptor answers
// welcome or refuse (and closes). Then the dialer sends ship, request and
// heartbeat frames, the acceptor ack, nack, response and heartbeat echoes.
// Either side closes a connection that is silent for peer_timeout; the
// dialer sends a heartbeat every heartbeat_interval. The incarnation is
// random per Node: the same process dialing again replaces its old,
// half-dead connection; another process with the same name is refused
// while the first is connected.
//
// # Status and metrics
//
// Node.Snapshot has the nodes, each link's state (down, connected, in_sync,
// out_of_sync, and since when), the replication lag (shipments, bytes,
// LSNs, age of the oldest, per volume shipped and acknowledged LSNs) and
// the counters. The collectors, on the Config.Registry:
// cachelun_cluster_peer_state{peer,state}, _peer_inbound_connected{peer},
// _replication_lag_lsn{peer}, _replication_lag_bytes{peer},
// _replication_lag_shipments{peer}, _replication_oldest_unacked_seconds{peer},
// _reconnects_total{peer}, _shipped_bytes_total{peer},
// _out_of_sync_total{peer}, _received_shipments_total{peer},
// _duplicate_shipments_total{peer}, _degraded,
// _handshake_refusals_total{direction,reason} and _protocol_errors_total.
//
// Wiring it (daemon, later). When conf.Config.Cluster is non-nil:
//
//	cfg := cluster.ConfigFrom(c.Cluster)
//	cfg.Receiver = mirror       // the engine's; nil refuses to start
//	cfg.Handler = ownership     // optional, for volume moves
//	cfg.Logger, cfg.Clock, cfg.Registry = log, clock, reg
//	node, err := cluster.Start(ctx, cfg) // after the engine opened, before portals listen
//	...
//	node.Close() // at shutdown, after the engine stopped shipping
//
// The admin API gets a read-only ClusterAPI whose Status returns
// node.Snapshot() (it has JSON tags: nodes, link states, replication lag,
// policy decision; owner per volume is to be added by the ownership
// work), served at GET /v1/cluster for a `cachelun cluster status` verb in
// admin/cli. The docs/metrics.md rows for the collectors above belong
// with that wiring (daemon's TestDocumentedMetricsExistAtStart checks that
// every documented metric exists on a fresh daemon). A change of any
// [cluster] key needs a restart (conf.Diff marks it so).
//
// # Goroutines
//
// Per Node: the accept loop, a shutdown watcher, one goroutine per accepted
// connection (its handshake, then its session's reader, which calls the
// Receiver), one closer per session and one per request a peer sends. Per
// Link: the dial loop, the sync-timeout watcher, and per connection a
// writer and a reader. Close (or the Start context ending) stops them all
// and Wait returns only after every one has exited.
//
// # Lock order
//
// Node.mu (sessions, dedup memory, inbound counters) and Link.mu (queue,
// volumes, state, calls) are leaves: neither is held while the other is
// taken, nor across network I/O, the Receiver or the Handler. session.wmu
// serializes a session's writes and is held across them (with a write
// deadline), and nothing is taken under it. Node.resyncMu serialises
// ResyncLink and is held across the Resyncers (which take Link.mu, and
// their engines' locks); nothing takes it under another lock.
package cluster
