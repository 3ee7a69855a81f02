package conf

import (
	"strconv"
	"strings"
)

// lineIndex maps key paths of a syntactically valid TOML document to the
// line they are defined on, so that validation problems found after
// decoding can name file:line. Paths carry array-of-table indices, e.g.
// "volume[1].mode" or "target[0].lun[2].volume"; the same path without
// indices ("volume.mode") maps to its first occurrence (for unknown-key
// reports, where the decoder gives no index).
//
// The scanner only needs to find where tables and keys start; it skips
// values (strings, arrays, inline tables) by bracket and quote matching.
// Keys inside inline tables resolve to the line of the inline table.
type lineIndex struct {
	lines    map[string]int
	plain    map[string]int
	arrCount map[string]int // resolved array-of-tables path -> number of elements seen
	// keyLines holds the line each key (not table header) was set on and
	// headers the line of each table header, to find a key or a table
	// defined twice; dups lists those repeats in file order.
	keyLines map[string]int
	headers  map[string]int
	dups     []repeatedKey
}

// repeatedKey is a key set a second time in its table, or a table header
// ([name]) given a second time: TOML errors the decoder would stop at.
// Its bytes [start, end) (for a table, the header and its keys) are
// blanked before decoding, so every other problem of the file is still
// reported.
type repeatedKey struct {
	path        string
	table       bool
	line, first int
	start, end  int
}

func indexLines(src string) *lineIndex {
	ix := &lineIndex{lines: map[string]int{}, plain: map[string]int{}, arrCount: map[string]int{},
		keyLines: map[string]int{}, headers: map[string]int{}}
	repeatedTable := -1 // index in dups of the repeated table being skipped
	s := scanner{src: src, line: 1}
	current := "" // resolved path of the current table
	for !s.eof() {
		s.skipSpaceNewlinesComments()
		if s.eof() {
			break
		}
		line := s.line
		if s.peek() == '[' {
			if repeatedTable >= 0 {
				ix.dups[repeatedTable].end = s.pos
				repeatedTable = -1
			}
			headerStart := s.pos
			s.pos++
			array := false
			if s.peek() == '[' {
				s.pos++
				array = true
			}
			keys := s.key()
			s.skipToLineEnd()
			if len(keys) == 0 {
				continue
			}
			current = ix.resolve(keys[:len(keys)-1])
			last := join(current, keys[len(keys)-1])
			if array {
				n := ix.arrCount[last]
				ix.arrCount[last] = n + 1
				last += "[" + strconv.Itoa(n) + "]"
			} else if n, ok := ix.arrCount[last]; ok && n > 0 {
				last += "[" + strconv.Itoa(n-1) + "]"
			}
			current = last
			if first, ok := ix.headers[current]; ok && !array {
				repeatedTable = len(ix.dups)
				ix.dups = append(ix.dups, repeatedKey{path: current, table: true, line: line, first: first, start: headerStart, end: len(src)})
				continue
			}
			ix.headers[current] = line
			ix.record(current, line)
			continue
		}
		start := s.pos
		keys := s.key()
		if len(keys) == 0 {
			s.skipToLineEnd()
			continue
		}
		p := current
		for _, k := range keys {
			p = join(p, k)
			ix.record(p, line)
		}
		s.skipSpace()
		if s.peek() == '=' {
			s.pos++
		}
		s.skipValue()
		if repeatedTable >= 0 {
			continue // blanked with its table
		}
		// a key set before, or a dotted key under a key set before
		// (log_level.x after log_level), redefines it
		for q := p; q != current && q != ""; q = parent(q) {
			if first, ok := ix.keyLines[q]; ok {
				ix.dups = append(ix.dups, repeatedKey{path: q, line: line, first: first, start: start, end: s.pos})
				break
			}
		}
		if _, ok := ix.keyLines[p]; !ok {
			ix.keyLines[p] = line
		}
	}
	return ix
}

// pathAt returns the indexed path of the key plain (given without
// indices, as the decoder names it) recorded on line, or "".
func (ix *lineIndex) pathAt(plain string, line int) string {
	best := ""
	for p, l := range ix.lines {
		if l == line && stripIndices(p) == plain && (best == "" || p < best) {
			best = p
		}
	}
	return best
}

// withoutRepeats returns src with the repeated keys blanked (spaces, the
// newlines kept so that line numbers stay).
func (ix *lineIndex) withoutRepeats(src []byte) []byte {
	if len(ix.dups) == 0 {
		return src
	}
	out := []byte(string(src))
	for _, d := range ix.dups {
		for i := d.start; i < d.end && i < len(out); i++ {
			if out[i] != '\n' {
				out[i] = ' '
			}
		}
	}
	return out
}

// resolve turns header components into a resolved path, picking the last
// element of every array of tables on the way.
func (ix *lineIndex) resolve(keys []string) string {
	p := ""
	for _, k := range keys {
		p = join(p, k)
		if n, ok := ix.arrCount[p]; ok && n > 0 {
			p += "[" + strconv.Itoa(n-1) + "]"
		}
	}
	return p
}

func (ix *lineIndex) record(path string, line int) {
	if _, ok := ix.lines[path]; !ok {
		ix.lines[path] = line
	}
	plain := stripIndices(path)
	if _, ok := ix.plain[plain]; !ok {
		ix.plain[plain] = line
	}
}

// line returns the line of path, or of its nearest recorded ancestor, or 0.
func (ix *lineIndex) line(path string) int {
	for p := path; p != ""; p = parent(p) {
		if l, ok := ix.lines[p]; ok {
			return l
		}
	}
	return 0
}

// plainLine returns the first line of a key path given without indices.
func (ix *lineIndex) plainLine(path string) int {
	for p := path; p != ""; p = parent(p) {
		if l, ok := ix.plain[p]; ok {
			return l
		}
	}
	return 0
}

func join(a, b string) string {
	if a == "" {
		return b
	}
	return a + "." + b
}

// parent strips the last component ("a[1].b" -> "a[1]" -> "a").
func parent(p string) string {
	if strings.HasSuffix(p, "]") {
		if i := strings.LastIndexByte(p, '['); i >= 0 {
			return p[:i]
		}
	}
	if i := strings.LastIndexByte(p, '.'); i >= 0 {
		return p[:i]
	}
	return ""
}

func stripIndices(p string) string {
	var b strings.Builder
	depth := 0
	for _, r := range p {
		switch {
		case r == '[':
			depth++
		case r == ']':
			depth--
		case depth == 0:
			b.WriteRune(r)
		}
	}
	return b.String()
}

type scanner struct {
	src  string
	pos  int
	line int
}

func (s *scanner) eof() bool { return s.pos >= len(s.src) }

func (s *scanner) peek() byte {
	if s.eof() {
		return 0
	}
	return s.src[s.pos]
}

func (s *scanner) advance() {
	if s.src[s.pos] == '\n' {
		s.line++
	}
	s.pos++
}

func (s *scanner) skipSpace() {
	for !s.eof() && (s.peek() == ' ' || s.peek() == '\t') {
		s.pos++
	}
}

func (s *scanner) skipSpaceNewlinesComments() {
	for !s.eof() {
		switch s.peek() {
		case ' ', '\t', '\r', '\n':
			s.advance()
		case '#':
			s.skipComment()
		default:
			return
		}
	}
}

func (s *scanner) skipComment() {
	for !s.eof() && s.peek() != '\n' {
		s.pos++
	}
}

func (s *scanner) skipToLineEnd() {
	for !s.eof() && s.peek() != '\n' {
		c := s.peek()
		if c == '"' || c == '\'' {
			s.skipString()
			continue
		}
		s.pos++
	}
}

// key reads a possibly dotted key (bare or quoted parts) and stops after
// it (before '=' or ']').
func (s *scanner) key() []string {
	var parts []string
	for {
		s.skipSpace()
		if s.eof() {
			return parts
		}
		c := s.peek()
		switch {
		case c == '"' || c == '\'':
			start := s.pos
			s.skipString()
			raw := s.src[start:s.pos]
			if len(raw) >= 2 {
				if c == '"' {
					if u, err := strconv.Unquote(raw); err == nil {
						raw = u
					} else {
						raw = raw[1 : len(raw)-1]
					}
				} else {
					raw = raw[1 : len(raw)-1]
				}
			}
			parts = append(parts, raw)
		case isBareKeyChar(c):
			start := s.pos
			for !s.eof() && isBareKeyChar(s.peek()) {
				s.pos++
			}
			parts = append(parts, s.src[start:s.pos])
		default:
			return parts
		}
		s.skipSpace()
		if s.peek() != '.' {
			return parts
		}
		s.pos++
	}
}

func isBareKeyChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// skipString skips a basic, literal or multi-line string starting at pos.
func (s *scanner) skipString() {
	q := s.peek()
	if strings.HasPrefix(s.src[s.pos:], string([]byte{q, q, q})) {
		s.pos += 3
		end := string([]byte{q, q, q})
		for !s.eof() {
			if q == '"' && s.peek() == '\\' {
				s.advance()
				if !s.eof() {
					s.advance()
				}
				continue
			}
			if strings.HasPrefix(s.src[s.pos:], end) {
				s.pos += 3
				// up to two more quotes may belong to the content
				for i := 0; i < 2 && s.peek() == q; i++ {
					s.pos++
				}
				return
			}
			s.advance()
		}
		return
	}
	s.pos++
	for !s.eof() {
		c := s.peek()
		if c == '\n' {
			return
		}
		if q == '"' && c == '\\' && s.pos+1 < len(s.src) && s.src[s.pos+1] != '\n' {
			s.pos += 2
			continue
		}
		s.pos++
		if c == q {
			return
		}
	}
}

// skipValue skips one value and the rest of its line (arrays and inline
// tables may span lines).
func (s *scanner) skipValue() {
	depth := 0
	for !s.eof() {
		c := s.peek()
		switch c {
		case '"', '\'':
			s.skipString()
			continue
		case '[', '{':
			depth++
		case ']', '}':
			depth--
		case '#':
			s.skipComment()
			continue
		case '\n':
			if depth <= 0 {
				s.advance()
				return
			}
		}
		s.advance()
	}
}
