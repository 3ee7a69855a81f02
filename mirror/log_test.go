package mirror

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func lsnsOf(t *testing.T, l *Log) []uint64 {
	t.Helper()
	s, err := l.Replay()
	if err != nil {
		t.Fatal(err)
	}
	var out []uint64
	for _, x := range s {
		out = append(out, x.LSN)
	}
	return out
}

func equal(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestLogAppendTrimReopen: shipments come back in order; a trim drops those
// up to its LSN (a trim past all of them empties the file); a reopen
// replays the same; a torn tail is cut off.
func TestLogAppendTrimReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v.mirror")
	l, err := OpenLog(path)
	if err != nil {
		t.Fatal(err)
	}
	p := func(s string) []byte { return []byte(s) }
	if err := l.Append([]uint64{5, 6, 7}, [][]byte{p("a"), p("b"), p("c")}); err != nil {
		t.Fatal(err)
	}
	if err := l.Trim(5); err != nil {
		t.Fatal(err)
	}
	if got := lsnsOf(t, l); !equal(got, []uint64{6, 7}) {
		t.Fatalf("after trim 5: %v", got)
	}
	if err := l.Append([]uint64{8}, [][]byte{p("d")}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	l, err = OpenLog(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := lsnsOf(t, l); !equal(got, []uint64{6, 7, 8}) {
		t.Fatalf("reopened: %v", got)
	}
	// a torn append: half a frame at the end
	fi, _ := os.Stat(path)
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.Write(appendFrame(nil, kindShipment, 9, p("torn"))[:7])
	f.Close()
	l.Close()
	l, err = OpenLog(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi2, _ := os.Stat(path); fi2.Size() != fi.Size() {
		t.Fatalf("torn tail not cut: %d bytes, was %d", fi2.Size(), fi.Size())
	}
	if err := l.Trim(8); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Size() != 0 {
		t.Fatalf("a trim past every shipment left %d bytes", fi.Size())
	}
	l.compactAt = 1
	if err := l.Append([]uint64{10, 11}, [][]byte{p("e"), p("f")}); err != nil {
		t.Fatal(err)
	}
	if err := l.Trim(10); err != nil { // compacts
		t.Fatal(err)
	}
	if got := lsnsOf(t, l); !equal(got, []uint64{11}) {
		t.Fatalf("after a compacting trim: %v", got)
	}
	l.Close()
}

// TestLogOwnerEpochs: a later owner's shipments sort after an earlier
// owner's, its trims drop the earlier owner's shipments, and a shipment of
// a deposed owner (an older epoch) after the new owner's is refused, also
// after a reopen.
func TestLogOwnerEpochs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v.mirror")
	l, err := OpenLog(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { l.Close() }()
	p := [][]byte{{1}, {2}}
	// owner of epoch 1 shipped ksets 900 and 901, the owner of epoch 2 its kset 5
	if err := l.Append([]uint64{LinkLSN(1, 900), LinkLSN(1, 901)}, p); err != nil {
		t.Fatal(err)
	}
	if err := l.Append([]uint64{LinkLSN(2, 5)}, p[:1]); err != nil {
		t.Fatal(err)
	}
	if err := l.Append([]uint64{LinkLSN(1, 902)}, p[:1]); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("deposed owner's shipment: %v, want ErrStaleEpoch", err)
	}
	if got, want := lsnsOf(t, l), []uint64{LinkLSN(1, 900), LinkLSN(1, 901), LinkLSN(2, 5)}; !equal(got, want) {
		t.Fatalf("replay %v, want %v", got, want)
	}
	// the new owner wrote back up to its kset 3: the old owner's go too
	if err := l.Trim(LinkLSN(2, 2)); err != nil {
		t.Fatal(err)
	}
	if got, want := lsnsOf(t, l), []uint64{LinkLSN(2, 5)}; !equal(got, want) {
		t.Fatalf("after the new owner's trim: %v, want %v", got, want)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if l, err = OpenLog(path); err != nil {
		t.Fatal(err)
	}
	if err := l.Append([]uint64{LinkLSN(1, 903)}, p[:1]); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("deposed owner's shipment after a reopen: %v, want ErrStaleEpoch", err)
	}
}

// TestLogCompactsWhenMostlyTrimmed: a trim rewrites a large file only
// when more than half of it is trimmed, not at every trim of a file whose
// live part alone is large (the peer of an owner with a cache full of
// dirty data trims often and little); what stays live and the file's size
// after the rewrite are right, also after a reopen.
func TestLogCompactsWhenMostlyTrimmed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v.mirror")
	l, err := OpenLog(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { l.Close() }()
	l.compactAt = 1 << 10
	payload := make([]byte, 100)
	for lsn := uint64(1); lsn <= 100; lsn++ {
		if err := l.Append([]uint64{lsn}, [][]byte{payload}); err != nil {
			t.Fatal(err)
		}
	}
	for lsn := uint64(1); lsn <= 40; lsn++ {
		if err := l.Trim(lsn); err != nil {
			t.Fatal(err)
		}
	}
	if l.compactions != 0 {
		t.Fatalf("%d rewrites for trims that left most of the file live", l.compactions)
	}
	for lsn := uint64(41); lsn <= 60; lsn++ {
		if err := l.Trim(lsn); err != nil {
			t.Fatal(err)
		}
	}
	if l.compactions != 1 {
		t.Fatalf("%d rewrites once more than half of the file was trimmed, want 1", l.compactions)
	}
	want := make([]uint64, 0, 40)
	for lsn := uint64(61); lsn <= 100; lsn++ {
		want = append(want, lsn)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	// never more than twice what is live (plus the last trim mark)
	if live := int64(40 * (frameHeader + 9 + len(payload))); fi.Size() > 2*live+frameHeader+9 {
		t.Fatalf("file of %d bytes after the rewrite, %d of them live", fi.Size(), live)
	}
	if got := lsnsOf(t, l); !equal(got, want) {
		t.Fatalf("live after the rewrite: %v", got)
	}
	l.Close()
	if l, err = OpenLog(path); err != nil {
		t.Fatal(err)
	}
	if got := lsnsOf(t, l); !equal(got, want) {
		t.Fatalf("live after a reopen: %v", got)
	}
}
