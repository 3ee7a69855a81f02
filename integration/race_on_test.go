//go:build race

package integration

// raceEnabled: the tests run under -race, so the daemon binary is built
// with the race detector too and any data race in it fails the test that
// stops it (exit status 66) or finds the report in its log.
const raceEnabled = true
