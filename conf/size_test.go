package conf

import (
	"go/ast"
	"go/parser"
	"go/token"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// sizeDoc returns the doc comment of type Size, the grammar's documentation.
func sizeDoc(t *testing.T) string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "schema.go", nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok {
			continue
		}
		for _, s := range g.Specs {
			if ts, ok := s.(*ast.TypeSpec); ok && ts.Name.Name == "Size" {
				return g.Doc.Text()
			}
		}
	}
	t.Fatal("type Size not found in schema.go")
	return ""
}

// TestSizeDocIsTheGrammar ties the documentation of the size grammar (the
// doc comment of Size) to ParseSize: every example it quotes parses, and
// the units it lists are exactly the units ParseSize knows, with the base
// it states.
func TestSizeDocIsTheGrammar(t *testing.T) {
	doc := strings.Join(strings.Fields(sizeDoc(t)), " ")
	examples := regexp.MustCompile(`"([^"]+)"`).FindAllStringSubmatch(doc, -1)
	if len(examples) == 0 {
		t.Fatal("the Size doc quotes no example")
	}
	for _, m := range examples {
		if m[1] == "0" { // the explicit zero the doc contrasts with an absent key
			continue
		}
		if _, err := ParseSize(m[1]); err != nil {
			t.Errorf("documented example %q: %v", m[1], err)
		}
	}
	base := map[string]int64{}
	for _, m := range regexp.MustCompile(`((?:[KMGTP]i?B?|B)(?: [KMGTP]i?B?)*) \(powers of (\d+)\)`).FindAllStringSubmatch(doc, -1) {
		for _, u := range strings.Fields(m[1]) {
			base[u] = map[string]int64{"1024": 1024, "1000": 1000}[m[2]]
		}
	}
	base["B"] = 1
	var documented, known []string
	for u := range base {
		documented = append(documented, u)
	}
	for _, u := range sizeUnits {
		known = append(known, u.suffix)
		b, ok := base[u.suffix]
		if !ok {
			continue
		}
		// the unit's multiplier is the documented base to the unit's rank
		want := int64(1)
		if b > 1 {
			rank := strings.IndexByte("KMGTP", u.suffix[0]) + 1
			for range rank {
				want *= b
			}
		}
		if u.mult != want {
			t.Errorf("unit %s: ParseSize multiplies by %d, the doc says %d", u.suffix, u.mult, want)
		}
	}
	slices.Sort(documented)
	slices.Sort(known)
	if !slices.Equal(documented, known) {
		t.Errorf("the Size doc lists units %v, ParseSize knows %v", documented, known)
	}
}
