package persist

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
)

// DamageError says that replay stopped at a record that had been durable:
// the media was damaged after the record was written, so the log does not
// end there and the keys of the damaged record (and possibly more) are
// lost. It wraps ErrJournalDamaged.
type DamageError struct {
	// Stop is why the record was rejected: where (segment and offset),
	// the LSN that was expected there, and what was found.
	Stop *StopError
	// Offset is the damaged record's absolute offset on the media.
	Offset int64
	// Evidence says how the record is known to have been durable.
	Evidence string
	// Resume is where the valid log continues after the damage (a record
	// with the expected chain), found by scanning; LSN 0 if none was.
	Resume Tail
	// ResumeSize is the size of the damaged region: from Stop.Pos to
	// Resume, when Resume is in the same segment (0 otherwise).
	ResumeSize uint32
	// ResumePrevNonce is the session nonce Resume's record names as its
	// predecessor's, which a replacement record must carry.
	ResumePrevNonce uint64
	// PrevNonce is the session nonce of the record before the damage
	// (HasPrev false at the start of the walk).
	PrevNonce uint64
	HasPrev   bool
	// Keys are the keys read from the damaged record, not verified by its
	// checksum (nil when its header could not be decoded): what it
	// probably held. KeysDecoded reports whether all of them decoded.
	Keys        []Key
	KeysDecoded bool
	// LastRecord reports that the damaged record is (probably) a LAST
	// record: Resume is then at offset 0 of another segment.
	LastRecord bool
}

func (e *DamageError) Error() string {
	return fmt.Sprintf("%v: record at segment %d offset %d (media offset %d), expected LSN %d: %s; it was durable: %s",
		ErrJournalDamaged, e.Stop.Pos.Seg, e.Stop.Pos.Off, e.Offset, e.Stop.LSN, e.Stop.Detail, e.Evidence)
}

func (e *DamageError) Unwrap() error { return ErrJournalDamaged }

// classifyStop decides whether the end of a walk at st is the end of the
// log (a torn or never-written record: st is returned) or damage to a
// record that had been durable (a *DamageError). The rule (doc.go,
// "Damage"): a record at LSN L was durable if the durable mark is at least
// L, or if a valid kset further on the media, in the same segment after
// the stop or at the start of a segment the walk did not reach, with an
// LSN above L (at least L for a segment start), begins a walk on which
// some kset says every kset below an LSN above L was durable. Stale ksets
// of a session cut at a torn tail cannot say that: they were written
// before the cut point was durable.
func (s *Store) classifyStop(r *Replayer, st *StopError) error {
	if errors.Is(st.Err, ErrMediaFault) || errors.Is(st.Err, ErrJournalDamaged) {
		return st
	}
	L := st.LSN
	d := &DamageError{Stop: st, Offset: s.DataOffset(st.Pos), PrevNonce: r.prevNonce, HasPrev: r.hasPrev}
	if mark := s.DurableMark(); mark >= L {
		d.Evidence = fmt.Sprintf("the durable mark says every kset up to LSN %d was durable", mark)
	}
	found, err := s.findDurableSuccessor(st.Pos, L, r.segs, d)
	if err != nil {
		return &StopError{Pos: st.Pos, LSN: st.LSN, Detail: "looking for the log after the stop: " + err.Error(), Err: ErrMediaFault}
	}
	if !found && d.Evidence == "" {
		return st
	}
	d.Keys, d.KeysDecoded = s.salvageKeys(st.Pos)
	return d
}

// findDurableSuccessor looks for a valid record after the stop at (pos,
// L) whose walk proves L durable. It fills d.Evidence (if empty) and
// d.Resume, and reports whether it found one.
func (s *Store) findDurableSuccessor(pos Pos, L uint64, walked []uint32, d *DamageError) (bool, error) {
	// The rest of the stop's segment, in chunks that overlap by a kset.
	const chunk = 1 << 20
	buf := make([]byte, chunk+MaxKSetSize)
	for base := pos.Off + 8; base+ksetHeaderSize <= s.dataSize; base += chunk {
		n := min(uint32(len(buf)), s.dataSize-base)
		b := buf[:n]
		if err := s.m.ReadAt(b, s.DataOffset(Pos{Seg: pos.Seg, Off: base})); err != nil {
			return false, err
		}
		for rel := uint32(0); rel < min(n, chunk) && rel+ksetHeaderSize <= n; rel += 8 {
			if [8]byte(b[rel:rel+8]) != magicKSet {
				continue
			}
			at := Pos{Seg: pos.Seg, Off: base + rel}
			h, ok := s.validRecordAt(b[rel:])
			if !ok || h.lsn <= L {
				continue
			}
			if proved, err := s.proveFrom(Tail{Pos: at, LSN: h.lsn}, L, d); err != nil || !proved {
				if err != nil {
					return false, err
				}
				continue
			}
			if h.lsn == L+1 {
				d.Resume, d.ResumeSize, d.ResumePrevNonce = Tail{Pos: at, LSN: h.lsn}, at.Off-pos.Off, h.prevNonce
			}
			return true, nil
		}
	}
	// The start of every segment the walk did not reach: the log may go
	// on there after a damaged LAST record.
	hdr := make([]byte, MaxKSetSize)
	for seg := range s.sb.SegmentCount {
		if seg == pos.Seg || slices.Contains(walked, seg) || s.isQuarantined(seg) {
			continue
		}
		b := hdr[:min(uint32(len(hdr)), s.dataSize)]
		if err := s.m.ReadAt(b[:ksetHeaderSize], s.DataOffset(Pos{Seg: seg})); err != nil {
			return false, err
		}
		if [8]byte(b[0:8]) != magicKSet {
			continue
		}
		if err := s.m.ReadAt(b, s.DataOffset(Pos{Seg: seg})); err != nil {
			return false, err
		}
		h, ok := s.validRecordAt(b)
		if !ok || h.lsn < L || h.flags&ksetFlagLast != 0 {
			continue
		}
		if proved, err := s.proveFrom(Tail{Pos: Pos{Seg: seg}, LSN: h.lsn}, L, d); err != nil || !proved {
			if err != nil {
				return false, err
			}
			continue
		}
		if h.lsn == L {
			d.Resume, d.ResumePrevNonce, d.LastRecord = Tail{Pos: Pos{Seg: seg}, LSN: h.lsn}, h.prevNonce, true
		}
		return true, nil
	}
	return false, nil
}

// proveFrom walks the log from the candidate record at t; when a kset on
// it proves L durable it keeps the first evidence found in d and reports
// true.
func (s *Store) proveFrom(t Tail, L uint64, d *DamageError) (bool, error) {
	ev, err := s.walkEvidence(t, L)
	if err != nil || ev == "" {
		return false, err
	}
	if d.Evidence == "" {
		d.Evidence = ev
	}
	return true, nil
}

// validRecordAt decodes a kset or LAST header at b[0:] and checks its
// checksum and cache UUID.
func (s *Store) validRecordAt(b []byte) (ksetHeader, bool) {
	h, err := decodeKSetHeader(b)
	if err != nil {
		return h, false
	}
	size := ksetSize(int(h.keyCount))
	if uint64(size) > uint64(len(b)) || verifyKSetCRC(b[:size]) != nil || h.uuid != s.sb.UUID {
		return h, false
	}
	return h, true
}

// walkEvidence walks the log from t and returns, if some kset on it says
// that every kset below an LSN above L was durable, a description of that
// kset; "" if none does.
func (s *Store) walkEvidence(t Tail, L uint64) (string, error) {
	r := s.Replay(t)
	for {
		ks, ok := r.Next()
		if !ok {
			break
		}
		if confirmed := ks.LSN - min(uint64(ks.Unconfirmed), ks.LSN); confirmed > L {
			return fmt.Sprintf("kset LSN %d at segment %d offset %d was written when every kset below LSN %d was durable", ks.LSN, ks.Pos.Seg, ks.Pos.Off, confirmed), nil
		}
	}
	if errors.Is(r.StopReason(), ErrMediaFault) {
		return "", r.StopReason()
	}
	return "", nil
}

// salvageKeys decodes what it can of the keys of the damaged record at
// pos, without its checksum: what the record probably held. all reports
// whether the header gave a plausible key count and every key decoded
// within bounds.
func (s *Store) salvageKeys(pos Pos) (keys []Key, all bool) {
	n := min(uint32(MaxKSetSize), s.dataSize-pos.Off)
	b := make([]byte, n)
	if s.m.ReadAt(b, s.DataOffset(pos)) != nil || n < ksetHeaderSize {
		return nil, false
	}
	count := binary.LittleEndian.Uint32(b[64:])
	if count == 0 || count > MaxKSetKeys || ksetSize(int(count)) > n {
		return nil, false
	}
	all = true
	for i := range int(count) {
		k, err := decodeKey(b[ksetHeaderSize+i*keySize:], s.lim)
		if err != nil {
			all = false
			continue
		}
		keys = append(keys, k)
	}
	return keys, all
}

// DamageReport describes, for an operator, what a damaged log loses: one
// line for the damage and one per range that may read older data.
func (s *Store) DamageReport(d *DamageError) []string {
	names := map[uint32]string{}
	for _, v := range s.Volumes() {
		names[v.ID] = v.Name
	}
	name := func(id uint32) string {
		if n, ok := names[id]; ok {
			return n
		}
		return fmt.Sprintf("id %d (not in the volume table)", id)
	}
	lines := []string{d.Error()}
	decoded := d.Keys != nil
	for _, k := range d.Keys {
		if _, ok := names[k.Volume]; !ok {
			decoded = false // a damaged volume id: the keys cannot be trusted
		}
	}
	if !decoded {
		var all []string
		for _, v := range s.Volumes() {
			all = append(all, v.Name)
		}
		lines = append(lines, fmt.Sprintf("the damaged record's keys cannot be read: any volume of this cache (%v) may read older data where it was written in LSN %d", all, d.Stop.LSN))
	} else {
		if !d.KeysDecoded {
			lines = append(lines, "some of the damaged record's keys cannot be read: volumes not listed below may also read older data")
		}
		for _, k := range d.Keys {
			switch k.Flags {
			case KeyDirty:
				lines = append(lines, fmt.Sprintf("volume %s: bytes [%d, %d) may read older data (a write recorded in the damaged kset, unverified)", name(k.Volume), k.Offset, k.Offset+uint64(k.Length)))
			case KeyTombstone:
				lines = append(lines, fmt.Sprintf("volume %s: bytes [%d, %d) may read older cached data (an invalidation recorded in the damaged kset, unverified)", name(k.Volume), k.Offset, k.Offset+uint64(k.Length)))
			}
		}
	}
	if d.Resume.LSN != 0 {
		lines = append(lines, fmt.Sprintf("the log continues intact at segment %d offset %d (LSN %d): `cachelun check --repair` replaces the damaged record and keeps everything after it", d.Resume.Pos.Seg, d.Resume.Pos.Off, d.Resume.LSN))
	} else {
		lines = append(lines, fmt.Sprintf("the log after LSN %d cannot be reached: `cachelun check --repair` ends the log before the damage, which loses every write recorded after it", d.Stop.LSN-1))
	}
	return lines
}

// Repair makes a damaged log replayable again, with the operator's
// consent (cachelun check --repair). Where the valid log continues right
// after the damaged record (d.Resume), the record is replaced by one that
// continues the session chain: a LAST record naming Resume's segment, or a
// kset of the same size whose keys are tombstones for the ranges the
// damaged kset probably wrote (so those ranges read the backing device,
// never data the kset had replaced). Otherwise the log is ended before the
// damage: the record's header is zeroed and the durable mark lowered so
// that the new end is not taken for damage again. Either way the change is
// persisted before Repair returns; truncated reports the second case.
// EndLogAt makes the log end at pos, durably: the kset header there is
// zeroed. Open calls it for a torn tail (ErrTornData) it drops: the walk
// that found the kset torn skips keys whose segment changed generation
// since, so once GC has moved on the segments a torn kset's keys point
// into, a later walk would take it for a valid kset, and replaying its
// keys (stale by generation, which still override what the log held
// before them) would hide older data of their ranges.
func (s *Store) EndLogAt(pos Pos) error {
	off := s.DataOffset(pos)
	img := make([]byte, ksetHeaderSize)
	if err := s.m.WriteAt(img, off); err != nil {
		return err
	}
	return s.m.Persist(off, int64(len(img)))
}

func (s *Store) Repair(d *DamageError) (truncated bool, err error) {
	at := d.Stop.Pos
	off := s.DataOffset(at)
	var img []byte
	switch {
	case d.Resume.LSN != 0 && d.LastRecord:
		img = make([]byte, ksetHeaderSize)
		encodeKSet(img, &ksetHeader{flags: ksetFlagLast, uuid: s.sb.UUID, lsn: d.Stop.LSN, nonce: d.ResumePrevNonce, prevNonce: d.PrevNonce, nextSeg: d.Resume.Pos.Seg}, nil)
	case d.Resume.LSN != 0 && d.ResumeSize > ksetHeaderSize && (d.ResumeSize-ksetHeaderSize)%keySize == 0 &&
		(d.ResumeSize-ksetHeaderSize)/keySize <= MaxKSetKeys:
		n := int((d.ResumeSize - ksetHeaderSize) / keySize)
		keys, ok := s.replacementKeys(d, n)
		if !ok {
			break
		}
		next := make([]byte, ksetHeaderSize)
		if err := s.m.ReadAt(next, s.DataOffset(d.Resume.Pos)); err != nil {
			return false, err
		}
		epoch := binary.LittleEndian.Uint64(next[40:])
		img = make([]byte, d.ResumeSize)
		encodeKSet(img, &ksetHeader{uuid: s.sb.UUID, lsn: d.Stop.LSN, epoch: epoch, nonce: d.ResumePrevNonce, prevNonce: d.PrevNonce}, keys)
	}
	if img == nil {
		img = make([]byte, ksetHeaderSize)
		truncated = true
	}
	if err := s.m.WriteAt(img, off); err != nil {
		return truncated, err
	}
	if err := s.m.Persist(off, int64(len(img))); err != nil {
		return truncated, err
	}
	if truncated && s.DurableMark() >= d.Stop.LSN {
		if err := s.resetDurableMark(d.Stop.LSN - 1); err != nil {
			return truncated, err
		}
	}
	return truncated, nil
}

// replacementKeys returns n tombstones: one per dirty or tombstone key
// read from the damaged kset (repeated to fill n), or, when none could be
// read, tombstones of a volume id the volume table does not use (which
// replay ignores).
func (s *Store) replacementKeys(d *DamageError, n int) ([]Key, bool) {
	var ts []Key
	for _, k := range d.Keys {
		if k.Flags == KeyDirty || k.Flags == KeyTombstone {
			ts = append(ts, Key{Offset: k.Offset, Volume: k.Volume, Length: k.Length, Flags: KeyTombstone})
		}
	}
	if len(ts) == 0 {
		used := map[uint32]bool{}
		for _, v := range s.Volumes() {
			used[v.ID] = true
		}
		for id := range uint32(MaxVolumes) {
			if !used[id] {
				ts = []Key{{Offset: 0, Volume: id, Length: s.sb.BlockSize, Flags: KeyTombstone}}
				break
			}
		}
		if len(ts) == 0 {
			return nil, false
		}
	}
	keys := make([]Key, n)
	for i := range keys {
		keys[i] = ts[i%len(ts)]
	}
	for i := range keys {
		if validateKey(&keys[i], s.lim) != nil {
			return nil, false
		}
	}
	return keys, true
}

// ErrRepairDeclined is RepairJournal stopping because its confirm said no;
// the damage it was shown is left as it was.
var ErrRepairDeclined = errors.New("persist: repair declined")

// RepairJournal is `cachelun check --repair`: it replays the journal from
// the key tail, verified, and for each damaged record it finds asks
// confirm (which is shown the damage, see DamageReport) and replaces it
// (Repair), then reports it to repaired, until the log replays to its end
// or max repairs were made. It returns the number of repairs; a confirm
// that says no ends it with ErrRepairDeclined, having changed nothing
// since the last repair reported. A media fault during the replay is
// returned as is.
func (s *Store) RepairJournal(max int, confirm func(d *DamageError) bool, repaired func(d *DamageError, truncated bool)) (int, error) {
	n := 0
	for ; n < max; n++ {
		r := s.ReplayVerified(s.KeyTail())
		for _, ok := r.Next(); ok; _, ok = r.Next() {
		}
		var d *DamageError
		if !errors.As(r.StopReason(), &d) {
			if errors.Is(r.StopReason(), ErrMediaFault) {
				return n, r.StopReason()
			}
			break
		}
		if !confirm(d) {
			return n, ErrRepairDeclined
		}
		truncated, err := s.Repair(d)
		if err != nil {
			return n, err
		}
		repaired(d, truncated)
	}
	return n, nil
}
