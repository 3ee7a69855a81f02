// Package scsi is the SCSI device server shared by cachelun's front ends
// (target/iscsi and target/tcmu). It decodes CDBs, emulates a direct-access
// block device per SPC-4 and SBC-3 on top of a Volume, and produces status,
// sense data and data-in.
//
// # What it serves
//
// A Target holds logical units (LU), each backed by a Volume. Target.Execute
// runs one Command and returns its Response; the transport owns framing,
// data transfer and task management (it aborts a task by cancelling its
// context), and reports nexus loss and resets through NexusLost, ResetLU
// and ResetTarget.
//
// Implemented commands: TEST UNIT READY, REQUEST SENSE, INQUIRY (standard
// and VPD 00h, 80h, 83h, 86h, 8Fh, B0h, B1h, B2h), READ CAPACITY(10/16),
// MODE SENSE/SELECT(6/10) (pages 01h, 08h, 0Ah, 1Ch; only WCE is
// changeable), READ/WRITE(6/10/12/16), WRITE AND VERIFY(10/12/16),
// VERIFY(10/12/16), SYNCHRONIZE CACHE(10/16), PRE-FETCH(10/16), UNMAP, WRITE
// SAME(10/16), COMPARE AND WRITE, ORWRITE(16), WRITE ATOMIC(16) (only on
// volumes that implement blk.AtomicWriter), GET LBA STATUS, REPORT LUNS,
// REPORT SUPPORTED OPERATION CODES, REPORT TARGET PORT GROUPS (with
// ALUA), PERSISTENT RESERVE IN/OUT,
// RESERVE/RELEASE (6/10), START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL,
// EXTENDED COPY (LID1), RECEIVE COPY RESULTS (COPY STATUS, OPERATING
// PARAMETERS), POPULATE TOKEN, WRITE USING TOKEN, RECEIVE ROD TOKEN
// INFORMATION and SANITIZE (OVERWRITE, BLOCK ERASE on thin logical units,
// EXIT FAILURE MODE). Anything else ends in ILLEGAL REQUEST / INVALID
// COMMAND OPERATION CODE (an unsupported service action, such as SANITIZE
// CRYPTOGRAPHIC ERASE, in INVALID FIELD IN CDB).
//
// Identity: standard INQUIRY reports a connected direct-access device,
// vendor "CACHELUN", product "cached-lun", revision "0001" (all
// configurable), VERSION 06h (SPC-4), HiSup=1, response data format 2,
// CmdQue=1, TPGS=0 (01b with ALUA), PROTECT=0, 3PC=1, and the version
// descriptors SAM-5, iSCSI, SPC-4 and SBC-3. VPD 83h carries an NAA-6
// designator and a T10 vendor ID designator derived from
// LUConfig.DeviceID, the relative target port (Nexus.RelativePortID) and
// target port group (1, or the port's group with ALUA) of the nexus, and
// the SCSI names of the target port and target device. The
// serial and device id of every LUN cachelun serves come from one place,
// identity.go: LUNIdentity (iSCSI: target IQN and volume name),
// TCMUIdentity (LIO's unit serial, else the cfgstring) and, for a logical
// unit configured without one, the target name and LUN. Hosts name disks by
// them, so testdata/identity.golden pins their values.
//
// # ALUA
//
// A logical unit given LUConfig.ALUA (or LU.SetALUA) reports implicit
// asymmetric logical unit access (TPGS=01b): target port groups, each with
// an ID, an asymmetric access state (active/optimized, active/non-optimized,
// standby, unavailable, transitioning) and the relative target port
// identifiers of its ports. A command's port is Nexus.RelativePortID (the
// iSCSI target portal group tag). The daemon owns the states:
// LU.SetTargetPortGroupStates changes any number of groups in one atomic
// step and raises ASYMMETRIC ACCESS STATE CHANGED on every I_T nexus of the
// logical unit; SET TARGET PORT GROUPS is not offered. Ports in standby
// serve INQUIRY, REPORT LUNS, REPORT TARGET PORT GROUPS, REQUEST SENSE, MODE
// SENSE/SELECT, PERSISTENT RESERVE IN/OUT and READ CAPACITY, and refuse the
// rest with NOT READY / TARGET PORT IN STANDBY STATE; unavailable and
// transitioning ports serve the first four only (alua.go has the SPC-4
// references). Without ALUA every answer is as it was before ALUA existed.
//
// With LUConfig.PR (pr_share.go) a logical unit's persistent reservations
// are shared with the other gateways exporting the volume: while the unit
// is not authoritative it forwards PERSISTENT RESERVE IN/OUT to the one
// that is (Target.ExecuteForwarded runs them there for the forwarding
// nexus), and the authoritative unit saves each change before the command
// completes.
//
// # Copy offload, atomic writes, sanitize
//
// The logical unit that receives EXTENDED COPY or WRITE USING TOKEN is the
// copy manager. It reaches the logical units named by NAA designator (the
// one VPD 83h reports) through the CopyManager its Target was made with
// (TargetConfig.CopyManager; the daemon gives all its targets one, so
// copies go between LUNs of different targets). Data moves through the
// Volume interface: read the source, write the destination, with FUA when
// the destination's write cache is off, as a host copy would; a
// destination volume that implements blk.Copier does the copy itself (the
// cache engine shares cached data: cachecore's "Copies in the cache"), for
// EXTENDED COPY segment by segment and for WRITE USING TOKEN chunk by
// chunk (the token must be valid before each chunk; a write to its source
// during a chunk's copy fails the command after that chunk, not counted in
// the transfer count). An EXTENDED COPY parameter
// list is validated completely, every range against its copy target's
// capacity, before any block moves; an I/O error later ends the command in
// COPY ABORTED whose COMMAND-SPECIFIC INFORMATION is the failing segment,
// and RECEIVE COPY RESULTS reports the segments and bytes done. Overlapping
// source and destination ranges of one volume are copied as if the source
// were read completely first. Limits (VPD 8Fh, OPERATING PARAMETERS): 8
// CSCD descriptors, 32 block-to-block segment descriptors, 2048 bytes of
// descriptors, 65535 blocks per segment. Reservations held by other I_T
// nexuses on a copy target other than the copy manager end the copy in
// RESERVATION CONFLICT; the copy does not enter those units' task sets.
//
// ROD tokens (POPULATE TOKEN) represent ranges at a point in time without
// copying them: any write through a logical unit of the same CopyManager
// to a range a token represents revokes the token first, a token unused for
// its inactivity timeout (default 60 s, at most 3600 s) expires, and tokens
// carry an HMAC under a per-CopyManager random key, so a forged, altered or
// stale token is refused (ILLEGAL REQUEST / INVALID TOKEN OPERATION with
// TOKEN CORRUPT, UNKNOWN, REVOKED, EXPIRED, UNSUPPORTED TOKEN TYPE or
// INVALID TOKEN LENGTH). WRITE USING TOKEN rechecks its token after every
// chunk it read, writes the destination ranges in order and, when the token
// holds less, leaves the rest and reports the residual through RECEIVE ROD
// TOKEN INFORMATION; the block device zero token writes zeroes. At most 64
// ranges and 256 MiB per token or write (VPD 8Fh, Block Device ROD Token
// Limits).
//
// WRITE ATOMIC(16) is offered, and the atomic fields of VPD B0h are
// non-zero, only when the volume implements blk.AtomicWriter (looked up
// through wrappers with blk.AtomicWriterOf): the device server cannot make
// a write all-or-nothing across a crash by itself. The cache engine's
// volumes do (128 KiB, aligned to 128 KiB; cachecore's doc.go).
// Larger, misaligned or ungranular atomic writes end in INVALID FIELD IN
// CDB and write nothing; so does a short Data-Out.
//
// SANITIZE runs as a job of the logical unit that outlives its task (abort,
// reset and nexus loss leave it running); meanwhile every command but
// INQUIRY, REPORT LUNS and REQUEST SENSE ends in NOT READY / SANITIZE IN
// PROGRESS with the progress indication, which REQUEST SENSE also returns.
// A failed job leaves the sanitize failure mode (MEDIUM ERROR / SANITIZE
// COMMAND FAILED) until a SANITIZE completes or, after AUSE=1, EXIT FAILURE
// MODE. OVERWRITE writes through the volume (so the cache's copy is
// replaced) at no more than LUConfig.SanitizeMaxBytesPerSec (default 16
// MiB/s, as md bounds a resync: the backing device serves other logical
// units meanwhile), in chunks small enough for the progress indication to
// move about 32 times a second; BLOCK ERASE discards the whole volume;
// both flush at the end.
//
// # Guarantees
//
//   - Durability: with WCE=0 every write reaches the Volume with fua=true
//     and discards are followed by a flush; a FUA write, WRITE AND VERIFY
//     and SYNCHRONIZE CACHE complete only when the Volume says the data is
//     durable.
//   - Writes never touch blocks outside the CDB's range, and never change
//     bytes the initiator did not send: with residual overflow only the
//     data received is written (a trailing partial block is merged into the
//     block atomically); extra data (underflow) is ignored.
//     Response.TransferLen always carries the CDB's length so the transport
//     can report residuals.
//   - COMPARE AND WRITE and ORWRITE are atomic (Volume.CompareAndWrite).
//   - No CDB or parameter list can crash the process: decoders check every
//     length (they are fuzzed), and Execute recovers from a panic, logs it
//     and answers CHECK CONDITION / INTERNAL TARGET FAILURE.
//   - READ reads straight into Command.DataIn when the transport provides a
//     large enough buffer.
//   - Capacity: a logical unit reports the capacity it last took from its
//     volume (LU.RefreshCapacity, called by whoever grew the volume), so a
//     host never sees a new capacity before the CAPACITY DATA HAS CHANGED
//     unit attention that every I_T nexus gets with it (capacity.go).
//
// # Concurrency
//
// Execute may be called from any number of goroutines. It takes no
// target-wide lock: the LUN map and each LU's nexus map are copy-on-write
// (atomic pointer loads); unit attentions are checked through an atomic
// counter; reservations are only consulted (under LU.resMu) while one
// exists. Volume calls run with only the logical unit's task-set lock held
// shared (see below).
//
// Task attributes are honoured per logical unit in the order Execute is
// entered: an ORDERED task waits for the tasks before it and holds back
// those after it, HEAD OF QUEUE tasks bypass the task set, everything else
// is SIMPLE.
//
// Lock order: LU.taskSet (held for the whole command) → LU.resMu →
// LU.nexusMu → nexusState.mu, with LU.stateMu last; LU.capacityMu (a
// capacity refresh) → nexusState.mu; Target.mu (LUN map changes) and the
// ALUA setters' lock (aluaState.mu → nexusState.mu) are never held while
// executing a command. No lock other than
// LU.taskSet is held across Volume I/O.
//
// # State file
//
// LUConfig.StatePath, when set, holds a JSON document with the saved WCE
// (MODE SELECT with SP=1) and, while APTPL is in effect, the persistent
// reservations. It is replaced atomically (write, fsync, rename, fsync of
// the directory).
package scsi
