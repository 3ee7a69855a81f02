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
