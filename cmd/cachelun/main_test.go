package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/cachelun/cachelun/conf"
	"github.com/cachelun/cachelun/persist"
	"github.com/cachelun/cachelun/persist/persisttest"
)

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := dispatch(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// TestSizeFlagIsConfGrammar: the --size flags read sizes as the
// configuration file does (conf.ParseSize), fractions and PiB included,
// and refuse 0, which stands for "not given".
func TestSizeFlagIsConfGrammar(t *testing.T) {
	for in, want := range map[string]int64{"256MiB": 256 << 20, "16GiB": 16 << 30, "4096": 4096, "1G": 1 << 30,
		"128KiB": 128 << 10, "2MB": 2e6, "1TiB": 1 << 40, "1.5GiB": 3 << 29, "1PiB": 1 << 50, " 8 MiB ": 8 << 20} {
		var got int64
		if err := (sizeFlag{&got}).Set(in); err != nil || got != want {
			t.Errorf("--size %q = %d, %v; want %d", in, got, err, want)
		}
		if c, err := conf.ParseSize(in); err != nil || c != got {
			t.Errorf("--size %q = %d, conf.ParseSize = %d, %v", in, got, c, err)
		}
	}
	for _, bad := range []string{"", "0", "0MiB", "-5MiB", "12XB", "MiB", "99999999999TiB", "0.3B"} {
		var got int64
		if err := (sizeFlag{&got}).Set(bad); err == nil {
			t.Errorf("--size %q accepted as %d", bad, got)
		}
	}
}

func TestFormatInspectCheck(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.cache")
	code, out, errs := run(t, "format", "--size", "8MiB", "--segment-size", "256KiB", "--data-crc", path)
	if code != 0 || !strings.Contains(out, "31 segments of 262144 bytes") {
		t.Fatalf("format: %d %q %q", code, out, errs)
	}
	if st, _ := os.Stat(path); st.Size() != 8<<20 {
		t.Fatalf("file size %d", st.Size())
	}
	code, out, errs = run(t, "inspect", path)
	for _, want := range []string{"pwrite-fdatasync", "31 segments of 262144", "data crc true", "key tail:      segment 0 offset 0 LSN 1", "0 ksets"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("inspect (code %d) lacks %q:\n%s%s", code, want, out, errs)
		}
	}
	code, out, _ = run(t, "inspect", "--json", path)
	var rep persist.Report
	if code != 0 || json.Unmarshal([]byte(out), &rep) != nil || rep.Superblock.SegmentCount != 31 || !rep.Superblock.DataCRC || rep.MediaKind != persist.DefaultFileKind {
		t.Fatalf("inspect --json: %d %+v\n%s", code, rep, out)
	}
	if code, out, _ = run(t, "check", path); code != 0 || !strings.Contains(out, "clean") {
		t.Fatalf("check: %d %q", code, out)
	}
	// Flags after the file name work too.
	if code, _, _ = run(t, "inspect", path, "--json"); code != 0 {
		t.Fatalf("inspect FILE --json: %d", code)
	}
}

func TestFormatRefusesDirty(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.cache")
	if code, _, errs := run(t, "format", "--size", "4MiB", "--segment-size", "128KiB", path); code != 0 {
		t.Fatal(errs)
	}
	// Clean keys only: reformat allowed.
	persisttest.AppendKey(t, path, persist.KeyClean)
	if code, _, errs := run(t, "format", "--segment-size", "128KiB", path); code != 0 {
		t.Fatalf("reformat of a clean cache: %d %s", code, errs)
	}
	persisttest.AppendKey(t, path, persist.KeyDirty)
	before, _ := os.ReadFile(path)
	code, _, errs := run(t, "format", "--size", "2MiB", path)
	if code != 1 || !strings.Contains(errs, "dirty") {
		t.Fatalf("format of a dirty cache: %d %q", code, errs)
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Fatal("refused format changed the file")
	}
	code, out, _ := run(t, "inspect", path)
	if code != 0 || !strings.Contains(out, "1 dirty") {
		t.Fatalf("inspect: %d\n%s", code, out)
	}
	if code, _, errs = run(t, "format", "--force", "--size", "2MiB", "--segment-size", "128KiB", path); code != 0 {
		t.Fatalf("forced format: %d %s", code, errs)
	}
}

func TestCheckFindsProblems(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "p.cache")
	if code, _, errs := run(t, "format", "--size", "4MiB", "--segment-size", "128KiB", "--data-crc", path); code != 0 {
		t.Fatal(errs)
	}
	// A key whose data CRC does not match the data.
	m, _ := persist.OpenFile(path, persist.FileOptions{})
	s, err := persist.Open(m)
	if err != nil {
		t.Fatal(err)
	}
	j := s.OpenJournal(s.KeyTail(), func() (uint32, error) { return 2, nil })
	if _, err := j.Commit([]persist.Key{{Volume: 1, Length: 4096, Pos: persist.Pos{Seg: 1}, Gen: 1, Flags: persist.KeyDirty, DataCRC: 12345}}, 0); err != nil {
		t.Fatal(err)
	}
	m.Close()
	code, out, _ := run(t, "check", path)
	if code != 1 || !strings.Contains(out, path+": 1 problem\n") || !strings.Contains(out, "key says 0x00003039") {
		t.Fatalf("check: %d\n%s", code, out)
	}
	// inspect prints its report of the file check rejects, and exits 1
	code, out, errs := run(t, "inspect", path)
	if code != 1 || !strings.Contains(out, "1 ksets") || !strings.Contains(errs, path+": 1 problem (cachelun check") {
		t.Fatalf("inspect of a file check rejects: %d\n%s%s", code, out, errs)
	}
	if code, _, _ := run(t, "inspect", "--json", path); code != 1 {
		t.Fatalf("inspect --json of a file check rejects: %d", code)
	}
	// Not a cachelun file: exit 1 with the reason; missing file: exit 2.
	other := filepath.Join(dir, "other")
	_ = os.WriteFile(other, bytes.Repeat([]byte{7}, 1<<20), 0o644)
	if code, _, errs := run(t, "check", other); code != 1 || !strings.Contains(errs, "not a cachelun cache file") {
		t.Fatalf("check of a foreign file: %d %q", code, errs)
	}
	if code, _, errs := run(t, "inspect", other); code != 1 || !strings.Contains(errs, "superblock slot 0 at offset 4096") {
		t.Fatalf("inspect of a foreign file: %d %q", code, errs)
	}
	if raw, _ := os.ReadFile(other); !bytes.Equal(raw, bytes.Repeat([]byte{7}, 1<<20)) {
		t.Fatal("check/inspect wrote to a foreign file")
	}
	// A cachelun file from a newer format: refused with the reason, untouched.
	newer := filepath.Join(dir, "newer.cache")
	if code, _, errs := run(t, "format", "--size", "1MiB", "--segment-size", "128KiB", newer); code != 0 {
		t.Fatal(errs)
	}
	raw, _ := os.ReadFile(newer)
	raw[4096+24], raw[8192+24] = 2, 2 // superblock version field, both slots
	_ = os.WriteFile(newer, raw, 0o644)
	if code, _, errs := run(t, "check", newer); code != 1 || !strings.Contains(errs, "newer on-media format") || !strings.Contains(errs, "found version 2") {
		t.Fatalf("check of a newer format: %d %q", code, errs)
	}
	if after, _ := os.ReadFile(newer); !bytes.Equal(after, raw) {
		t.Fatal("check wrote to a newer-format file")
	}
	if code, _, _ := run(t, "check", filepath.Join(dir, "missing")); code != 2 {
		t.Fatalf("check of a missing file: %d", code)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{}, {"nope"}, {"format"}, {"format", "--size", "12XB", "f"}, {"inspect"}, {"check", "a", "b"}, {"format", filepath.Join(t.TempDir(), "new")}} {
		if code, _, _ := run(t, args...); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
	// the engine's minimum is 3 segments
	small := filepath.Join(t.TempDir(), "small")
	if code, _, errs := run(t, "format", "--size", "64KiB", small); code != 2 || !strings.Contains(errs, "at least 3 segments") {
		t.Errorf("too small: %d %q", code, errs)
	}
	if names, _ := filepath.Glob(small + "*"); len(names) != 0 {
		t.Errorf("too small a format left %v", names)
	}
}

// Help is an answer, not a usage error: exit 0, usage on stdout. A usage
// error exits 2 with the usage on stderr.
func TestHelpExitsZero(t *testing.T) {
	for _, cmd := range []string{"format", "inspect", "check"} {
		for _, h := range []string{"-h", "--help"} {
			code, out, errs := run(t, cmd, h)
			if code != 0 || !strings.HasPrefix(out, "usage: cachelun "+cmd+" ") || !strings.Contains(out, "\n  -") && cmd != "check" || errs != "" {
				t.Errorf("%s %s: exit %d\nstdout %q\nstderr %q", cmd, h, code, out, errs)
			}
		}
		code, out, errs := run(t, cmd, "--bogus")
		if code != 2 || out != "" || !strings.Contains(errs, "flag provided but not defined: -bogus") || !strings.Contains(errs, "usage: cachelun "+cmd) {
			t.Errorf("%s --bogus: exit %d\nstdout %q\nstderr %q", cmd, code, out, errs)
		}
	}
	code, out, errs := run(t, "--help")
	if code != 0 || !strings.Contains(out, "cachelun version") || errs != "" {
		t.Errorf("--help: exit %d\nstdout %q\nstderr %q", code, out, errs)
	}
	code, out, errs = run(t, "serve", "--help")
	if code != 0 || !strings.HasPrefix(out, "usage: cachelun serve [--config FILE]") || !strings.Contains(out, "-metrics") || errs != "" {
		t.Errorf("serve --help: exit %d\nstdout %q\nstderr %q", code, out, errs)
	}
	for _, args := range [][]string{{"status", "--help"}, {"volume", "help"}, {"config", "show", "-h"}, {"stats", "--help"}} {
		if code, out, errs := run(t, args...); code != 0 || !strings.HasPrefix(out, "usage: cachelun "+args[0]) || errs != "" {
			t.Errorf("%q: exit %d\nstdout %q\nstderr %q", args, code, out, errs)
		}
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		code, out, errs := run(t, args...)
		if code != 0 || !strings.HasPrefix(out, "cachelun ") || !strings.Contains(out, ", commit ") ||
			!strings.Contains(out, runtime.Version()) || errs != "" {
			t.Errorf("%q: exit %d %q %q", args, code, out, errs)
		}
	}
	if code, _, _ := run(t, "version", "extra"); code != 2 {
		t.Errorf("version extra: exit %d", code)
	}
	bi := &debug.BuildInfo{Main: debug.Module{Version: "v0.2.0"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "4a99b0f1c2d3e4f5"}, {Key: "vcs.modified", Value: "true"}}}
	want := "cachelun v0.2.0, commit 4a99b0f1c2d3e4f5+modified, " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH
	if got := versionLine(bi, true); got != want {
		t.Errorf("versionLine = %q, want %q", got, want)
	}
	if got := versionLine(nil, false); !strings.HasPrefix(got, "cachelun unknown, commit unknown, go") {
		t.Errorf("versionLine without build info = %q", got)
	}
}
