package rbd

import (
	"errors"
	"strings"
	"testing"
)

func TestParseSpec(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Spec
	}{
		{"rbd:pool/img", Spec{Pool: "pool", Image: "img"}},
		{"rbd:pool/ns/img", Spec{Pool: "pool", Namespace: "ns", Image: "img"}},
		{"rbd:rbd/vm-100-disk-0", Spec{Pool: "rbd", Image: "vm-100-disk-0"}},
		{"rbd:p.1_x/ns-2/img.raw", Spec{Pool: "p.1_x", Namespace: "ns-2", Image: "img.raw"}},
	} {
		got, err := ParseSpec(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseSpec(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
			continue
		}
		if got.String() != c.in {
			t.Errorf("%+v.String() = %q, want %q", got, got.String(), c.in)
		}
	}
	for _, c := range []struct{ in, why string }{
		{"", "does not start with"},
		{"pool/img", "does not start with"},
		{"RBD:pool/img", "does not start with"},
		{"rbd:", "want rbd:POOL/IMAGE"},
		{"rbd:img", "want rbd:POOL/IMAGE"},
		{"rbd:a/b/c/d", "want rbd:POOL/IMAGE"},
		{"rbd:/img", "empty pool"},
		{"rbd:pool/", "empty image"},
		{"rbd:pool//img", "empty namespace"},
		{"rbd:pool/img@snap", "snapshot"},
		{"rbd:pool/img\n", "space or control"},
		{"rbd:po ol/img", "space or control"},
		{"rbd:pool/im\x00g", "space or control"},
		{"rbd:pool/\xff", "UTF-8"},
		{"rbd:" + strings.Repeat("p", 256) + "/img", "longer than 255"},
	} {
		_, err := ParseSpec(c.in)
		if !errors.Is(err, ErrBadSpec) || !strings.Contains(err.Error(), c.why) {
			t.Errorf("ParseSpec(%q) = %v; want ErrBadSpec saying %q", c.in, err, c.why)
		}
	}
}

// FuzzParseSpec: ParseSpec never panics, refuses with ErrBadSpec only, and
// what it accepts prints back to itself and has no separator or control
// character inside a part.
func FuzzParseSpec(f *testing.F) {
	for _, s := range []string{"rbd:pool/img", "rbd:pool/ns/img", "rbd:a//b", "rbd:p/i@s", "rbd:\x00/x", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sp, err := ParseSpec(s)
		if err != nil {
			if !errors.Is(err, ErrBadSpec) {
				t.Fatalf("ParseSpec(%q): %v does not wrap ErrBadSpec", s, err)
			}
			return
		}
		if sp.String() != s {
			t.Fatalf("ParseSpec(%q).String() = %q", s, sp.String())
		}
		for _, part := range []string{sp.Pool, sp.Namespace, sp.Image} {
			if strings.ContainsAny(part, "/\x00\n ") {
				t.Fatalf("ParseSpec(%q) accepted part %q", s, part)
			}
		}
		if sp.Pool == "" || sp.Image == "" || strings.Contains(sp.Image, "@") {
			t.Fatalf("ParseSpec(%q) accepted %+v", s, sp)
		}
	})
}
