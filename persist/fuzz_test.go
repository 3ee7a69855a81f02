package persist

import (
	"bytes"
	"encoding/binary"
	"errors"
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

// FuzzDamageDecision: four bytes of a log whose every kset is durable (the
// durable mark covers all of them) are damaged anywhere in its segments.
// Replay either returns every kset unchanged (the damage missed the log)
// or stops with ErrJournalDamaged at the first kset it did not return:
// never a shorter log that looks like a torn tail. Where the log continues
// right after the damage, Repair makes it replay to its end again.
func FuzzDamageDecision(f *testing.F) {
	m, s := newTestStore(f, 4, TearDAX, FormatOptions{})
	j := s.OpenJournal(s.KeyTail(), seqAlloc(4))
	var committed []KSet
	for i := 0; i < 40; i++ {
		ks, err := j.Commit(testKeys(1+i%30, uint64(i), s), uint64(i/3))
		if err != nil {
			f.Fatal(err)
		}
		committed = append(committed, ks)
	}
	if err := s.SetDurableMark(committed[len(committed)-1].LSN); err != nil {
		f.Fatal(err)
	}
	pristine := m.Bytes()
	f.Add(uint32(0), uint32(1))
	f.Add(uint32(72+8), uint32(0xffffffff))
	f.Add(uint32(committed[20].Pos.Off+40), uint32(0x01000000))
	f.Add(uint32(s.SegmentDataSize()-8), uint32(7))
	f.Fuzz(func(t *testing.T, at, flip uint32) {
		if flip == 0 {
			return
		}
		img := NewCrashMediaFrom(pristine, TearDAX)
		off := SegmentsOffset + int64(at%uint32(3*testSeg))
		b := make([]byte, 4)
		_ = img.ReadAt(b, off)
		binary.LittleEndian.PutUint32(b, binary.LittleEndian.Uint32(b)^flip)
		_ = img.WriteAt(b, off)
		s2, err := Open(img)
		if err != nil {
			return
		}
		replay := func() ([]KSet, error) {
			r := s2.ReplayVerified(s2.KeyTail())
			var got []KSet
			for ks, ok := r.Next(); ok && len(got) <= len(committed); ks, ok = r.Next() {
				got = append(got, ks)
			}
			return got, r.StopReason()
		}
		got, stop := replay()
		var d *DamageError
		if len(got) == len(committed) {
			return
		}
		if !errors.As(stop, &d) || d.Stop.LSN != committed[len(got)].LSN {
			t.Fatalf("damage at %d: replayed %d of %d ksets, stop %v: want ErrJournalDamaged at LSN %d", off, len(got), len(committed), stop, committed[len(got)].LSN)
		}
		for i := range got {
			if got[i].LSN != committed[i].LSN || got[i].Pos != committed[i].Pos {
				t.Fatalf("kset %d replayed as %+v, committed %+v", i, got[i], committed[i])
			}
		}
		if d.Resume.LSN == 0 {
			return
		}
		if truncated, err := s2.Repair(d); err != nil {
			t.Fatalf("repair: %v", err)
		} else if truncated {
			return
		}
		got, stop = replay()
		if len(got) != len(committed) && !errors.Is(stop, ErrJournalDamaged) {
			t.Fatalf("after repair: %d of %d ksets, stop %v", len(got), len(committed), stop)
		}
	})
}
