package scsi

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// noALUACDBs are the commands whose answers ALUA could change: the identity
// pages, REPORT TARGET PORT GROUPS itself (refused when ALUA is not
// configured) and how REPORT SUPPORTED OPERATION CODES reports it, and a
// few commands every host sends. The full command list and VPD 8Fh are left
// out (they change whenever a command is added); TestALUARSOCListsRTPG
// compares the list with and without ALUA instead.
var noALUACDBs = []struct {
	name string
	cdb  []byte
	in   uint32
}{
	{"standard INQUIRY", []byte{0x12, 0, 0, 0, 255, 0}, 255},
	{"INQUIRY short", []byte{0x12, 0, 0, 0, 6, 0}, 6},
	{"VPD 00h", []byte{0x12, 1, 0x00, 0, 255, 0}, 255},
	{"VPD 80h", []byte{0x12, 1, 0x80, 0, 255, 0}, 255},
	{"VPD 83h", []byte{0x12, 1, 0x83, 1, 0, 0}, 256},
	{"VPD 86h", []byte{0x12, 1, 0x86, 0, 255, 0}, 255},
	{"VPD B0h", []byte{0x12, 1, 0xb0, 0, 255, 0}, 255},
	{"VPD B1h", []byte{0x12, 1, 0xb1, 0, 255, 0}, 255},
	{"VPD B2h", []byte{0x12, 1, 0xb2, 0, 255, 0}, 255},
	{"VPD 85h (none)", []byte{0x12, 1, 0x85, 0, 255, 0}, 255},
	{"RSOC one A3h/0Ah", []byte{0xa3, 0x0c, 0x02, 0xa3, 0, 0x0a, 0, 0, 1, 0, 0, 0}, 256},
	{"RSOC one A3h/0Ah RCTD", []byte{0xa3, 0x0c, 0x82, 0xa3, 0, 0x0a, 0, 0, 1, 0, 0, 0}, 256},
	{"RSOC one A3h (needs SA)", []byte{0xa3, 0x0c, 0x01, 0xa3, 0, 0, 0, 0, 1, 0, 0, 0}, 256},
	{"REPORT TARGET PORT GROUPS", []byte{0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, 256},
	{"REPORT TARGET PORT GROUPS extended", []byte{0xa3, 0x2a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, 256},
	{"REPORT TARGET PORT GROUPS short CDB", []byte{0xa3, 0x0a, 0, 0, 0, 0}, 256},
	{"REPORT TARGET PORT GROUPS NACA", []byte{0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0x04}, 256},
	{"SET TARGET PORT GROUPS", []byte{0xa4, 0x0a, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0}, 0},
	{"MAINTENANCE IN unknown SA", []byte{0xa3, 0x05, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, 256},
	{"TEST UNIT READY", []byte{0x00, 0, 0, 0, 0, 0}, 0},
	{"READ CAPACITY(10)", []byte{0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 8},
	{"READ CAPACITY(16)", []byte{0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}, 32},
	{"MODE SENSE(10) all", []byte{0x5a, 0, 0x3f, 0, 0, 0, 0, 0x10, 0, 0}, 4096},
	{"REPORT LUNS", []byte{0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, 256},
	{"REQUEST SENSE", []byte{0x03, 0, 0, 0, 18, 0}, 18},
	{"READ(10)", []byte{0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0}, 512},
	{"WRITE(10)", []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0}, 0},
	{"PERSISTENT RESERVE IN READ KEYS", []byte{0x5e, 0, 0, 0, 0, 0, 0, 1, 0, 0}, 256},
}

// TestNoALUAOutputsUnchanged pins, byte for byte, what a logical unit
// without ALUA answers to the commands ALUA touches, on a thick and a thin
// logical unit, through two ports. testdata/noalua.golden was written
// before ALUA existed: a logical unit that does not configure it must
// answer exactly as before.
func TestNoALUAOutputsUnchanged(t *testing.T) {
	var b strings.Builder
	for _, thin := range []bool{false, true} {
		f := newFixture(t, func(c *LUConfig) { c.Thin = thin })
		f.clearUA(nexusC)
		b.WriteString(noALUATranscript(f, thin))
	}
	path := filepath.Join("testdata", "noalua.golden")
	if *updateGolden {
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := readGolden("noalua.golden")
	if err != nil {
		t.Fatal(err)
	}
	if b.String() != want {
		t.Fatalf("a logical unit without ALUA answers differently:\n%s", firstLineDiff(b.String(), want))
	}
}

// noALUATranscript runs noALUACDBs through port 1 (nexusA) and port 2
// (nexusC) of f, whose unit attentions are cleared, and writes down the
// answers.
func noALUATranscript(f *fixture, thin bool) string {
	var b strings.Builder
	for _, n := range []*Nexus{nexusA, nexusC} {
		for _, c := range noALUACDBs {
			out := []byte(nil)
			if c.cdb[0] == 0x2a {
				out = make([]byte, 512)
			}
			r := f.exec(n, c.cdb, out, c.in)
			fmt.Fprintf(&b, "thin=%v port=%d %s\n  status %02x xfer %d\n", thin, n.RelativePortID, c.name, r.Status, r.TransferLen)
			if r.Sense != nil {
				fmt.Fprintf(&b, "  sense % x\n", r.Sense)
			}
			if len(r.Data) > 0 && c.cdb[0] != 0x28 {
				fmt.Fprintf(&b, "  data  % x\n", r.Data)
			}
		}
	}
	return b.String()
}

func readGolden(name string) (string, error) {
	b, err := os.ReadFile(filepath.Join("testdata", name))
	return string(b), err
}

// haveCommand reports whether an executable is on PATH.
func haveCommand(name string) bool {
	_, err := exec.LookPath(name)
	return err == nil
}

// runWithHex writes data as ASCII hex to a file and runs a tool on it (an
// sg3-utils --inhex reader); "%s" in args is the file's path.
func runWithHex(t *testing.T, data []byte, tool string, args ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "data.hex")
	if err := os.WriteFile(path, []byte(fmt.Sprintf("% x\n", data)), 0o644); err != nil {
		t.Fatal(err)
	}
	for i, a := range args {
		args[i] = strings.ReplaceAll(a, "%s", path)
	}
	out, err := exec.Command(tool, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", tool, args, err, out)
	}
	return string(out)
}

// firstLineDiff shows the first line where got and want differ.
func firstLineDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := range max(len(g), len(w)) {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return fmt.Sprintf("line %d:\n got  %s\n want %s", i+1, gl, wl)
		}
	}
	return "(equal)"
}
