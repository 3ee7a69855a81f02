package persist

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func fuzzLimits() keyLimits {
	return keyLimits{segCount: 8, dataSize: testSeg - segHeaderSize, dataCRC: true}
}

func FuzzSuperblock(f *testing.F) {
	sb := Superblock{Version: 1, UUID: [16]byte{1, 2, 3}, BlockSize: 4096, SegmentSize: testSeg, SegmentCount: 4, MediaSize: SegmentsOffset + 4*testSeg}
	f.Add(encodeSuperblock(sb, 1))
	f.Add(make([]byte, superblockSize))
	f.Add([]byte("clunSUPR"))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, seq, err := decodeSuperblock(b, offSuperblock0, 0)
		if err != nil {
			if err.Err == nil {
				t.Fatal("FormatError without a sentinel")
			}
			return
		}
		if re := encodeSuperblock(got, seq); !bytes.Equal(re, b[:superblockSize]) {
			t.Fatalf("accepted superblock does not re-encode to its bytes")
		}
	})
}

func FuzzRecord(f *testing.F) {
	uuid := [16]byte{9}
	f.Add(encodeRecord(magicInfo, uuid, 3, encodeInfoPayload(CacheInfo{GCPercent: 70})), uint8(0))
	f.Add(encodeRecord(magicKeyTail, uuid, 3, encodeTailPayload(Tail{Pos{1, 8}, 4})), uint8(1))
	f.Add(encodeRecord(magicVolumes, uuid, 3, encodeVolumesPayload([]VolumeRecord{{ID: 1, Name: "a"}})), uint8(2))
	f.Add(encodeRecord(magicSegGen, uuid, 3, encodeGenPayload(2, 5)), uint8(3))
	f.Fuzz(func(t *testing.T, b []byte, kind uint8) {
		type rt struct {
			magic [8]byte
			size  int
		}
		kinds := []rt{{magicInfo, infoPayloadSize}, {magicKeyTail, tailPayloadSize}, {magicVolumes, -1}, {magicSegGen, genPayloadSize}}
		k := kinds[int(kind)%len(kinds)]
		seq, p, prob := decodeRecord(k.magic, uuid, b, k.size)
		if prob != nil {
			return
		}
		if re := encodeRecord(k.magic, uuid, seq, p); !bytes.Equal(re, b[:len(re)]) {
			t.Fatal("accepted record does not re-encode to its bytes")
		}
		switch k.magic {
		case magicInfo:
			_, _ = decodeInfoPayload(p)
		case magicKeyTail:
			_ = decodeTailPayload(p)
		case magicVolumes:
			if vs, err := decodeVolumesPayload(p); err == nil {
				if validateVolumes(vs) != nil {
					t.Fatalf("decoded volume table fails validation: %+v", vs)
				}
			}
		case magicSegGen:
			_, _ = decodeGenPayload(p, 2)
		}
	})
}

func FuzzKey(f *testing.F) {
	b := make([]byte, keySize)
	encodeKey(b, &Key{Volume: 1, Offset: 4096, Length: 4096, Pos: Pos{1, 8192}, Gen: 2, Flags: KeyDirty, DataCRC: 7})
	f.Add(b)
	encodeKey(b, &Key{Offset: 1, Length: 9, Flags: KeyTombstone})
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < keySize {
			return
		}
		lim := fuzzLimits()
		k, err := decodeKey(b, lim)
		if err != nil {
			return
		}
		if k.Flags != KeyTombstone && (k.Pos.Seg >= lim.segCount || uint64(k.Pos.Off)+uint64(k.Length) > uint64(lim.dataSize)) {
			t.Fatalf("accepted out-of-bounds key %+v", k)
		}
		re := make([]byte, keySize)
		encodeKey(re, &k)
		if !bytes.Equal(re, b[:keySize]) {
			t.Fatal("accepted key does not re-encode to its bytes")
		}
	})
}

func FuzzKSet(f *testing.F) {
	keys := []Key{{Volume: 1, Offset: 4096, Length: 4096, Pos: Pos{1, 8192}, Gen: 2, Flags: KeyDirty}, {Offset: 1, Length: 9, Flags: KeyTombstone}}
	img := make([]byte, ksetSize(len(keys)))
	encodeKSet(img, &ksetHeader{uuid: [16]byte{1}, lsn: 5, epoch: 2, nonce: 3, prevNonce: 4}, keys)
	f.Add(img)
	last := make([]byte, ksetHeaderSize)
	encodeKSet(last, &ksetHeader{flags: ksetFlagLast, lsn: 5, nextSeg: 3}, nil)
	f.Add(last)
	f.Fuzz(func(t *testing.T, b []byte) {
		lim := fuzzLimits()
		h, keys, size, err := decodeKSet(b, lim)
		if err != nil {
			return
		}
		if int(size) > len(b) || size != ksetSize(len(keys)) {
			t.Fatalf("size %d for %d keys in %d bytes", size, len(keys), len(b))
		}
		if h.flags&ksetFlagLast != 0 && h.nextSeg >= lim.segCount {
			t.Fatalf("accepted LAST to segment %d", h.nextSeg)
		}
		re := make([]byte, size)
		encodeKSet(re, &h, keys)
		if !bytes.Equal(re, b[:size]) {
			t.Fatal("accepted kset does not re-encode to its bytes")
		}
	})
}

// FuzzReplay: arbitrary bytes over the first kset segments (seeded with a
// real log) never make replay panic or return an out-of-bounds key, and
// replay always terminates.
func FuzzReplay(f *testing.F) {
	m, s := newTestStore(f, 4, TearDAX, FormatOptions{DataCRC: true})
	j := s.OpenJournal(s.KeyTail(), seqAlloc(4))
	for i := 0; i < 40; i++ {
		keys := testKeys(1+i%30, uint64(i), s)
		if _, err := j.Commit(keys, 0); err != nil {
			f.Fatal(err)
		}
	}
	pristine := m.Bytes()
	seg0 := pristine[s.DataOffset(Pos{}):s.DataOffset(Pos{Seg: 1})]
	f.Add(seg0[:4096], uint16(0), uint32(0))
	f.Add(seg0[:300], uint16(72), uint32(1))
	f.Add([]byte{}, uint16(0), uint32(0))
	f.Fuzz(func(t *testing.T, patch []byte, at uint16, flip uint32) {
		img := NewCrashMediaFrom(pristine, TearDAX)
		base := s.DataOffset(Pos{})
		_ = img.WriteAt(patch[:min(len(patch), 8192)], base+int64(at))
		if flip != 0 {
			b := make([]byte, 4)
			off := base + int64(flip%uint32(3*s.SegmentDataSize()))
			_ = img.ReadAt(b, off)
			binary.LittleEndian.PutUint32(b, binary.LittleEndian.Uint32(b)^flip)
			_ = img.WriteAt(b, off)
		}
		s2, err := Open(img)
		if err != nil {
			return
		}
		r := s2.Replay(s2.KeyTail())
		lsn := s2.KeyTail().LSN
		for i := 0; ; i++ {
			ks, ok := r.Next()
			if !ok {
				break
			}
			if i > 10000 || ks.LSN != lsn {
				t.Fatalf("replay at kset %d LSN %d, expected %d", i, ks.LSN, lsn)
			}
			lsn++
			for _, k := range ks.Keys {
				if err := validateKey(&k, s2.lim); err != nil {
					t.Fatalf("replay returned invalid key %+v: %v", k, err)
				}
			}
		}
		if r.StopReason() == nil {
			t.Fatal("no stop reason")
		}
	})
}

// FuzzOpen: arbitrary metadata never makes Open panic; a refusal is a
// *FormatError with a sentinel.
func FuzzOpen(f *testing.F) {
	m, _ := newTestStore(f, 2, TearDAX, FormatOptions{})
	pristine := m.Bytes()
	f.Add(pristine[offSuperblock0:offSuperblock0+128], uint32(offSuperblock0))
	f.Add(pristine[offKeyTail0:offKeyTail0+64], uint32(offKeyTail0))
	f.Add(pristine[offVolumes0:offVolumes0+64], uint32(offVolumes0))
	f.Fuzz(func(t *testing.T, patch []byte, at uint32) {
		img := NewCrashMediaFrom(pristine, TearDAX)
		off := int64(at) % int64(len(pristine))
		_ = img.WriteAt(patch[:min(len(patch), len(pristine)-int(off))], off)
		_, err := Open(img)
		if err != nil {
			if fe, ok := err.(*FormatError); !ok || fe.Err == nil {
				t.Fatalf("Open error %T %v", err, err)
			}
		}
	})
}
