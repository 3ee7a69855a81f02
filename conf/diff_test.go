package conf

import (
	"strings"
	"testing"
)

func mustParse(t *testing.T, src string) *Config {
	t.Helper()
	c, err := Parse("t.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestDiffIdentical(t *testing.T) {
	p := Diff(mustParse(t, base), mustParse(t, base))
	if !p.Empty() || !p.Live() || p.String() != "no changes" {
		t.Errorf("identical configs differ: %v", p)
	}
}

func find(p Plan, s Section, name, field string, kind ChangeKind) *Change {
	for i, c := range p.Changes {
		if c.Section == s && c.Name == name && c.Field == field && c.Kind == kind {
			return &p.Changes[i]
		}
	}
	return nil
}

func TestDiff(t *testing.T) {
	old := mustParse(t, base+`
[[volume]]
name = "gone"
cache = "c0"
backing = "gone.img"

[[target]]
iqn = "iqn.2026-11.io.cachelun:t1"
portals = ["127.0.0.1:3261"]
initiators = ["iqn.2026-11.x:a"]
[target.chap]
user = "u"
secret = "0123456789abc"
[[target.lun]]
lun = 0
volume = "gone"
[[target.lun]]
lun = 1
volume = "v0"
`)
	newSrc := strings.NewReplacer(
		`segment_size = "1MiB"`, "segment_size = \"2MiB\"\ngc_percent = 50\n[cache.writeback]\nidle_after = \"3s\"",
		`backing_size = "16MiB"`, "backing_size = \"16MiB\"\nmode = \"writethrough\"\nsequential_cutoff = \"8MiB\"\nsanitize_max_bytes_per_sec = \"64MiB\"",
		`metrics_listen = "off"`, "metrics_listen = \"off\"\nlog_level = \"debug\"",
	).Replace(base) + `
[[cache]]
name = "c1"
path = "c1.img"

[[volume]]
name = "fresh"
cache = "c1"
backing = "fresh.img"
block_size = 4096

[[target]]
iqn = "iqn.2026-11.io.cachelun:t1"
portals = ["127.0.0.1:3261", "[::1]:3261"]
initiators = ["iqn.2026-11.x:b"]
[target.chap]
user = "u"
secret = "0123456789xyz"
[[target.lun]]
lun = 1
volume = "v0"
thin = true
[[target.lun]]
lun = 2
volume = "fresh"

[discovery.chap]
user = "d"
secret = "discovery-secret"

[iscsi]
queue_depth = 64
`
	p := Diff(old, mustParse(t, newSrc))
	checks := []struct {
		s          Section
		name       string
		field      string
		kind       ChangeKind
		live       bool
		oldV, newV string
	}{
		{SectionGlobal, "", "log_level", Modified, true, "info", "debug"},
		{SectionCache, "c0", "segment_size", Modified, false, "1MiB", "2MiB"},
		{SectionCache, "c0", "gc_percent", Modified, true, "70", "50"},
		{SectionCache, "c0", "writeback.idle_after", Modified, true, "1s", "3s"},
		{SectionCache, "c1", "", Added, true, "", ""},
		{SectionVolume, "v0", "mode", Modified, true, "writeback", "writethrough"},
		{SectionVolume, "v0", "sequential_cutoff", Modified, true, "4MiB", "8MiB"},
		{SectionVolume, "v0", "sanitize_max_bytes_per_sec", Modified, false, "16MiB", "64MiB"},
		{SectionVolume, "gone", "", Removed, true, "", ""},
		{SectionVolume, "fresh", "", Added, true, "", ""},
		{SectionTarget, "iqn.2026-11.io.cachelun:t1", "portal", Added, true, "", "[::1]:3261"},
		{SectionTarget, "iqn.2026-11.io.cachelun:t1", "initiator", Removed, true, "iqn.2026-11.x:a", ""},
		{SectionTarget, "iqn.2026-11.io.cachelun:t1", "initiator", Added, true, "", "iqn.2026-11.x:b"},
		{SectionTarget, "iqn.2026-11.io.cachelun:t1", "lun 0", Removed, true, "gone", ""},
		{SectionTarget, "iqn.2026-11.io.cachelun:t1", "lun 1", Modified, true, "volume v0", "volume v0 thin"},
		{SectionTarget, "iqn.2026-11.io.cachelun:t1", "lun 2", Added, true, "", "fresh"},
		{SectionTarget, "iqn.2026-11.io.cachelun:t1", "chap", Modified, true, "user u (secret not shown)", "user u (secret not shown)"},
		{SectionDiscovery, "", "chap", Added, true, "", "user d"},
		{SectionISCSI, "", "queue_depth", Modified, false, "128", "64"},
	}
	for _, c := range checks {
		got := find(p, c.s, c.name, c.field, c.kind)
		if got == nil {
			t.Errorf("missing change %s %s %s %s in\n%v", c.s, c.name, c.field, c.kind, p)
			continue
		}
		if got.Live != c.live || got.Old != c.oldV || got.New != c.newV {
			t.Errorf("change %+v, want live=%v old=%q new=%q", *got, c.live, c.oldV, c.newV)
		}
	}
	if len(p.Changes) != len(checks) {
		t.Errorf("got %d changes, want %d:\n%v", len(p.Changes), len(checks), p)
	}
	if p.Live() || len(p.NeedsRestart()) != 3 {
		t.Errorf("NeedsRestart = %v", p.NeedsRestart())
	}
	if strings.Contains(p.String(), "0123456789") {
		t.Errorf("plan renders a CHAP secret:\n%v", p)
	}
	if n := len(p.Filter(SectionTarget)); n != 7 {
		t.Errorf("Filter(target) = %d changes", n)
	}
}

func TestDiffRestartOnlyFields(t *testing.T) {
	old := mustParse(t, base)
	src := strings.NewReplacer(`data_dir = "/tmp/x"`, `data_dir = "/tmp/y"`,
		`path = "c0.img"`, `path = "c0b.img"`,
		`backing = "v0.img"`, "backing = \"v0b.img\"\nblock_size = 4096\ndirect = true").Replace(base)
	p := Diff(old, mustParse(t, src))
	for _, f := range []struct {
		s     Section
		name  string
		field string
	}{{SectionGlobal, "", "data_dir"}, {SectionCache, "c0", "path"}, {SectionVolume, "v0", "backing"},
		{SectionVolume, "v0", "block_size"}, {SectionVolume, "v0", "direct"}} {
		c := find(p, f.s, f.name, f.field, Modified)
		if c == nil || c.Live {
			t.Errorf("%s %s %s: want a restart-only change, got %+v", f.s, f.name, f.field, c)
		}
	}
	if !strings.Contains(p.String(), "[needs restart]") {
		t.Errorf("plan does not say what needs a restart:\n%v", p)
	}
}
