package main

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/cachelun/cachelun/persist/persisttest"
)

// TestCheckReportsDamageAndRepairAsksFirst: check exits 1 naming the
// damage and the lost range of the volume; --repair changes nothing
// without consent; with it, the damaged kset is replaced and check is
// clean again.
func TestCheckReportsDamageAndRepairAsksFirst(t *testing.T) {
	path := persisttest.DamagedFile(t, t.TempDir())
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
