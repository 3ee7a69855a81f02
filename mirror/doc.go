// Package mirror keeps, on a peer gateway, a durable copy of the write-back
// journal of volumes another gateway owns, and puts it back into a volume
// when this gateway takes the volume over.
//
// The owner's engine hands every kset's dirty data and discards to a
// Shipper (a cachecore.Replicator), which ships them, encoded (Encode), over
// the cluster's peer links; a FUA write or a flush on the owner returns
// only once every peer in sync has them durable. On a peer, the Receiver (a
// cluster.Receiver) appends each shipment to the volume's Log, a file of
// CRC-framed records, and syncs it before the link acknowledges. The
// owner's writeback tells the peers how far the backing device holds the
// data (Trim, over a peer-link call), and the Log drops what came before.
//
// Takeover: once the new owner holds the backing device (fenced: the old
// owner can no longer write it), Apply replays the Log into the volume,
// in the order it was shipped, and flushes: every write the old owner
// acknowledged as durable is then in the new owner's cache, on top of
// the backing device, which holds a prefix of the same journal in log order
// (cachecore's contract C6). Replaying records the backing device already
// holds writes the same data again; a record is never older than what the
// backing device holds for its range, because the backing device only
// receives data through the journal (a replicated volume never bypasses
// its cache and journals every discard), and a peer that was out of sync,
// which also missed the trims, is trimmed up to the dirty_tail the resync
// ships again from before it counts as in sync again (the Shipper's part
// of cluster.Node.ResyncLink, which resynchronises every volume of the
// link): its log then holds no kset whose blocks the owner overwrote and
// wrote back meanwhile. A peer that is still out of sync when the owner dies
// has such ksets; the owner recorded it as behind (BehindRecorder) before
// it wrote back any kset the peer missed, and its takeover does not Apply
// its Log.
//
// # Guarantees
//
//   - With a BehindRecorder, writeback passes no kset that a peer out of
//     sync missed before that peer is recorded as behind (the Shipper is
//     a cachecore.WritebackGate; the engine's writeback never passes a
//     kset whose wait has not returned); the record is cleared only once
//     the peer is in sync again, and until then the peer counts as out of
//     sync for the degraded policy. A takeover by a peer recorded behind
//     must not Apply its Log. Peers recorded behind by an earlier owner
//     (AssumeBehind) are cleared the same way: once in sync after a
//     resync, whose trim drops the earlier owners' shipments.
//   - Log.Append returns after the records are durable (fdatasync); a torn
//     tail (a crash during an append) is dropped at open: it was never
//     acknowledged.
//   - Decode refuses malformed payloads with ErrCorrupt and never
//     allocates more than the payload's size.
//
// # Lock order
//
// Receiver.mu (the Logs by volume) → Log.mu. Shipper.recordMu is held
// across the BehindRecorder's call (a write to Ceph) and is never taken
// by a kset's wait; Shipper.behindMu (taken under recordMu, or alone by
// the waits) and Shipper.mu are leaves.
package mirror
