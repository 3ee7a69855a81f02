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
}

// Replay returns an iterator over the ksets starting at from. Nothing is
// read until Next is called.
func (s *Store) Replay(from Tail) *Replayer {
	r := &Replayer{s: s, pos: from.Pos, lsn: from.LSN, buf: make([]byte, MaxKSetSize)}
	if err := s.checkTail(from); err != nil {
		r.stop = &StopError{Pos: from.Pos, LSN: from.LSN, Detail: "start " + err.Error(), Err: ErrBounds}
		return r
	}
	r.segs = append(r.segs, from.Pos.Seg)
	return r
}

func (r *Replayer) fail(err error, format string, args ...any) (KSet, bool) {
	r.stop = &StopError{Pos: r.pos, LSN: r.lsn, Detail: fmt.Sprintf(format, args...), Err: err}
	if r.s != nil {
		r.s.noteHead(r.Head(), r.prevNonce, r.hasPrev)
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
		n := min(uint32(MaxKSetSize), dataSize-r.pos.Off)
		b := r.buf[:n]
		if err := s.m.ReadAt(b, s.DataOffset(r.pos)); err != nil {
			return r.fail(ErrMediaFault, "read: %v", err)
		}
		h, err := decodeKSetHeader(b)
		if err != nil {
			return r.fail(unwrapSentinel(err), "%v", err)
		}
		size := ksetSize(int(h.keyCount))
		if size > n {
			return r.fail(ErrBounds, "kset of %d bytes exceeds the %d bytes left in the segment", size, n)
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
		keys := make([]Key, h.keyCount)
		for i := range keys {
			if kerr := decodeKeyInto(&keys[i], b[ksetHeaderSize+i*keySize:], s.lim); kerr != nil {
				return r.fail(ErrBounds, "key %d: %v", i, kerr)
			}
		}
		ks := KSet{LSN: h.lsn, Epoch: h.epoch, Pos: r.pos, Keys: keys}
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

// noteHead remembers the session nonce of the record before a replay's end,
// so that a journal opened there continues the chain.
func (s *Store) noteHead(head Tail, nonce uint64, has bool) {
	if !has {
		return
	}
	s.heads.Lock()
	defer s.heads.Unlock()
	// Bounded: the engine walks the log repeatedly (writeback, GC) and
	// every walk ends at the then-current head. Only a recent end matters
	// (the one OpenJournal is called with after start-up replay); an
	// evicted one is recomputed by OpenJournal.
	if len(s.heads.nonce) >= maxNotedHeads {
		clear(s.heads.nonce)
	}
	s.heads.nonce[head] = nonce
}

const maxNotedHeads = 16

func (s *Store) headNonce(head Tail) (uint64, bool) {
	s.heads.Lock()
	defer s.heads.Unlock()
	n, ok := s.heads.nonce[head]
	return n, ok
}
