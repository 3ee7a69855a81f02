package persist

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// Format version written by this binary, and the highest one it reads.
const FormatVersion = 1

// Fixed media layout (absolute byte offsets). See doc.go for the diagram.
const (
	offSuperblock0 = 0x1000
	offSuperblock1 = 0x2000
	offInfo0       = 0x3000
	offInfo1       = 0x4000
	offKeyTail0    = 0x5000
	offKeyTail1    = 0x6000
	offDirtyTail0  = 0x7000
	offDirtyTail1  = 0x8000
	offDurable0    = 0x9000
	offDurable1    = 0xE000
	offVolumes0    = 0xA000
	offVolumes1    = 0xC000
	volumeSlotSize = 0x2000
	// SegmentsOffset is where segment 0 starts.
	SegmentsOffset = 0x10000

	// segHeaderSize is the per-segment header (generation slots); the data
	// area follows it.
	segHeaderSize  = 4096
	segGenSlot1Off = 2048

	recordHeaderSize = 24
)

// Record magics (8 bytes each, at offset 0 of every record).
var (
	magicSuperblock = [8]byte{'c', 'l', 'u', 'n', 'S', 'U', 'P', 'R'}
	magicInfo       = [8]byte{'c', 'l', 'u', 'n', 'I', 'N', 'F', 'O'}
	magicKeyTail    = [8]byte{'c', 'l', 'u', 'n', 'K', 'T', 'A', 'L'}
	magicDirtyTail  = [8]byte{'c', 'l', 'u', 'n', 'D', 'T', 'A', 'L'}
	magicVolumes    = [8]byte{'c', 'l', 'u', 'n', 'V', 'O', 'L', 'S'}
	magicDurable    = [8]byte{'c', 'l', 'u', 'n', 'D', 'U', 'R', 'A'}
	magicSegGen     = [8]byte{'c', 'l', 'u', 'n', 'S', 'G', 'E', 'N'}
	magicKSet       = [8]byte{'c', 'l', 'u', 'n', 'K', 'S', 'E', 'T'}
)

// Feature flags in the superblock. Unknown bits make Open refuse the media
// with ErrNewerFormat.
const (
	FeatureDataCRC uint32 = 1 << 0
	// FeatureUnfencedKSets: ksets may be written without a persist of their
	// keys' data first (kset flag UNFENCED); replay verifies the data CRCs
	// of the unconfirmed tail (doc.go, "Unfenced ksets"). Set together with
	// FeatureDataCRC, which it needs. A binary that does not know it would
	// take a torn tail's keys for committed ones, so it must refuse the file.
	FeatureUnfencedKSets uint32 = 1 << 1
	knownFeatures               = FeatureDataCRC | FeatureUnfencedKSets
	superblockSize              = recordHeaderSize + 64
	infoPayloadSize             = 8
	tailPayloadSize             = 16
	durablePayloadSize          = 16
	genPayloadSize              = 16
	volumeEntrySize             = 96
	// MaxVolumes is the capacity of the volume table.
	MaxVolumes = 64
	// MaxVolumeName is the longest volume name in bytes.
	MaxVolumeName = 63

	minSegmentSize = 128 << 10
	maxSegmentSize = 1 << 30
	maxSegments    = 1 << 22
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc32c(seed uint32, p []byte) uint32 { return crc32.Update(seed, castagnoli, p) }

// recordCRC is the checksum of a dual-slot record: CRC32C over the cache
// UUID followed by bytes [12, 24+payloadLen) of the record. Seeding with the
// UUID binds every record to its cache, so a record left by an earlier format
// of the same file never validates.
func recordCRC(uuid [16]byte, rec []byte) uint32 {
	return crc32c(crc32c(0, uuid[:]), rec[12:])
}

// encodeRecord builds a record image: magic, crc, payload length, seq, payload.
func encodeRecord(magic [8]byte, uuid [16]byte, seq uint64, payload []byte) []byte {
	b := make([]byte, recordHeaderSize+len(payload))
	copy(b[0:8], magic[:])
	binary.LittleEndian.PutUint32(b[12:], uint32(len(payload)))
	binary.LittleEndian.PutUint64(b[16:], seq)
	copy(b[recordHeaderSize:], payload)
	binary.LittleEndian.PutUint32(b[8:], recordCRC(uuid, b))
	return b
}

// recordProblem describes why a slot did not decode; zero value means valid.
type recordProblem struct {
	noMagic  bool
	expected string
	found    string
}

// decodeRecord validates a record slot image (at least recordHeaderSize
// bytes; maxPayload bounds the length field) and returns seq and payload.
func decodeRecord(magic [8]byte, uuid [16]byte, b []byte, wantPayload int) (seq uint64, payload []byte, p *recordProblem) {
	if len(b) < recordHeaderSize {
		return 0, nil, &recordProblem{expected: fmt.Sprintf("%d header bytes", recordHeaderSize), found: fmt.Sprintf("%d", len(b))}
	}
	if [8]byte(b[0:8]) != magic {
		return 0, nil, &recordProblem{noMagic: true, expected: fmt.Sprintf("magic %q", magic[:]), found: fmt.Sprintf("%q", b[0:8])}
	}
	n := binary.LittleEndian.Uint32(b[12:])
	if wantPayload >= 0 && int64(n) != int64(wantPayload) || int64(n) > int64(len(b)-recordHeaderSize) {
		return 0, nil, &recordProblem{expected: fmt.Sprintf("payload length %d", wantPayload), found: fmt.Sprintf("%d", n)}
	}
	rec := b[:recordHeaderSize+int(n)]
	want := binary.LittleEndian.Uint32(b[8:])
	if got := recordCRC(uuid, rec); got != want {
		return 0, nil, &recordProblem{expected: fmt.Sprintf("crc32c 0x%08x (computed)", got), found: fmt.Sprintf("0x%08x", want)}
	}
	return binary.LittleEndian.Uint64(b[16:]), rec[recordHeaderSize:], nil
}

// Superblock is the decoded superblock.
type Superblock struct {
	Version      uint32
	Features     uint32
	UUID         [16]byte
	BlockSize    uint32
	SegmentSize  uint32
	SegmentCount uint32
	MediaSize    uint64 // size of the media at format time
}

// superblock payload (64 bytes):
//
//	0  u32 version   4 u32 features   8 [16] uuid   24 u32 block size
//	28 u32 segment size   32 u32 segment count   36 u32 reserved (0)
//	40 u64 segments offset   48 u64 media size   56 u64 reserved (0)
func encodeSuperblock(sb Superblock, seq uint64) []byte {
	p := make([]byte, superblockSize-recordHeaderSize)
	binary.LittleEndian.PutUint32(p[0:], sb.Version)
	binary.LittleEndian.PutUint32(p[4:], sb.Features)
	copy(p[8:24], sb.UUID[:])
	binary.LittleEndian.PutUint32(p[24:], sb.BlockSize)
	binary.LittleEndian.PutUint32(p[28:], sb.SegmentSize)
	binary.LittleEndian.PutUint32(p[32:], sb.SegmentCount)
	binary.LittleEndian.PutUint64(p[40:], SegmentsOffset)
	binary.LittleEndian.PutUint64(p[48:], sb.MediaSize)
	// The superblock CRC is seeded with the all-zero UUID: the UUID is
	// unknown until the superblock itself is read.
	return encodeRecord(magicSuperblock, [16]byte{}, seq, p)
}

// decodeSuperblock validates one superblock slot. The version field is
// looked at before the checksum so that a newer format (whose layout may
// differ) is reported as such rather than as corruption.
func decodeSuperblock(b []byte, slotOff int64, slot int) (Superblock, uint64, *FormatError) {
	name := fmt.Sprintf("superblock slot %d", slot)
	var sb Superblock
	if len(b) < superblockSize {
		return sb, 0, &FormatError{Record: name, Offset: slotOff, Expected: fmt.Sprintf("%d bytes", superblockSize), Found: fmt.Sprintf("%d bytes", len(b)), Err: ErrTruncated}
	}
	if [8]byte(b[0:8]) != magicSuperblock {
		return sb, 0, &FormatError{Record: name, Offset: slotOff, Expected: fmt.Sprintf("magic %q", magicSuperblock[:]), Found: fmt.Sprintf("%q", b[0:8]), Err: ErrNotCachelun}
	}
	ver := binary.LittleEndian.Uint32(b[recordHeaderSize:])
	if ver > FormatVersion {
		return sb, 0, &FormatError{Record: name + " version", Offset: slotOff + recordHeaderSize, Expected: fmt.Sprintf("version <= %d", FormatVersion), Found: fmt.Sprintf("version %d", ver), Err: ErrNewerFormat}
	}
	seq, p, prob := decodeRecord(magicSuperblock, [16]byte{}, b, superblockSize-recordHeaderSize)
	if prob != nil {
		return sb, 0, &FormatError{Record: name, Offset: slotOff, Expected: prob.expected, Found: prob.found, Err: ErrCorrupt}
	}
	sb.Version = binary.LittleEndian.Uint32(p[0:])
	sb.Features = binary.LittleEndian.Uint32(p[4:])
	copy(sb.UUID[:], p[8:24])
	sb.BlockSize = binary.LittleEndian.Uint32(p[24:])
	sb.SegmentSize = binary.LittleEndian.Uint32(p[28:])
	sb.SegmentCount = binary.LittleEndian.Uint32(p[32:])
	segOff := binary.LittleEndian.Uint64(p[40:])
	sb.MediaSize = binary.LittleEndian.Uint64(p[48:])
	bad := func(field string, off int, exp string, found any) (Superblock, uint64, *FormatError) {
		return Superblock{}, 0, &FormatError{Record: name + " " + field, Offset: slotOff + recordHeaderSize + int64(off), Expected: exp, Found: fmt.Sprint(found), Err: ErrCorrupt}
	}
	switch {
	case sb.Version == 0:
		return bad("version", 0, "version >= 1", sb.Version)
	case sb.Features&^knownFeatures != 0:
		return Superblock{}, 0, &FormatError{Record: name + " features", Offset: slotOff + recordHeaderSize + 4, Expected: fmt.Sprintf("features within 0x%x", knownFeatures), Found: fmt.Sprintf("0x%x", sb.Features), Err: ErrNewerFormat}
	case sb.BlockSize < 512 || sb.BlockSize > 1<<20 || sb.BlockSize&(sb.BlockSize-1) != 0:
		return bad("block size", 24, "power of two in [512, 1 MiB]", sb.BlockSize)
	case sb.SegmentSize < minSegmentSize || sb.SegmentSize > maxSegmentSize || sb.SegmentSize&(sb.SegmentSize-1) != 0 || sb.SegmentSize < 2*sb.BlockSize:
		return bad("segment size", 28, fmt.Sprintf("power of two in [%d, %d]", minSegmentSize, maxSegmentSize), sb.SegmentSize)
	case sb.SegmentCount == 0 || sb.SegmentCount > maxSegments:
		return bad("segment count", 32, fmt.Sprintf("1..%d", maxSegments), sb.SegmentCount)
	case segOff != SegmentsOffset:
		return bad("segments offset", 40, fmt.Sprint(SegmentsOffset), segOff)
	case sb.MediaSize < SegmentsOffset+uint64(sb.SegmentCount)*uint64(sb.SegmentSize):
		return bad("media size", 48, fmt.Sprintf(">= %d", SegmentsOffset+uint64(sb.SegmentCount)*uint64(sb.SegmentSize)), sb.MediaSize)
	}
	return sb, seq, nil
}

// CacheInfo is the mutable cache-wide settings record.
type CacheInfo struct {
	GCPercent uint8  `json:"gc_percent"`
	Flags     uint32 `json:"flags"`
}

func encodeInfoPayload(ci CacheInfo) []byte {
	p := make([]byte, infoPayloadSize)
	p[0] = ci.GCPercent
	binary.LittleEndian.PutUint32(p[4:], ci.Flags)
	return p
}

func decodeInfoPayload(p []byte) (CacheInfo, error) {
	ci := CacheInfo{GCPercent: p[0], Flags: binary.LittleEndian.Uint32(p[4:])}
	if ci.GCPercent > 100 || p[1] != 0 || p[2] != 0 || p[3] != 0 {
		return ci, fmt.Errorf("gc percent %d / reserved %x", ci.GCPercent, p[1:4])
	}
	return ci, nil
}

// Pos is a position in the cache: a segment and a byte offset relative to
// that segment's data area.
type Pos struct {
	Seg uint32 `json:"segment"`
	Off uint32 `json:"offset"`
}

// Tail is a position in the kset log and the LSN of the kset that starts
// there.
type Tail struct {
	Pos Pos    `json:"pos"`
	LSN uint64 `json:"lsn"`
}

func encodeTailPayload(t Tail) []byte {
	p := make([]byte, tailPayloadSize)
	binary.LittleEndian.PutUint32(p[0:], t.Pos.Seg)
	binary.LittleEndian.PutUint32(p[4:], t.Pos.Off)
	binary.LittleEndian.PutUint64(p[8:], t.LSN)
	return p
}

func decodeTailPayload(p []byte) Tail {
	return Tail{Pos: Pos{Seg: binary.LittleEndian.Uint32(p[0:]), Off: binary.LittleEndian.Uint32(p[4:])}, LSN: binary.LittleEndian.Uint64(p[8:])}
}

// VolumeFlagReplicated marks a volume whose journal was shipped to other
// nodes when it was last attached (cachecore's replicated volumes).
const VolumeFlagReplicated uint32 = 1

// VolumeRecord is one entry of the volume table.
type VolumeRecord struct {
	ID    uint32 `json:"id"`
	Name  string `json:"name"` // at most MaxVolumeName bytes
	Size  uint64 `json:"size"` // bytes
	Flags uint32 `json:"flags"`
}

// volume table payload: u32 count, u32 reserved, then count entries of 96
// bytes: u32 id, u32 flags, u64 size, u8 name length, [63] name, [16] zero.
func encodeVolumesPayload(vs []VolumeRecord) []byte {
	p := make([]byte, 8+len(vs)*volumeEntrySize)
	binary.LittleEndian.PutUint32(p[0:], uint32(len(vs)))
	for i, v := range vs {
		e := p[8+i*volumeEntrySize:]
		binary.LittleEndian.PutUint32(e[0:], v.ID)
		binary.LittleEndian.PutUint32(e[4:], v.Flags)
		binary.LittleEndian.PutUint64(e[8:], v.Size)
		e[16] = byte(len(v.Name))
		copy(e[17:17+MaxVolumeName], v.Name)
	}
	return p
}

func decodeVolumesPayload(p []byte) ([]VolumeRecord, error) {
	if len(p) < 8 {
		return nil, fmt.Errorf("volume table payload %d bytes", len(p))
	}
	n := binary.LittleEndian.Uint32(p[0:])
	if n > MaxVolumes || int64(len(p)) != 8+int64(n)*volumeEntrySize {
		return nil, fmt.Errorf("volume count %d with payload %d bytes", n, len(p))
	}
	vs := make([]VolumeRecord, 0, n)
	seen := make(map[uint32]bool, n)
	for i := 0; i < int(n); i++ {
		e := p[8+i*volumeEntrySize:]
		nl := int(e[16])
		if nl > MaxVolumeName {
			return nil, fmt.Errorf("volume entry %d name length %d", i, nl)
		}
		v := VolumeRecord{ID: binary.LittleEndian.Uint32(e[0:]), Flags: binary.LittleEndian.Uint32(e[4:]), Size: binary.LittleEndian.Uint64(e[8:]), Name: string(e[17 : 17+nl])}
		if seen[v.ID] {
			return nil, fmt.Errorf("volume entry %d duplicate id %d", i, v.ID)
		}
		seen[v.ID] = true
		vs = append(vs, v)
	}
	return vs, nil
}

func validateVolumes(vs []VolumeRecord) error {
	if len(vs) > MaxVolumes {
		return fmt.Errorf("%w: %d volumes, at most %d", ErrInvalidArgument, len(vs), MaxVolumes)
	}
	seen := map[uint32]bool{}
	for _, v := range vs {
		if len(v.Name) > MaxVolumeName {
			return fmt.Errorf("%w: volume %d name %d bytes, at most %d", ErrInvalidArgument, v.ID, len(v.Name), MaxVolumeName)
		}
		if seen[v.ID] {
			return fmt.Errorf("%w: duplicate volume id %d", ErrInvalidArgument, v.ID)
		}
		seen[v.ID] = true
	}
	return nil
}

// segment generation payload: u32 segment id, u32 reserved, u64 gen.
func encodeGenPayload(seg uint32, gen uint64) []byte {
	p := make([]byte, genPayloadSize)
	binary.LittleEndian.PutUint32(p[0:], seg)
	binary.LittleEndian.PutUint64(p[8:], gen)
	return p
}

func decodeGenPayload(p []byte, seg uint32) (uint64, error) {
	if got := binary.LittleEndian.Uint32(p[0:]); got != seg || binary.LittleEndian.Uint32(p[4:]) != 0 {
		return 0, fmt.Errorf("segment id %d in the record of segment %d", got, seg)
	}
	return binary.LittleEndian.Uint64(p[8:]), nil
}
