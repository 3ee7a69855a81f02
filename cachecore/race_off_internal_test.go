//go:build !race

package cachecore

const internalRace = false
