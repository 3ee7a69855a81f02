package cachecore

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// ErrorKinds is the list exporters show from the start; the kinds are
// counted where the engine calls addError. This test reads the package's
// source and ties the two: every kind counted is listed, and every kind
// listed is counted somewhere.
func TestErrorKindsListsEveryCountedKind(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	var counted []string
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) == 0 {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			switch sel.Sel.Name {
			case "addError":
				if lit, ok := call.Args[0].(*ast.BasicLit); ok && lit.Kind == token.STRING {
					k, _ := strconv.Unquote(lit.Value)
					counted = append(counted, k)
					return true
				}
				// backingErr counts "backing_" + its op, checked below
				if be, ok := call.Args[0].(*ast.BinaryExpr); ok {
					if lit, ok := be.X.(*ast.BasicLit); ok && lit.Value == `"backing_"` {
						return true
					}
				}
				t.Errorf("%s: addError with a kind this test cannot read", fset.Position(call.Pos()))
			case "backingErr":
				lit, ok := call.Args[0].(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					t.Errorf("%s: backingErr with an op this test cannot read", fset.Position(call.Pos()))
					return true
				}
				op, _ := strconv.Unquote(lit.Value)
				counted = append(counted, "backing_"+op)
			}
			return true
		})
	}
	slices.Sort(counted)
	counted = slices.Compact(counted)
	listed := slices.Sorted(slices.Values(ErrorKinds()))
	if !slices.Equal(counted, listed) {
		t.Errorf("the engine counts error kinds %v, ErrorKinds lists %v", counted, listed)
	}
}
