package persist

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
)

func TestCrashMediaImages(t *testing.T) {
	for _, unit := range []TearUnit{TearDAX, TearPage} {
		m := NewCrashMedia(64<<10, unit)
		points := []int{}
		m.SetPersistHook(func(p int) { points = append(points, p) })
		a := bytes.Repeat([]byte{1}, 8192)
		b := bytes.Repeat([]byte{2}, 8192)
		_ = m.WriteAt(a, 0)
		_ = m.Persist(0, 8192) // point 1: a durable
		_ = m.WriteAt(b, 16384)
		_ = m.WriteAt(b[:100], 0)
		_ = m.Persist(16384, 4096) // point 2: first page of b durable
		_ = m.WriteAt(b, 32768)    // never persisted
		if m.PersistPoints() != 2 || len(points) != 2 || points[1] != 2 {
			t.Fatalf("points %d, hook saw %v", m.PersistPoints(), points)
		}
		img := m.CrashImage(2, nil)
		got := img.Bytes()
		if !bytes.Equal(got[:8192], a) || !bytes.Equal(got[16384:20480], b[:4096]) || !allZero(got[20480:24576]) || !allZero(got[32768:40960]) {
			t.Fatalf("unit %d: image at point 2 wrong", unit)
		}
		img1 := m.CrashImage(1, nil) // rebuilt from history
		got = img1.Bytes()
		if !bytes.Equal(got[:8192], a) || !allZero(got[8192:]) {
			t.Fatalf("unit %d: image at point 1 wrong", unit)
		}
		if !allZero(m.CrashImage(0, nil).Bytes()) {
			t.Fatalf("unit %d: image at point 0 not empty", unit)
		}
		// Torn variants: every surviving unit holds either the old or the
		// newest content, at unit granularity; some survive, some do not.
		survived, dropped := 0, 0
		for seed := uint64(0); seed < 20; seed++ {
			got := m.CrashImage(2, rand.New(rand.NewPCG(seed, 1))).Bytes()
			for off := 32768; off < 40960; off += int(unit) {
				u := got[off : off+int(unit)]
				switch {
				case bytes.Equal(u, b[:unit]):
					survived++
				case allZero(u):
					dropped++
				default:
					t.Fatalf("unit %d: torn unit at %d holds mixed content", unit, off)
				}
			}
		}
		if survived == 0 || dropped == 0 {
			t.Fatalf("unit %d: %d survived, %d dropped", unit, survived, dropped)
		}
		// An image is a media of its own, with its own history.
		_ = img.WriteAt([]byte{9}, 50000)
		if img.CrashImage(0, nil).Bytes()[50000] != 0 || !bytes.Equal(img.CrashImage(0, nil).Bytes()[:8192], a) {
			t.Fatalf("unit %d: image history wrong", unit)
		}
	}
}

func TestCrashMediaFailAfter(t *testing.T) {
	m := NewCrashMedia(4096, TearDAX)
	boom := errors.New("boom")
	m.FailAfter(2, boom)
	if m.WriteAt([]byte{1}, 0) != nil || m.Persist(0, 1) != nil {
		t.Fatal("failed before n calls")
	}
	for _, err := range []error{m.WriteAt([]byte{1}, 0), m.ReadAt(make([]byte, 1), 0), m.Persist(0, 1)} {
		if !errors.Is(err, ErrMediaFault) || !errors.Is(err, boom) {
			t.Fatalf("after n calls: %v", err)
		}
	}
	m.FailAfter(-1, nil)
	if err := m.ReadAt(make([]byte, 1), 0); err != nil {
		t.Fatal(err)
	}
	if err := m.ReadAt(make([]byte, 2), 4095); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("out of range: %v", err)
	}
}
