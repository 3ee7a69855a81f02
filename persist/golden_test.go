package persist

import (
	"bytes"
	"compress/gzip"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var updateGolden = flag.Bool("update-golden", false, "rewrite testdata/golden-v1.cache.gz")

const goldenPath = "testdata/golden-v1.cache.gz"

// goldenVolumes and friends describe what the golden file holds.
var goldenVolumes = []VolumeRecord{{ID: 1, Name: "db1", Size: 1 << 30, Flags: 1}, {ID: 2, Name: "vm-disk", Size: 10 << 30}}

func goldenKeys(i int, s *Store, data []byte) []Key {
	n := 30 + i%60
	keys := make([]Key, n)
	for k := range keys {
		off := uint32((i*9+k)%20) * 4096
		keys[k] = Key{Volume: uint32(1 + k%2), Offset: uint64(i*64+k) * 4096, Length: 4096, Pos: Pos{Seg: 3, Off: off}, Gen: 1, Flags: KeyDirty, DataCRC: DataCRC32C(data[off : off+4096])}
		if k%4 == 3 {
			keys[k].Flags = KeyClean
		}
		if k%7 == 6 {
			keys[k] = Key{Volume: 2, Offset: uint64(i) * 512, Length: 512, Flags: KeyTombstone}
		}
	}
	return keys
}

func goldenData() []byte {
	d := make([]byte, 20*4096)
	for i := range d {
		d[i] = byte(i*31 + i/4096)
	}
	return d
}

// writeGolden builds the golden cache: 4 segments of 128 KiB, data CRCs,
// two volumes, gc percent 60, segment 2 generation 3, 60 ksets (a segment
// switch from 0 to 1), dirty tail at kset 10.
func writeGolden(t *testing.T) []byte {
	m := NewCrashMedia(SegmentsOffset+4*testSeg, TearDAX)
	s, err := Format(m, FormatOptions{SegmentSize: testSeg, DataCRC: true})
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.SetVolumes(goldenVolumes))
	must(s.SetInfo(CacheInfo{GCPercent: 60, Flags: 0x5}))
	for i := 0; i < 2; i++ {
		_, err := s.BumpGen(2)
		must(err)
	}
	data := goldenData()
	must(m.WriteAt(data, s.DataOffset(Pos{Seg: 3})))
	must(m.Persist(s.DataOffset(Pos{Seg: 3}), int64(len(data))))
	j := s.OpenJournal(s.KeyTail(), func() (uint32, error) { return 1, nil })
	var ks10 KSet
	for i := 0; i < 60; i++ {
		ks, err := j.Commit(goldenKeys(i, s, data), uint64(i/5))
		must(err)
		if i == 10 {
			ks10 = ks
		}
	}
	must(s.SetDirtyTail(Tail{Pos: ks10.Pos, LSN: ks10.LSN}))
	return m.Bytes()
}

func readGolden(t *testing.T) []byte {
	f, err := os.Open(goldenPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(z)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestGoldenV1 opens the committed format-v1 cache file and checks every
// record and the journal against what writeGolden put there.
func TestGoldenV1(t *testing.T) {
	if *updateGolden {
		var buf bytes.Buffer
		z, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		_, _ = z.Write(writeGolden(t))
		_ = z.Close()
		if err := os.MkdirAll(filepath.Dir(goldenPath), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(goldenPath, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	raw := readGolden(t)
	m := NewCrashMediaFrom(raw, TearDAX)
	s, err := Open(m)
	if err != nil {
		t.Fatal(err)
	}
	sb := s.Superblock()
	if sb.Version != 1 || sb.Features != FeatureDataCRC || sb.SegmentSize != testSeg || sb.SegmentCount != 4 || sb.BlockSize != 4096 {
		t.Fatalf("superblock %+v", sb)
	}
	if v := s.Volumes(); !reflect.DeepEqual(v, goldenVolumes) {
		t.Fatalf("volumes %+v", v)
	}
	if ci := s.Info(); ci != (CacheInfo{GCPercent: 60, Flags: 5}) {
		t.Fatalf("info %+v", ci)
	}
	for seg, want := range []uint64{1, 1, 3, 1} {
		if g, err := s.Gen(uint32(seg)); err != nil || g != want {
			t.Fatalf("segment %d generation %d, %v; want %d", seg, g, err, want)
		}
	}
	data := goldenData()
	r := s.Replay(s.KeyTail())
	i := 0
	var ks10 KSet
	for ks, ok := r.Next(); ok; ks, ok = r.Next() {
		if want := goldenKeys(i, s, data); ks.LSN != uint64(i+1) || ks.Epoch != uint64(i/5) || !reflect.DeepEqual(ks.Keys, want) {
			t.Fatalf("kset %d: %+v", i, ks)
		}
		if i == 10 {
			ks10 = ks
		}
		i++
	}
	if i != 60 || !reflect.DeepEqual(r.LogSegments(), []uint32{0, 1}) {
		t.Fatalf("replayed %d ksets over segments %v: %v", i, r.LogSegments(), r.StopReason())
	}
	if dt := s.DirtyTail(); dt != (Tail{Pos: ks10.Pos, LSN: 11}) {
		t.Fatalf("dirty tail %+v", dt)
	}
	problems, err := Check(s)
	if err != nil || len(problems) != 0 {
		t.Fatalf("check: %v %v", problems, err)
	}
	if !bytes.Equal(m.Bytes(), raw) {
		t.Fatal("opening the golden file wrote to it")
	}
}

// TestRefusals: media that is not ours, from a newer format, truncated or
// corrupt is refused with the record, offset, expected and found values,
// and nothing is written.
func TestRefusals(t *testing.T) {
	golden := readGolden(t)
	cases := []struct {
		name    string
		mutate  func([]byte) []byte
		want    error
		record  string
		offset  int64
		details []string
	}{
		{"not ours", func(b []byte) []byte { return bytes.Repeat([]byte("not a cache "), 50000) }, ErrNotCachelun, "superblock slot", offSuperblock0, []string{`"clunSUPR"`, `"a cache "`}},
		{"empty", func(b []byte) []byte { return make([]byte, 100) }, ErrNotCachelun, "superblock slot 0", offSuperblock0, nil},
		{"newer format", func(b []byte) []byte {
			b[offSuperblock0+recordHeaderSize] = 2
			b[offSuperblock1+recordHeaderSize] = 2
			return b
		}, ErrNewerFormat, "superblock slot 0 version", offSuperblock0 + recordHeaderSize, []string{"version <= 1", "version 2"}},
		{"unknown feature", func(b []byte) []byte {
			for _, off := range []int{offSuperblock0, offSuperblock1} {
				b[off+recordHeaderSize+4] |= 0x80
				rec := b[off : off+superblockSize]
				copy(rec, encodeRecord(magicSuperblock, [16]byte{}, 1, append([]byte(nil), rec[recordHeaderSize:]...)))
			}
			return b
		}, ErrNewerFormat, "superblock slot 0 features", offSuperblock0 + recordHeaderSize + 4, []string{"0x81"}},
		{"truncated", func(b []byte) []byte { return b[:len(b)/2] }, ErrTruncated, "media size", SegmentsOffset + 4*testSeg, []string{"589824 bytes", "294912 bytes"}},
		{"truncated inside the metadata", func(b []byte) []byte { return b[:offSuperblock1+100] }, ErrTruncated, "media size", SegmentsOffset + 4*testSeg, nil},
		{"corrupt superblocks", func(b []byte) []byte {
			b[offSuperblock0+40] ^= 1
			b[offSuperblock1+40] ^= 1
			return b
		}, ErrCorrupt, "superblock slot 0", offSuperblock0, []string{"crc32c"}},
		{"corrupt key tail", func(b []byte) []byte {
			b[offKeyTail0+30] ^= 1
			b[offKeyTail1+30] ^= 1
			return b
		}, ErrCorrupt, "key tail (both slots unreadable)", offKeyTail0, []string{"crc32c"}},
		{"dirty tail out of bounds", func(b []byte) []byte {
			for _, off := range []int{offDirtyTail0, offDirtyTail1} {
				rec := b[off : off+recordHeaderSize+tailPayloadSize]
				if [8]byte(rec[:8]) != magicDirtyTail {
					continue
				}
				uuid := [16]byte(b[offSuperblock0+recordHeaderSize+8 : offSuperblock0+recordHeaderSize+24])
				p := encodeTailPayload(Tail{Pos: Pos{Seg: 99}, LSN: 3})
				copy(rec, encodeRecord(magicDirtyTail, uuid, 50, p))
			}
			return b
		}, ErrCorrupt, "dirty tail slot", -1, []string{"segment 99 >= segment count 4"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			img := tc.mutate(append([]byte(nil), golden...))
			m := NewCrashMediaFrom(img, TearDAX)
			_, err := Open(m)
			var fe *FormatError
			if !errors.As(err, &fe) || !errors.Is(err, tc.want) {
				t.Fatalf("Open = %v, want a FormatError wrapping %v", err, tc.want)
			}
			if !strings.HasPrefix(fe.Record, tc.record) || (tc.offset >= 0 && fe.Offset != tc.offset) {
				t.Fatalf("error names %q at %d, want %q at %d", fe.Record, fe.Offset, tc.record, tc.offset)
			}
			for _, d := range tc.details {
				if !strings.Contains(err.Error(), d) {
					t.Fatalf("error %q lacks %q", err, d)
				}
			}
			if !bytes.Equal(m.Bytes(), img) || m.PersistPoints() != 0 {
				t.Fatal("refused media was written")
			}
			t.Logf("%s: %v", tc.name, err)
		})
	}
}
