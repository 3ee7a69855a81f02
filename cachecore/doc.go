// Package cachecore is the cache engine of cachelun: one Cache per cache
// file (a persist.Store) hosting several Volumes, each a slow backing
// device (backend.Device) fronted by the cache. It follows dm-pcache (kset
// journal, striped index, ordered writeback, segment GC) and adds cache
// modes, bcache-style bypass with per-chunk tracking of in-flight bypass
// writes, persistent tombstones and a failure policy.
//
// # Guarantees (the LUN durability contract)
//
// Numbered as in the design's contract; code and tests cite them as C1..C9.
// Each names the tests that hold it to account.
//
//   - C1 (acknowledgement). A write is acknowledged once its data is in the
//     cache media and its key is in an open kset; it is durable at the next
//     Flush, at a FUA write, or when its kset closes (full,
//     JournalFlushInterval, Close). Data is persisted before the kset that
//     refers to it (or, on a store with unfenced ksets, by the same
//     persist). A crash of the process loses no acknowledged write when the
//     cache is opened with an intent log (OpenWithIntent; the daemon always
//     does): every appended key is also recorded in a shared mapping of a
//     file (tmpfs) until its kset is journaled, and the next Open in the
//     same boot recovers the unjournaled keys not already in the log (their
//     data is in the page cache or the DAX mapping), serves them and
//     journals them again. A power cut or kernel crash (another boot id) may
//     revert writes no flush made durable, as on a disk with a volatile
//     cache. See IntentLog. Tests: TestBlackboxCrashConsistency,
//     TestIntentLogProcessKill, TestIntentKeysAlreadyJournaledAreNotAppendedAgain.
//   - C2 (FUA). A FUA write returns only when its data and key are durable.
//     Tests: TestFUAWritePersistsOnce, TestFUAGroupCommit,
//     TestBlackboxCrashConsistency.
//   - C3 (Flush). Flush makes every write acknowledged before it durable,
//     and flushes the backing device when writes reached it directly since
//     the last flush (bypass, writethrough, discard). Tests:
//     TestBlackboxFlushCoversDirectWriteInFlight,
//     TestWriteThroughDiscardIsFlushed (target/scsi).
//   - C4 (WCE=0). With the volume's write cache off every write is FUA
//     (target/scsi decides; the engine sees fua=true). Tests:
//     TestModeSelectWCEOffFlushesFirst, TestSetConfiguredWriteCache (target/scsi).
//   - C5 (crash image). After a crash, replay from key_tail rebuilds
//     exactly the index that was in memory for every key that was durable;
//     keys whose segment generation moved on are dropped; tombstones are
//     applied in log order. No block returns data never written to it, or
//     older than its last durable write. Tests: TestReplayRebuildsIndex,
//     TestBlackboxCrashConsistency, TestBlackboxCrashGCEvictionBypass,
//     TestBlackboxLinearizable, persist's TestCrashEveryPersistPoint.
//   - C6 (ordered writeback). Writeback walks the log in order from
//     dirty_tail, collapses overwrites only within one flush epoch, flushes
//     the backing device and only then persists dirty_tail: the backing
//     device alone is always a crash image that respects the host's
//     flushes. A pass that ends inside an epoch reads on over the durable
//     ksets of that epoch and skips the data they overwrite
//     (collapseAhead): the newer keys are durable, and written back before
//     anything of a later epoch. In every mode a write overlapping dirty
//     data not yet written back takes the cache path, so writeback never
//     overwrites newer backing data with older cache data. For the same
//     reason a discard of dirty data never drops it behind writeback's
//     back: one larger than 1 MiB closes the flush epoch and waits until
//     writeback has written the volume's dirty data back, then discards
//     the range on the backing device (which a thin LUN then reports
//     deallocated); a smaller one writes zeroes through the cache.
//     Tests: TestBlackboxWritebackFlushConsistency,
//     TestBlackboxFlushConsistencyWithBypass, TestCollapseAheadStopsAtDurableAndEpoch,
//     TestBlackboxBypassWaitsForOlderEpoch, TestBlackboxDiscardWaitsForOlderEpoch,
//     TestBlackboxDiscardOfDirtyDataAfterItsWriteback, TestDiscardOfDirtyDataIsDeallocated.
//   - C7 (fills). A read miss fills the cache only through an EMPTY
//     placeholder that is still in place at fill time and only when no
//     bypass write is in flight on the 32 MiB chunk; bypass writes count
//     themselves in flight before dropping cached data (and placeholders)
//     and persist their tombstone before writing the backing device.
//     Fills are asynchronous: the check is made when the fill worker
//     installs the fill, so a write that landed after the read returned
//     wins over the late fill. Tests: TestBlackboxBypassMissRaceTracker,
//     TestBlackboxBypassMissRacePlaceholder, TestBlackboxBypassMissRaceStress,
//     TestReadMissBypassRace, TestBlackboxWriteBeatsLateFill,
//     TestBlackboxCrashAsyncFills.
//   - C8 (ownership). The cache file, its intent log and the backing
//     devices are claimed (flock, O_EXCL) before anything is read or
//     written (the daemon and persist claim them; the intent log here).
//     Tests: TestIntentFileClaimed, persist's TestOpenFileRefusesHeldFile.
//   - C9 (corruption is reported, never absorbed). Damage to a kset that
//     was durable refuses the cache at Open (ErrJournalDamaged), never
//     ends the log silently; with data CRCs a read hit and writeback
//     verify the data: rotten dirty data fails the read (MEDIUM ERROR) and
//     is never written back, rotten clean data is read from the backing
//     device. Tests: TestDamagedJournalRefusedThenRepaired,
//     TestDataCRCOnReadHit, TestDataCRCInWriteback, persist's
//     TestCrashEveryPersistPoint (damage at every proven kset).
//
// Atomic writes (Volume.WriteAtomic, blk.AtomicWriter; SCSI WRITE
// ATOMIC(16)): a write of up to 128 KiB inside one aligned 128 KiB window
// is all-or-nothing after a crash at any instant and never interleaves
// with another write to its range. Its keys are appended as one group
// under the stripe lock, into one kset (the open kset is closed first if
// they would not fit), which replay accepts whole or not at all; the
// intent log marks the group's records, and recovery applies them whole
// or not at all, and appends them as a group again. It is cached as dirty
// data in every mode (the backing device alone never holds half of it
// while its keys are in the log); a failed or detached cache refuses
// atomic writes. Tests: TestBlackboxCrashAtomicWrites (crash images at
// persist points, with a check that no atomic write is half visible),
// TestIntentAtomicGroupWholeOrNothing, TestAppendGroupNeverStraddlesKsets,
// TestWriteAtomicLimits.
//
// Copies in the cache (Volume.CopyFrom, blk.Copier; EXTENDED COPY and
// WRITE USING TOKEN in target/scsi): when the source is a volume of the
// same cache (also through blk.Unwrapper wrappers) and the destination
// caches writes (writeback, writeonly), a copy makes the destination hold
// what the source held, as if all of it were read first and then written
// (steps of at most 1 MiB inside one stripe of each side, backwards when
// the destination starts inside the source). Cached source data is shared,
// not moved: under the source stripe lock the copy takes one reference on
// the extent's segment (only while it has references and its generation is
// the extent's), and the destination gets a dirty key pointing at the same
// segment, offset and generation, appended under its stripe lock like a
// write (C1, C2 with fua, the C6 epoch count). The reference count keeps
// counting keys, so GC passing the source's keys never frees data a
// destination key still points at; writeback writes each destination key
// to its own backing device; replay rebuilds the index and the references
// from the keys as for any key (C5). Cache data is never written in place
// (every write, fill, compare-and-write and atomic write gets new space),
// so a later write to either side never changes the other. Source ranges
// not cached (placeholders, holes, or data that may not be shared) are read
// through the source's read path (C7, C9 as for a read; no fill) and
// written to the destination as dirty data. A write racing the copy on
// the source range gives each destination block the source's old or new
// data, as a read racing it would (the shared parts of a step are taken at
// one instant, its moved parts read just after).
//
// Two rules keep sharing correct. Data CRC: a shared key carries the CRC
// of exactly the data it points at: its source key's when it covers all of
// it, else one computed after the whole source key's data was verified (a
// shared key never certifies rotten data; rotten source data is copied
// through the read path, which fails dirty data and rereads clean data).
// Lineage: writeback's clean marking and GC's eviction recognise a key's
// extents by volume, segment, generation and the offset-to-data mapping
// (extent.sameLineage), so two live keys of one volume must never map the
// same offsets to the same data (an older one's clean marking would take
// the newer one's dirty extent for its own, and GC would drop it before it
// is written back). The share registry (Cache.shares) records, per
// segment generation, the lineages of every key a copy shared from or
// made, per range; a copy whose key would repeat a recorded lineage
// (copying the same data to the same place twice, or back to where it was
// written) moves its data instead. The registry is in memory; Open
// rebuilds it from the replayed log (Cache.adoptReplayed: every key's
// lineage, per segment generation, those the index no longer holds too,
// as writeback's clean marking of a key scans its whole range), so data
// cached before a restart is shared too. A segment of scattered small
// writes, whose keys would need more than 64 entries, stays move-only
// until GC recycles it (segment.takenGen marks the generations that may
// be shared; TestCopySharesAfterRestart).
// Refused (blk.ErrUnsupported; the caller copies by read and write):
// another cache, a foreign volume, a destination that
// does not cache writes, a failed or detached cache, a source being
// removed or held by a detach. VolumeStats.CopySharedBytes and
// CopyMovedBytes count the two kinds of bytes. Keys that share data are
// told apart by their volume offset too where the engine names keys by
// identity (the dirty-epoch count, intent recovery). Tests:
// TestCopySharesCachedData, TestCopyPartlyCachedAndUncached,
// TestCopyOverlapping, TestCopyTwiceSameLineage, TestShareRegistryLineages,
// TestCopyGCPassesSourceKeys, TestCopyRottenSource, TestCopyRacesWrites,
// TestCopyKeysRecoveredAfterKill, TestDirtyEpochsCopyKeys,
// TestBlackboxCopyMetamorphic, TestBlackboxCrashCopies.
//
// CheckInvariants verifies the structures these rest on; every black-box
// test ends with it, and with -tags invariants writeback and GC check the
// live ones after every pass.
//
// # Structure
//
// Each volume's backing space is cut into 4 MiB stripes, allocated lazily
// (paged arrays of atomic pointers, whose page directory grows with the
// volume: Volume.Grow extends the index, then records the new size in the
// cache file, then admits requests past the old end; a volume never
// shrinks, ErrShrink). A stripe holds a sorted slice of
// non-overlapping 32-byte extents under its own mutex; insertion resolves
// the overlap cases (head, tail, contain, contained with split;
// placeholders are only deleted or cut at their end). Keys go to one of 16
// in-memory ksets chosen by (volume, stripe) and are appended under the
// stripe lock, so for every block the log order equals the index order.
// Closed ksets of one slot are written to the log in order, each once its
// predecessor is written (not durable: the journal makes ksets durable in
// log order, so consecutive ksets of a slot share a persist); different
// slots commit concurrently and share persists too (group commit in
// persist.Journal). Within
// a slot, FUA writes and flushes that arrive while a commit is in flight
// leave their keys in the open kset and are committed together once it
// starts writing its kset (one data persist, one kset persist for the
// whole batch; the batch's data persist overlaps the kset persist before
// it), and they share one flush-epoch bump. On a store with unfenced ksets
// (persist.Store.UnfencedCommits: data CRCs on a pwrite-fdatasync file)
// there is no data persist: the kset's persist, an fdatasync, covers the
// data written before it, and replay drops a tail kset whose data did not
// make it (persist.Store.ReplayVerified), so a FUA write waits for one
// flush instead of two. A kset also closes once a data head has taken a new
// segment since it opened (compared with the segment count when the
// appending request began, so one write's keys are not split by it): the
// log then passes the data area in about the order it was written, and GC
// frees about a segment for every segment's worth of keys it passes
// instead of several at once.
//
// Cache space comes from data heads (one where a flush covers the whole
// file, so that the data of writes sharing a flush lies in one segment,
// at its two ends; sharded elsewhere, against lock contention). A head
// hands out its segment from both ends: pieces of a page or more from the
// start, each on a page of the cache file (whole pages: the page cache
// never reads a page from the device to complete a write), pieces under a
// page from the end, packed by sectors, so that sector writes between page
// writes cost a sector each, not the rest of a page. A flush of both kinds
// of writes thus reaches the device as two runs instead of one; measured
// with 512-byte and 4 KiB FUA writes alternating from 8 writers, it is
// not slower for it (it writes less). A segment's reference count
// is one per live-log key pointing into it plus one while it is a head.
// GC advances key_tail over clean log (never past dirty_tail, nor past
// keys writeback has written back but not yet marked clean), a step at a
// time, each until it has passed the last key into a segment (at most two
// segments' worth of data), evicting the keys it passes from the
// index and dropping their references; a segment at zero gets its
// generation bumped and persisted before it is reused. Readers copy cache
// data holding the segment's read lock after checking the generation.
// Under a volume's 2q policy (policy.go) GC keeps a segment whose clean
// data was mostly read since written in place: it journals the keys of
// that data again (under the stripe lock, while the extents are in the
// index; the new keys hold the segment's references) and does not free
// it. Elsewhere it first re-appends the data of
// those keys that is clean in the index (fills, and writes once written
// back) and was read since written, the most read first (through the fill
// path, so C7 holds), within a write budget of a fifth of the bytes the
// host installed, and remembers what it evicts in a ghost set that
// decides which misses a full cache admits (only blocks missed or evicted
// shortly before).
//
// A read miss leaves an EMPTY placeholder over its range, reads the
// backing device and returns the data to the host at once; the fill (cache
// space, media write, clean key) is done by the cache's fill worker (see
// fill.go), in batches: one allocation and one media write per batch, each
// fill installed under its stripe lock only if its placeholder is still in
// place and no bypass write is in flight on the chunk (C7). Its keys are
// committed with the open ksets, never with a flush of their own. The
// queue is bounded (8 MiB): a miss that finds it full is not cached
// (VolumeStats.FillsDropped), so a fill never slows the read. A queued fill
// counts as a request of its volume until it is installed or dropped, so
// Close, RemoveVolume and Detach wait for it; PRE-FETCH waits for its own
// fills.
//
// A volume's journal can be replicated (replicate.go): a Replicator gets
// every kset's dirty data and discards in log order, and a FUA write or a
// flush waits for it too. Writeback never passes a kset whose
// replication wait has not returned, even when later ksets have committed
// (durableHead stops at the first replicated kset still waiting), and
// before each pass it asks the Replicators that are WritebackGates. The
// volume record of a volume attached with
// VolumeConfig.Replicated says so (persist.VolumeFlagReplicated); only
// such a volume can be dropped without writeback (PurgeReplica: its record
// leaves the volume table, so replay and writeback ignore its keys, and its
// id is not reused while they are live), because other nodes hold copies
// of its dirty data.
//
// # Concurrency and lock order
//
// Cache.mu → Cache.carryMu (AddVolume; writeback while it carries keys of
// volumes that are not attached) → stripe.mu (several only in
// CompareAndWrite, in ascending stripe order) → ksetSlot.mu; stripe.mu → segment.mu (read). dataHead.mu,
// segTable.mu and shareRegistry.mu (copies) are leaves and are never taken with a stripe lock held;
// writeback marks a pass clean holding its volumes' volCounters.progMu
// (progMu → stripe.mu; progress readers take it alone);
// generation bumps (persist I/O) run without any stripe lock. Background
// goroutines (kset flusher, writeback, GC, read-miss fills, kset commits)
// are owned by the Cache; Close stops and waits for all of them. The
// writeback goroutine exits promptly when the cache fails or closes. The
// sizing advisor's estimators (advisor.go: every read request is reported
// once, before the index is consulted) take only their own lock, never
// with an engine lock held. Cache.replMu (replicate.go) is taken by
// kset commits around the journal append and a Replicator's Ship, with no
// other engine lock held; Ship must not block nor call the engine.
// Cache.durMu (durableHead's bookkeeping) is a leaf, taken under replMu
// or alone. A WritebackGate is called by writeback with no engine lock
// held.
//
// # Failure policy
//
// A cache media error (persist.ErrMediaFault) retires the cache. "auto":
// volumes with no dirty data continue on their backing device, volumes
// with dirty data fail I/O with blk.ErrMedium and their dirty data stays on
// the media for recovery; "fail": every volume fails I/O; "passthrough":
// every volume continues on its backing device, accepting that reads of
// blocks whose newest data is stuck in the failed cache return older data.
// Backing read errors fail the one request (blk.ErrMedium); writeback
// errors are retried with backoff and dirty_tail does not move.
//
// Detach takes a cache out of service. A failed one at once (dirty data
// only with force, abandoned). A healthy one only once the backing devices
// hold everything: its volumes switch to passthrough, writeback writes
// back all dirty data, new requests are held (not failed) while those that
// took the cache path finish and their data is written back, the backing
// devices are flushed, and only then do volumes use them alone; writeback
// that keeps failing ends the detach with the volumes back in their modes.
//
// # Bypass
//
// Writes bypass the cache (tombstone if cached data is dropped, then a
// backing write) in writearound and passthrough mode, beyond the
// sequential cutoff of their stream (blk.Stream + volume, a table of 64
// recent streams), when the cache's measured latency is above the
// congestion threshold, and, when no segment is free, where nothing is
// cached (cached ranges then wait for space: back-pressure). Reads skip the
// fill for the same reasons. A write overlapping dirty data never bypasses.
// A request continues a stream a little past or before where it ended,
// since a queue's requests are served in parallel and reach the engine
// shuffled (seqDetector). A FUA write in a mode that caches writes never
// bypasses as sequential (bcache's rule for synchronous writes).
//
// # Direct writes and C6
//
// The backing device alone must always be a crash image that respects the
// host's flushes (C6), also for writes that reach it directly:
// bypass, writethrough, writearound/passthrough and backing discards. The
// rule: a write may reach the backing device directly only when its volume
// has no dirty data of a flush epoch older than the write's own that is not
// yet written back and flushed on the backing device. The argument:
//
//   - Every Flush and every FUA write advances the cache's epoch counter
//     before it returns, and a key carries the epoch it was appended in. So a write acknowledged before a Flush F was issued
//     has a key epoch below the epoch that any write issued after F
//     returned reads. Writes concurrent with F may land on either side,
//     as the host cannot tell them apart.
//   - The volume counts each dirty key with its epoch under the stripe
//     lock, before the write is acknowledged (dirtyEpochs, atomics only).
//     Writeback walks the log one epoch at a time and uncounts a key only
//     after its data was written and the backing device flushed (and
//     dirty_tail persisted).
//   - A direct write reads the epoch e once issued. If no key of an epoch
//     below e is still counted, every write of an earlier host epoch is on
//     the backing device and flushed: cached writes through writeback,
//     direct ones by the Flush that ended their epoch (Flush flushes the
//     backing device after direct writes). With the new write the image is
//     all earlier epochs plus part of epoch e. Dirty data of epoch e itself
//     may stay behind: the write is one more member of that epoch, and
//     writeback of epoch e or later only adds to the image in order.
//   - Direct writes count as such (Volume.directSeq) before they are
//     issued and again once they completed, so the next Flush after one
//     completed flushes the backing device even if a Flush ran while it
//     was in flight. A FUA write that ends an epoch orders older direct
//     writes too: a direct FUA write flushes the backing device, and a
//     cached one is written back in a pass whose backing flush precedes
//     every later epoch's data.
//   - A key whose epoch is unknown (a flush moved the epoch during its
//     append) counts as older until it is clean, which only delays direct
//     writes (such keys are kept by identity in a map under a leaf mutex,
//     taken with a stripe lock held or none). Epochs are per cache while C6 is per backing device:
//     another volume's flush makes this volume's dirty data "older" too,
//     again only more cautious; only this volume's dirty data is counted.
//
// A write that may not reach the backing device takes the cache path as
// dirty data instead, in every mode (also while a switch away from
// writeback is draining, or after SetConfig changed the mode without a
// drain); in a full cache it waits for space like any cached write
// (back-pressure, never a bypass or an error). A discard of up to 1 MiB
// writes zeroes through the cache the same way; a larger one waits for
// that writeback (at full speed) rather than fill the cache with zeroes,
// and so does one larger than 1 MiB over dirty data of its own epoch
// (after closing the epoch), so that it ends as a backing discard. Such writes count as
// VolumeStats.HeldBack and make writeback run at full speed for a while,
// so that bypass resumes once the volume caught up. A clean volume, or one
// whose dirty data all belongs to the current epoch, bypasses as before.
//
// # Limits
//
// Writeback is ordered over one log shared by all volumes. Dirty keys of a
// volume recorded in the cache file but not attached (its backing device is
// not there) cannot be written back; writeback journals them again at the
// log head (the data stays in place) and goes on with the other volumes, so
// their data keeps its place in the cache until the volume is attached.
// This costs 40 bytes of log per dirty key each time writeback passes
// them; it waits instead when nothing else is left to write back.
// VolumeStats.WritebackLag is the age of the oldest acknowledged write not
// yet on the backing device, 0 when clean. It is kept per kset (a kset
// counts from its first dirty write until dirty_tail passes it), so it may
// exceed the true age by the time writeback takes for one kset. The log
// keeps no times: dirty data replayed at Open counts from Open, a lower
// bound, until it is written back (see dirtyAges).
// DirtyBytes counts the bytes dirty in the index, also for a volume
// recorded in the cache file but not attached (Open counts them from the
// replayed index). Explain says where a block's data lives (segment,
// offset, generation), not which kset recorded it: the index keeps no LSN
// per extent (32 bytes per extent is the budget).
package cachecore
