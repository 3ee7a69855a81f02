//go:build !invariants

package cachecore

// invariantsBuild: the live invariant checks are compiled out (see
// invariants_on.go).
const invariantsBuild = false
