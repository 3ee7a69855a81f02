package persist_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cachelun/cachelun/persist"
)

// damagedFile formats a cache file, journals 24 durable ksets of one key
// each, sets the durable mark and flips four bytes in the flush epoch of
// the 12th kset.
func damagedFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "c.cache")
	if _, err := persist.FormatFile(context.Background(), path, persist.FileFormatOptions{Size: 8 << 20,
		Format: persist.FormatOptions{SegmentSize: 256 << 10}}); err != nil {
		t.Fatal(err)
	}
	m, err := persist.OpenFile(path, persist.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := persist.Open(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetVolumes([]persist.VolumeRecord{{ID: 0, Name: "db1", Size: 1 << 30}}); err != nil {
		t.Fatal(err)
	}
	j := s.OpenJournal(s.KeyTail(), func() (uint32, error) { return 1, nil })
	var victim persist.KSet
	for i := range 24 {
		k := persist.Key{Volume: 0, Offset: uint64(i) << 16, Length: 4096, Pos: persist.Pos{Seg: 5, Off: uint32(i) * 4096}, Gen: 1, Flags: persist.KeyDirty}
		ks, err := j.Commit([]persist.Key{k}, uint64(i))
		if err != nil {
			t.Fatal(err)
		}
		if i == 11 {
			victim = ks
		}
	}
	if err := s.SetDurableMark(j.Durable()); err != nil {
		t.Fatal(err)
	}
	at := s.DataOffset(victim.Pos) + 40
	m.Close()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 4)
	if _, err := f.ReadAt(b, at); err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] ^= 0xff
	}
	if _, err := f.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
	return path
}

// RepairJournal asks before each repair: declined, it changes nothing and
// says so (ErrRepairDeclined); accepted, it replaces the damaged kset once
// and the file checks clean.
func TestRepairJournal(t *testing.T) {
	path := damagedFile(t)
	open := func() (persist.Media, *persist.Store) {
		m, err := persist.OpenFile(path, persist.FileOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s, err := persist.Open(m)
		if err != nil {
			t.Fatal(err)
		}
		return m, s
	}
	before, _ := os.ReadFile(path)
	m, s := open()
	var shown []uint64
	n, err := s.RepairJournal(64, func(d *persist.DamageError) bool { shown = append(shown, d.Stop.LSN); return false },
		func(*persist.DamageError, bool) { t.Error("repaired without consent") })
	m.Close()
	if !errors.Is(err, persist.ErrRepairDeclined) || n != 0 || len(shown) != 1 || shown[0] != 12 {
		t.Fatalf("declined: %d repairs, %v, damage shown at LSNs %v", n, err, shown)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatal("a declined repair changed the file")
	}

	m, s = open()
	defer m.Close()
	var done int
	n, err = s.RepairJournal(64, func(*persist.DamageError) bool { return true }, func(*persist.DamageError, bool) { done++ })
	if err != nil || n != 1 || done != 1 {
		t.Fatalf("repair: %d repairs (%d reported), %v", n, done, err)
	}
	if problems, err := persist.Check(s); err != nil || len(problems) != 0 {
		t.Fatalf("after the repair: %v %v", problems, err)
	}
}
