package reconcile

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestNoIO keeps the package what its doc says: planning without I/O and
// an executor that acts only through Effects. Its code imports no package
// that reaches a file, a socket, the engine's state or a front end; a new
// import has to be added here, on purpose.
func TestNoIO(t *testing.T) {
	allowed := []string{
		"context", "errors", "fmt", "log/slog", "slices", "strings",
		"github.com/cachelun/cachelun/conf",
		"github.com/cachelun/cachelun/cachecore", // ParseMode only: mode names as the engine reads them
	}
	files, _ := filepath.Glob("*.go")
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, im := range af.Imports {
			p, _ := strconv.Unquote(im.Path.Value)
			if !slices.Contains(allowed, p) {
				t.Errorf("%s imports %s", f, p)
			}
		}
	}
}
