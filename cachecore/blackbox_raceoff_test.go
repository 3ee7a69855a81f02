//go:build !race

package cachecore_test

const raceEnabled = false
