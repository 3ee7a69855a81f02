package integration

import (
	"regexp"
	"testing"
	"time"
)

// TestStampedLines: every line of a suite's log gets one stamp, also when
// the client's output arrives in pieces that split lines, and the text
// itself is kept.
func TestStampedLines(t *testing.T) {
	w := &stampedLines{start: time.Now()}
	for _, piece := range []string{"Suite: SCSI.Sanitize\n  Test: Re", "set ...\n", "    Sleep\n    [OK]", "\n"} {
		if n, err := w.Write([]byte(piece)); n != len(piece) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", piece, n, err)
		}
	}
	stamp := regexp.MustCompile(`(?m)^ +[0-9]+\.[0-9]  `)
	if got := stamp.ReplaceAllString(w.buf.String(), ""); got != "Suite: SCSI.Sanitize\n  Test: Reset ...\n    Sleep\n    [OK]\n" {
		t.Errorf("text without the stamps: %q", got)
	}
	if n := len(stamp.FindAllString(w.buf.String(), -1)); n != 4 {
		t.Errorf("%d stamps for 4 lines:\n%s", n, w.buf.String())
	}
	if got := lastLines("a\nb\nc\n", 2); got != "b\nc" {
		t.Errorf("lastLines(a b c, 2) = %q", got)
	}
	if got := lastLines("a\n", 5); got != "a" {
		t.Errorf("lastLines(a, 5) = %q", got)
	}
	log := "time=1 level=INFO msg=x\ntime=2 level=WARN msg=y\ntime=3 level=ERROR msg=z\n"
	if got := warningLines(log); got != "time=2 level=WARN msg=y\ntime=3 level=ERROR msg=z\n" {
		t.Errorf("warningLines = %q", got)
	}
}
