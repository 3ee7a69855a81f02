//go:build race

package cachecore_test

// raceEnabled: the race detector slows the engine down several times, so the
// default runs of the heavier tests check fewer images.
const raceEnabled = true
