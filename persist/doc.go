// Package persist owns the cachelun cache file: the media it lives on, its
// on-media format (superblock, dual-slot records, segment generations, kset
// journal) and the replay iterator. It knows nothing about the index,
// volumes' data or SCSI.
//
// # Guarantees
//
//   - Every mutable metadata record is dual-slot. An update writes the slot
//     that does not hold the newest valid copy (also the first update after
//     open), persists it, and only then treats it as the newest. A torn
//     update therefore always leaves the previous value readable.
//   - A segment whose generation record has no valid slot is quarantined:
//     Gen and BumpGen fail with ErrQuarantined; it is never reset.
//   - Journal.Commit returns only when the kset and every kset before it
//     (and any LAST record on the way) are durable. Concurrent commits share
//     persists. Commit is Append (write the kset) then WaitDurable (its LSN):
//     ksets are durable in log order, so a caller may append its next kset
//     before the previous one is durable and wait once for both.
//   - Replay accepts a kset only if its magic, CRC32C, cache UUID, LSN
//     (exactly the expected one) and session chain (below) hold, and every
//     id, offset and length in it is within bounds. It stops at the first
//     record that fails and says why (Replayer.StopReason).
//   - ReplayVerified never takes damage to a kset that had been durable
//     for the end of the log: it reports ErrJournalDamaged (see Damage).
//   - Open never writes. A media it refuses gets a *FormatError naming the
//     record, its offset, and what was expected and found.
//   - Faults on a mapping (SIGBUS after an I/O error or truncation) become
//     errors wrapping ErrMediaFault (runtime/debug.SetPanicOnFault + recover
//     around every access); I/O errors from pwrite/msync/fdatasync too.
//     A failed persist is sticky (fail-stop): nothing after it succeeds.
//
// # Concurrency
//
// Media, Store and Journal are safe for concurrent use; a Replayer is used
// by one goroutine. Lock order: Journal.flush → Journal.mu; each dual-slot
// record and each segment generation has its own mutex, held across its
// write and persist; Store.vals is a leaf. No lock is held while calling the
// allocator passed to OpenJournal except Journal.mu (the allocator must not
// call the Journal).
//
// # Persist ordering
//
// The engine persists data (Media.Persist) before it commits the key that
// points at it, or, on a store with unfenced ksets, writes the data before
// it commits the key and lets the kset's persist cover both (below).
// Commit persists the kset, and any LAST record written for a
// segment switch, before returning. No end-of-log marker is written: replay
// stops at the first slot whose LSN is not the expected one, so a stale
// kset (from an earlier pass over the segment, or from an earlier format
// with another UUID) is never accepted. BumpGen, SetKeyTail, SetDirtyTail,
// SetInfo and SetVolumes persist before returning.
//
// Session chain: the journal writes ksets in groups and persists each group
// once, so after a crash a later kset of a group can be durable while an
// earlier one is torn. Replay stops at the torn one; the next journal then
// rewrites that LSN, possibly with a different size, which could make the
// stale later kset line up at the expected position with the expected LSN.
// To reject it, every record carries the random 64-bit nonce of the journal
// session that wrote it and the nonce of the record before it; replay
// requires each record's "previous nonce" to equal the nonce of the record it
// follows (not checked for the first record at the tail). A new session's
// first record names the previous session's nonce, which the stale record
// cannot.
//
// # Unfenced ksets
//
// On a pwrite-fdatasync file one fdatasync makes every write that returned
// before it began durable, data and ksets alike (FlushCoversMedia). There a
// commit need not persist its data before writing its kset: the persist
// that makes the kset durable makes the data durable too, so a FUA write
// waits for one flush instead of two. What this gives up is the order on
// the media: a crash can leave such a kset durable and its data not. A
// store formatted with data CRCs (FeatureDataCRC | FeatureUnfencedKSets)
// allows it (Store.UnfencedCommits, Journal.AppendUnfenced); DAX and msync
// media persist ranges, not the file, and stay fenced.
//
// Replay must then tell a kset whose data did not make it from one whose
// data was corrupted later. Every kset records how many ksets before it
// were not yet known durable when it was written (its unconfirmed count),
// so the ksets below LSN-unconfirmed of any kset on the log are known
// durable with their data: a CRC failure there is corruption, reported by
// check and left to the engine's policy. Only the unconfirmed tail (the
// ksets above the highest such mark) can hold data that never reached the
// media. Store.ReplayVerified walks the log to its end first, checks the
// data CRC of every current key of the unfenced ksets of that tail, and
// ends the log (ErrTornData) at the first one that fails. That is safe:
// the kset was never acknowledged (its persist did not complete), and
// neither was any kset after it, since a persist that made a later kset
// durable would have made this data durable too. The journal opened at that
// end rewrites its LSN and the session chain rejects the stale ksets after
// it, as for a torn kset.
//
// A new journal confirms only what the replayed log proved durable, not
// the replayed tail itself: after a process crash that tail may have been
// read from the page cache and not be on the disk yet. Its first persist
// covers it.
//
// # Damage
//
// The end of the log and damage to it look alike to a record-by-record
// walk: both are a record that fails its checks. The last group commit
// before a crash may be torn by design (none of it was acknowledged), so
// stopping there is right; stopping at a record that had been durable
// would silently drop every write recorded from it on and serve older
// data in their place. ReplayVerified (the walk that rebuilds the engine's
// state, and check's) therefore decides, where it stops at LSN L, whether
// L had been durable, from two kinds of evidence:
//
//   - The durable mark, a dual-slot record (below) that the engine sets,
//     at most once a second while the journal advances and at a clean
//     close, to an LSN up to which every kset is known durable (a
//     journal persist covering it returned). L <= mark is damage.
//   - Later ksets. Every kset records how many ksets before it were not
//     known durable when it was written (its unconfirmed count), so a kset
//     at LSN M with count u proves every kset below M-u durable. The
//     walk scans the rest of L's segment (8-byte steps) and the first slot
//     of every segment it did not reach for a valid record (magic, CRC,
//     cache UUID) with an LSN above L (at least L at a segment start,
//     after a damaged LAST record), walks the log from there, and takes
//     any kset that proves an LSN above L durable as proof. A stale kset
//     of a session cut at a torn tail cannot give that proof: it was
//     written before the cut point became durable, so what it proves
//     stops below the cut point, and the cut point is at most L.
//
// With evidence, the stop is a *DamageError (ErrJournalDamaged): the
// record, its offset, what was expected and found, the evidence, the keys
// the record probably held (decoded without its checksum), and where the
// valid log continues, if it was found right after the damage. Without,
// it is the end of the log, as before. The ksets of a torn group commit are
// never taken for damage (crash-tested at every persist point, with
// damage injected into every proven kset of each crash image). What the
// evidence cannot cover is the newest kset when nothing after it was
// durable and the mark had not caught up (at most about a second of a
// log that then stopped): its damage still ends the log there.
//
// The engine refuses a damaged cache. Store.Repair, with the operator's
// consent (cachelun check --repair), replaces the damaged record by one
// that continues the session chain where the log goes on right after it:
// a LAST record naming the next segment, or a kset of the same size whose
// keys are tombstones of the ranges the damaged kset probably wrote (they
// then read the backing device, never data the kset had replaced);
// otherwise it ends the log before the damage and lowers the mark.
//
// # On-media format, version 1
//
// All integers are little-endian. Offsets are absolute byte offsets.
//
//	0x00000  4 KiB  reserved (left alone, e.g. for labels)
//	0x01000  4 KiB  superblock slot 0
//	0x02000  4 KiB  superblock slot 1
//	0x03000  4 KiB  cache info slot 0       0x04000  slot 1
//	0x05000  4 KiB  key tail slot 0         0x06000  slot 1
//	0x07000  4 KiB  dirty tail slot 0       0x08000  slot 1
//	0x09000  4 KiB  durable mark slot 0
//	0x0A000  8 KiB  volume table slot 0     0x0C000  slot 1
//	0x0E000  4 KiB  durable mark slot 1
//	0x0F000  4 KiB  reserved
//	0x10000         segment 0, then segment i at 0x10000 + i*segment size
//
// Every record slot (superblock, cache info, tails, volume table, segment
// generation) has a 24-byte header followed by its payload:
//
//	0   [8]  magic: "clunSUPR", "clunINFO", "clunKTAL", "clunDTAL",
//	         "clunVOLS", "clunDURA", "clunSGEN"
//	8   u32  CRC32C (Castagnoli, standard init/xor) over the 16-byte cache
//	         UUID followed by bytes [12, 24+payload length) of the record;
//	         for the superblock the UUID used is 16 zero bytes
//	12  u32  payload length
//	16  u64  sequence number; the valid slot with the higher one is newest
//	24  ...  payload
//
// Superblock payload (64 bytes; written to both slots at format, seq 1
// and 2):
//
//	0  u32 format version (1; a larger value is refused with ErrNewerFormat
//	       before the CRC is checked)
//	4  u32 feature flags (bit 0: keys carry a data CRC32C; bit 1: ksets may
//	       be unfenced, set with bit 0); unknown bits are refused with
//	       ErrNewerFormat
//	8  [16] cache UUID (random, RFC 4122 v4)
//	24 u32 block size (cache allocation unit, 512..4096, power of two)
//	28 u32 segment size (power of two, 128 KiB .. 1 GiB)
//	32 u32 segment count
//	36 u32 reserved, 0
//	40 u64 offset of segment 0 (0x10000)
//	48 u64 media size at format
//	56 u64 reserved, 0
//
// Cache info payload (8 bytes): u8 gc percent (0..100), [3] zero, u32
// flags (engine-defined).
//
// Key tail / dirty tail payload (16 bytes): u32 segment, u32 offset in the
// segment's data area (multiple of 8), u64 LSN of the kset that starts
// there.
//
// Durable mark payload (16 bytes): u64 LSN (every kset up to it was
// durable when the mark was set), u64 zero. Magic "clunDURA". Optional:
// format leaves both slots zero (no mark); binaries that predate it leave
// them alone.
//
// Volume table payload: u32 count (<= 64), u32 reserved, then count
// entries of 96 bytes: u32 volume id, u32 flags, u64 size in bytes, u8
// name length (<= 63), [63] name, [16] zero.
//
// Segment layout:
//
//	+0      generation record slot 0 (40 bytes)
//	+2048   generation record slot 1
//	+4096   data area (segment size - 4096 bytes), used either for
//	        volume data or for ksets
//
// Generation payload (16 bytes): u32 segment id (must match the segment),
// u32 zero, u64 generation (1 after format).
//
// Kset record (72-byte header + 40 bytes per key), at any 8-byte aligned
// offset of a kset segment's data area:
//
//	0   [8]  magic "clunKSET"
//	8   u32  CRC32C over bytes [12, 72 + 40*key count)
//	12  u32  flags: bit 0 LAST (no keys; the log continues at offset 0 of
//	         the segment named at 68); bit 1 UNFENCED (the keys' data was
//	         not persisted before the kset; only with FeatureUnfencedKSets)
//	16  [16] cache UUID
//	32  u64  LSN: one more than the previous kset; a LAST record carries the
//	         LSN of the kset that follows it (it does not consume one)
//	40  u64  flush epoch
//	48  u64  session nonce of the journal that wrote it
//	56  u64  session nonce of the record before it
//	64  u32  key count (1..128; 0 for LAST)
//	68  u32  LAST: next segment; others: unconfirmed count (how many ksets
//	         just before this one were not known durable when it was
//	         written; 0 in ksets of binaries that predate it, which never
//	         follow an unfenced kset)
//	72  keys
//
// Key (40 bytes):
//
//	0  u64 backing byte offset
//	8  u32 volume id
//	12 u32 length in bytes (> 0)
//	16 u32 cache position: segment
//	20 u32 cache position: offset in the data area (offset+length within it)
//	24 u64 generation of that segment when the data was written
//	32 u32 CRC32C of the data (only with the data-CRC feature, else 0)
//	36 u8  flags: exactly one of 1 dirty, 2 clean, 4 tombstone (tombstones
//	       have position, generation and CRC zero)
//	37 [3] zero
//
// The journal keeps room for a 72-byte LAST record after every kset, so a
// segment switch always fits.
//
// # Format procedure
//
// Zero both superblock slots and persist; write slot 0 of every record and
// every segment's generation record (zeroing slot 1 and the first kset
// header slot of its data area) and persist; then write
// superblock slot 0, persist, slot 1, persist. A crash before the last step
// leaves a file without a superblock ("not a cachelun file"), never a half-
// formatted cache that opens. Format refuses a cache that holds dirty keys
// after its dirty tail, or that looks like ours but cannot be read, unless
// forced.
//
// # Media
//
// See media.go for the interface. OpenFile tries
// mmap(MAP_SHARED_VALIDATE|MAP_SYNC); if the file system is DAX, persist is
// a write-back of each cache line of the range followed by SFENCE, in Go
// assembly (amd64; other architectures never select DAX). The instruction
// comes from CPUID at open (FlushInstruction), in this order: CLWB
// (CPUID.(EAX=7,ECX=0):EBX bit 24; writes the line back and may keep it
// cached), else CLFLUSHOPT (same leaf, bit 23; writes back and evicts),
// else CLFLUSH (CPUID.01H:EDX bit 19; writes back and evicts, serialised
// with other CLFLUSHes, the slowest). It is never assumed from the build
// target: a virtual machine's CPU model may lack CLWB (QEMU's qemu64 has
// only CLFLUSH), and CLWB there raises SIGILL. A CPU with none of the three
// gets no DAX. The "cache media: DAX mapping" log line and `cachelun
// inspect` name the instruction. integration/vm's tier 3 runs this path on a
// real fsdax ext4 (an emulated NVDIMM) with CLWB and, on a CPU model
// without CLWB and CLFLUSHOPT, with CLFLUSH. Otherwise OpenFile uses
// DefaultFileKind. Both non-DAX kinds read through a MADV_RANDOM shared
// mapping; the choice between them is explained under "Choice of media".
// Non-DAX persist requests are coalesced: while one flush runs, later
// requests queue and the next flush covers all of them. DAX persists flush
// exactly their own cache lines (no system call, nothing to share).
//
// Ownership: OpenFile claims the file with flock (internal/flock) before it
// reads, sizes or maps it, exclusively for a writer and shared for
// ReadOnly, and holds the claim until Close; a file another open holds is
// refused (flock.ErrLocked, with the holder's pid). Creating or growing a
// file checks the free space first (ErrNoSpace), reserves it with
// fallocate, zero-fills cancellably, and undoes itself on failure;
// CreateFile builds a new file under a claimed temporary name and renames
// it only once the caller has formatted it. FormatFile is the whole of
// `cachelun format` on top of these: the dirty-data refusal before any
// resize, the minimum size, creation or claim, format, and the cut-back of
// a file grown for a format that failed.
//
// # Choice of media
//
// pwrite-fdatasync is DefaultFileKind: on disk it sustains several times
// the msync rate (docs/perf.md has the figures). msync (MS_SYNC) on ext4
// is an fsync of the range that also writes the inode, a dirty 4 KiB page
// of a large folio writes back the whole folio, and a dirty shared mapping
// larger than the dirty-background threshold collapses into writeback
// storms; with pwrite + fdatasync dirty data never accumulates beyond one
// group. fdatasync has no range, so one call serves every concurrent
// waiter: the flusher coalesces them. Reads still go through the mapping
// (MADV_RANDOM: no readahead-built large folios), cheaper than pread; a
// SIGBUS there becomes ErrMediaFault.
//
// New or grown files are fallocated so that writes do not allocate blocks
// (no ENOSPC under a mapping). Fallocated blocks are still unwritten
// extents: the first write to each converts it, and the fdatasync after it
// then also writes the block map, synchronously. FileOptions.ZeroFill
// writes zeros over the new part once (O_DIRECT) so the first pass through
// the cache costs what later passes cost. Zero-filling goes around the page
// cache, so a write that covers part of a page the page cache does not hold
// makes the kernel read it from the device first: data is written in whole
// pages, and on pwrite-fdatasync media the journal writes each kset with
// zeros up to the next page boundary (the next kset overwrites them), so
// every log page is first written in full.
//
// A flush covers the ksets written before it started; ksets written during
// it wait for the next one.
//
// Fuzz targets: FuzzSuperblock, FuzzRecord, FuzzKey, FuzzKSet, FuzzReplay,
// FuzzOpen, FuzzDamageDecision.
//
// # API notes
//
// Additions to the agreed API: the MediaKind constants and DefaultFileKind;
// FlushInstruction, the FlushCLWB/FlushCLFLUSHOPT/FlushCLFLUSH names and
// Report.MediaFlush;
// FileOptions.Kind (force a non-DAX mechanism) and FileOptions.ReadOnly;
// TearDAX/TearPage; CrashMedia.Bytes and NewCrashMediaFrom (golden images);
// Store.DataCRC and Store.HasDirtyData; Journal.Stats; Inspect, Check and
// Report (what `cachelun inspect/check` print); DataCRC32C (the checksum keys
// carry); ErrHoldsDirtyData, ErrInvalidArgument, ErrClosed and the replay
// stop sentinels (ErrEndOfLog, ErrBadChecksum, ErrForeignUUID, ErrLSNGap,
// ErrChainBreak, ErrBounds) carried by *StopError; FormatVersion,
// SegmentsOffset, MaxVolumes, MaxVolumeName, MaxKSetSize.
//
// Behaviour the engine relies on:
//   - Commit validates keys (exactly one flag; non-zero length; data within
//     one segment's data area; tombstones with zero position, generation and
//     CRC; DataCRC zero unless the store has data CRCs) and returns
//     ErrInvalidArgument without writing anything otherwise.
//   - OpenJournal's head must be the Head of a Replayer that walked the log
//     to its end (or the key tail of a fresh store); otherwise OpenJournal
//     walks the log from the key tail itself to continue the session chain.
//   - alloc is called with the journal lock held; it must not call the
//     Journal. ErrJournalFull wraps alloc's error; nothing is written then.
//   - A failed persist or write is sticky for the Journal (every later
//     Commit fails) and for file media (every later Persist fails).
//   - Replayer.StopReason is never nil after Next returned false; a normal
//     end of log is ErrEndOfLog, ErrBadChecksum, ErrLSNGap, ErrChainBreak or
//     ErrForeignUUID (a torn or stale record); ErrBounds means a checksummed
//     record is out of bounds (reported by Check); ErrMediaFault an I/O error.
package persist
