package conf

import (
	"errors"
	"testing"
)

// A file with many problems of every kind: each is reported, at once, in
// one form, FILE:LINE: table[index].key: message, in file order. A value
// of the wrong type hides no other problem, not even one in its own
// table; an unknown key names the closest known key; a repeated key is
// reported like any other problem.
func TestAllProblemsAtOnce(t *testing.T) {
	src := `[globl]
log_level = "info"

[global]
log_level = 3
metrics_listen = "off"

[[cache]]
name = "c0"
path = "c0.img"
size = "64MiB"
segment_size = "1MiB"
gc_percent = "seventy"
journal_flush_interval = true

[[volume]]
name = "v0"
cache = "c0"
backing = "v0.img"
backing_size = "16MiB"

[[volume]]
name = "v1"
cache = "c0"
backing = 5
mode = "wrback"
sequential_cutof = "1MiB"
direct = "yes"
write_cache = 1

[[target]]
iqn = "iqn.2026-11.io.cachelun:t0"
portals = "127.0.0.1:3260"
colour = "blue"

[[target.lun]]
lun = 0
volume = "v0"
volume = "v1"

[iscsi]
queue_dpeth = 4
max_sessions = "many"
`
	want := `c.toml:1: globl: unknown key; did you mean "global"?
c.toml:5: global.log_level: expected a string, not the integer 3
c.toml:13: cache[0].gc_percent: expected an integer, not the string "seventy"
c.toml:14: cache[0].journal_flush_interval: expected a duration, such as "1s" or "500ms", not true
c.toml:25: volume[1].backing: expected a string, not the integer 5
c.toml:26: volume[1].mode: "wrback" is not one of writeback, writethrough, writearound, writeonly, passthrough
c.toml:27: volume[1].sequential_cutof: unknown key; did you mean "sequential_cutoff"?
c.toml:28: volume[1].direct: expected true or false, not the string "yes"
c.toml:29: volume[1].write_cache: expected true or false, not the integer 1
c.toml:33: target[0].portals: expected an array of strings, not the string "127.0.0.1:3260"
c.toml:34: target[0].colour: unknown key
c.toml:39: target[0].lun[0].volume: set again (first set on line 38); a key is set once per table
c.toml:42: iscsi.queue_dpeth: unknown key; did you mean "queue_depth"?
c.toml:43: iscsi.max_sessions: expected an integer, not the string "many"`
	_, err := Parse("c.toml", []byte(src))
	var ce *Error
	if !errors.As(err, &ce) || !errors.Is(err, ErrInvalid) {
		t.Fatalf("want an *Error wrapping ErrInvalid, got %v", err)
	}
	if got := err.Error(); got != want {
		t.Errorf("got:\n%s\n\nwant:\n%s", got, want)
	}
}

// A syntax error stops the reading (nothing after it can be read), but
// is reported in the same form, with the table index, together with the
// repeated keys found before it.
func TestSyntaxErrorForm(t *testing.T) {
	src := `[[volume]]
name = "v0"

[[volume]]
name = "v1"
name = "v2"
mode = writeback
`
	want := `c.toml:6: volume[1].name: set again (first set on line 5); a key is set once per table
c.toml:7: volume[1].mode: expected value but found "writeback" instead`
	_, err := Parse("c.toml", []byte(src))
	if err == nil || err.Error() != want {
		t.Errorf("got:\n%v\n\nwant:\n%s", err, want)
	}
}

// A table given twice is reported in the same form and its second section
// is left out; a dotted key under a key already set redefines it. Neither
// hides the other problems.
func TestRepeatedTables(t *testing.T) {
	src := `[global]
log_level = "info"
log_level.x = 1

[iscsi]
queue_depth = 4

[iscsi]
queue_depth = "x"

[tcmu]
enabled = "yes"
`
	want := `c.toml:3: global.log_level: set again (first set on line 2); a key is set once per table
c.toml:8: iscsi: table defined again (first on line 5); its keys belong in one section, and these were not read
c.toml:12: tcmu.enabled: expected true or false, not the string "yes"`
	_, err := Parse("c.toml", []byte(src))
	if err == nil || err.Error() != want {
		t.Errorf("got:\n%v\n\nwant:\n%s", err, want)
	}
}
