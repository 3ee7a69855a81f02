//go:build !race

package testkit

// RaceEnabled is true when the test binary is built with -race.
const RaceEnabled = false
