package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cachelun/cachelun/persist"
)

// damagedCacheFile formats a cache file, journals 24 durable ksets of one
// key each, sets the durable mark, and flips four bytes in the flush epoch
// of the 12th kset (its keys stay readable for the report).
func damagedCacheFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "c.cache")
	if code, out, errs := run(t, "format", "--size", "8MiB", "--segment-size", "256KiB", path); code != 0 {
		t.Fatalf("format: %d %s %s", code, out, errs)
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

// TestCheckReportsDamageAndRepairAsksFirst: check exits 1 naming the
// damage and the lost range of the volume; --repair changes nothing
// without consent; with it, the damaged kset is replaced and check is
// clean again.
func TestCheckReportsDamageAndRepairAsksFirst(t *testing.T) {
	path := damagedCacheFile(t)
	code, out, errs := run(t, "check", path)
	if code != 1 || !strings.Contains(out, "journal damaged") || !strings.Contains(out, "LSN 12") ||
		!strings.Contains(out, "volume db1: bytes [720896, 724992) may read older data") {
		t.Fatalf("check of a damaged journal: exit %d\n%s%s", code, out, errs)
	}
	before, _ := os.ReadFile(path)
	var o, e bytes.Buffer
	if code := runRepair(path, false, strings.NewReader("no\n"), &o, &e); code != 1 || !strings.Contains(o.String(), "nothing was changed") {
		t.Fatalf("repair declined: exit %d\n%s%s", code, o.String(), e.String())
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatal("a declined repair changed the file")
	}
	o.Reset()
	e.Reset()
	if code := runRepair(path, false, strings.NewReader("yes\n"), &o, &e); code != 0 || !strings.Contains(o.String(), "clean after 1 repair(s)") {
		t.Fatalf("repair: exit %d\n%s%s", code, o.String(), e.String())
	}
	if code, out, _ := run(t, "check", path); code != 0 || !strings.Contains(out, "clean") {
		t.Fatalf("check after repair: %d %s", code, out)
	}
}
