//go:build race

package cachecore

// internalRace: the race detector is on (fewer crash images, slower code).
const internalRace = true
