package conf

import (
	"encoding"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"time"
)

// typeChecker checks a file's generic decoding against the schema before
// the file is decoded into a Config, so that a value of the wrong type or
// an unknown key is one problem among all the others (the decoder would
// stop at the first), reported as FILE:LINE: table[index].key: message.
// A bad value or unknown key is reported and removed from the tree;
// dropped remembers its path so that validation does not report the same
// key again (as missing, say).
type typeChecker struct {
	v       *validator
	dropped map[string]bool
}

var textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()

// table checks the keys of one table m, whose schema is the struct t.
func (tc *typeChecker) table(path string, m map[string]any, t reflect.Type) {
	fields := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		fields[name] = f.Type
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		p := join(path, k)
		ft, ok := fields[k]
		if !ok {
			msg := "unknown key"
			if s := closest(k, fields); s != "" {
				msg += fmt.Sprintf("; did you mean %q?", s)
			}
			tc.drop(m, k, p, "%s", msg)
			continue
		}
		if !tc.value(p, m[k], ft) {
			delete(m, k)
		}
	}
}

// value checks one value against the field type t; false means it was
// reported and must be removed.
func (tc *typeChecker) value(p string, val any, t reflect.Type) bool {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	bad := func(want string) bool {
		tc.dropped[p] = true
		tc.v.bad(p, "expected %s, not %s", want, describe(val))
		return false
	}
	switch {
	case reflect.PointerTo(t).Implements(textUnmarshaler):
		// the decoder hands numbers to UnmarshalText as their text, and
		// validation judges them ("needs a unit")
		switch val.(type) {
		case string, int64, float64:
		default:
			switch t {
			case reflect.TypeFor[Size]():
				return bad(`a size, such as "64MiB" or 4096`)
			case reflect.TypeFor[Duration]():
				return bad(`a duration, such as "1s" or "500ms"`)
			}
			return bad("a string")
		}
	case t.Kind() == reflect.Struct:
		sub, ok := val.(map[string]any)
		if !ok {
			return bad("a table")
		}
		tc.table(p, sub, t)
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Struct:
		elems, ok := tables(val)
		if !ok {
			return bad("an array of tables ([[" + lastKey(p) + "]])")
		}
		for i, e := range elems {
			tc.table(fmt.Sprintf("%s[%d]", p, i), e, t.Elem())
		}
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.String:
		arr, ok := val.([]any)
		if !ok {
			return bad("an array of strings")
		}
		for _, e := range arr {
			if _, ok := e.(string); !ok {
				return bad("an array of strings")
			}
		}
	case t.Kind() == reflect.String:
		if _, ok := val.(string); !ok {
			return bad("a string")
		}
	case t.Kind() == reflect.Bool:
		if _, ok := val.(bool); !ok {
			return bad("true or false")
		}
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Int64:
		if _, ok := val.(int64); !ok {
			return bad("an integer")
		}
	case t.Kind() >= reflect.Uint && t.Kind() <= reflect.Uint64:
		n, ok := val.(int64)
		if !ok || n < 0 {
			return bad("an integer from 0")
		}
	}
	return true
}

// drop reports key k of table m (at path p) and removes it.
func (tc *typeChecker) drop(m map[string]any, k, p, format string, args ...any) {
	tc.dropped[p] = true
	tc.v.bad(p, format, args...)
	delete(m, k)
}

// tables returns the elements of an array of tables ([[name]] sections or
// an inline array of inline tables).
func tables(val any) ([]map[string]any, bool) {
	switch a := val.(type) {
	case []map[string]any:
		return a, true
	case []any:
		out := make([]map[string]any, 0, len(a))
		for _, e := range a {
			m, ok := e.(map[string]any)
			if !ok {
				return nil, false
			}
			out = append(out, m)
		}
		return out, true
	}
	return nil, false
}

// describe names a decoded value's TOML type, with the value when short.
func describe(val any) string {
	switch x := val.(type) {
	case string:
		return fmt.Sprintf("the string %q", x)
	case int64:
		return fmt.Sprintf("the integer %d", x)
	case float64:
		return fmt.Sprintf("the float %v", x)
	case bool:
		return fmt.Sprintf("%v", x)
	case time.Time:
		return "a date-time"
	case map[string]any:
		return "a table"
	case []map[string]any:
		return "an array of tables"
	case []any:
		return "an array"
	}
	return fmt.Sprintf("a %T", val)
}

func lastKey(p string) string {
	p = stripIndices(p)
	if i := strings.LastIndexByte(p, '.'); i >= 0 {
		return p[i+1:]
	}
	return p
}

// closest returns the known key nearest to k when it is near enough to be
// a typo (at most 2 edits, and fewer than half of k's length), else "".
func closest(k string, known map[string]reflect.Type) string {
	best, bestD := "", 3
	for name := range known {
		d := editDistance(k, name)
		if d < bestD || d == bestD && name < best {
			best, bestD = name, d
		}
	}
	if best == "" || bestD > 2 || 2*bestD >= len(k) {
		return ""
	}
	return best
}

// editDistance is the optimal string alignment distance: insertions,
// deletions, substitutions and transpositions of adjacent bytes each cost
// one ("queue_dpeth" is one edit from "queue_depth").
func editDistance(a, b string) int {
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}
