package tcmu

import (
	"strings"
	"testing"
)

func TestParseUIOName(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uioName
		ok   bool
	}{
		{"tcm-user/0/vol1/cachelun/db1", uioName{0, "vol1", "cachelun", "db1"}, true},
		{"tcm-user/12/lun0/cachelun/dir/sub/file.img", uioName{12, "lun0", "cachelun", "dir/sub/file.img"}, true},
		{"tcm-user/3/x/file//var/lib/x.img", uioName{3, "x", "file", "/var/lib/x.img"}, true},
		{"tcm-user/0/x/cachelun", uioName{0, "x", "cachelun", ""}, true},
		{"tcm-user/0/x/cachelun/", uioName{0, "x", "cachelun", ""}, true},
		{"uio-other/0/x/cachelun/a", uioName{}, false},
		{"tcm-user/zero/x/cachelun/a", uioName{}, false},
		{"tcm-user/0//cachelun/a", uioName{}, false},
		{"tcm-user/0/x//a", uioName{}, false},
		{"tcm-user/0/x", uioName{}, false},
		{"", uioName{}, false},
	} {
		got, err := parseUIOName(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseUIOName(%q) = %+v, %v; want %+v ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
	n, _ := parseUIOName("tcm-user/4/db/cachelun/db")
	if n.configDir() != "user_4/db" {
		t.Fatalf("configDir %q", n.configDir())
	}
}

func TestSplitDevConfig(t *testing.T) {
	s, c, err := splitDevConfig("cachelun/db1/x")
	if err != nil || s != "cachelun" || c != "db1/x" {
		t.Fatalf("got %q %q %v", s, c, err)
	}
	for _, bad := range []string{"", "cachelun", "/db1"} {
		if _, _, err := splitDevConfig(bad); err == nil {
			t.Errorf("splitDevConfig(%q) accepted", bad)
		}
	}
}

func TestValidateCfgstring(t *testing.T) {
	for _, good := range []string{"db1", "pool/vm-01.img", "a b"} {
		if err := validateCfgstring(good); err != nil {
			t.Errorf("%q: %v", good, err)
		}
	}
	for _, bad := range []string{"", "a:b", "a\nb", "a\x00b", strings.Repeat("x", maxCfgstringLen+1)} {
		if err := validateCfgstring(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzParseUIOName(f *testing.F) {
	f.Add("tcm-user/0/vol1/cachelun/db1")
	f.Add("tcm-user/4294967296/a/b/c")
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseUIOName(s)
		if err != nil {
			return
		}
		if !strings.HasSuffix(s, n.cfg) || n.object == "" || n.subtype == "" || strings.Contains(n.object, "/") || strings.Contains(n.subtype, "/") {
			t.Fatalf("parse(%q) = %+v", s, n)
		}
	})
}
