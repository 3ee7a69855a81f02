package vm

import (
	"bytes"
	"testing"
)

// TestMarkerWriter: the power-off marker is seen when it arrives whole, or
// split across writes, and only once; output passes through unchanged.
func TestMarkerWriter(t *testing.T) {
	for _, chunks := range [][]string{
		{"boot\n@@DONE\n@@POWEROFF\n"},
		{"boot\n@@POW", "ER", "OFF\n", "more"},
		{"@", "@", "P", "O", "W", "E", "R", "O", "F", "F"},
	} {
		var out bytes.Buffer
		m := &markerWriter{w: &out, marker: []byte("@@POWEROFF"), seen: make(chan struct{})}
		for _, c := range chunks {
			if n, err := m.Write([]byte(c)); n != len(c) || err != nil {
				t.Fatalf("Write(%q) = %d, %v", c, n, err)
			}
		}
		select {
		case <-m.seen:
		default:
			t.Errorf("marker in %q not seen", chunks)
		}
		m.Write([]byte("@@POWEROFF again")) // a second marker must not close twice
		if want := bytes.Join(toBytes(chunks), nil); !bytes.HasPrefix(out.Bytes(), want) {
			t.Errorf("output %q, want %q first", out.Bytes(), want)
		}
	}
	var out bytes.Buffer
	m := &markerWriter{w: &out, marker: []byte("@@POWEROFF"), seen: make(chan struct{})}
	m.Write([]byte("@@POWER OFF @@POWEROF\nF"))
	select {
	case <-m.seen:
		t.Error("a broken marker was taken for the marker")
	default:
	}
}

func toBytes(s []string) [][]byte {
	b := make([][]byte, len(s))
	for i, x := range s {
		b[i] = []byte(x)
	}
	return b
}
