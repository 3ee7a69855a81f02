// Package backend provides the backing devices of cachelun: the slow,
// authoritative stores behind cached volumes, all implementing Device.
//
//   - File (OpenFile): a regular file or a block device, optionally with
//     O_DIRECT (buffers at any address are bounced through aligned ones;
//     offsets and lengths must be multiples of File.Alignment). Flush is
//     fdatasync. Discard punches a hole (fallocate PUNCH_HOLE|KEEP_SIZE,
//     which block devices turn into a zero-out) and falls back to writing
//     zeroes, so a discarded range always reads as zeroes. Block device sizes
//     come from ioctl BLKGETSIZE64. OpenFile claims the device before it
//     sizes or reads it: a flock (internal/flock; shared when ReadOnly) on
//     the file or device node, and O_EXCL for a block device, which the
//     kernel also enforces against mounts; a device another process (or
//     another open) holds is refused with flock.ErrLocked and, where the
//     kernel tells, the holder's pid.
//   - Memory (NewMemory): sparse, zero-filled, in memory. Clone copies it.
//   - Faulty (NewFaulty): wraps a Device for tests. Scripted faults per kind
//     of request and byte range (fail once, always or after N; torn writes;
//     dropped writes; lost flushes; hangs until the context ends), gates that
//     park matching requests until released, before the device (Gate) or
//     after it completed them (GateAfter), observable with Waiting and
//     WaitArrived, for deterministic race tests, a hook after every request,
//     and a volatile write cache: DurableImage returns what a power cut would
//     leave (only flushed data, or a random subset of unflushed sectors) and
//     PowerCut rolls the device back to it.
//   - Slow (NewSlow, ParseSlowSpec): a fixed per-request latency plus IOPS
//     and bandwidth caps, e.g. "latency=5ms,iops=200" for an HDD.
//
// Guarantees. Every device is safe for concurrent use. Requests outside
// [0, Size) fail with an error wrapping blk.ErrOutOfRange, misaligned direct
// I/O with blk.ErrMisaligned, I/O errors and injected faults wrap
// blk.ErrMedium, requests after Close fail with ErrClosed (which wraps
// blk.ErrNotReady). A request whose context has ended returns ctx.Err()
// without touching the device; File cannot interrupt a system call already
// issued.
//
// Concurrency and locks. File holds a read lock on its descriptor for the
// duration of each request, so Close waits for in-flight requests and the
// descriptor is never reused under one. Memory uses one RWMutex. Faulty
// takes rulesMu (rules, gates, hook) briefly and never while blocking; volMu
// serializes its writes, discards and flushes with the undo log and is
// taken before the wrapped device's locks; gates are passed with no lock
// held. Slow holds its pacing lock only to reserve a slot.
package backend
