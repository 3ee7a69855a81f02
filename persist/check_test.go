package persist

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckAndInspect(t *testing.T) {
	m, s := newTestStore(t, 6, TearDAX, FormatOptions{DataCRC: true})
	data := bytes.Repeat([]byte{0x5a}, 8192)
	if err := m.WriteAt(data, s.DataOffset(Pos{Seg: 4})); err != nil {
		t.Fatal(err)
	}
	j := s.OpenJournal(s.KeyTail(), seqAlloc(4)) // log in segments 0..3
	good := Key{Volume: 1, Length: 8192, Pos: Pos{Seg: 4}, Gen: 1, Flags: KeyDirty, DataCRC: DataCRC32C(data)}
	var last KSet
	for i := 0; i < 100; i++ {
		keys := testKeys(40, uint64(i), s)
		for k := range keys {
			if keys[k].Flags != KeyTombstone {
				keys[k] = good
			}
		}
		var err error
		if last, err = j.Commit(keys, 0); err != nil {
			t.Fatal(err)
		}
	}
	problems, err := Check(s)
	if err != nil || len(problems) != 0 {
		t.Fatalf("clean cache: %v %v", problems, err)
	}
	rep, err := Inspect(s)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Journal.KSets != 100 || rep.Journal.LastLSN != 100 || rep.Journal.Head != last.Next || rep.Segments.Data != 1 || len(rep.Segments.Log) < 2 || rep.MediaKind != KindCrash {
		t.Fatalf("inspect %+v", rep)
	}

	// Data that no longer matches its key's CRC; a generation that went
	// backwards; a quarantined segment; a dirty tail off the log.
	base := m.Bytes()
	img := NewCrashMediaFrom(base, TearDAX)
	_ = img.WriteAt([]byte{1}, s.DataOffset(Pos{Seg: 4, Off: 100}))
	for _, off := range s.genOffs(5) {
		_ = img.WriteAt([]byte{0xee}, off+recordHeaderSize)
	}
	s2, err := Open(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.SetDirtyTail(Tail{Pos: Pos{Seg: 5, Off: 0}, LSN: 3}); err != nil {
		t.Fatal(err)
	}
	problems, err = Check(s2)
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(problems, "\n")
	for _, want := range []string{"segment 5 quarantined", "dirty tail (segment 5 offset 0 LSN 3) is not on the log", "has crc32c"} {
		if !strings.Contains(all, want) {
			t.Fatalf("problems lack %q:\n%s", want, all)
		}
	}

	// Stale keys (segment generation bumped) are counted, not reported.
	s3, _ := Open(NewCrashMediaFrom(base, TearDAX))
	if _, err := s3.BumpGen(4); err != nil {
		t.Fatal(err)
	}
	rep, _ = Inspect(s3)
	if problems, _ := Check(s3); len(problems) != 0 || rep.Journal.Stale != rep.Journal.Dirty {
		t.Fatalf("after a generation bump: %v, %+v", problems, rep.Journal)
	}
}

func TestOpenFileLogsKind(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	path := filepath.Join(t.TempDir(), "log.cache")
	m, err := OpenFile(path, FileOptions{Create: true, Size: 1 << 20, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if !strings.Contains(buf.String(), "MAP_SYNC unavailable") || !strings.Contains(buf.String(), "kind="+string(m.Kind())) {
		t.Fatalf("log:\n%s", buf.String())
	}
	if st, _ := os.Stat(path); st.Size() != 1<<20 {
		t.Fatalf("size %d", st.Size())
	}
}
