package scsi

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var updateGolden = flag.Bool("update", false, "rewrite testdata/*.golden from the code")

// TestIdentityGolden pins each LUN's identity as a host reads it (VPD 80h
// serial, VPD 83h NAA-6 and T10 vendor ID designators) for a few inputs of
// each derivation. The golden file holds the values the derivations gave
// when they were moved here from cmd/cachelun and target/tcmu; a failure
// means every host would see every LUN renamed. Never run -update to make
// this test pass unless renaming every LUN is the point.
func TestIdentityGolden(t *testing.T) {
	type input struct {
		what string
		iqn  string
		lun  uint64
		id   *Identity // nil: the logical unit is configured without one
	}
	lunID := func(iqn, vol string) *Identity { id := LUNIdentity(iqn, vol); return &id }
	tcmuID := func(serial, cfg string) *Identity { id := TCMUIdentity(serial, cfg); return &id }
	inputs := []input{
		{"iscsi iqn=iqn.2024-01.io.cachelun:demo lun=0 volume=demo", "iqn.2024-01.io.cachelun:demo", 0, lunID("iqn.2024-01.io.cachelun:demo", "demo")},
		{"iscsi iqn=iqn.2024-01.io.cachelun:demo lun=1 volume=demo", "iqn.2024-01.io.cachelun:demo", 1, lunID("iqn.2024-01.io.cachelun:demo", "demo")},
		{"iscsi iqn=iqn.2024-01.io.cachelun:db lun=0 volume=db1", "iqn.2024-01.io.cachelun:db", 0, lunID("iqn.2024-01.io.cachelun:db", "db1")},
		{"iscsi iqn=IQN.2024-01.IO.CACHELUN:DB lun=3 volume=db1", "IQN.2024-01.IO.CACHELUN:DB", 3, lunID("IQN.2024-01.IO.CACHELUN:DB", "db1")},
		{"iscsi iqn=iqn.2003-01.org.example:tgt lun=7 volume=vm-disk-0", "iqn.2003-01.org.example:tgt", 7, lunID("iqn.2003-01.org.example:tgt", "vm-disk-0")},
		{"tcmu lio_serial= cfgstring=db1", "", 0, tcmuID("", "db1")},
		{"tcmu lio_serial= cfgstring=cachelun/db1", "", 0, tcmuID("", "cachelun/db1")},
		{"tcmu lio_serial=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0 cfgstring=db1", "", 0, tcmuID("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "db1")},
		{"tcmu lio_serial=a3f1c2d4e5f60718 cfgstring=vm-disk-0", "", 0, tcmuID("a3f1c2d4e5f60718", "vm-disk-0")},
		{"unconfigured target=iqn.2024-01.io.cachelun:demo lun=0", "iqn.2024-01.io.cachelun:demo", 0, nil},
		{"unconfigured target=iqn.2024-01.io.cachelun:demo lun=1", "iqn.2024-01.io.cachelun:demo", 1, nil},
		{"unconfigured target=naa.test lun=3", "naa.test", 3, nil},
	}
	var b strings.Builder
	for _, in := range inputs {
		tgt := NewTarget(TargetConfig{Name: in.iqn})
		vol, err := memvolNew(64*testBS, testBS)
		if err != nil {
			t.Fatal(err)
		}
		cfg := LUConfig{Volume: vol}
		if in.id != nil {
			cfg.SerialNumber, cfg.DeviceID = in.id.Serial, in.id.DeviceID
		}
		if _, err := tgt.AddLU(in.lun, cfg); err != nil {
			t.Fatal(err)
		}
		inquiry := func(page byte) []byte {
			r := tgt.Execute(context.Background(), &Command{LUN: in.lun, CDB: []byte{0x12, 1, page, 0, 255, 0}, DataInLen: 255})
			if r.Status != StatusGood {
				t.Fatalf("%s: VPD %#x: status %#x", in.what, page, r.Status)
			}
			return r.Data
		}
		fmt.Fprintf(&b, "%s\n", in.what)
		fmt.Fprintf(&b, "  serial %s\n", inquiry(0x80)[4:])
		for p := inquiry(0x83)[4:]; len(p) >= 4; p = p[4+int(p[3]):] {
			d := p[4 : 4+int(p[3])]
			switch p[1] & 0x0f {
			case 3:
				fmt.Fprintf(&b, "  naa    %x\n", d)
			case 1:
				fmt.Fprintf(&b, "  t10    %q\n", d)
			}
		}
		if in.id != nil {
			if naa := in.id.NAA(); fmt.Sprintf("%x", naa) != fmt.Sprintf("%x", inquiry(0x83)[8:24]) {
				t.Fatalf("%s: Identity.NAA %x differs from VPD 83h", in.what, naa)
			}
		}
	}
	path := filepath.Join("testdata", "identity.golden")
	if *updateGolden {
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if b.String() != string(want) {
		t.Fatalf("LUN identities changed: every host would see these LUNs renamed\ngot:\n%s\nwant:\n%s", b.String(), want)
	}
}
