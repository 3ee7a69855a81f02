package iscsi

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
)

// Limits on text keys (RFC 7143 §6.1: key names up to 63 bytes, values up
// to 255 bytes except where a key says otherwise; CHAP values may be long).
const (
	maxKeyName   = 63
	maxKeyValue  = 8192
	maxTextBytes = 64 * 1024 // text accumulated across continued PDUs
	maxKeys      = 256
)

// ErrBadText reports a malformed key=value text segment.
var ErrBadText = errors.New("iscsi: malformed text key")

// kv is one key=value pair, in arrival order.
type kv struct{ Key, Value string }

// parseText decodes a NUL-separated list of key=value pairs. Trailing NULs
// and padding are tolerated; a duplicate key is an error (RFC 7143 §6.1:
// a key may be sent only once per negotiation).
func parseText(b []byte) ([]kv, error) {
	if len(b) > maxTextBytes {
		return nil, fmt.Errorf("%w: %d bytes", ErrBadText, len(b))
	}
	var out []kv
	for len(b) > 0 {
		i := bytes.IndexByte(b, 0)
		var item []byte
		if i < 0 {
			item, b = b, nil
		} else {
			item, b = b[:i], b[i+1:]
		}
		if len(item) == 0 {
			continue
		}
		eq := bytes.IndexByte(item, '=')
		if eq <= 0 {
			return nil, fmt.Errorf("%w: %q", ErrBadText, truncate(item))
		}
		k, v := string(item[:eq]), string(item[eq+1:])
		if len(k) > maxKeyName || len(v) > maxKeyValue {
			return nil, fmt.Errorf("%w: %q too long", ErrBadText, truncate(item))
		}
		for _, e := range out {
			if e.Key == k {
				return nil, fmt.Errorf("%w: %q repeated", ErrBadText, k)
			}
		}
		if len(out) >= maxKeys {
			return nil, fmt.Errorf("%w: too many keys", ErrBadText)
		}
		out = append(out, kv{k, v})
	}
	return out, nil
}

func truncate(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "..."
	}
	return string(b)
}

// textBuilder encodes key=value pairs, each NUL-terminated.
type textBuilder struct{ b []byte }

func (t *textBuilder) add(k, v string) {
	t.b = append(t.b, k...)
	t.b = append(t.b, '=')
	t.b = append(t.b, v...)
	t.b = append(t.b, 0)
}

func (t *textBuilder) bytes() []byte { return t.b }

// lookup returns the value of key k.
func lookup(kvs []kv, k string) (string, bool) {
	for _, e := range kvs {
		if e.Key == k {
			return e.Value, true
		}
	}
	return "", false
}

// splitList splits a comma-separated list value.
func splitList(v string) []string {
	parts := strings.Split(v, ",")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	return parts
}
