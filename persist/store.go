package persist

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
)

// FormatOptions configure Format.
type FormatOptions struct {
	SegmentSize uint32 // bytes, power of two in [128 KiB, 1 GiB]; default 16 MiB
	BlockSize   uint32 // cache allocation unit, power of two in [512, 4096]; default 4096
	DataCRC     bool   // keys carry a CRC32C of their data
	Force       bool   // allow overwriting a cachelun file that holds (or may hold) dirty data
}

// Defaults applied by Format.
const (
	DefaultSegmentSize = 16 << 20
	DefaultBlockSize   = 4096
	DefaultGCPercent   = 70
)

// dualRecord tracks one dual-slot record: which slot holds the newest valid
// copy (-1: none) and its sequence number.
type dualRecord struct {
	mu     sync.Mutex
	name   string
	magic  [8]byte
	offs   [2]int64
	newest int
	seq    uint64
}

type segGen struct {
	mu          sync.Mutex
	gen         uint64
	newest      int
	seq         uint64
	quarantined bool
}

// Store is an opened cache file: the superblock, the dual-slot records and
// segment generations, and the entry points to the journal.
//
// Concurrency: all methods are safe for concurrent use. Each dual-slot
// record and each segment generation has its own mutex, held across the
// write and persist of an update so that updates of one record are ordered;
// no Store lock is held while calling into the engine.
type Store struct {
	m        Media
	sb       Superblock
	dataSize uint32
	lim      keyLimits

	info, keyTail, dirtyTail, volumes dualRecord
	// durable is the durable mark (see SetDurableMark): optional, absent
	// (both slots zero) on a fresh format.
	durable dualRecord

	vals struct {
		sync.Mutex
		info        CacheInfo
		keyTail     Tail
		dirtyTail   Tail
		volumes     []VolumeRecord
		durableMark uint64
	}

	gens []segGen

	// unfenced: the format allows unfenced ksets (FeatureUnfencedKSets
	// with FeatureDataCRC).
	unfenced bool

	heads struct {
		sync.Mutex
		nonce map[Tail]headInfo // replay end -> what a journal opened there needs
	}
}

func newStore(m Media, sb Superblock) *Store {
	s := &Store{m: m, sb: sb}
	s.dataSize = sb.SegmentSize - segHeaderSize
	s.lim = keyLimits{segCount: sb.SegmentCount, dataSize: s.dataSize, dataCRC: sb.Features&FeatureDataCRC != 0}
	s.unfenced = s.lim.dataCRC && sb.Features&FeatureUnfencedKSets != 0
	s.info = dualRecord{name: "cache info", magic: magicInfo, offs: [2]int64{offInfo0, offInfo1}, newest: -1}
	s.keyTail = dualRecord{name: "key tail", magic: magicKeyTail, offs: [2]int64{offKeyTail0, offKeyTail1}, newest: -1}
	s.dirtyTail = dualRecord{name: "dirty tail", magic: magicDirtyTail, offs: [2]int64{offDirtyTail0, offDirtyTail1}, newest: -1}
	s.volumes = dualRecord{name: "volume table", magic: magicVolumes, offs: [2]int64{offVolumes0, offVolumes1}, newest: -1}
	s.durable = dualRecord{name: "durable mark", magic: magicDurable, offs: [2]int64{offDurable0, offDurable1}, newest: -1}
	s.gens = make([]segGen, sb.SegmentCount)
	s.heads.nonce = make(map[Tail]headInfo)
	return s
}

// Media returns the media the store lives on.
func (s *Store) Media() Media { return s.m }

// Superblock returns the superblock.
func (s *Store) Superblock() Superblock { return s.sb }

// SegmentCount is the number of segments.
func (s *Store) SegmentCount() uint32 { return s.sb.SegmentCount }

// SegmentDataSize is the number of bytes usable for data or ksets in one
// segment (the segment size minus its 4 KiB header).
func (s *Store) SegmentDataSize() uint32 { return s.dataSize }

// DataCRC reports whether keys carry a CRC32C of their data.
func (s *Store) DataCRC() bool { return s.lim.dataCRC }

// UnfencedCommits reports whether a commit may write its kset without
// persisting its keys' data first (Journal.AppendUnfenced): the format
// allows it and one persist of the media makes every write before it
// durable (FlushCoversMedia), so the kset's persist also persists its data.
func (s *Store) UnfencedCommits() bool { return s.unfenced && FlushCoversMedia(s.m) }

// segBase is the absolute offset of segment seg.
func (s *Store) segBase(seg uint32) int64 {
	return SegmentsOffset + int64(seg)*int64(s.sb.SegmentSize)
}

// DataOffset is the absolute media offset of a position.
func (s *Store) DataOffset(p Pos) int64 {
	return s.segBase(p.Seg) + segHeaderSize + int64(p.Off)
}

func (s *Store) genOffs(seg uint32) [2]int64 {
	b := s.segBase(seg)
	return [2]int64{b, b + segGen1()}
}

func segGen1() int64 { return segGenSlot1Off }

// ---- format ----

// Format writes a new, empty cache onto m and returns it opened. It refuses
// (ErrHoldsDirtyData) to overwrite a cachelun cache that holds dirty data,
// or one it cannot read well enough to prove it holds none, unless
// opts.Force is set.
func Format(m Media, opts FormatOptions) (*Store, error) {
	if opts.SegmentSize == 0 {
		opts.SegmentSize = DefaultSegmentSize
	}
	if opts.BlockSize == 0 {
		opts.BlockSize = DefaultBlockSize
	}
	ss, bs := opts.SegmentSize, opts.BlockSize
	if ss < minSegmentSize || ss > maxSegmentSize || ss&(ss-1) != 0 {
		return nil, fmt.Errorf("%w: segment size %d: want a power of two in [%d, %d]", ErrInvalidArgument, ss, minSegmentSize, maxSegmentSize)
	}
	if bs < 512 || bs > 4096 || bs&(bs-1) != 0 {
		return nil, fmt.Errorf("%w: block size %d: want a power of two in [512, 4096]", ErrInvalidArgument, bs)
	}
	size := m.Size()
	count := (size - SegmentsOffset) / int64(ss)
	if size < SegmentsOffset || count < 2 {
		return nil, fmt.Errorf("%w: media of %d bytes holds %d segments of %d bytes; need at least 2 (%d bytes)", ErrInvalidArgument, size, max(count, 0), ss, SegmentsOffset+2*int64(ss))
	}
	if count > maxSegments {
		count = maxSegments
	}
	if !opts.Force {
		if err := refuseIfDirty(m); err != nil {
			return nil, err
		}
	}
	var uuid [16]byte
	if _, err := rand.Read(uuid[:]); err != nil {
		return nil, fmt.Errorf("persist: cache uuid: %w", err)
	}
	uuid[6] = uuid[6]&0x0f | 0x40 // RFC 4122 version 4
	uuid[8] = uuid[8]&0x3f | 0x80
	sb := Superblock{Version: FormatVersion, UUID: uuid, BlockSize: bs, SegmentSize: ss, SegmentCount: uint32(count), MediaSize: uint64(size)}
	if opts.DataCRC {
		sb.Features |= FeatureDataCRC | FeatureUnfencedKSets
	}
	s := newStore(m, sb)

	// 1. Invalidate the superblock first: a crash before step 4 leaves a
	//    file that is "not a cachelun file", never a half-formatted one
	//    that opens.
	zero := make([]byte, 2*4096)
	if err := m.WriteAt(zero, offSuperblock0); err != nil {
		return nil, err
	}
	if err := m.Persist(offSuperblock0, 2*4096); err != nil {
		return nil, err
	}
	// 2. Records: slot 0 valid (seq 1), slot 1 zeroed.
	meta := make([]byte, SegmentsOffset-offInfo0)
	put := func(off int64, rec []byte) { copy(meta[off-offInfo0:], rec) }
	start := Tail{Pos: Pos{}, LSN: 1}
	put(offInfo0, encodeRecord(magicInfo, uuid, 1, encodeInfoPayload(CacheInfo{GCPercent: DefaultGCPercent})))
	put(offKeyTail0, encodeRecord(magicKeyTail, uuid, 1, encodeTailPayload(start)))
	put(offDirtyTail0, encodeRecord(magicDirtyTail, uuid, 1, encodeTailPayload(start)))
	put(offVolumes0, encodeRecord(magicVolumes, uuid, 1, encodeVolumesPayload(nil)))
	if err := m.WriteAt(meta, offInfo0); err != nil {
		return nil, err
	}
	// 3. Segment headers: generation 1 in slot 0, slot 1 zeroed, and the
	//    first kset header slot of every segment zeroed (cosmetic: stale
	//    ksets of an earlier format are rejected by UUID anyway).
	genSlots := make([]byte, segGenSlot1Off+recordHeaderSize+genPayloadSize)
	noKSet := make([]byte, ksetHeaderSize)
	for seg := uint32(0); seg < uint32(count); seg++ {
		clear(genSlots)
		copy(genSlots, encodeRecord(magicSegGen, uuid, 1, encodeGenPayload(seg, 1)))
		if err := m.WriteAt(genSlots, s.segBase(seg)); err != nil {
			return nil, err
		}
		if err := m.WriteAt(noKSet, s.DataOffset(Pos{Seg: seg})); err != nil {
			return nil, err
		}
	}
	if err := m.Persist(offInfo0, s.segBase(uint32(count))-offInfo0); err != nil {
		return nil, err
	}
	// 4. The superblock, one slot at a time, each persisted: the commit point.
	for slot, off := range []int64{offSuperblock0, offSuperblock1} {
		if err := m.WriteAt(encodeSuperblock(sb, uint64(slot+1)), off); err != nil {
			return nil, err
		}
		if err := m.Persist(off, superblockSize); err != nil {
			return nil, err
		}
	}
	return Open(m)
}

// refuseIfDirty returns nil if m holds no cachelun cache, or one without
// dirty data; otherwise an error wrapping ErrHoldsDirtyData.
func refuseIfDirty(m Media) error {
	old, err := Open(m)
	switch {
	case errors.Is(err, ErrNotCachelun):
		return nil
	case errors.Is(err, ErrMediaFault):
		return err
	case err != nil:
		return fmt.Errorf("%w: existing cachelun file cannot be read (%v), it may hold dirty data; use force to overwrite", ErrHoldsDirtyData, err)
	}
	dirty, err := old.HasDirtyData()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrHoldsDirtyData, err)
	}
	if dirty > 0 {
		return fmt.Errorf("%w: %d dirty keys in the log after the dirty tail; use force to overwrite", ErrHoldsDirtyData, dirty)
	}
	return nil
}

// HasDirtyData walks the log from the dirty tail and returns the number of
// dirty keys found (keys not yet written back, including ones superseded
// by later keys).
//
// A log damaged before its known-durable point (ErrJournalDamaged) may hide
// dirty keys after the damage: that is returned as an error.
func (s *Store) HasDirtyData() (int, error) {
	r := s.ReplayVerified(s.DirtyTail())
	n := 0
	for {
		ks, ok := r.Next()
		if !ok {
			break
		}
		for _, k := range ks.Keys {
			if k.Flags == KeyDirty {
				n++
			}
		}
	}
	if stop := r.StopReason(); errors.Is(stop, ErrMediaFault) || errors.Is(stop, ErrJournalDamaged) {
		return n, stop
	}
	return n, nil
}

// ---- open ----

// Open reads and validates the cache on m. It never writes. A refusal is a
// *FormatError wrapping ErrNotCachelun, ErrNewerFormat, ErrCorrupt,
// ErrTruncated or ErrMediaFault.
func Open(m Media) (*Store, error) {
	size := m.Size()
	var slots [2][]byte
	for i, off := range []int64{offSuperblock0, offSuperblock1} {
		if size < off+superblockSize {
			continue
		}
		b := make([]byte, superblockSize)
		if err := m.ReadAt(b, off); err != nil {
			return nil, &FormatError{Record: fmt.Sprintf("superblock slot %d", i), Offset: off, Expected: "readable media", Found: err.Error(), Err: ErrMediaFault}
		}
		slots[i] = b
	}
	if slots[0] == nil {
		return nil, &FormatError{Record: "superblock slot 0", Offset: offSuperblock0, Expected: fmt.Sprintf("media of at least %d bytes", offSuperblock0+superblockSize), Found: fmt.Sprintf("%d bytes", size), Err: ErrNotCachelun}
	}
	var sbs [2]Superblock
	var seqs [2]uint64
	var errs [2]*FormatError
	for i := range slots {
		if slots[i] == nil {
			errs[i] = &FormatError{Record: fmt.Sprintf("superblock slot %d", i), Offset: offSuperblock1, Expected: "slot present", Found: fmt.Sprintf("media of %d bytes", size), Err: ErrTruncated}
			continue
		}
		sbs[i], seqs[i], errs[i] = decodeSuperblock(slots[i], []int64{offSuperblock0, offSuperblock1}[i], i)
	}
	var sb Superblock
	switch {
	case errs[0] == nil && errs[1] == nil:
		sb = sbs[0]
		if seqs[1] > seqs[0] {
			sb = sbs[1]
		}
	case errs[0] == nil:
		sb = sbs[0]
	case errs[1] == nil:
		sb = sbs[1]
	default:
		// Report the most telling of the two reasons.
		for _, want := range []error{ErrNewerFormat, ErrCorrupt, ErrTruncated} {
			for _, e := range errs {
				if errors.Is(e, want) {
					return nil, e
				}
			}
		}
		return nil, errs[0]
	}
	need := int64(SegmentsOffset) + int64(sb.SegmentCount)*int64(sb.SegmentSize)
	if size < need {
		return nil, &FormatError{Record: "media size (superblock segment geometry)", Offset: need, Expected: fmt.Sprintf("%d bytes (%d segments of %d)", need, sb.SegmentCount, sb.SegmentSize), Found: fmt.Sprintf("%d bytes", size), Err: ErrTruncated}
	}
	s := newStore(m, sb)
	var err error
	var p []byte
	if p, err = s.loadDual(&s.info, infoPayloadSize); err != nil {
		return nil, err
	}
	if s.vals.info, err = decodeInfoPayload(p); err != nil {
		return nil, s.fieldError(&s.info, err)
	}
	if p, err = s.loadDual(&s.keyTail, tailPayloadSize); err != nil {
		return nil, err
	}
	s.vals.keyTail = decodeTailPayload(p)
	if err := s.checkTail(s.vals.keyTail); err != nil {
		return nil, s.fieldError(&s.keyTail, err)
	}
	if p, err = s.loadDual(&s.dirtyTail, tailPayloadSize); err != nil {
		return nil, err
	}
	s.vals.dirtyTail = decodeTailPayload(p)
	if err := s.checkTail(s.vals.dirtyTail); err != nil {
		return nil, s.fieldError(&s.dirtyTail, err)
	}
	if p, err = s.loadDual(&s.volumes, -1); err != nil {
		return nil, err
	}
	if s.vals.volumes, err = decodeVolumesPayload(p); err != nil {
		return nil, s.fieldError(&s.volumes, err)
	}
	if s.vals.durableMark, err = s.loadDurableMark(); err != nil {
		return nil, err
	}
	// Only the two generation slots are read (not the whole header page):
	// a large cache has up to millions of segments.
	hdr := make([]byte, segGenSlot1Off+recordHeaderSize+genPayloadSize)
	for seg := range s.gens {
		g := &s.gens[seg]
		if err := m.ReadAt(hdr, s.segBase(uint32(seg))); err != nil {
			return nil, &FormatError{Record: fmt.Sprintf("segment %d generation", seg), Offset: s.segBase(uint32(seg)), Expected: "readable media", Found: err.Error(), Err: ErrMediaFault}
		}
		g.newest = -1
		for slot, rel := range []int{0, segGenSlot1Off} {
			seq, pl, prob := decodeRecord(magicSegGen, sb.UUID, hdr[rel:rel+recordHeaderSize+genPayloadSize], genPayloadSize)
			if prob != nil {
				continue
			}
			gen, gerr := decodeGenPayload(pl, uint32(seg))
			if gerr != nil {
				continue
			}
			if g.newest < 0 || seq > g.seq {
				g.newest, g.seq, g.gen = slot, seq, gen
			}
		}
		g.quarantined = g.newest < 0
	}
	return s, nil
}

func (s *Store) fieldError(r *dualRecord, err error) error {
	return &FormatError{Record: r.name + fmt.Sprintf(" slot %d payload", r.newest), Offset: r.offs[max(r.newest, 0)] + recordHeaderSize, Expected: "fields within bounds", Found: err.Error(), Err: ErrCorrupt}
}

func (s *Store) checkTail(t Tail) error {
	if t.Pos.Seg >= s.sb.SegmentCount {
		return fmt.Errorf("segment %d >= segment count %d", t.Pos.Seg, s.sb.SegmentCount)
	}
	if t.Pos.Off > s.dataSize-ksetHeaderSize || t.Pos.Off%8 != 0 {
		return fmt.Errorf("offset %d: want a multiple of 8 <= %d", t.Pos.Off, s.dataSize-ksetHeaderSize)
	}
	if t.LSN == 0 {
		return fmt.Errorf("LSN 0")
	}
	return nil
}

// loadDual reads both slots of a record, sets r.newest/r.seq and returns the
// payload of the newest valid copy. wantPayload < 0 accepts any length that
// fits the slot.
func (s *Store) loadDual(r *dualRecord, wantPayload int) ([]byte, error) {
	slotLen := int64(4096)
	if r.magic == magicVolumes {
		slotLen = volumeSlotSize
	}
	var payload []byte
	var probs [2]*recordProblem
	for slot, off := range r.offs {
		b := make([]byte, slotLen)
		if err := s.m.ReadAt(b, off); err != nil {
			return nil, &FormatError{Record: fmt.Sprintf("%s slot %d", r.name, slot), Offset: off, Expected: "readable media", Found: err.Error(), Err: ErrMediaFault}
		}
		seq, p, prob := decodeRecord(r.magic, s.sb.UUID, b, wantPayload)
		probs[slot] = prob
		if prob != nil {
			continue
		}
		if r.newest < 0 || seq > r.seq {
			r.newest, r.seq, payload = slot, seq, p
		}
	}
	if r.newest < 0 {
		return nil, &FormatError{
			Record:   r.name + " (both slots unreadable)",
			Offset:   r.offs[0],
			Expected: fmt.Sprintf("slot 0 %s; slot 1 (offset %d) %s", probs[0].expected, r.offs[1], probs[1].expected),
			Found:    fmt.Sprintf("slot 0 %s; slot 1 %s", probs[0].found, probs[1].found),
			Err:      ErrCorrupt,
		}
	}
	return payload, nil
}

// writeDual writes payload as the next version of r into the slot that does
// not hold the newest valid copy (slot 0 if neither does), persists it, and
// only then makes it the newest. r.mu must be held.
func (s *Store) writeDualLocked(r *dualRecord, payload []byte) error {
	target := 0
	if r.newest == 0 {
		target = 1
	}
	rec := encodeRecord(r.magic, s.sb.UUID, r.seq+1, payload)
	if err := s.m.WriteAt(rec, r.offs[target]); err != nil {
		return fmt.Errorf("persist: write %s slot %d: %w", r.name, target, err)
	}
	if err := s.m.Persist(r.offs[target], int64(len(rec))); err != nil {
		return fmt.Errorf("persist: persist %s slot %d: %w", r.name, target, err)
	}
	r.newest, r.seq = target, r.seq+1
	return nil
}

// ---- records ----

// KeyTail returns the key tail: where replay starts.
func (s *Store) KeyTail() Tail {
	s.vals.Lock()
	defer s.vals.Unlock()
	return s.vals.keyTail
}

// DirtyTail returns the dirty tail: keys before it have been written back.
func (s *Store) DirtyTail() Tail {
	s.vals.Lock()
	defer s.vals.Unlock()
	return s.vals.dirtyTail
}

// SetKeyTail persists a new key tail before returning.
func (s *Store) SetKeyTail(t Tail) error { return s.setTail(&s.keyTail, &s.vals.keyTail, t) }

// SetDirtyTail persists a new dirty tail before returning.
func (s *Store) SetDirtyTail(t Tail) error { return s.setTail(&s.dirtyTail, &s.vals.dirtyTail, t) }

func (s *Store) setTail(r *dualRecord, val *Tail, t Tail) error {
	if err := s.checkTail(t); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrInvalidArgument, r.name, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := s.writeDualLocked(r, encodeTailPayload(t)); err != nil {
		return err
	}
	s.vals.Lock()
	*val = t
	s.vals.Unlock()
	return nil
}

// Info returns the cache info record.
func (s *Store) Info() CacheInfo {
	s.vals.Lock()
	defer s.vals.Unlock()
	return s.vals.info
}

// SetInfo persists a new cache info record before returning.
func (s *Store) SetInfo(ci CacheInfo) error {
	if ci.GCPercent > 100 {
		return fmt.Errorf("%w: gc percent %d", ErrInvalidArgument, ci.GCPercent)
	}
	s.info.mu.Lock()
	defer s.info.mu.Unlock()
	if err := s.writeDualLocked(&s.info, encodeInfoPayload(ci)); err != nil {
		return err
	}
	s.vals.Lock()
	s.vals.info = ci
	s.vals.Unlock()
	return nil
}

// Volumes returns a copy of the volume table.
func (s *Store) Volumes() []VolumeRecord {
	s.vals.Lock()
	defer s.vals.Unlock()
	return append([]VolumeRecord(nil), s.vals.volumes...)
}

// SetVolumes persists a new volume table (at most MaxVolumes entries,
// unique ids, names of at most MaxVolumeName bytes) before returning.
func (s *Store) SetVolumes(v []VolumeRecord) error {
	if err := validateVolumes(v); err != nil {
		return err
	}
	s.volumes.mu.Lock()
	defer s.volumes.mu.Unlock()
	if err := s.writeDualLocked(&s.volumes, encodeVolumesPayload(v)); err != nil {
		return err
	}
	s.vals.Lock()
	s.vals.volumes = append([]VolumeRecord(nil), v...)
	s.vals.Unlock()
	return nil
}

// ---- durable mark ----

// loadDurableMark reads the durable mark. Both slots zero (a format that
// never wrote it) or both unreadable give 0: the mark only adds evidence
// to replay's damage detection, it is never needed to open a cache, so a
// rotten mark costs that evidence, not the cache (check reports the slot).
func (s *Store) loadDurableMark() (uint64, error) {
	r := &s.durable
	var mark uint64
	for slot, off := range r.offs {
		b := make([]byte, recordHeaderSize+durablePayloadSize)
		if err := s.m.ReadAt(b, off); err != nil {
			return 0, &FormatError{Record: fmt.Sprintf("%s slot %d", r.name, slot), Offset: off, Expected: "readable media", Found: err.Error(), Err: ErrMediaFault}
		}
		seq, p, prob := decodeRecord(r.magic, s.sb.UUID, b, durablePayloadSize)
		if prob != nil {
			continue
		}
		if r.newest < 0 || seq > r.seq {
			r.newest, r.seq = slot, seq
			mark = binary.LittleEndian.Uint64(p[0:])
		}
	}
	return mark, nil
}

// DurableMark returns the durable mark: every kset with an LSN up to it
// was durable when it was written (0: no mark).
func (s *Store) DurableMark() uint64 {
	s.vals.Lock()
	defer s.vals.Unlock()
	return s.vals.durableMark
}

// SetDurableMark records, persisted before it returns, that every kset up
// to lsn is durable. The caller must know it (a journal persist covering
// lsn has returned). A mark at or below the current one is not written:
// the mark only moves forward, except through ResetDurableMark.
func (s *Store) SetDurableMark(lsn uint64) error {
	s.durable.mu.Lock()
	defer s.durable.mu.Unlock()
	if lsn <= s.DurableMark() {
		return nil
	}
	return s.writeDurableMarkLocked(lsn)
}

// resetDurableMark sets the mark to lsn even below the current one (a
// repair that ends the log earlier).
func (s *Store) resetDurableMark(lsn uint64) error {
	s.durable.mu.Lock()
	defer s.durable.mu.Unlock()
	return s.writeDurableMarkLocked(lsn)
}

func (s *Store) writeDurableMarkLocked(lsn uint64) error {
	p := make([]byte, durablePayloadSize)
	binary.LittleEndian.PutUint64(p[0:], lsn)
	if err := s.writeDualLocked(&s.durable, p); err != nil {
		return err
	}
	s.vals.Lock()
	s.vals.durableMark = lsn
	s.vals.Unlock()
	return nil
}

// ---- generations ----

func (s *Store) segCheck(seg uint32) error {
	if seg >= s.sb.SegmentCount {
		return fmt.Errorf("%w: segment %d >= segment count %d", ErrInvalidArgument, seg, s.sb.SegmentCount)
	}
	return nil
}

// Gen returns the generation of seg, or an error wrapping ErrQuarantined
// if both of its generation slots were unreadable at open.
func (s *Store) Gen(seg uint32) (uint64, error) {
	if err := s.segCheck(seg); err != nil {
		return 0, err
	}
	g := &s.gens[seg]
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.quarantined {
		return 0, fmt.Errorf("%w: segment %d", ErrQuarantined, seg)
	}
	return g.gen, nil
}

// BumpGen increments the generation of seg and persists it (dual-slot)
// before returning the new value.
func (s *Store) BumpGen(seg uint32) (uint64, error) {
	if err := s.segCheck(seg); err != nil {
		return 0, err
	}
	g := &s.gens[seg]
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.quarantined {
		return 0, fmt.Errorf("%w: segment %d", ErrQuarantined, seg)
	}
	target := 0
	if g.newest == 0 {
		target = 1
	}
	offs := s.genOffs(seg)
	rec := encodeRecord(magicSegGen, s.sb.UUID, g.seq+1, encodeGenPayload(seg, g.gen+1))
	if err := s.m.WriteAt(rec, offs[target]); err != nil {
		return 0, fmt.Errorf("persist: write segment %d generation slot %d: %w", seg, target, err)
	}
	if err := s.m.Persist(offs[target], int64(len(rec))); err != nil {
		return 0, fmt.Errorf("persist: persist segment %d generation slot %d: %w", seg, target, err)
	}
	g.newest, g.seq, g.gen = target, g.seq+1, g.gen+1
	return g.gen, nil
}

// Quarantined lists the segments whose generation was unreadable at open.
func (s *Store) Quarantined() []uint32 {
	var q []uint32
	for i := range s.gens {
		g := &s.gens[i]
		g.mu.Lock()
		if g.quarantined {
			q = append(q, uint32(i))
		}
		g.mu.Unlock()
	}
	return q
}

func (s *Store) isQuarantined(seg uint32) bool {
	g := &s.gens[seg]
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.quarantined
}
