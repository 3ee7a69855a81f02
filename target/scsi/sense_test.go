package scsi

import (
	"bytes"
	"testing"
)

// TestSenseFixedFormat: the front ends' own CHECK CONDITIONs use Sense,
// which encodes the fixed format every initiator parses: response code
// 0x70, the key in byte 2, additional length 10, ASC and ASCQ in 12-13.
func TestSenseFixedFormat(t *testing.T) {
	got := Sense(SenseAbortedCommand, ASC(0x47)<<8|ASC(0x05))
	want := []byte{0x70, 0, 0x0b, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x47, 0x05, 0, 0, 0, 0}
	if !bytes.Equal(got, want) {
		t.Fatalf("Sense = % x, want % x", got, want)
	}
}
