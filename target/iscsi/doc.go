// Package iscsi is cachelun's iSCSI target (RFC 7143): listeners, login
// and negotiation, discovery, and the full-feature phase that carries SCSI
// commands to a device server (target/scsi) and their data and status
// back.
//
// # What it implements
//
//   - Login with security negotiation: AuthMethod None or CHAP (SHA-256,
//     SHA-1, MD5; strongest offered wins), one-way or mutual, per target and
//     for discovery sessions. Reflected challenges are refused.
//   - Operational negotiation of HeaderDigest/DataDigest (CRC32C, verified
//     on every PDU), MaxRecvDataSegmentLength in both directions,
//     MaxBurstLength, FirstBurstLength, InitialR2T, ImmediateData,
//     MaxOutstandingR2T, MaxConnections=1 (no MC/S) and ErrorRecoveryLevel=0.
//   - SendTargets discovery (discovery and normal sessions) listing only the
//     targets the initiator's ACL allows, with every portal of the target's
//     portal group; long answers continue over several Text Responses.
//   - Initiator ACLs, portal groups (IPv4 and IPv6 listeners), session
//     reinstatement (same initiator name and ISID: the old session's tasks
//     are aborted and its nexus reported lost before the new one starts),
//     and Login Reject "session does not exist" for an unknown TSIH. A
//     reinstating login whose old session's commands have not returned
//     from the device server within 5 seconds is answered "service
//     unavailable" (a target error, which open-iscsi retries) rather than
//     left unanswered; the retry waits for the same old session, so no
//     new session starts while an old command can still change the
//     medium.
//   - Full-feature phase with a CmdSN window of Config.QueueDepth commands.
//     Each command runs on its own goroutine and completes out of order, so
//     a slow cache miss never holds up a hit. Non-immediate NOP-Out, Text,
//     Logout and TMF requests consume a CmdSN; commands after a CmdSN gap
//     wait for the gap; CmdSNs outside the window are ignored (never
//     answered, as the RFC says; the first of a connection is logged at
//     WARN, since the initiator will wait for it until its timeout). Task
//     attributes are honoured per connection: an ORDERED command waits for
//     every earlier one and holds back later ones; HEAD OF QUEUE starts at
//     once.
//   - R2T and Data-Out with up to MaxOutstandingR2T bursts in flight; data
//     is accepted only at the offsets the target expects (immediate,
//     unsolicited up to FirstBurstLength, solicited), never past the
//     expected transfer length, with DataSN checked. A Data-Out that breaks
//     these rules, or fails its data digest, ends its command with CHECK
//     CONDITION, ABORTED COMMAND (RFC 7143 §7.8: ERL 0 cannot ask for the
//     data again); nothing of the command is written, the rest of its
//     Data-Out is dropped quietly, and the connection carries on, since
//     its header was sound. A Data-Out for no known task gets a Reject;
//     one for a command that already has all its data (queued behind a
//     CmdSN gap) also drops the connection.
//   - Data-In cut to the initiator's MaxRecvDataSegmentLength, sequences
//     bounded by MaxBurstLength, status in the last Data-In when there is no
//     sense (phase collapse), residual overflow/underflow from the device
//     server's Response.TransferLen against the expected transfer length.
//   - Task management: ABORT TASK, ABORT TASK SET, CLEAR TASK SET, LOGICAL
//     UNIT RESET, TARGET WARM RESET and TARGET COLD RESET cancel the affected
//     commands' contexts, wait for them to return, suppress their responses
//     and only then answer; TARGET COLD RESET then drops every connection
//     of the target, the requester's once its answer is written. While an
//     aborted command has not returned, a warning every 10 seconds names
//     it (ITT, LUN, CDB): whatever waits for it (the TMF response, a
//     logout, a reinstating login) would otherwise hang without a trace.
//     ABORT TASK for a task the target does not know
//     answers "function complete" when its RefCmdSN is in the window before
//     the request's CmdSN (the CmdSN then counts as received, so later
//     commands are not held behind it) and "task does not exist" otherwise,
//     as for the commands of a killed daemon after a restart. CLEAR ACA and
//     TASK REASSIGN are answered "not supported".
//   - NOP-Out/NOP-In both ways: the target pings a connection idle for
//     Config.NOPInterval and drops it when nothing arrives for
//     Config.NOPTimeout after the ping.
//   - Logout (closing the session or its connection: commands still
//     collecting data are aborted, running ones answered first, with a
//     warning every 10 seconds naming any that does not return; a logout
//     to remove the connection for recovery, or for another CID, is
//     refused and changes nothing), Async Message "request logout" on
//     Shutdown and when UpdateTarget or RemoveTarget revokes a session's
//     access.
//
// # Guarantees
//
// A malformed or hostile peer can cost at most its own connection: every
// connection goroutine recovers from panics; data segments larger than the
// negotiated limit are refused before they are read; the login phase is
// bounded in time and size; transfers above Config.MaxTransferLength are
// answered with CHECK CONDITION without buffering them.
//
// Memory: a command's data buffer (its expected transfer length, at most
// Config.MaxTransferLength) is taken from a size-classed pool when the
// command arrives, so a session holds at most QueueDepth of them (plus
// immediate commands, bounded to twice that), and all sessions together at
// most Config.MaxBufferBytes: beyond it commands get TASK SET FULL. The
// writer queue is bounded too; a peer that never reads is dropped.
// Data-Out is read straight into the buffer; Data-In is sent from it by one
// writev per batch of responses, without copying.
//
// # Concurrency
//
// Each connection has a reader goroutine (login, then every inbound PDU:
// CmdSN bookkeeping, Data-Out placement and R2T issue happen here, in
// order), one writer goroutine (the only one that writes to the socket
// after login: it stamps StatSN, ExpCmdSN and MaxCmdSN and flushes once its
// queue is empty, so responses that become ready together share one write),
// a keepalive goroutine, one worker goroutine per concurrently running
// command (workers are reused while the connection is busy and exit after
// two to four idle seconds), and short-lived goroutines for task management
// and logout. A command's context is its own, not a child of the
// connection's: task management cancels it, and teardown aborts every task
// of a connection that ends. Sessions have one connection,
// so StatSN is per connection and per session alike.
//
// Lock order: Server.mu, then conn.tmu (the task table), then conn.wmu (the
// writer queue). No lock is held while the device server runs a command or
// while the socket is written.
//
// Shutdown: Serve returns when its context ends, after the connections it
// accepted are gone; Shutdown asks every session to log out and waits until
// they have, or until its context ends and the rest are dropped.
package iscsi
