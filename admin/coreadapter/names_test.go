package coreadapter_test

import (
	"slices"
	"testing"

	"github.com/cachelun/cachelun/admin"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/conf"
)

// TestEngineNamesRestatedExactly: the engine owns the names of the cache
// modes and failure policies; conf (which may not import the engine) and
// admin restate them, and must accept exactly the engine's.
func TestEngineNamesRestatedExactly(t *testing.T) {
	var modes []string
	for _, m := range cachecore.Modes() {
		modes = append(modes, string(m))
		if !admin.ValidMode(admin.Mode(m)) {
			t.Errorf("admin refuses the engine's mode %q", m)
		}
		if _, err := cachecore.ParseMode(string(m)); err != nil {
			t.Errorf("ParseMode(%q): %v", m, err)
		}
	}
	if !slices.Equal(modes, conf.Modes) {
		t.Errorf("conf.Modes = %v, the engine's modes are %v", conf.Modes, modes)
	}
	if admin.ValidMode("writebehind") {
		t.Error("admin accepts a mode the engine does not know")
	}
	var policies []string
	for _, p := range cachecore.FailurePolicies() {
		policies = append(policies, string(p))
	}
	if !slices.Equal(policies, conf.FailurePolicies) {
		t.Errorf("conf.FailurePolicies = %v, the engine's are %v", conf.FailurePolicies, policies)
	}
	var cachePolicies []string
	for _, p := range cachecore.Policies() {
		cachePolicies = append(cachePolicies, string(p))
	}
	if !slices.Equal(cachePolicies, conf.CachePolicies) {
		t.Errorf("conf.CachePolicies = %v, the engine's are %v", conf.CachePolicies, cachePolicies)
	}
}
