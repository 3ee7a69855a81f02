package conf

import (
	"bytes"
	"fmt"

	"github.com/BurntSushi/toml"
)

// RedactedSecret stands for a CHAP secret in a configuration printed
// without secrets (`cachelun config show`). Validation refuses it, so a
// dump saved as a configuration file fails to load, naming the key,
// instead of running with a wrong secret.
const RedactedSecret = "(redacted: cachelun config show --secrets prints it)"

// TOML renders the configuration as a TOML file that Parse reads back to
// an equivalent configuration (Diff finds no change): every key with its
// effective value, defaults included, sizes with their largest exact
// binary unit. With secrets false every CHAP secret is RedactedSecret.
func (c *Config) TOML(secrets bool) ([]byte, error) {
	cp := *c
	if !secrets {
		redact := func(ch *CHAP) *CHAP {
			if ch == nil {
				return nil
			}
			r := *ch
			if r.Secret != "" {
				r.Secret = RedactedSecret
			}
			if r.MutualSecret != "" {
				r.MutualSecret = RedactedSecret
			}
			return &r
		}
		cp.Targets = append([]Target(nil), c.Targets...)
		for i := range cp.Targets {
			cp.Targets[i].CHAP = redact(cp.Targets[i].CHAP)
		}
		cp.Discovery.CHAP = redact(c.Discovery.CHAP)
	}
	var buf bytes.Buffer
	if c.Source != "" {
		fmt.Fprintf(&buf, "# running configuration, loaded from %s; defaults filled in\n", c.Source)
	}
	if !secrets {
		buf.WriteString("# CHAP secrets are redacted (cachelun config show --secrets prints them)\n")
	}
	enc := toml.NewEncoder(&buf)
	enc.Indent = ""
	if err := enc.Encode(cp); err != nil {
		return nil, fmt.Errorf("conf: encode: %w", err)
	}
	return buf.Bytes(), nil
}
