package persist

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// recordCase is one dual-slot record type: how to update it and read it back.
type recordCase struct {
	name   string // as it appears in errors
	update func(s *Store, i int) error
	read   func(s *Store) (any, error)
	slots  func(s *Store) [2]int64
}

func recordCases() []recordCase {
	return []recordCase{
		{"cache info", func(s *Store, i int) error { return s.SetInfo(CacheInfo{GCPercent: uint8(10 + i), Flags: uint32(i)}) },
			func(s *Store) (any, error) { return s.Info(), nil }, func(s *Store) [2]int64 { return s.info.offs }},
		{"key tail", func(s *Store, i int) error {
			return s.SetKeyTail(Tail{Pos: Pos{Seg: 1, Off: uint32(8 * i)}, LSN: uint64(100 + i)})
		},
			func(s *Store) (any, error) { return s.KeyTail(), nil }, func(s *Store) [2]int64 { return s.keyTail.offs }},
		{"dirty tail", func(s *Store, i int) error {
			return s.SetDirtyTail(Tail{Pos: Pos{Seg: 2, Off: uint32(16 * i)}, LSN: uint64(7 + i)})
		},
			func(s *Store) (any, error) { return s.DirtyTail(), nil }, func(s *Store) [2]int64 { return s.dirtyTail.offs }},
		{"volume table", func(s *Store, i int) error {
			return s.SetVolumes([]VolumeRecord{{ID: 1, Name: fmt.Sprintf("vol-%d", i), Size: uint64(i) << 20}, {ID: 9, Name: strings.Repeat("x", i%64), Size: 4096}})
		}, func(s *Store) (any, error) { return s.Volumes(), nil }, func(s *Store) [2]int64 { return s.volumes.offs }},
		{"segment 1 generation", func(s *Store, i int) error { _, err := s.BumpGen(1); return err },
			func(s *Store) (any, error) { return s.Gen(1) }, func(s *Store) [2]int64 { return s.genOffs(1) }},
	}
}

// lastWrite returns the last write recorded by m at or after log index from.
func lastWrite(t *testing.T, m *CrashMedia, from int) crashOp {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	var w []crashOp
	for _, op := range m.mu.log[from:] {
		if !op.persist {
			w = append(w, op)
		}
	}
	if len(w) != 1 {
		t.Fatalf("update issued %d writes, want 1", len(w))
	}
	return w[0]
}

func logLen(m *CrashMedia) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.mu.log)
}

// TestTornRecordUpdates: for every record type, an update torn at every
// byte offset (new prefix over old bytes, and old prefix with new suffix)
// leaves the previous value readable; the update goes to the slot that does
// not hold the newest copy, including the first update after open.
func TestTornRecordUpdates(t *testing.T) {
	for _, rc := range recordCases() {
		for prior := 0; prior < 3; prior++ { // newest copy in slot 0, 1, 0
			t.Run(fmt.Sprintf("%s/prior%d", rc.name, prior), func(t *testing.T) {
				m, s := newTestStore(t, 3, TearDAX, FormatOptions{})
				for i := 0; i < prior; i++ {
					if err := rc.update(s, i+1); err != nil {
						t.Fatal(err)
					}
				}
				valA, err := rc.read(s)
				if err != nil {
					t.Fatal(err)
				}
				base := m.Bytes()
				m2 := NewCrashMediaFrom(base, TearDAX)
				s2, err := Open(m2)
				if err != nil {
					t.Fatal(err)
				}
				from := logLen(m2)
				if err := rc.update(s2, 40); err != nil {
					t.Fatal(err)
				}
				valB, _ := rc.read(s2)
				w := lastWrite(t, m2, from)
				// The write must not touch the slot holding A.
				slots := rc.slots(s)
				newestOff := slots[0]
				if rc.name == "segment 1 generation" {
					if s.gens[1].newest == 1 {
						newestOff = slots[1]
					}
				} else if r := recordOf(s, rc.name); r.newest == 1 {
					newestOff = slots[1]
				}
				if w.off == newestOff {
					t.Fatalf("update wrote the slot at %d holding the newest copy", w.off)
				}
				full := w.data
				checked := 0
				img := NewCrashMediaFrom(base, TearDAX)
				orig := base[w.off : w.off+int64(len(full))]
				for i := 0; i <= len(full); i++ {
					for _, suffix := range []bool{false, true} {
						// Restore the slot, then tear the update into it.
						if err := img.WriteAt(orig, w.off); err != nil {
							t.Fatal(err)
						}
						part, at := full[:i], w.off
						if suffix {
							part, at = full[i:], w.off+int64(i)
						}
						if err := img.WriteAt(part, at); err != nil {
							t.Fatal(err)
						}
						s3, err := Open(img)
						if err != nil {
							t.Fatalf("tear at byte %d (suffix %v): open: %v", i, suffix, err)
						}
						got, err := rc.read(s3)
						if err != nil {
							t.Fatalf("tear at byte %d: read: %v", i, err)
						}
						cur := make([]byte, len(full))
						_ = img.ReadAt(cur, w.off)
						complete := bytes.Equal(cur, full)
						switch {
						case reflect.DeepEqual(got, valA):
						case complete && reflect.DeepEqual(got, valB):
						default:
							t.Fatalf("tear at byte %d (suffix %v): read %v, want previous %v", i, suffix, got, valA)
						}
						checked++
					}
				}
				if checked < 2*len(full) {
					t.Fatalf("checked %d tears", checked)
				}
			})
		}
	}
}

func recordOf(s *Store, name string) *dualRecord {
	for _, r := range []*dualRecord{&s.info, &s.keyTail, &s.dirtyTail, &s.volumes} {
		if r.name == name {
			return r
		}
	}
	panic(name)
}

// TestBothSlotsCorrupt: corrupting both slots of a record gives a clear
// error naming it (or quarantines the segment, for generations).
func TestBothSlotsCorrupt(t *testing.T) {
	for _, rc := range recordCases() {
		t.Run(rc.name, func(t *testing.T) {
			m, s := newTestStore(t, 3, TearDAX, FormatOptions{})
			if err := rc.update(s, 1); err != nil { // both slots valid
				t.Fatal(err)
			}
			before := m.Bytes()
			for _, off := range rc.slots(s) {
				b := make([]byte, 1)
				_ = m.ReadAt(b, off+recordHeaderSize+1)
				b[0] ^= 0x40
				_ = m.WriteAt(b, off+recordHeaderSize+1)
			}
			corrupted := m.Bytes()
			s2, err := Open(m)
			if rc.name == "segment 1 generation" {
				if err != nil {
					t.Fatal(err)
				}
				if _, err := s2.Gen(1); !errors.Is(err, ErrQuarantined) {
					t.Fatalf("Gen(1) = %v, want ErrQuarantined", err)
				}
				if _, err := s2.BumpGen(1); !errors.Is(err, ErrQuarantined) {
					t.Fatalf("BumpGen(1) = %v, want ErrQuarantined", err)
				}
				if q := s2.Quarantined(); !reflect.DeepEqual(q, []uint32{1}) {
					t.Fatalf("quarantined %v", q)
				}
				if !bytes.Equal(m.Bytes(), corrupted) {
					t.Fatal("quarantine wrote to the media")
				}
				return
			}
			var fe *FormatError
			if !errors.As(err, &fe) || !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Open = %v, want *FormatError wrapping ErrCorrupt", err)
			}
			if !strings.HasPrefix(fe.Record, rc.name) || fe.Offset != rc.slots(s)[0] || !strings.Contains(fe.Expected, "crc32c") {
				t.Fatalf("error %q does not name record %q at %d with the checksum", err, rc.name, rc.slots(s)[0])
			}
			if !bytes.Equal(m.Bytes(), corrupted) || bytes.Equal(before, corrupted) {
				t.Fatal("Open wrote to the media")
			}
		})
	}
}

// TestTornSuperblock: the superblock slot not holding the newest copy torn
// at every byte leaves the superblock readable.
func TestTornSuperblock(t *testing.T) {
	m, s := newTestStore(t, 3, TearDAX, FormatOptions{})
	base := m.Bytes()
	sb := s.Superblock()
	nsb := sb
	nsb.SegmentCount = 2
	full := encodeSuperblock(nsb, 3) // slot 1 holds seq 2, so slot 0 is the target
	for i := 0; i <= len(full); i++ {
		img := NewCrashMediaFrom(base, TearDAX)
		_ = img.WriteAt(full[:i], offSuperblock0)
		s2, err := Open(img)
		if err != nil {
			t.Fatalf("tear at %d: %v", i, err)
		}
		cur := make([]byte, len(full))
		_ = img.ReadAt(cur, offSuperblock0)
		if got := s2.Superblock(); got != sb && !(bytes.Equal(cur, full) && got == nsb) {
			t.Fatalf("tear at %d: superblock %+v", i, got)
		}
	}
	// Both superblock slots corrupt: refused, naming the superblock.
	img := NewCrashMediaFrom(base, TearDAX)
	for _, off := range []int64{offSuperblock0, offSuperblock1} {
		_ = img.WriteAt([]byte{0xff}, off+recordHeaderSize+30)
	}
	_, err := Open(img)
	var fe *FormatError
	if !errors.As(err, &fe) || !errors.Is(err, ErrCorrupt) || !strings.HasPrefix(fe.Record, "superblock slot") {
		t.Fatalf("Open = %v", err)
	}
}
