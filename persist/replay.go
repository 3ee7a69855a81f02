package persist

import (
	"fmt"
)

// Replayer iterates the kset log from a tail, following LAST records, and
// stops exactly at the end of the valid log. Not safe for concurrent use.
type Replayer struct {
	s         *Store
	pos       Pos
	lsn       uint64 // LSN expected at pos
	prevNonce uint64 // session nonce of the previous record
	hasPrev   bool
	stop      error
	segs      []uint32
	buf       []byte
	// confirmed: every kset with a lower LSN is known durable with its
	// data (the largest LSN-Unconfirmed of the ksets walked, at least the
	// start's LSN).
	confirmed uint64
	// tornDetail, when set, says why the log ends at LSN torn: the first
	// kset of the unconfirmed tail whose data failed its CRC
	// (ReplayVerified).
	torn       uint64
	tornDetail string
	// classify: where the walk stops, decide whether the record there is
	// the end of the log or damage to a durable one (classifyStop).
	classify bool
}

// Replay returns an iterator over the ksets starting at from. Nothing is
// read until Next is called.
func (s *Store) Replay(from Tail) *Replayer {
	r := &Replayer{s: s, pos: from.Pos, lsn: from.LSN, buf: make([]byte, MaxKSetSize), confirmed: from.LSN}
	if err := s.checkTail(from); err != nil {
		r.stop = &StopError{Pos: from.Pos, LSN: from.LSN, Detail: "start " + err.Error(), Err: ErrBounds}
		return r
	}
	r.segs = append(r.segs, from.Pos.Seg)
	return r
}

func (r *Replayer) fail(err error, format string, args ...any) (KSet, bool) {
	st := &StopError{Pos: r.pos, LSN: r.lsn, Detail: fmt.Sprintf(format, args...), Err: err}
	r.stop = st
	if r.classify && r.s != nil {
		if r.stop = r.s.classifyStop(r, st); errorsIs(r.stop, ErrJournalDamaged) {
			return KSet{}, false
		}
	}
	if r.s != nil {
		r.s.noteHead(r.Head(), headInfo{nonce: r.prevNonce, confirmed: r.confirmed})
	}
	return KSet{}, false
}

// Next returns the next kset, or false at the end of the valid log (see
// StopReason). LAST records are followed, not returned.
func (r *Replayer) Next() (KSet, bool) {
	if r.stop != nil {
		return KSet{}, false
	}
	s := r.s
	dataSize := s.dataSize
	for lasts := 0; ; lasts++ {
		if lasts > int(s.sb.SegmentCount) {
			return r.fail(ErrBounds, "more LAST records in a row than segments")
		}
		if r.pos.Off > dataSize-ksetHeaderSize {
			return r.fail(ErrBounds, "position beyond the last kset slot of the segment (%d)", dataSize-ksetHeaderSize)
		}
		// The header first, then only the keys it counts: GC walks the
		// log a kset at a time, and most ksets are far smaller than the
		// largest one.
		n := min(uint32(MaxKSetSize), dataSize-r.pos.Off)
		off := s.DataOffset(r.pos)
		if err := s.m.ReadAt(r.buf[:ksetHeaderSize], off); err != nil {
			return r.fail(ErrMediaFault, "read: %v", err)
		}
		h, err := decodeKSetHeader(r.buf[:ksetHeaderSize])
		if err != nil {
			return r.fail(unwrapSentinel(err), "%v", err)
		}
		size := ksetSize(int(h.keyCount))
		if size > n {
			return r.fail(ErrBounds, "kset of %d bytes exceeds the %d bytes left in the segment", size, n)
		}
		b := r.buf[:size]
		if err := s.m.ReadAt(b[ksetHeaderSize:], off+ksetHeaderSize); err != nil {
			return r.fail(ErrMediaFault, "read: %v", err)
		}
		if err := verifyKSetCRC(b[:size]); err != nil {
			return r.fail(ErrBadChecksum, "%v", err)
		}
		if h.uuid != s.sb.UUID {
			return r.fail(ErrForeignUUID, "kset uuid %x, cache uuid %x", h.uuid, s.sb.UUID)
		}
		if h.lsn != r.lsn {
			return r.fail(ErrLSNGap, "kset LSN %d", h.lsn)
		}
		if r.hasPrev && h.prevNonce != r.prevNonce {
			return r.fail(ErrChainBreak, "kset follows session %#x, previous record was written by session %#x", h.prevNonce, r.prevNonce)
		}
		if h.flags&ksetFlagLast != 0 {
			if h.nextSeg >= s.sb.SegmentCount || h.nextSeg == r.pos.Seg {
				return r.fail(ErrBounds, "LAST record names segment %d (segment count %d, current %d)", h.nextSeg, s.sb.SegmentCount, r.pos.Seg)
			}
			if s.isQuarantined(h.nextSeg) {
				return r.fail(ErrBounds, "LAST record names quarantined segment %d", h.nextSeg)
			}
			r.prevNonce, r.hasPrev = h.nonce, true
			r.pos = Pos{Seg: h.nextSeg}
			r.segs = append(r.segs, h.nextSeg)
			continue
		}
		if h.flags&ksetFlagUnfenced != 0 && !s.unfenced {
			return r.fail(ErrBounds, "unfenced kset on a store without the unfenced-ksets feature")
		}
		if r.tornDetail != "" && h.lsn == r.torn {
			return r.fail(ErrTornData, "%s", r.tornDetail)
		}
		keys := make([]Key, h.keyCount)
		for i := range keys {
			if kerr := decodeKeyInto(&keys[i], b[ksetHeaderSize+i*keySize:], s.lim); kerr != nil {
				return r.fail(ErrBounds, "key %d: %v", i, kerr)
			}
		}
		ks := KSet{LSN: h.lsn, Epoch: h.epoch, Pos: r.pos, Keys: keys, Unfenced: h.flags&ksetFlagUnfenced != 0, Unconfirmed: h.unconfirmed}
		r.confirmed = max(r.confirmed, h.lsn-min(uint64(h.unconfirmed), h.lsn))
		r.pos.Off += size
		r.lsn++
		r.prevNonce, r.hasPrev = h.nonce, true
		ks.Next = Tail{Pos: r.pos, LSN: r.lsn}
		return ks, true
	}
}

func unwrapSentinel(err error) error {
	for _, s := range []error{ErrEndOfLog, ErrBounds, ErrBadChecksum} {
		if errorsIs(err, s) {
			return s
		}
	}
	return ErrBounds
}

// StopReason says why Next returned false: a *StopError wrapping
// ErrEndOfLog (no kset magic), ErrBadChecksum, ErrForeignUUID, ErrLSNGap,
// ErrChainBreak, ErrBounds or ErrMediaFault. Nil while iterating.
func (r *Replayer) StopReason() error { return r.stop }

// Head is where the next kset would be written: the position after the last
// valid kset and its LSN.
func (r *Replayer) Head() Tail { return Tail{Pos: r.pos, LSN: r.lsn} }

// LogSegments lists the segments the walked log occupies, in log order.
func (r *Replayer) LogSegments() []uint32 { return append([]uint32(nil), r.segs...) }

// headInfo is what a journal opened at a replay's end needs to know.
type headInfo struct {
	nonce     uint64 // session nonce of the record before the end (0: none)
	confirmed uint64 // Replayer.confirmed at the end
}

// noteHead remembers what a journal opened at a replay's end needs: the
// session nonce of the record before it, so that the journal continues the
// chain, and how far durability is confirmed.
func (s *Store) noteHead(head Tail, hi headInfo) {
	s.heads.Lock()
	defer s.heads.Unlock()
	// Bounded: the engine walks the log repeatedly (writeback, GC) and
	// every walk ends at the then-current head. Only a recent end matters
	// (the one OpenJournal is called with after start-up replay); an
	// evicted one is recomputed by OpenJournal.
	if len(s.heads.nonce) >= maxNotedHeads {
		clear(s.heads.nonce)
	}
	s.heads.nonce[head] = hi
}

const maxNotedHeads = 16

func (s *Store) headInfo(head Tail) (headInfo, bool) {
	s.heads.Lock()
	defer s.heads.Unlock()
	hi, ok := s.heads.nonce[head]
	return hi, ok
}

// ReplayVerified is Replay for the walk that rebuilds the engine's state
// (and for check): on a store with unfenced ksets it first walks the log to
// its end, and then ends the log at the first unfenced kset of the
// unconfirmed tail one of whose current keys fails its data CRC (StopReason
// wraps ErrTornData). Such a kset was written, but the crash came before
// the persist that would have made its data durable, so it was never
// acknowledged, and nothing after it was either: a persist that made a
// later kset durable would have made this data durable too. Replaying it
// would put data that never reached the media in place of older data. A
// CRC failure before the unconfirmed tail is media corruption, left to the
// caller.
func (s *Store) ReplayVerified(from Tail) *Replayer {
	r := s.Replay(from)
	r.classify = true
	if r.stop != nil || !s.unfenced {
		return r
	}
	lsn, detail, err := s.findTornKSet(from)
	if err != nil {
		r.stop = &StopError{Pos: from.Pos, LSN: from.LSN, Detail: "verifying the unconfirmed tail: " + err.Error(), Err: ErrMediaFault}
		return r
	}
	r.torn, r.tornDetail = lsn, detail
	return r
}

// findTornKSet walks the log from from to its end and returns the LSN of
// the first unfenced kset of its unconfirmed tail with a key whose data
// fails its CRC, and why; detail is empty if there is none.
func (s *Store) findTornKSet(from Tail) (lsn uint64, detail string, err error) {
	r := s.Replay(from)
	var tail []KSet // unfenced ksets at or after r.confirmed, in log order
	for {
		ks, ok := r.Next()
		if !ok {
			break
		}
		if ks.Unfenced {
			tail = append(tail, ks)
		}
		drop := 0
		for drop < len(tail) && tail[drop].LSN < r.confirmed {
			drop++
		}
		tail = tail[drop:]
	}
	if stop := r.StopReason(); errorsIs(stop, ErrMediaFault) {
		return 0, "", stop
	}
	for _, ks := range tail {
		for i, k := range ks.Keys {
			if k.Flags == KeyTombstone {
				continue
			}
			gen, gerr := s.Gen(k.Pos.Seg)
			if gerr != nil || gen != k.Gen {
				// Quarantined, or the segment was reused after the
				// kset was written: its data is not this key's to check.
				continue
			}
			got, err := s.KeyDataCRC(&k)
			if err != nil {
				return 0, "", err
			}
			if got != k.DataCRC {
				return ks.LSN, fmt.Sprintf("kset LSN %d (unfenced, unconfirmed: the log's last %d ksets were not known durable) key %d: data at segment %d offset %d length %d has crc32c 0x%08x, key says 0x%08x: its data did not reach the media before the crash, the log ends before it",
					ks.LSN, r.lsn-r.confirmed, i, k.Pos.Seg, k.Pos.Off, k.Length, got, k.DataCRC), nil
			}
		}
	}
	return 0, "", nil
}
