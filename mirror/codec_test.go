package mirror

import (
	"bytes"
	"errors"
	"testing"
)

func TestCodecRoundTrip(t *testing.T) {
	recs := []Record{{Off: 4096, Len: 3, Data: []byte("abc")}, {Off: 1 << 40, Len: 1 << 20, Discard: true}, {Off: 0, Len: 1, Data: []byte{9}}}
	got, err := Decode(Encode(nil, recs))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(recs) {
		t.Fatalf("%d records", len(got))
	}
	for i := range recs {
		if got[i].Off != recs[i].Off || got[i].Len != recs[i].Len || got[i].Discard != recs[i].Discard || !bytes.Equal(got[i].Data, recs[i].Data) {
			t.Fatalf("record %d: %+v, want %+v", i, got[i], recs[i])
		}
	}
	for _, bad := range [][]byte{nil, {0, 0, 0, 1}, {0xff, 0xff, 0xff, 0xff, 1, 2}, append(Encode(nil, recs), 0)} {
		if _, err := Decode(bad); !errors.Is(err, ErrCorrupt) {
			t.Errorf("Decode(% x) = %v, want ErrCorrupt", bad, err)
		}
	}
}

// FuzzDecode: any payload decodes or fails with ErrCorrupt, never panics;
// what decodes encodes back to the same bytes.
func FuzzDecode(f *testing.F) {
	f.Add(Encode(nil, []Record{{Off: 4096, Len: 3, Data: []byte("abc")}, {Off: 8192, Len: 512, Discard: true}}))
	f.Add([]byte{0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, p []byte) {
		recs, err := Decode(p)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if !bytes.Equal(Encode(nil, recs), p) {
			t.Fatalf("round trip differs for % x", p)
		}
	})
}
