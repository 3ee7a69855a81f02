// Package persisttest builds cache files in states the tests of persist,
// the daemon and the command line need (with a dirty key, with a damaged
// journal) and the small file systems they run out of space on. Test code
// only; nothing else imports it.
package persisttest

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cachelun/cachelun/persist"
)

// AppendKey journals one key of 4 KiB at volume 1, offset 0, with flags
// (persist.KeyDirty: the file then holds dirty data) in the cache file at
// path.
func AppendKey(t testing.TB, path string, flags persist.KeyFlags) {
	t.Helper()
	m, s := Open(t, path)
	defer m.Close()
	r := s.Replay(s.KeyTail())
	for _, ok := r.Next(); ok; _, ok = r.Next() {
	}
	j := s.OpenJournal(r.Head(), func() (uint32, error) { return 2, nil })
	if _, err := j.Commit([]persist.Key{{Volume: 1, Offset: 0, Length: 4096, Pos: persist.Pos{Seg: 1}, Gen: 1, Flags: flags}}, 0); err != nil {
		t.Fatal(err)
	}
}

// DamagedFile formats an 8 MiB cache file in dir, journals 24 durable ksets
// of one dirty key each for volume 0 ("db1"; key i at offset i*64 KiB),
// sets the durable mark, and flips four bytes in the flush epoch of the
// 12th kset (LSN 12), whose keys stay readable for a damage report.
func DamagedFile(t testing.TB, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "c.cache")
	if _, err := persist.FormatFile(context.Background(), path, persist.FileFormatOptions{Size: 8 << 20,
		Format: persist.FormatOptions{SegmentSize: 256 << 10}}); err != nil {
		t.Fatal(err)
	}
	m, s := Open(t, path)
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

// Open opens the cache file at path read-write.
func Open(t testing.TB, path string) (persist.Media, *persist.Store) {
	t.Helper()
	m, err := persist.OpenFile(path, persist.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := persist.Open(m)
	if err != nil {
		m.Close()
		t.Fatal(err)
	}
	return m, s
}

// MountSmall mounts a tmpfs of size ("8m") on a temporary directory for the
// test and returns it; the test is skipped unless it runs as root.
func MountSmall(t testing.TB, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}
