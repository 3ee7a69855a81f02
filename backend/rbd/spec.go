package rbd

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// SpecPrefix starts every RBD backing spec.
const SpecPrefix = "rbd:"

// Spec names an RBD image: a pool, an optional RBD namespace inside it, and
// the image.
type Spec struct {
	Pool      string
	Namespace string // "" is the pool's default namespace
	Image     string
}

// String returns the spec in the form ParseSpec reads.
func (s Spec) String() string {
	if s.Namespace == "" {
		return SpecPrefix + s.Pool + "/" + s.Image
	}
	return SpecPrefix + s.Pool + "/" + s.Namespace + "/" + s.Image
}

// IsSpec reports whether backing names an RBD image (starts with "rbd:"), so
// a caller can route it here and report ParseSpec's error for a malformed
// one rather than treat it as a file path.
func IsSpec(backing string) bool { return strings.HasPrefix(backing, SpecPrefix) }

// ParseSpec parses "rbd:POOL/IMAGE" or "rbd:POOL/NAMESPACE/IMAGE". Errors wrap
// ErrBadSpec and say which part is wrong. Snapshots ("IMAGE@SNAP") are
// refused: a backing device must be writable.
func ParseSpec(s string) (Spec, error) {
	if !IsSpec(s) {
		return Spec{}, fmt.Errorf("%w: %q does not start with %q", ErrBadSpec, s, SpecPrefix)
	}
	parts := strings.Split(strings.TrimPrefix(s, SpecPrefix), "/")
	var sp Spec
	switch len(parts) {
	case 2:
		sp = Spec{Pool: parts[0], Image: parts[1]}
	case 3:
		sp = Spec{Pool: parts[0], Namespace: parts[1], Image: parts[2]}
		if sp.Namespace == "" {
			return Spec{}, fmt.Errorf("%w: %q: empty namespace (write rbd:POOL/IMAGE for the default namespace)", ErrBadSpec, s)
		}
	default:
		return Spec{}, fmt.Errorf("%w: %q: want rbd:POOL/IMAGE or rbd:POOL/NAMESPACE/IMAGE", ErrBadSpec, s)
	}
	for _, f := range []struct{ what, v string }{{"pool", sp.Pool}, {"namespace", sp.Namespace}, {"image", sp.Image}} {
		if f.what == "namespace" && f.v == "" {
			continue
		}
		if err := checkName(f.what, f.v); err != nil {
			return Spec{}, fmt.Errorf("%w: %q: %w", ErrBadSpec, s, err)
		}
	}
	return sp, nil
}

// checkName refuses names librados and librbd cannot take or that are
// certainly a mistake: empty, control characters or spaces (a pasted line
// break), a snapshot suffix, a NUL (C strings end there).
func checkName(what, v string) error {
	if v == "" {
		return fmt.Errorf("empty %s name", what)
	}
	if len(v) > 255 {
		return fmt.Errorf("%s name longer than 255 bytes", what)
	}
	if !utf8.ValidString(v) {
		return fmt.Errorf("%s name is not valid UTF-8", what)
	}
	for i, r := range v {
		switch {
		case r == '@' && what == "image":
			return fmt.Errorf("image %q names a snapshot; a backing image must be writable", v)
		case unicode.IsSpace(r) || unicode.IsControl(r):
			return fmt.Errorf("%s name %q contains a space or control character at byte %d", what, v, i)
		}
	}
	return nil
}
