package persist

import (
	"encoding/binary"
	"fmt"
)

// KeyFlags says what a key records. Exactly one of the three bits is set.
type KeyFlags uint8

const (
	KeyDirty     KeyFlags = 1 << 0 // data in the cache not yet written back
	KeyClean     KeyFlags = 1 << 1 // data in the cache that matches the backing device
	KeyTombstone KeyFlags = 1 << 2 // the range is invalidated; Pos and Gen are unused (zero)
)

// Key maps a range of a volume's backing address space to cache data.
type Key struct {
	Volume  uint32
	Offset  uint64 // backing byte offset
	Length  uint32 // bytes, > 0
	Pos     Pos    // where the data is in the cache (zero for tombstones)
	Gen     uint64 // generation of Pos.Seg when the data was written
	Flags   KeyFlags
	DataCRC uint32 // CRC32C of the data if the store has DataCRC, else 0
}

// MaxKSetKeys is the largest number of keys one kset holds.
const MaxKSetKeys = 128

const (
	keySize        = 40
	ksetHeaderSize = 72
	// MaxKSetSize is the encoded size of a full kset.
	MaxKSetSize = ksetHeaderSize + MaxKSetKeys*keySize

	ksetFlagLast uint32 = 1 << 0
	// ksetFlagUnfenced: the kset was written without a persist of its
	// keys' data before it; the persist that makes the kset durable makes
	// that data durable too (doc.go, "Unfenced ksets").
	ksetFlagUnfenced uint32 = 1 << 1
	knownKSetFlag           = ksetFlagLast | ksetFlagUnfenced
)

// KSet is one committed (or replayed) key set.
type KSet struct {
	LSN   uint64
	Epoch uint64 // flush epoch
	Pos   Pos    // where it starts
	Next  Tail   // where the next kset starts (after this one)
	Keys  []Key
	// Unfenced: the keys' data was not persisted before the kset was
	// written (only on stores with FeatureUnfencedKSets).
	Unfenced bool
	// Unconfirmed is how many ksets just before this one were not known
	// durable (with their data) when it was written: every kset with an
	// LSN below LSN-Unconfirmed was.
	Unconfirmed uint32
}

// ksetSize is the encoded size of a kset with n keys.
func ksetSize(n int) uint32 { return uint32(ksetHeaderSize + n*keySize) }

// ksetHeader is the decoded fixed part of a kset record.
type ksetHeader struct {
	flags     uint32
	uuid      [16]byte
	lsn       uint64
	epoch     uint64
	nonce     uint64
	prevNonce uint64
	keyCount  uint32
	nextSeg   uint32 // LAST only
	// unconfirmed (non-LAST only, in the bytes LAST uses for nextSeg): how
	// many ksets before this one were not known durable when it was
	// written.
	unconfirmed uint32
}

// encodeKey writes the 40-byte key image into b:
//
//	0 u64 offset  8 u32 volume  12 u32 length  16 u32 pos.seg  20 u32 pos.off
//	24 u64 gen  32 u32 data crc  36 u8 flags  37 [3] zero
func encodeKey(b []byte, k *Key) {
	binary.LittleEndian.PutUint64(b[0:], k.Offset)
	binary.LittleEndian.PutUint32(b[8:], k.Volume)
	binary.LittleEndian.PutUint32(b[12:], k.Length)
	binary.LittleEndian.PutUint32(b[16:], k.Pos.Seg)
	binary.LittleEndian.PutUint32(b[20:], k.Pos.Off)
	binary.LittleEndian.PutUint64(b[24:], k.Gen)
	binary.LittleEndian.PutUint32(b[32:], k.DataCRC)
	b[36] = byte(k.Flags)
	b[37], b[38], b[39] = 0, 0, 0
}

// keyLimits are the bounds a key must satisfy on this store.
type keyLimits struct {
	segCount uint32
	dataSize uint32
	dataCRC  bool
}

// decodeKey decodes and bounds-checks one 40-byte key image.
func decodeKey(b []byte, lim keyLimits) (Key, error) {
	var k Key
	err := decodeKeyInto(&k, b, lim)
	return k, err
}

// decodeKeyInto is decodeKey writing into k (replay's hot loop).
func decodeKeyInto(k *Key, b []byte, lim keyLimits) error {
	b = b[:keySize]
	k.Offset = binary.LittleEndian.Uint64(b[0:])
	k.Volume = binary.LittleEndian.Uint32(b[8:])
	k.Length = binary.LittleEndian.Uint32(b[12:])
	k.Pos = Pos{Seg: binary.LittleEndian.Uint32(b[16:]), Off: binary.LittleEndian.Uint32(b[20:])}
	k.Gen = binary.LittleEndian.Uint64(b[24:])
	k.DataCRC = binary.LittleEndian.Uint32(b[32:])
	k.Flags = KeyFlags(b[36])
	if b[37]|b[38]|b[39] != 0 {
		return fmt.Errorf("reserved bytes %x", b[37:40])
	}
	// Fast path for the common valid data key; validateKey explains failures.
	if (k.Flags == KeyDirty || k.Flags == KeyClean) && k.Length != 0 && k.Offset+uint64(k.Length) >= k.Offset &&
		k.Pos.Seg < lim.segCount && k.Length <= lim.dataSize && k.Pos.Off <= lim.dataSize-k.Length && (lim.dataCRC || k.DataCRC == 0) {
		return nil
	}
	return validateKey(k, lim)
}

// validateKey checks every field of k against the store's bounds; Commit
// applies it to keys before they are written and replay to keys it reads.
func validateKey(k *Key, lim keyLimits) error {
	switch k.Flags {
	case KeyDirty, KeyClean, KeyTombstone:
	default:
		return fmt.Errorf("flags 0x%x, want exactly one of dirty/clean/tombstone", uint8(k.Flags))
	}
	if k.Length == 0 {
		return fmt.Errorf("zero length")
	}
	if k.Offset+uint64(k.Length) < k.Offset {
		return fmt.Errorf("offset %d + length %d overflows", k.Offset, k.Length)
	}
	if k.Flags == KeyTombstone {
		if k.Pos != (Pos{}) || k.Gen != 0 || k.DataCRC != 0 {
			return fmt.Errorf("tombstone with position/gen/crc set")
		}
		return nil
	}
	if k.Pos.Seg >= lim.segCount {
		return fmt.Errorf("segment %d >= segment count %d", k.Pos.Seg, lim.segCount)
	}
	if k.Length > lim.dataSize || k.Pos.Off > lim.dataSize-k.Length {
		return fmt.Errorf("data [%d,+%d) outside segment data area of %d bytes", k.Pos.Off, k.Length, lim.dataSize)
	}
	if !lim.dataCRC && k.DataCRC != 0 {
		return fmt.Errorf("data crc set on a store without DataCRC")
	}
	return nil
}

// encodeKSet writes a kset image (header + keys) into b, which must be
// ksetSize(len(keys)) bytes. Layout of the 72-byte header:
//
//	0 [8] magic  8 u32 crc32c(bytes [12, end))  12 u32 flags (bit 0 LAST)
//	16 [16] cache uuid  32 u64 lsn  40 u64 flush epoch  48 u64 session nonce
//	56 u64 previous kset's session nonce  64 u32 key count
//	68 u32 next segment (LAST) or unconfirmed count (others)
func encodeKSet(b []byte, h *ksetHeader, keys []Key) {
	copy(b[0:8], magicKSet[:])
	binary.LittleEndian.PutUint32(b[12:], h.flags)
	copy(b[16:32], h.uuid[:])
	binary.LittleEndian.PutUint64(b[32:], h.lsn)
	binary.LittleEndian.PutUint64(b[40:], h.epoch)
	binary.LittleEndian.PutUint64(b[48:], h.nonce)
	binary.LittleEndian.PutUint64(b[56:], h.prevNonce)
	binary.LittleEndian.PutUint32(b[64:], uint32(len(keys)))
	if h.flags&ksetFlagLast != 0 {
		binary.LittleEndian.PutUint32(b[68:], h.nextSeg)
	} else {
		binary.LittleEndian.PutUint32(b[68:], h.unconfirmed)
	}
	for i := range keys {
		encodeKey(b[ksetHeaderSize+i*keySize:], &keys[i])
	}
	binary.LittleEndian.PutUint32(b[8:], crc32c(0, b[12:]))
}

// decodeKSetHeader decodes the fixed header and checks what can be checked
// without the keys: magic, flags, key count. The returned sentinel says why
// it failed.
func decodeKSetHeader(b []byte) (ksetHeader, error) {
	var h ksetHeader
	if len(b) < ksetHeaderSize {
		return h, fmt.Errorf("%w: %d bytes left for a %d-byte header", ErrBounds, len(b), ksetHeaderSize)
	}
	if [8]byte(b[0:8]) != magicKSet {
		return h, fmt.Errorf("%w: no kset magic (found %x)", ErrEndOfLog, b[0:8])
	}
	h.flags = binary.LittleEndian.Uint32(b[12:])
	copy(h.uuid[:], b[16:32])
	h.lsn = binary.LittleEndian.Uint64(b[32:])
	h.epoch = binary.LittleEndian.Uint64(b[40:])
	h.nonce = binary.LittleEndian.Uint64(b[48:])
	h.prevNonce = binary.LittleEndian.Uint64(b[56:])
	h.keyCount = binary.LittleEndian.Uint32(b[64:])
	if h.flags&ksetFlagLast != 0 {
		h.nextSeg = binary.LittleEndian.Uint32(b[68:])
	} else {
		h.unconfirmed = binary.LittleEndian.Uint32(b[68:])
	}
	// These fields are checked before the CRC (which cannot be computed
	// without a sane key count), so a failure here means a torn or foreign
	// record and is reported as a checksum failure, not a bounds violation.
	if h.flags&^knownKSetFlag != 0 {
		return h, fmt.Errorf("%w: unverifiable header: unknown kset flags 0x%x", ErrBadChecksum, h.flags)
	}
	if h.flags&ksetFlagLast != 0 {
		if h.keyCount != 0 {
			return h, fmt.Errorf("%w: unverifiable header: LAST kset with %d keys", ErrBadChecksum, h.keyCount)
		}
		if h.flags&ksetFlagUnfenced != 0 {
			return h, fmt.Errorf("%w: unverifiable header: LAST kset marked unfenced", ErrBadChecksum)
		}
	} else if h.keyCount == 0 || h.keyCount > MaxKSetKeys {
		return h, fmt.Errorf("%w: unverifiable header: key count %d not in 1..%d", ErrBadChecksum, h.keyCount, MaxKSetKeys)
	}
	return h, nil
}

// verifyKSetCRC checks the CRC of a full kset image b (exactly its size).
func verifyKSetCRC(b []byte) error {
	want := binary.LittleEndian.Uint32(b[8:])
	if got := crc32c(0, b[12:]); got != want {
		return fmt.Errorf("%w: kset crc32c stored 0x%08x, computed 0x%08x", ErrBadChecksum, want, got)
	}
	return nil
}

// DecodeKSet decodes a kset image from b (which may be longer than the kset)
// without any store context except the bounds (segCount, dataSize) used to
// check its keys. It returns the kset, its LAST flag with the next segment,
// and the encoded size. It is the decoder replay uses; it never panics on
// arbitrary input.
func decodeKSet(b []byte, lim keyLimits) (h ksetHeader, keys []Key, size uint32, err error) {
	h, err = decodeKSetHeader(b)
	if err != nil {
		return h, nil, 0, err
	}
	size = ksetSize(int(h.keyCount))
	if uint64(size) > uint64(len(b)) {
		return h, nil, 0, fmt.Errorf("%w: kset of %d bytes exceeds the %d bytes left in the segment", ErrBounds, size, len(b))
	}
	if err := verifyKSetCRC(b[:size]); err != nil {
		return h, nil, 0, err
	}
	if h.flags&ksetFlagLast != 0 {
		if h.nextSeg >= lim.segCount {
			return h, nil, 0, fmt.Errorf("%w: LAST kset next segment %d >= segment count %d", ErrBounds, h.nextSeg, lim.segCount)
		}
		return h, nil, size, nil
	}
	keys = make([]Key, h.keyCount)
	for i := range keys {
		k, kerr := decodeKey(b[ksetHeaderSize+i*keySize:], lim)
		if kerr != nil {
			return h, nil, 0, fmt.Errorf("%w: key %d: %v", ErrBounds, i, kerr)
		}
		keys[i] = k
	}
	return h, keys, size, nil
}

// KeySize is the size of an encoded key.
const KeySize = keySize

// EncodeKey writes the KeySize-byte image of k (the layout of a key in a
// kset) into b. The engine uses it for records kept outside the cache file.
func EncodeKey(b []byte, k *Key) { encodeKey(b[:keySize], k) }

// DecodeKey decodes a KeySize-byte key image and checks every field against
// this store's bounds, as replay does.
func (s *Store) DecodeKey(b []byte) (Key, error) {
	if len(b) < keySize {
		return Key{}, fmt.Errorf("%w: key image of %d bytes, want %d", ErrInvalidArgument, len(b), keySize)
	}
	return decodeKey(b, s.lim)
}
