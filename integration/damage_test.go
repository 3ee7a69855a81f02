package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cachelun/cachelun/persist"
)

// TestDamagedJournalThroughTheBinary: four flipped bytes inside a kset in
// the middle of a journal of flushed writes. serve refuses the cache and
// says why (before, it logged "replay stopped" at INFO and served stale
// data for half the writes); check exits 1 naming the damage and the lost
// range; check --repair changes nothing without consent and, with it,
// makes the cache open again with every other write intact.
func TestDamagedJournalThroughTheBinary(t *testing.T) {
	dir := t.TempDir()
	d := startDaemon(t, dir, "")
	url := d.url(0)
	// 24 flushed writes of 4 KiB at distinct 1 MiB-aligned offsets.
	var cmds []string
	for i := range 24 {
		cmds = append(cmds, "write -P "+hexByte(0x10+i)+" "+itoa(i<<20)+" 4k", "flush")
	}
	qemuIO(t, url, cmds...)
	d.stop()

	cacheFile := filepath.Join(dir, "demo-cache.img")
	victim := middleDirtyKset(t, cacheFile)
	f, err := os.OpenFile(cacheFile, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	if _, err := f.ReadAt(b, victim+40); err != nil { // the kset's flush epoch
		t.Fatal(err)
	}
	for i := range b {
		b[i] ^= 0xff
	}
	if _, err := f.WriteAt(b, victim+40); err != nil {
		t.Fatal(err)
	}
	f.Close()

	r := runTool(t, time.Minute, binaryPath, "serve", "--data-dir", dir, "--listen", "127.0.0.1:0", "--metrics", "off")
	if r.timedOut || r.exitCode == 0 || !strings.Contains(r.out, "journal damaged") || !strings.Contains(r.out, "check --repair") {
		t.Fatalf("serve on a damaged journal: exit %d (timed out %v), want a refusal naming the damage:\n%s", r.exitCode, r.timedOut, r.out)
	}
	r = runTool(t, time.Minute, binaryPath, "check", cacheFile)
	if r.exitCode != 1 || !strings.Contains(r.out, "journal damaged") || !strings.Contains(r.out, "volume demo: bytes [") {
		t.Fatalf("check of a damaged journal: exit %d:\n%s", r.exitCode, r.out)
	}
	r = runTool(t, time.Minute, binaryPath, "check", "--repair", cacheFile) // no terminal, no --yes: nothing changes
	if r.exitCode != 1 || !strings.Contains(r.out, "nothing was changed") {
		t.Fatalf("check --repair without consent: exit %d:\n%s", r.exitCode, r.out)
	}
	mustRun(t, time.Minute, binaryPath, "check", "--repair", "--yes", cacheFile)
	mustRun(t, time.Minute, binaryPath, "check", cacheFile)

	d.restart()
	url = d.url(0)
	lost := 0
	for i := range 24 {
		out := runTool(t, toolTimeout, "qemu-io", "-f", "raw", "-c", "read -P "+hexByte(0x10+i)+" "+itoa(i<<20)+" 4k", url).out
		if strings.Contains(out, "Pattern verification failed") {
			lost++
		}
	}
	// The damaged kset held one write (each write was flushed on its
	// own): at most that one reads older data (none if writeback had
	// already written it to the backing file), every other one is intact.
	if lost > 1 {
		t.Fatalf("%d writes read older data after the repair, want at most the one the damaged kset held", lost)
	}
	d.stop()
}

// middleDirtyKset returns the media offset of a kset in the middle of the
// cache file's log that holds a dirty key.
func middleDirtyKset(t *testing.T, path string) int64 {
	t.Helper()
	m, err := persist.OpenFile(path, persist.FileOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	s, err := persist.Open(m)
	if err != nil {
		t.Fatal(err)
	}
	var dirty []persist.KSet
	r := s.ReplayVerified(s.KeyTail())
	for ks, ok := r.Next(); ok; ks, ok = r.Next() {
		for _, k := range ks.Keys {
			if k.Flags == persist.KeyDirty && k.Length == 4096 {
				dirty = append(dirty, ks)
				break
			}
		}
	}
	if len(dirty) < 8 {
		t.Fatalf("only %d ksets with dirty keys in the log (%v)", len(dirty), r.StopReason())
	}
	return s.DataOffset(dirty[len(dirty)/2].Pos)
}

func hexByte(b int) string { return fmt.Sprintf("0x%02x", b) }

func itoa(n int) string { return strconv.Itoa(n) }
