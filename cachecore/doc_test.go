package cachecore

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestContractReferencesResolve ties the numbered contract in doc.go to the
// code: every test it names exists, and every "C<n>" the engine's code and
// tests cite is one doc.go defines.
func TestContractReferencesResolve(t *testing.T) {
	doc, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	defined := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^//   - (C[0-9]+) \(`).FindAllStringSubmatch(string(doc), -1) {
		defined[m[1]] = true
	}
	if len(defined) < 9 {
		t.Fatalf("doc.go defines %d numbered guarantees, want C1..C9", len(defined))
	}
	var sources strings.Builder
	for _, dir := range []string{".", "../persist", "../target/scsi"} {
		files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			sources.Write(b)
		}
	}
	all := sources.String()
	for _, m := range regexp.MustCompile(`\bTest[A-Z][A-Za-z0-9]+`).FindAllString(string(doc), -1) {
		if !strings.Contains(all, "func "+m+"(") {
			t.Errorf("doc.go names %s, which no test defines", m)
		}
	}
	local, _ := filepath.Glob("*.go")
	for _, f := range local {
		b, _ := os.ReadFile(f)
		for _, m := range regexp.MustCompile(`\bC([0-9]+)\b`).FindAllString(string(b), -1) {
			if !defined[m] {
				t.Errorf("%s cites %s, which doc.go does not define", f, m)
			}
		}
	}
}
