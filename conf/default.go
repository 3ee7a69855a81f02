package conf

import _ "embed"

//go:embed default.toml
var defaultTOML string

//go:embed example.toml
var exampleTOML string

// DefaultTOML returns the embedded default configuration that
// `cachelun serve` runs without --config: a demo cache file and backing
// file under the data directory and one cached LUN, LUN 0 of target
// DemoIQN, on DemoPortal.
func DefaultTOML() []byte { return []byte(defaultTOML) }

// ExampleTOML returns a commented configuration showing every key.
func ExampleTOML() []byte { return []byte(exampleTOML) }

// The demo target of the embedded default.
const (
	DemoIQN    = "iqn.2026-11.io.cachelun:demo"
	DemoPortal = "127.0.0.1:3260"
)

// Default parses the embedded default configuration.
func Default() *Config {
	c, err := Parse("<embedded default>", DefaultTOML())
	if err != nil {
		// the embedded file is tested; this cannot happen in a released binary
		panic("conf: embedded default does not load: " + err.Error())
	}
	return c
}
