//go:build race

package testkit

// RaceEnabled is true when the test binary is built with -race: the race
// detector slows the code several times, so long loops check fewer cases,
// and the integration tests build the daemon with -race too.
const RaceEnabled = true
