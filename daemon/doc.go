// Package daemon is one running cachelun: it assembles the packages for a
// configuration (conf) — backing devices (backend), cache files and the
// engine (persist, cachecore), SCSI targets and the iSCSI server
// (target/scsi, target/iscsi), the TCMU front end (target/tcmu), the admin
// API and metrics (admin) — and changes them live on a reload, whose
// planning and rollback are package reconcile's. cmd/cachelun parses the
// command line and calls LoadConfig, Start, Reload and Shutdown; nothing
// else imports this package.
//
// # Guarantees
//
//   - Ownership: the data dir is claimed (its lock file) before anything in
//     it is opened, created or removed, and an admin socket outside it
//     right after; backing devices are claimed and checked before any
//     cache file is created; a second daemon on the same data dir, cache
//     file, intent log, backing file or admin socket is refused before it
//     touches anything.
//   - A failed start releases everything it took (Start returns no
//     daemon); Shutdown runs the start backwards — admin API, iSCSI
//     sessions asked to log out and drained, TCMU commands finished — so
//     no command is in flight when the caches close (which persists their
//     open ksets and keeps dirty data for the next start). It waits for a
//     running reload first.
//   - A reload applies the whole file or, rolling back, nothing (best
//     effort: an undo that fails is reported), see package reconcile.
//   - LUN identities come from scsi.LUNIdentity (target IQN and volume
//     name), so they survive restarts and reloads.
//
// # Cluster node
//
// With a [cluster] table (conf refuses a volume that is not an RBD image
// there: the backing must be shared) the daemon is one node of a cluster
// of gateways (issue 18). It opens a watch on every volume's image (a
// NoLock librbd handle that never writes) before the caches, starts the
// peer link (cluster.Node) once the caches are open and before the
// portals serve, decides each volume's ownership, and closes the link at
// shutdown after the engine (whose close releases the images' locks).
// The link's Receiver keeps the mirrors of the journals of the volumes
// peers own (mirror.Receiver, files under DATA_DIR/mirror) and refuses a
// shipment for a volume this node owns (cluster.ErrDeposed); its Handler
// answers "owner" (a peer took a volume over), "take" (a peer released a
// volume for this node) and the mirrors' trims.
//
// A clustered volume whose mode keeps dirty data (writeback; writeonly
// runs as writeback) is replicated: while this node owns it, its cache
// volume has a mirror.Shipper as Replicator (a FUA write or a flush
// returns once the peers in sync hold its data durable). Taking it
// (attachReplicated): when the image's owner record names this node as
// the previous holder, no other node wrote the image since and this
// node's cache is the newest state; otherwise the cache's state of the
// volume is dropped without writeback (cachecore.PurgeReplica; a volume
// not replicated when the cache last held it is written back instead)
// and the mirror of the previous owner's journal is applied on top of the
// image before the volume serves, unless the previous owner recorded this
// node as behind (ownerRecord.Behind, written by the Shipper's
// BehindRecorder before a kset this node missed is written back): that
// mirror lacks ksets the image may hold and would put older data back
// over them, so the image serves as it is. Each holder records an owner epoch (the
// previous holder's + 1) that orders the owners' shipments
// (mirror.LinkLSN). Other modes keep no dirty data and are not
// replicated. A reload that changes volumes, targets or LUNs (or the
// TCMU exports) is refused on a cluster node.
//
// # Cluster ownership
//
// One node owns a volume at a time: it holds the image's exclusive lock,
// is the only node that writes the image, and serves the volume. The
// holder records itself ({cluster, node, lock owner address}) in the
// image's metadata (cachelun.cluster.owner), so the others can tell
// which node holds a lock; a record whose address is not the lock
// holder's names nobody. The rules (owner.go; every 500 ms and at once
// when a peer announces a takeover):
//
//  1. At start a node takes the lock of each volume whose lock is free,
//     held by a client without a watch on the image (dead), or held by its
//     own dead predecessor (the lock owner this data directory recorded);
//     it owns those. It never breaks the live lock of another client:
//     when one holds the lock the node is standby.
//  2. A standby whose lock holder is a peer node takes the volume over
//     only when that peer's link has been down — nothing heard on this
//     node's link to it and no link of its own to this node — for
//     peer_timeout (counted from this node's start at the latest) AND
//     the lock's holder is still that peer: it breaks that holder's lock
//     (rbd_lock_break, which blocklists the holder's client at the OSDs:
//     the fence), takes the lock, attaches the volume to its cache with
//     whatever it cached of it before dropped (another node wrote the
//     image meanwhile; writethrough leaves no dirty data to keep), makes
//     its group active/optimized and tells the reachable peers.
//     cachelun_cluster_failovers_total counts it. A standby that the
//     holder recorded as behind (ownerRecord.Behind: its mirror would not
//     be applied) waits one more peer_timeout while another peer that is
//     not recorded behind is up, so that a peer whose mirror is whole
//     takes the volume over first. A new holder keeps the previous
//     holder's record of the nodes behind (they stay behind, and their
//     links are resynchronised, until a resync with it has trimmed what
//     their mirrors hold of the earlier owners' journals).
//  3. A lock whose holder's link is up is never broken, even when the
//     holder's watch expired (it is cut off from Ceph, not from its
//     peer). A live holder that is no node of this cluster (another
//     gateway, an rbd command) is never broken; a dead one is.
//  4. A lock released by a clean shutdown (the engine closes the image)
//     is free: a standby takes it at its next step, without breaking
//     anything.
//  5. An owner that finds its lock gone (librbd says it no longer holds
//     it, or a request was refused as fenced) makes the volume
//     unavailable at once: its group unavailable, the logical units'
//     volume the refusing stub, the fence gate failing the engine's
//     volume. It stays unavailable until a restart, never taking the
//     lock back: in a partition between two nodes that both reach Ceph,
//     the standby fences the owner after peer_timeout and only the new
//     holder serves; the old owner's writes fail at the OSDs
//     (blocklisted) and it goes unavailable when it notices (within 500
//     ms, or at its first fenced request); a drain fails then (the
//     admin API's, a mode switch's, the release at shutdown:
//     engine.drain), instead of retrying forever against the image. Until it notices, a read hit
//     of its cache may still answer from data the new owner has since
//     overwritten: hosts following ALUA use the active/optimized path,
//     and the window is bounded by the poll.
//  6. A node that restarts finds the lock held by the live owner and is
//     standby (its links are up within peer_timeout of its start).
//  7. A planned move (cachelun volume move NAME NODE, on the owner, with
//     NODE's link up): the owner's group goes transitioning (hosts retry
//     on 04h/0Ah), the volume is flushed and removed from the engine
//     (waiting for the commands in flight; closing the image releases the
//     lock), the owner becomes standby and asks NODE ("take" request) to
//     take the free lock, which it does at once (rule 1's free lock, no
//     fencing). For 10 s no other node takes that free lock, so NODE gets
//     it even if it was not told.
//
// ALUA: node names sorted are target port groups 1..N, each with one
// relative port, the node's iSCSI target portal group tag. Every logical
// unit of a clustered volume lists every group: the owner's
// active/optimized, this node's as its state says (standby, unavailable),
// the others standby. A standby logical unit serves a stub volume with
// the image's size (READ CAPACITY answers) that refuses all I/O and never
// touches the image; at takeover the logical unit switches to the
// engine's volume. LUN identities come from scsi.LUNIdentity (target IQN
// and volume name), the same on every node.
//
// # Goroutines
//
// Each portal listener's Serve loop (joined by closePortal and, at
// shutdown, serveWG), the admin server (adminDone), the TCMU handler
// (tcmuDone) and the resize watcher (backing_resize.go: a backing device
// that grew grows its volume live, and its LUNs report the new capacity
// with CAPACITY DATA HAS CHANGED; one that shrank is reported, never
// followed). On a cluster node: the cluster.Node's (joined by its
// Close), the ownership loop and the peer announcements of a takeover
// (joined by clusterd.stopOwnership, before the engine closes). All are
// started and joined by the Daemon.
//
// # Lock order
//
// Outermost first; a lock may be taken while holding only locks above it.
//
//  1. Daemon.reloadMu serializes reloads, cache detaches and shutdown. It
//     is held across a whole transaction, including engine calls that
//     wait for I/O (a drain, a mode switch, closing a cache).
//  2. Daemon.mu (RW) guards cfg, portals, portalAddr and targets. It is
//     held while a portal listener opens or closes (closePortal waits for
//     that portal's Serve loop), never across engine calls or calls into a
//     logical unit (the write_cache step collects the LUs under it and
//     lets it go).
//  3. tcmuExports.mu guards the TCMU exported set, the bound volumes and
//     their WCE; resolve (called by the TCMU handler while the kernel
//     blocks the configfs writer) holds it while it looks the volume up in
//     the engine, which takes engine.mu.
//  4. engine.mu (RW) guards the maps of open caches, volumes and backing
//     devices. It is never held during engine calls that wait for I/O,
//     except in engine.close at shutdown, which holds it while the caches
//     close (the engine's own locks come after it there).
//  5. Daemon.adminModesMu guards the cache modes last set through the admin
//     API; a leaf.
//  6. resizeWatch.mu guards the backing devices found shrunk; a leaf. The
//     resize watcher polls with no lock held and follows a growth under
//     reloadMu taken with TryLock (while a reload runs it waits for its
//     next round), then Daemon.mu and engine.mu as above.
//  7. On a cluster node: clusterVolume.mu (a clustered volume's logical
//     units; held while one is added and while their ALUA states change)
//     → ownership.mu (the volumes' states; never held across a lock call,
//     a hook or a peer call) → the logical units' ALUA lock. The ownership
//     loop calls its hooks (attach: the engine; changed: clusterVolume.mu)
//     without ownership.mu.
//
// The engine's, the SCSI layer's and the iSCSI server's locks are their
// packages' (see their doc.go) and always come after these.
package daemon
