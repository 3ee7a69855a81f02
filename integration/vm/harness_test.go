package vm

import (
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

type cpioEntry struct {
	mode uint32
	data string
}

// readCPIO is an independent newc reader used to check writeCPIO.
func readCPIO(t *testing.T, path string) map[string]cpioEntry {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]cpioEntry{}
	align := func(n int) int { return (n + 3) &^ 3 }
	for off := 0; ; {
		if off+110 > len(b) || string(b[off:off+6]) != "070701" {
			t.Fatalf("bad header at %d", off)
		}
		field := func(i int) int {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return int(v)
		}
		mode, size, nameLen := field(1), field(6), field(11)
		name := string(b[off+110 : off+110+nameLen-1])
		dataOff := align(off + 110 + nameLen)
		if name == "TRAILER!!!" {
			break
		}
		out[name] = cpioEntry{mode: uint32(mode), data: string(b[dataOff : dataOff+size])}
		off = align(dataOff + size)
	}
	return out
}

func TestWriteCPIO(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "bin"), 0o755)
	os.WriteFile(filepath.Join(root, "init"), []byte("#!/bin/sh\necho hi\n"), 0o755)
	os.WriteFile(filepath.Join(root, "bin", "odd"), []byte("12345"), 0o644)
	os.Symlink("busybox", filepath.Join(root, "bin", "sh"))
	out := filepath.Join(t.TempDir(), "i.gz")
	if err := writeCPIO(root, out); err != nil {
		t.Fatal(err)
	}
	got := readCPIO(t, out)
	want := map[string]cpioEntry{
		"bin":     {0o040755, ""},
		"init":    {0o100755, "#!/bin/sh\necho hi\n"},
		"bin/odd": {0o100644, "12345"},
		"bin/sh":  {0o120777, "busybox"},
	}
	if len(got) != len(want) {
		t.Fatalf("entries %v", got)
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s: got %o %q, want %o %q", name, got[name].mode, got[name].data, w.mode, w.data)
		}
	}
}

func TestResultParse(t *testing.T) {
	r := &Result{Log: "boot\r\n@@T 1.5 init\r\n[  2.0] x @@PASS enable answered in 0.1s\n@@FAIL readback differs\n@@PASS disk\n@@DONE\n"}
	r.parse()
	if !r.Done || len(r.Passed) != 2 || len(r.Failed) != 1 || len(r.Marks) != 1 || r.Marks[0] != "1.5 init" {
		t.Fatalf("parsed %+v", r)
	}
	err := r.Err("enable", "disk", "remove")
	if err == nil || !strings.Contains(err.Error(), "FAIL readback differs") || !strings.Contains(err.Error(), "no PASS for remove") {
		t.Fatalf("Err = %v", err)
	}
	ok := &Result{Log: "@@PASS a x\n@@DONE\n"}
	ok.parse()
	if err := ok.Err("a"); err != nil {
		t.Fatal(err)
	}
	timeout := &Result{Log: "@@PASS a\n", TimedOut: true}
	timeout.parse()
	if err := timeout.Err("a"); err == nil || !strings.Contains(err.Error(), "killed") || !strings.Contains(err.Error(), "@@DONE") {
		t.Fatalf("Err = %v", err)
	}
}

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/drivers/target/target_core_user.ko": "target_core_user",
		"crc32c-intel": "crc32c_intel",
		"x/y/z.ko.xz":  "z",
	} {
		if got := moduleName(in); got != want {
			t.Errorf("moduleName(%q) = %q, want %q", in, got, want)
		}
	}
}
