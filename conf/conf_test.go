package conf

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// base is a valid configuration; cases below append to it or replace
// parts of it. Lines marked "#!" are where a problem must be reported.
const base = `
[global]
data_dir = "/tmp/x"
metrics_listen = "off"

[[cache]]
name = "c0"
path = "c0.img"
size = "64MiB"
segment_size = "1MiB"

[[volume]]
name = "v0"
cache = "c0"
backing = "v0.img"
backing_size = "16MiB"

[[target]]
iqn = "iqn.2026-11.io.cachelun:t0"
portals = ["127.0.0.1:3260"]

[[target.lun]]
lun = 0
volume = "v0"
`

func markedLine(t *testing.T, src string) int {
	t.Helper()
	for i, l := range strings.Split(src, "\n") {
		if strings.Contains(l, "#!") {
			return i + 1
		}
	}
	t.Fatalf("no #! marker in case")
	return 0
}

func TestBaseIsValid(t *testing.T) {
	c, err := Parse("base.toml", []byte(base))
	if err != nil {
		t.Fatal(err)
	}
	if c.Global.LogLevel != "info" || c.Global.AdminSocket != DefaultAdminSocket {
		t.Errorf("global defaults not applied: %+v", c.Global)
	}
	ca := c.Caches[0]
	if ca.SegmentSize.Bytes != 1<<20 || ca.BlockSize.Bytes != 4096 || *ca.GCPercent != 70 ||
		ca.JournalFlushInterval.D != time.Second || ca.OnCacheFailure != "auto" ||
		*ca.Writeback.TargetDirtyPercent != 10 || *ca.Writeback.HighWatermarkPercent != 50 {
		t.Errorf("cache defaults not applied: %+v", ca)
	}
	v := c.Volumes[0]
	if v.Mode != "writeback" || v.BlockSize != 512 || !*v.WriteCache || v.SequentialCutoff.Bytes != 4<<20 ||
		v.CongestedReadThreshold.D != 2*time.Millisecond || v.CongestedWriteThreshold.D != 20*time.Millisecond ||
		v.BackingSize.Bytes != 16<<20 || v.SanitizeMaxBytesPerSec.Bytes != 16<<20 {
		t.Errorf("volume defaults not applied: %+v", v)
	}
	if c.ISCSI.QueueDepth != 128 || c.ISCSI.NOPInterval.D != 5*time.Second || c.ISCSI.MaxRecvDataSegmentLength != 262144 {
		t.Errorf("iscsi defaults not applied: %+v", c.ISCSI)
	}
	if c.Source != "base.toml" {
		t.Errorf("Source = %q", c.Source)
	}
}

func TestEmbeddedFilesLoad(t *testing.T) {
	d := Default()
	if len(d.Targets) != 1 || d.Targets[0].IQN != DemoIQN || d.Targets[0].Portals[0] != DemoPortal ||
		len(d.Targets[0].LUNs) != 1 || d.Targets[0].LUNs[0].LUN != 0 {
		t.Errorf("embedded default does not describe the demo LUN: %+v", d.Targets)
	}
	if d.Caches[0].Size.Bytes == 0 || d.Volumes[0].BackingSize.Bytes == 0 {
		t.Errorf("embedded default must create its files: %+v %+v", d.Caches[0], d.Volumes[0])
	}
	e, err := Parse("example.toml", ExampleTOML())
	if err != nil {
		t.Fatal(err)
	}
	if e.Targets[0].CHAP == nil || e.Targets[0].CHAP.MutualUser != "cachelun" || e.Discovery.CHAP == nil {
		t.Errorf("example CHAP not loaded: %+v", e.Targets[0].CHAP)
	}
	if len(e.Targets[0].Portals) != 2 || e.Targets[0].Portals[1] != "[::]:3260" {
		t.Errorf("portals: %v", e.Targets[0].Portals)
	}
}

// Every validation rule, with the line it must be reported on.
func TestValidationRules(t *testing.T) {
	cases := []struct {
		name string
		src  string // full file or an addition to base (if it starts with "+")
		want string // substring of the problem message
	}{
		{"syntax error", base + "\nfoo = = 1 #!\n", "expected value"},
		{"type error", "[global]\nlog_level = 3 #!\n", "expected a string, not the integer 3"},
		{"unknown key", base + "\n[iscsi]\nqueue_dpeth = 4 #!\n", "unknown key"},
		{"unknown section", "[globl] #!\nx = 1\n" + base, "unknown key"},
		{"log level", strings.Replace(base, `metrics_listen = "off"`, "metrics_listen = \"off\"\nlog_level = \"loud\" #!", 1), "not one of"},
		{"metrics listen", strings.Replace(base, `metrics_listen = "off"`, `metrics_listen = "9420" #!`, 1), "HOST:PORT"},
		{"cache name missing", strings.Replace(base, `name = "c0"`, `name = "" #!`, 1), "missing"},
		{"cache name bad chars", strings.Replace(base, `name = "c0"`, `name = "c 0" #!`, 1), "letters, digits"},
		{"cache name too long", strings.Replace(base, `name = "c0"`, `name = "`+strings.Repeat("x", 64)+`" #!`, 1), "longer than 63"},
		{"cache duplicate name", base + "\n[[cache]]\nname = \"c0\" #!\npath = \"c1.img\"\n", "duplicate cache name"},
		{"cache path missing", strings.Replace(base, `path = "c0.img"`, `path = "" #!`, 1), "missing"},
		{"cache path shared", base + "\n[[cache]]\nname = \"c1\"\npath = \"c0.img\" #!\n", "already used"},
		{"cache size unit", strings.Replace(base, `size = "64MiB"`, `size = "64 parsecs" #!`, 1), "bad size"},
		{"cache size negative", strings.Replace(base, `size = "64MiB"`, `size = -5 #!`, 1), "negative"},
		{"cache too small", strings.Replace(base, `size = "64MiB"`, `size = "4MiB" #!`, 1), "too small"},
		{"segment not pow2", strings.Replace(base, `segment_size = "1MiB"`, `segment_size = "3MiB" #!`, 1), "power of two"},
		{"segment too small", strings.Replace(base, `segment_size = "1MiB"`, `segment_size = "64KiB" #!`, 1), "power of two"},
		{"cache block size", strings.Replace(base, `segment_size = "1MiB"`, "segment_size = \"1MiB\"\nblock_size = 3000 #!", 1), "power of two"},
		{"gc percent", strings.Replace(base, `segment_size = "1MiB"`, "segment_size = \"1MiB\"\ngc_percent = 95 #!", 1), "from 1 to 90"},
		{"gc percent zero", strings.Replace(base, `segment_size = "1MiB"`, "segment_size = \"1MiB\"\ngc_percent = 0 #!", 1), "from 1 to 90"},
		{"journal flush interval zero", strings.Replace(base, `segment_size = "1MiB"`, "segment_size = \"1MiB\"\njournal_flush_interval = \"0s\" #!", 1), "more than 0"},
		{"journal flush interval unitless", strings.Replace(base, `segment_size = "1MiB"`, "segment_size = \"1MiB\"\njournal_flush_interval = 5 #!", 1), "needs a unit"},
		{"journal flush interval garbage", strings.Replace(base, `segment_size = "1MiB"`, "segment_size = \"1MiB\"\njournal_flush_interval = \"soon\" #!", 1), "bad duration"},
		{"on_cache_failure", strings.Replace(base, `segment_size = "1MiB"`, "segment_size = \"1MiB\"\non_cache_failure = \"ignore\" #!", 1), "not one of"},
		{"writeback target > high", strings.Replace(base, `segment_size = "1MiB"`, "segment_size = \"1MiB\"\n[cache.writeback]\ntarget_dirty_percent = 60 #!\nhigh_watermark_percent = 40", 1), "above high_watermark"},
		{"writeback high range", strings.Replace(base, `segment_size = "1MiB"`, "segment_size = \"1MiB\"\n[cache.writeback]\nhigh_watermark_percent = 0 #!", 1), "from 1 to 100"},
		{"writeback idle negative", strings.Replace(base, `segment_size = "1MiB"`, "segment_size = \"1MiB\"\n[cache.writeback]\nidle_after = \"-1s\" #!", 1), "negative"},
		{"writeback max rate", strings.Replace(base, `segment_size = "1MiB"`, "segment_size = \"1MiB\"\n[cache.writeback]\nmax_bytes_per_sec = \"lots\" #!", 1), "bad size"},
		{"volume name missing", strings.Replace(base, `name = "v0"`, `name = "" #!`, 1), "missing"},
		{"volume duplicate", base + "\n[[volume]]\nname = \"v0\" #!\ncache = \"c0\"\nbacking = \"v1.img\"\n", "duplicate volume"},
		{"volume cache missing", strings.Replace(base, `cache = "c0"`, `cache = "" #!`, 1), "missing"},
		{"volume unknown cache", strings.Replace(base, `cache = "c0"`, `cache = "c9" #!`, 1), "no cache named"},
		{"volume backing missing", strings.Replace(base, `backing = "v0.img"`, `backing = "" #!`, 1), "missing"},
		{"volume backing shared", base + "\n[[volume]]\nname = \"v1\"\ncache = \"c0\"\nbacking = \"v0.img\" #!\n", "already used"},
		{"volume backing = cache file", strings.Replace(base, `backing = "v0.img"`, `backing = "c0.img" #!`, 1), "already used"},
		{"volume backing size", strings.Replace(base, `backing_size = "16MiB"`, `backing_size = 1000 #!`, 1), "not a multiple"},
		{"volume slow spec", strings.Replace(base, `backing_size = "16MiB"`, "backing_size = \"16MiB\"\nslow = \"latency=fast\" #!", 1), "want a duration"},
		{"volume slow key", strings.Replace(base, `backing_size = "16MiB"`, "backing_size = \"16MiB\"\nslow = \"jitter=1ms\" #!", 1), "unknown key"},
		{"volume mode", strings.Replace(base, `backing_size = "16MiB"`, "backing_size = \"16MiB\"\nmode = \"wrback\" #!", 1), "not one of"},
		{"volume cache policy", strings.Replace(base, `backing_size = "16MiB"`, "backing_size = \"16MiB\"\ncache_policy = \"lru\" #!", 1), "not one of"},
		{"volume block size", strings.Replace(base, `backing_size = "16MiB"`, "backing_size = \"16MiB\"\nblock_size = 1024 #!", 1), "512 or 4096"},
		{"sanitize rate", strings.Replace(base, `backing_size = "16MiB"`, "backing_size = \"16MiB\"\nsanitize_max_bytes_per_sec = \"512KiB\" #!", 1), "below 1MiB"},
		{"sanitize rate garbage", strings.Replace(base, `backing_size = "16MiB"`, "backing_size = \"16MiB\"\nsanitize_max_bytes_per_sec = \"fast\" #!", 1), "bad size"},
		{"volume cutoff", strings.Replace(base, `backing_size = "16MiB"`, "backing_size = \"16MiB\"\nsequential_cutoff = \"-1\" #!", 1), "negative"},
		{"volume congestion", strings.Replace(base, `backing_size = "16MiB"`, "backing_size = \"16MiB\"\ncongested_read_threshold = \"-2ms\" #!", 1), "negative"},
		{"volume congestion w", strings.Replace(base, `backing_size = "16MiB"`, "backing_size = \"16MiB\"\ncongested_write_threshold = \"-2ms\" #!", 1), "negative"},
		{"target iqn missing", strings.Replace(base, `iqn = "iqn.2026-11.io.cachelun:t0"`, `iqn = "" #!`, 1), "missing"},
		{"target iqn upper case", strings.Replace(base, `iqn = "iqn.2026-11.io.cachelun:t0"`, `iqn = "iqn.2026-11.io.cachelun:T0" #!`, 1), "lower-case"},
		{"target iqn date", strings.Replace(base, `iqn = "iqn.2026-11.io.cachelun:t0"`, `iqn = "iqn.2026-13.io.cachelun:t0" #!`, 1), "iqn.YYYY-MM"},
		{"target name scheme", strings.Replace(base, `iqn = "iqn.2026-11.io.cachelun:t0"`, `iqn = "disk0" #!`, 1), "must start with"},
		{"target eui", strings.Replace(base, `iqn = "iqn.2026-11.io.cachelun:t0"`, `iqn = "eui.12" #!`, 1), "16 hex"},
		{"target duplicate", base + "\n[[target]]\niqn = \"iqn.2026-11.io.cachelun:t0\" #!\nportals = [\"127.0.0.1:3261\"]\n", "duplicate target"},
		{"portals missing", strings.Replace(base, `portals = ["127.0.0.1:3260"]`, `portals = [] #!`, 1), "at least one portal"},
		{"portal no port", strings.Replace(base, `portals = ["127.0.0.1:3260"]`, `portals = ["127.0.0.1"] #!`, 1), "HOST:PORT"},
		{"portal bad port", strings.Replace(base, `portals = ["127.0.0.1:3260"]`, `portals = ["127.0.0.1:70000"] #!`, 1), "1 to 65535"},
		{"portal host name", strings.Replace(base, `portals = ["127.0.0.1:3260"]`, `portals = ["storage.example:3260"] #!`, 1), "IP address"},
		{"portal no host", strings.Replace(base, `portals = ["127.0.0.1:3260"]`, `portals = [":3260"] #!`, 1), "host missing"},
		{"portal twice", strings.Replace(base, `portals = ["127.0.0.1:3260"]`, `portals = ["127.0.0.1:3260", "127.0.0.1:3260"] #!`, 1), "listed twice"},
		{"multi-line portals", strings.Replace(base, `portals = ["127.0.0.1:3260"]`, "portals = [ #!\n  \"127.0.0.1:3260\",\n  \"bad\",\n]", 1), "HOST:PORT"},
		{"lun too big", strings.Replace(base, "lun = 0", "lun = 20000 #!", 1), "above 16383"},
		{"lun twice", base + "\n[[target.lun]]\nlun = 0 #!\nvolume = \"v0\"\n", "mapped twice"},
		{"lun volume missing", strings.Replace(base, "volume = \"v0\"\n", "volume = \"\" #!\n", 1), "missing"},
		{"lun unknown volume", strings.Replace(base, "volume = \"v0\"\n", "volume = \"nope\" #!\n", 1), "no volume named"},
		{"initiator name", strings.Replace(base, `portals = ["127.0.0.1:3260"]`, "portals = [\"127.0.0.1:3260\"]\ninitiators = [\"host1\"] #!", 1), "must start with"},
		{"initiator twice", strings.Replace(base, `portals = ["127.0.0.1:3260"]`, "portals = [\"127.0.0.1:3260\"]\ninitiators = [\"iqn.2026-11.x:a\", \"iqn.2026-11.x:a\"] #!", 1), "listed twice"},
		{"chap empty", base + "\n[target.chap] #!\n", "empty chap"},
		{"chap user missing", base + "\n[target.chap] #!\nsecret = \"0123456789abc\"\n", "missing"},
		{"chap short secret", base + "\n[target.chap]\nuser = \"u\"\nsecret = \"short\" #!\n", "at least 96 bits"},
		{"chap mutual user missing", base + "\n[target.chap] #!\nuser = \"u\"\nsecret = \"0123456789abc\"\nmutual_secret = \"0123456789xyz\"\n", "mutual_secret is set"},
		{"chap mutual secret short", base + "\n[target.chap] #!\nuser = \"u\"\nsecret = \"0123456789abc\"\nmutual_user = \"t\"\n", "at least 96 bits"},
		{"chap mutual same secret", base + "\n[target.chap]\nuser = \"u\"\nsecret = \"0123456789abc\"\nmutual_user = \"t\"\nmutual_secret = \"0123456789abc\" #!\n", "must differ"},
		{"chap inline table", base + "\n[discovery]\nchap = { user = \"d\", secret = \"x\" } #!\n", "at least 96 bits"},
		{"discovery chap", base + "\n[discovery.chap]\nuser = \"d\"\nsecret = \"tiny\" #!\n", "at least 96 bits"},
		{"nop interval", base + "\n[iscsi]\nnop_interval = \"0s\" #!\n", "more than 0"},
		{"nop timeout", base + "\n[iscsi]\nnop_timeout = \"1s\" #!\n", "shorter than nop_interval"},
		{"max sessions", base + "\n[iscsi]\nmax_sessions = -1 #!\n", "from 1 to 65535"},
		{"mrdsl", base + "\n[iscsi]\nmax_recv_data_segment_length = 100 #!\n", "from 8192"},
		{"max burst", base + "\n[iscsi]\nmax_burst_length = 16777216 #!\n", "from 262144"},
		{"max transfer", base + "\n[iscsi]\nmax_transfer_length = \"1KiB\" #!\n", "from 64KiB"},
		{"first burst", base + "\n[iscsi]\nfirst_burst_length = 2097152 #!\n", "above max_burst_length"},
		{"r2t", base + "\n[iscsi]\nmax_outstanding_r2t = 70000 #!\n", "from 1 to 65535"},
		{"queue depth", base + "\n[iscsi]\nqueue_depth = -3 #!\n", "from 1 to 65535"},
		{"tcmu unknown volume", base + "\n[tcmu]\nenabled = true\nvolumes = [\"nope\"] #!\n", "no volume named"},
		{"tcmu volume on iscsi", base + "\n[tcmu]\nvolumes = [\"v0\"] #!\n", "one front end"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wantLine := markedLine(t, tc.src)
			c, err := Parse("test.toml", []byte(tc.src))
			if err == nil {
				t.Fatalf("accepted: %+v", c)
			}
			if c != nil {
				t.Errorf("a Config was returned with an error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			var ce *Error
			if !errors.As(err, &ce) || len(ce.Problems) == 0 {
				t.Fatalf("not a *conf.Error: %T %v", err, err)
			}
			for _, p := range ce.Problems {
				if p.Line == wantLine && strings.Contains(p.Msg, tc.want) {
					if !strings.HasPrefix(p.Error(), "test.toml:") {
						t.Errorf("problem does not start with file:line: %q", p.Error())
					}
					return
				}
			}
			t.Errorf("want %q at line %d, got:\n%v", tc.want, wantLine, err)
		})
	}
}

// Two problems in different array elements: each names its own line and
// index, and all are reported.
func TestAllProblemsReportedWithIndex(t *testing.T) {
	src := base + `
[[volume]]
name = "v1"
cache = "c0"
backing = "v1.img"
mode = "bogus"

[[volume]]
name = "v2"
cache = "c0"
backing = "v2.img"
mode = "bogus"
`
	_, err := Parse("f.toml", []byte(src))
	var ce *Error
	if !errors.As(err, &ce) || len(ce.Problems) != 2 {
		t.Fatalf("want 2 problems, got %v", err)
	}
	lines := strings.Split(src, "\n")
	for i, p := range ce.Problems {
		wantKey := []string{"volume[1].mode", "volume[2].mode"}[i]
		if p.Key != wantKey {
			t.Errorf("problem %d key %q, want %q", i, p.Key, wantKey)
		}
		if p.Line < 1 || !strings.HasPrefix(lines[p.Line-1], "mode = ") {
			t.Errorf("problem %d at line %d (%q)", i, p.Line, lines[max(p.Line-1, 0)])
		}
	}
	if ce.Problems[0].Line >= ce.Problems[1].Line {
		t.Errorf("problems not in file order: %v", err)
	}
}

func TestExplicitZeroIsNotDefault(t *testing.T) {
	src := strings.Replace(base, `backing_size = "16MiB"`, "backing_size = \"16MiB\"\nsequential_cutoff = 0\ncongested_read_threshold = \"0s\"\nwrite_cache = false\nsanitize_max_bytes_per_sec = 0", 1)
	c, err := Parse("z.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	v := c.Volumes[0]
	if v.SequentialCutoff.Bytes != 0 || v.CongestedReadThreshold.D != 0 || *v.WriteCache || v.SanitizeMaxBytesPerSec.Bytes != 0 {
		t.Errorf("explicit zero replaced by default: %+v", v)
	}
}

// Inputs that would make the TOML decoder spend quadratic time and memory
// are refused before it sees them.
func TestPathologicalInputsRefused(t *testing.T) {
	long := "[global]\n" + strings.Repeat("a.", 30000) + "a = 1\n"
	_, err := Parse("deep.toml", []byte(long))
	var ce *Error
	if !errors.As(err, &ce) || ce.Problems[0].Line != 2 || !strings.Contains(ce.Problems[0].Msg, "dotted key parts") {
		t.Fatalf("deep dotted key: %v", err)
	}
	if _, err := Parse("big.toml", make([]byte, maxConfigSize+1)); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Fatalf("oversized input: %v", err)
	}
	// dots inside strings and comments do not count
	ok := strings.Replace(base, `data_dir = "/tmp/x"`, `data_dir = "/tmp/`+strings.Repeat("x.", 40)+`" # `+strings.Repeat(".", 40), 1)
	if _, err := Parse("ok.toml", []byte(ok)); err != nil {
		t.Fatalf("dots in a string refused: %v", err)
	}
}

func TestTCMUVolumes(t *testing.T) {
	src := base + `
[[volume]]
name = "v1"
cache = "c0"
backing = "v1.img"

[[volume]]
name = "v2"
cache = "c0"
backing = "v2.img"

[tcmu]
enabled = true
`
	c, err := Parse("t.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.TCMUVolumes(), ","); got != "v1,v2" {
		t.Errorf("default TCMU volumes = %q, want the two volumes no target maps", got)
	}
	c, err = Parse("t.toml", []byte(src+"volumes = [\"v2\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.TCMUVolumes(), ","); got != "v2" || !c.TCMU.Enabled {
		t.Errorf("TCMU volumes = %q", got)
	}
	p := Diff(mustParse(t, src), c)
	if ch := find(p, SectionTCMU, "", "volume", Removed); ch == nil || ch.Old != "v1" || ch.Live {
		t.Errorf("diff of the TCMU volume list: %v", p)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(t.TempDir() + "/nope.toml")
	if err == nil || errors.Is(err, ErrInvalid) {
		t.Fatalf("want a read error, got %v", err)
	}
}

func TestParseSize(t *testing.T) {
	good := map[string]int64{"0": 0, "4096": 4096, "4KiB": 4096, "4K": 4096, "16MiB": 16 << 20, "1GiB": 1 << 30,
		"1.5GiB": 3 << 29, "2TiB": 2 << 40, "1KB": 1000, "10 MiB": 10 << 20, "512B": 512}
	for s, want := range good {
		got, err := ParseSize(s)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "-1", "1.5", "abc", "1XB", "99999999999PiB", "NaN", "1e400GiB"} {
		if n, err := ParseSize(s); err == nil {
			t.Errorf("ParseSize(%q) = %d, want error", s, n)
		}
	}
	for _, n := range []int64{0, 512, 4096, 3 << 29, 1 << 40, 12345} {
		back, err := ParseSize(FormatSize(n))
		if err != nil || back != n {
			t.Errorf("FormatSize(%d) = %q does not parse back (%d, %v)", n, FormatSize(n), back, err)
		}
	}
}

func TestCheckISCSIName(t *testing.T) {
	for _, s := range []string{"iqn.2026-11.io.cachelun:demo", "iqn.1993-08.org.debian:01:abc", "eui.02004567a425678d",
		"naa.52004567ba64678d", "iqn.2001-04.com.example"} {
		if err := CheckISCSIName(s); err != nil {
			t.Errorf("%q rejected: %v", s, err)
		}
	}
	for _, s := range []string{"", "iqn.", "iqn.2026-1.io.x", "iqn.2026-11.-bad", "iqn.2026-11.io.x y", "eui.xyz",
		"naa.123", strings.Repeat("iqn.2026-11.a", 30)} {
		if err := CheckISCSIName(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(base))
	f.Add(DefaultTOML())
	f.Add(ExampleTOML())
	f.Add([]byte("[[a]]\n[[a.b]]\n[a.b.c]\nx = '''\n'''\n"))
	f.Add([]byte("x = \"\\\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.toml", data)
		if (c == nil) == (err == nil) {
			t.Fatalf("exactly one of config and error must be set: %v %v", c, err)
		}
		// the line scanner must survive any input too, valid or not
		indexLines(string(data))
	})
}
