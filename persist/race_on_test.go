//go:build race

package persist

// raceEnabled: the race detector slows the crash-image loops ~10x, so they
// check fewer torn variants per persist point.
const raceEnabled = true
