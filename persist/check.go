package persist

import (
	"errors"
	"fmt"
	"sort"
)

// Report is what Inspect returns: a read-only summary of a cache.
type Report struct {
	MediaKind MediaKind `json:"media_kind"`
	MediaSize int64     `json:"media_size"`
	// MediaFlush is the DAX persist instruction (FlushInstruction) when
	// MediaKind is KindDAX; the caller that knows the runtime kind sets it.
	MediaFlush    string         `json:"media_flush,omitempty"`
	Superblock    SuperblockJSON `json:"superblock"`
	Info          CacheInfo      `json:"info"`
	KeyTail       Tail           `json:"key_tail"`
	DirtyTail     Tail           `json:"dirty_tail"`
	Volumes       []VolumeRecord `json:"volumes"`
	Segments      SegmentUsage   `json:"segments"`
	Journal       JournalSummary `json:"journal"`
	SlotWarnings  []string       `json:"slot_warnings,omitempty"`
	SegmentDataSz uint32         `json:"segment_data_size"`
}

// SuperblockJSON is the superblock with the UUID as text.
type SuperblockJSON struct {
	Version      uint32 `json:"version"`
	Features     uint32 `json:"features"`
	DataCRC      bool   `json:"data_crc"`
	UUID         string `json:"uuid"`
	BlockSize    uint32 `json:"block_size"`
	SegmentSize  uint32 `json:"segment_size"`
	SegmentCount uint32 `json:"segment_count"`
}

// SegmentUsage summarises segments.
type SegmentUsage struct {
	Total       uint32   `json:"total"`
	Log         []uint32 `json:"log"`         // segments the walked journal occupies, in log order
	Data        int      `json:"data"`        // distinct segments referenced by current-generation keys
	Quarantined []uint32 `json:"quarantined"` // generation unreadable
	MaxGen      uint64   `json:"max_generation"`
}

// JournalSummary summarises a walk of the log from the key tail.
type JournalSummary struct {
	KSets            int    `json:"ksets"`
	Keys             int    `json:"keys"`
	Dirty            int    `json:"dirty_keys"`
	Clean            int    `json:"clean_keys"`
	Tombstones       int    `json:"tombstones"`
	Stale            int    `json:"stale_keys"` // generation older than the segment's
	FirstLSN         uint64 `json:"first_lsn"`
	LastLSN          uint64 `json:"last_lsn"`
	FirstEpoch       uint64 `json:"first_epoch"`
	LastEpoch        uint64 `json:"last_epoch"`
	Head             Tail   `json:"head"`
	StopReason       string `json:"stop_reason"`
	DirtyTailReached bool   `json:"dirty_tail_reached"`
	// Damage, when the walk stopped at a record that had been durable
	// (ErrJournalDamaged): the damage and the ranges that may read older
	// data (Store.DamageReport).
	Damage []string `json:"damage,omitempty"`
	// DurableMark: every kset up to this LSN was durable when it was set.
	DurableMark uint64 `json:"durable_mark"`
}

// Inspect walks the cache read-only and summarises it.
func Inspect(s *Store) (Report, error) {
	rep, _, err := walk(s, false)
	return rep, err
}

// Check verifies every record checksum and bound, walks the journal from the
// key tail, and checks each key against the segment generations (and its
// data CRC when the cache has them). It returns the problems found; an error
// means the media could not be read.
func Check(s *Store) ([]string, error) {
	_, problems, err := walk(s, true)
	return problems, err
}

func walk(s *Store, verifyData bool) (Report, []string, error) {
	var problems []string
	sb := s.sb
	rep := Report{
		MediaKind: s.m.Kind(),
		MediaSize: s.m.Size(),
		Superblock: SuperblockJSON{Version: sb.Version, Features: sb.Features, DataCRC: s.lim.dataCRC, UUID: formatUUID(sb.UUID),
			BlockSize: sb.BlockSize, SegmentSize: sb.SegmentSize, SegmentCount: sb.SegmentCount},
		Info:          s.Info(),
		KeyTail:       s.KeyTail(),
		DirtyTail:     s.DirtyTail(),
		Volumes:       s.Volumes(),
		SegmentDataSz: s.dataSize,
	}
	// Slot-level state: a single bad slot is what a torn update leaves and
	// is harmless for records that are updated in place; the superblock is
	// never updated after format, so a bad superblock slot is a problem.
	for i, off := range []int64{offSuperblock0, offSuperblock1} {
		b := make([]byte, superblockSize)
		if err := s.m.ReadAt(b, off); err != nil {
			return rep, nil, err
		}
		if _, _, ferr := decodeSuperblock(b, off, i); ferr != nil {
			problems = append(problems, ferr.Error())
		}
	}
	for _, r := range []*dualRecord{&s.info, &s.keyTail, &s.dirtyTail, &s.volumes, &s.durable} {
		slotLen := 4096
		if r.magic == magicVolumes {
			slotLen = volumeSlotSize
		}
		for slot, off := range r.offs {
			b := make([]byte, slotLen)
			if err := s.m.ReadAt(b, off); err != nil {
				return rep, nil, err
			}
			if _, _, prob := decodeRecord(r.magic, sb.UUID, b, -1); prob != nil && !allZero(b) {
				rep.SlotWarnings = append(rep.SlotWarnings, fmt.Sprintf("%s slot %d at offset %d: expected %s, found %s (a torn or never-written slot; the other slot is used)", r.name, slot, off, prob.expected, prob.found))
			}
		}
	}
	gens := make([]uint64, sb.SegmentCount)
	for seg := range gens {
		g, err := s.Gen(uint32(seg))
		if errors.Is(err, ErrQuarantined) {
			rep.Segments.Quarantined = append(rep.Segments.Quarantined, uint32(seg))
			problems = append(problems, fmt.Sprintf("segment %d quarantined: both generation slots (offsets %d, %d) unreadable", seg, s.genOffs(uint32(seg))[0], s.genOffs(uint32(seg))[1]))
			continue
		}
		gens[seg] = g
		rep.Segments.MaxGen = max(rep.Segments.MaxGen, g)
	}
	rep.Segments.Total = sb.SegmentCount

	dt := rep.DirtyTail
	js := &rep.Journal
	js.DirtyTailReached = dt == rep.KeyTail
	r := s.ReplayVerified(rep.KeyTail)
	dataSegs := map[uint32]bool{}
	type keyRef struct {
		lsn uint64
		i   int
		k   Key
	}
	var live []keyRef
	for {
		ks, ok := r.Next()
		if !ok {
			break
		}
		if js.KSets == 0 {
			js.FirstLSN, js.FirstEpoch = ks.LSN, ks.Epoch
		}
		js.KSets++
		js.LastLSN, js.LastEpoch = ks.LSN, ks.Epoch
		if ks.Next == dt || (ks.Pos == dt.Pos && ks.LSN == dt.LSN) {
			js.DirtyTailReached = true
		}
		for i, k := range ks.Keys {
			js.Keys++
			switch k.Flags {
			case KeyDirty:
				js.Dirty++
			case KeyClean:
				js.Clean++
			case KeyTombstone:
				js.Tombstones++
				continue
			}
			seg := k.Pos.Seg
			switch {
			case s.isQuarantined(seg):
				problems = append(problems, fmt.Sprintf("kset LSN %d key %d points into quarantined segment %d", ks.LSN, i, seg))
			case k.Gen > gens[seg]:
				problems = append(problems, fmt.Sprintf("kset LSN %d key %d: generation %d is newer than segment %d's generation %d", ks.LSN, i, k.Gen, seg, gens[seg]))
			case k.Gen < gens[seg]:
				js.Stale++
			default:
				dataSegs[seg] = true
				live = append(live, keyRef{ks.LSN, i, k})
			}
		}
	}
	stop := r.StopReason()
	js.Head = r.Head()
	js.StopReason = stop.Error()
	rep.Segments.Log = r.LogSegments()
	rep.Segments.Data = len(dataSegs)
	if errors.Is(stop, ErrMediaFault) {
		return rep, problems, stop
	}
	js.DurableMark = s.DurableMark()
	var damage *DamageError
	if errors.As(stop, &damage) {
		js.Damage = s.DamageReport(damage)
		problems = append(problems, js.Damage...)
		// The dirty tail may lie beyond the damage: that is part of it,
		// not a problem of its own.
		js.DirtyTailReached = true
	}
	if errors.Is(stop, ErrBounds) {
		problems = append(problems, "journal: a checksummed record is out of bounds: "+stop.Error())
	}
	if !js.DirtyTailReached {
		problems = append(problems, fmt.Sprintf("dirty tail (segment %d offset %d LSN %d) is not on the log walked from the key tail (head segment %d offset %d LSN %d)", dt.Pos.Seg, dt.Pos.Off, dt.LSN, js.Head.Pos.Seg, js.Head.Pos.Off, js.Head.LSN))
	}
	logSegs := map[uint32]bool{}
	for _, seg := range rep.Segments.Log {
		logSegs[seg] = true
	}
	sort.Slice(live, func(a, b int) bool { return live[a].lsn < live[b].lsn })
	for _, kr := range live {
		if logSegs[kr.k.Pos.Seg] {
			problems = append(problems, fmt.Sprintf("kset LSN %d key %d: current-generation data in segment %d, which holds journal ksets", kr.lsn, kr.i, kr.k.Pos.Seg))
			continue
		}
		if verifyData && s.lim.dataCRC {
			got, err := s.KeyDataCRC(&kr.k)
			if err != nil {
				return rep, problems, err
			}
			if got != kr.k.DataCRC {
				problems = append(problems, fmt.Sprintf("kset LSN %d key %d: data at segment %d offset %d length %d has crc32c 0x%08x, key says 0x%08x", kr.lsn, kr.i, kr.k.Pos.Seg, kr.k.Pos.Off, kr.k.Length, got, kr.k.DataCRC))
			}
		}
	}
	return rep, problems, nil
}

func formatUUID(u [16]byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// KeyDataCRC reads the cache data k points at and returns its CRC32C, to
// compare with k.DataCRC.
func (s *Store) KeyDataCRC(k *Key) (uint32, error) {
	buf := make([]byte, k.Length)
	if err := s.m.ReadAt(buf, s.DataOffset(k.Pos)); err != nil {
		return 0, err
	}
	return crc32c(0, buf), nil
}

// DataCRC32C is the checksum keys carry for their data (CRC32C, Castagnoli).
func DataCRC32C(p []byte) uint32 { return crc32c(0, p) }

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}
