//go:build invariants

package cachecore

// invariantsBuild: built with -tags invariants (CI runs the engine's tests
// so): the live invariant checks run after every writeback pass and GC
// step.
const invariantsBuild = true
