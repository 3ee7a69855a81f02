package conf

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

var decoderLine = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]*)"\): (.*)$`)

// ErrInvalid is wrapped by every error Load and Parse return for a
// configuration that was read but is not acceptable.
var ErrInvalid = errors.New("invalid configuration")

// Problem is one thing wrong with a configuration file.
type Problem struct {
	File string // the file name given to Load or Parse
	Line int    // 1-based; 0 when the key could not be located
	Key  string // key path, e.g. "volume[1].mode"
	Msg  string
}

func (p *Problem) Error() string {
	loc := p.File
	if p.Line > 0 {
		loc = fmt.Sprintf("%s:%d", p.File, p.Line)
	}
	if p.Key == "" {
		return loc + ": " + p.Msg
	}
	return loc + ": " + p.Key + ": " + p.Msg
}

// Error is returned for an unacceptable configuration: all problems found,
// in file order.
type Error struct {
	Problems []*Problem
}

func (e *Error) Error() string {
	parts := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		parts[i] = p.Error()
	}
	return strings.Join(parts, "\n")
}

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *Error) Unwrap() error { return ErrInvalid }

// Load reads and validates the configuration file at path.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("conf: %w", err)
	}
	return Parse(path, b)
}

// Parse validates a configuration held in memory; name is used in error
// messages as the file name.
func Parse(name string, data []byte) (cfg *Config, err error) {
	defer func() {
		// The decoder is third-party code fed untrusted bytes: a panic in
		// it must become an error, never a dead daemon.
		if r := recover(); r != nil {
			cfg, err = nil, &Error{Problems: []*Problem{{File: name, Msg: fmt.Sprintf("cannot parse: %v", r)}}}
		}
	}()
	if p := checkShape(name, data); p != nil {
		return nil, &Error{Problems: []*Problem{p}}
	}
	// Every problem of the file is reported at once, in one form
	// (FILE:LINE: table[index].key: message): a key set twice is reported
	// and blanked out, the generic decoding is checked against the schema
	// (values of the wrong type and unknown keys are reported and
	// removed), and only the rest is decoded into a Config and validated.
	// Only a syntax error, after which nothing can be read, stops early.
	v := &validator{file: name, ix: indexLines(string(data))}
	for _, d := range v.ix.dups {
		if d.table {
			v.problemAt(d.line, d.path, "table defined again (first on line %d); its keys belong in one section, and these were not read", d.first)
		} else {
			v.problemAt(d.line, d.path, "set again (first set on line %d); a key is set once per table", d.first)
		}
	}
	var raw map[string]any
	if _, derr := toml.NewDecoder(bytes.NewReader(v.ix.withoutRepeats(data))).Decode(&raw); derr != nil {
		v.problems = append(v.problems, v.decodeProblem(derr))
		sortProblems(v.problems)
		return nil, &Error{Problems: v.problems}
	}
	tc := &typeChecker{v: v, dropped: map[string]bool{}}
	tc.table("", raw, reflect.TypeFor[Config]())
	var clean bytes.Buffer
	if err := toml.NewEncoder(&clean).Encode(raw); err != nil {
		return nil, &Error{Problems: []*Problem{{File: name, Msg: fmt.Sprintf("cannot re-encode: %v", err)}}}
	}
	var c Config
	md, derr := toml.NewDecoder(&clean).Decode(&c)
	if derr != nil {
		// the schema check should have caught it; say what the decoder said
		v.problems = append(v.problems, v.decodeProblem(derr))
		sortProblems(v.problems)
		return nil, &Error{Problems: v.problems}
	}
	for _, k := range md.Undecoded() {
		v.problemAt(v.ix.plainLine(k.String()), k.String(), "unknown key")
	}
	typeProblems := len(v.problems)
	v.config(&c)
	// a key dropped above is not reported again (as missing, say)
	kept := v.problems[:typeProblems]
	for _, p := range v.problems[typeProblems:] {
		if !tc.dropped[p.Key] {
			kept = append(kept, p)
		}
	}
	v.problems = kept
	if len(v.problems) > 0 {
		sortProblems(v.problems)
		return nil, &Error{Problems: v.problems}
	}
	c.Source = name
	return &c, nil
}

// decodeProblem turns a decoder error into a Problem at its line, naming
// the key with its table index when the line index knows it.
func (v *validator) decodeProblem(derr error) *Problem {
	p := &Problem{File: v.file, Msg: derr.Error()}
	var pe toml.ParseError
	if errors.As(derr, &pe) {
		p.Line, p.Key, p.Msg = pe.Position.Line, pe.LastKey, pe.Message
	} else if m := decoderLine.FindStringSubmatch(derr.Error()); m != nil {
		// type mismatches come as plain errors "toml: line N (last key "k"): msg"
		p.Line, _ = strconv.Atoi(m[1])
		p.Key, p.Msg = m[2], m[3]
	}
	if full := v.ix.pathAt(p.Key, p.Line); full != "" {
		p.Key = full
	}
	return p
}

func sortProblems(ps []*Problem) {
	sort.SliceStable(ps, func(i, j int) bool { return ps[i].Line < ps[j].Line })
}

// Limits checked before the TOML decoder sees the input. The decoder's
// time and memory grow with the square of the number of parts of a dotted
// key or table header (BurntSushi/toml issue 496, up to v1.6.0): a 60 KB
// key can hold it for half a minute. cachelun's schema nests four levels
// at most, and configuration files are small.
const (
	maxConfigSize  = 1 << 20
	maxDotsPerLine = 32
)

// checkShape rejects inputs that are too large or have a line with more
// dots outside quoted strings than any configuration needs. It is linear
// in the input.
func checkShape(name string, data []byte) *Problem {
	if len(data) > maxConfigSize {
		return &Problem{File: name, Msg: fmt.Sprintf("file is %d bytes; a configuration is at most %d", len(data), maxConfigSize)}
	}
	line, dots := 1, 0
	var quote byte
	for i := 0; i < len(data); i++ {
		c := data[i]
		switch {
		case c == '\n':
			line, dots, quote = line+1, 0, 0
		case quote != 0:
			if c == '\\' && quote == '"' {
				i++
			} else if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '#':
			for i+1 < len(data) && data[i+1] != '\n' {
				i++
			}
		case c == '.':
			dots++
			if dots > maxDotsPerLine {
				return &Problem{File: name, Line: line, Msg: fmt.Sprintf("more than %d dotted key parts on one line", maxDotsPerLine)}
			}
		}
	}
	return nil
}
