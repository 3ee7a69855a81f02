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
// and VPD 00h, 80h, 83h, 86h, B0h, B1h, B2h), READ CAPACITY(10/16), MODE
// SENSE/SELECT(6/10) (pages 01h, 08h, 0Ah, 1Ch; only WCE is changeable),
// READ/WRITE(6/10/12/16), WRITE AND VERIFY(10/12/16), VERIFY(10/12/16),
// SYNCHRONIZE CACHE(10/16), PRE-FETCH(10/16), UNMAP, WRITE SAME(10/16),
// COMPARE AND WRITE, ORWRITE(16), GET LBA STATUS, REPORT LUNS, REPORT
// SUPPORTED OPERATION CODES, PERSISTENT RESERVE IN/OUT, RESERVE/RELEASE
// (6/10), START STOP UNIT and PREVENT ALLOW MEDIUM REMOVAL. Anything else
// ends in ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE.
//
// Identity: standard INQUIRY reports a connected direct-access device,
// vendor "CACHELUN", product "cached-lun", revision "0001" (all
// configurable), VERSION 06h (SPC-4), HiSup=1, response data format 2,
// CmdQue=1, TPGS=0 (no ALUA), PROTECT=0, 3PC=0, and the version
// descriptors SAM-5, iSCSI, SPC-4 and SBC-3. VPD 83h carries an NAA-6
// designator and a T10 vendor ID designator derived from
// LUConfig.DeviceID, the relative target port and target port group of the
// nexus, and the SCSI names of the target port and target device. The
// serial and device id of every LUN cachelun serves come from one place,
// identity.go: LUNIdentity (iSCSI: target IQN and volume name),
// TCMUIdentity (LIO's unit serial, else the cfgstring) and, for a logical
// unit configured without one, the target name and LUN. Hosts name disks by
// them, so testdata/identity.golden pins their values.
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
// LU.nexusMu → nexusState.mu, with LU.stateMu last; Target.mu (LUN map
// changes) is never held while executing a command. No lock other than
// LU.taskSet is held across Volume I/O.
//
// # State file
//
// LUConfig.StatePath, when set, holds a JSON document with the saved WCE
// (MODE SELECT with SP=1) and, while APTPL is in effect, the persistent
// reservations. It is replaced atomically (write, fsync, rename, fsync of
// the directory).
package scsi
