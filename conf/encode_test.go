package conf

import (
	"bytes"
	"strings"
	"testing"
)

const withCHAP = base + `
[target.chap]
user = "host1"
secret = "a-long-secret-1"
mutual_user = "tgt1"
mutual_secret = "another-secret-2"

[discovery.chap]
user = "disc"
secret = "discovery-secret"
`

// The TOML a running configuration prints (`cachelun config show`) loads
// back to an equivalent configuration, and printing that gives the same
// bytes again.
func TestTOMLRoundTrip(t *testing.T) {
	for name, src := range map[string][]byte{"default": DefaultTOML(), "example": ExampleTOML(), "chap": []byte(withCHAP)} {
		cfg, err := Parse(name+".toml", src)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		out, err := cfg.TOML(true)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		back, err := Parse("shown.toml", out)
		if err != nil {
			t.Fatalf("%s: the printed configuration does not load: %v\n%s", name, err, out)
		}
		if plan := Diff(cfg, back); !plan.Empty() {
			t.Errorf("%s: the printed configuration differs from the running one: %v\n%s", name, plan.Changes, out)
		}
		again, _ := back.TOML(true)
		if !bytes.Equal(bytes.TrimPrefix(again, []byte("# running configuration, loaded from shown.toml; defaults filled in\n")),
			bytes.TrimPrefix(out, []byte("# running configuration, loaded from "+name+".toml; defaults filled in\n"))) {
			t.Errorf("%s: printing is not a fixed point:\n%s\n----\n%s", name, out, again)
		}
	}
	cfg, _ := Parse("c.toml", []byte(withCHAP))
	out, _ := cfg.TOML(true)
	for _, want := range []string{`size = "64MiB"`, `secret = "a-long-secret-1"`, `mutual_secret = "another-secret-2"`, `secret = "discovery-secret"`,
		`sequential_cutoff = "4MiB"`, `journal_flush_interval = "1s"`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("config lacks %s:\n%s", want, out)
		}
	}
}

// Without secrets every CHAP secret is a placeholder the loader refuses,
// naming each key: a saved dump never runs with a wrong secret.
func TestTOMLRedactsSecrets(t *testing.T) {
	cfg, err := Parse("c.toml", []byte(withCHAP))
	if err != nil {
		t.Fatal(err)
	}
	out, err := cfg.TOML(false)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"a-long-secret-1", "another-secret-2", "discovery-secret"} {
		if strings.Contains(string(out), secret) {
			t.Errorf("redacted config shows %q:\n%s", secret, out)
		}
	}
	if cfg.Targets[0].CHAP.Secret != "a-long-secret-1" || cfg.Discovery.CHAP.Secret != "discovery-secret" {
		t.Error("redacting changed the running configuration")
	}
	_, err = Parse("saved.toml", out)
	if err == nil {
		t.Fatalf("a redacted dump loads:\n%s", out)
	}
	for _, key := range []string{"target[0].chap.secret", "target[0].chap.mutual_secret", "discovery.chap.secret"} {
		if !strings.Contains(err.Error(), key+": is the placeholder of a redacted secret") {
			t.Errorf("error does not name %s:\n%v", key, err)
		}
	}
}
