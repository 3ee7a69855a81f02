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
// # Goroutines
//
// Each portal listener's Serve loop (joined by closePortal and, at
// shutdown, serveWG), the admin server (adminDone), the TCMU handler
// (tcmuDone) and the resize watcher (backing_resize.go: a backing device
// that grew grows its volume live, and its LUNs report the new capacity
// with CAPACITY DATA HAS CHANGED; one that shrank is reported, never
// followed). All are started and joined by the Daemon.
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
//
// The engine's, the SCSI layer's and the iSCSI server's locks are their
// packages' (see their doc.go) and always come after these.
package daemon
