package persist_test

import (
	"bytes"
	"errors"
	"os"
	"testing"

	"github.com/cachelun/cachelun/persist"
	"github.com/cachelun/cachelun/persist/persisttest"
)

// RepairJournal asks before each repair: declined, it changes nothing and
// says so (ErrRepairDeclined); accepted, it replaces the damaged kset once
// and the file checks clean.
func TestRepairJournal(t *testing.T) {
	path := persisttest.DamagedFile(t, t.TempDir())
	before, _ := os.ReadFile(path)
	m, s := persisttest.Open(t, path)
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

	m, s = persisttest.Open(t, path)
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
