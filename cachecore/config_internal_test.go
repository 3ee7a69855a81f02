package cachecore

import "testing"

// TestConfigGCPercentResolution pins what Config.GCPercent means: the zero
// value keeps the stored value (70 when none is stored), explicit values
// are 1..90, anything else is refused.
func TestConfigGCPercentResolution(t *testing.T) {
	cases := []struct {
		set    int
		stored uint8
		want   int
		ok     bool
	}{
		{GCPercentStored, 55, 55, true},
		{GCPercentStored, 0, defaultGCPercent, true},
		{GCPercentStored, 95, defaultGCPercent, true}, // a stored value out of range is not used
		{30, 55, 30, true},
		{1, 0, 1, true},
		{90, 0, 90, true},
		{91, 55, 0, false},
		{-1, 55, 0, false},
	}
	for _, tc := range cases {
		got, err := Config{GCPercent: tc.set}.withDefaults(tc.stored)
		if (err == nil) != tc.ok {
			t.Fatalf("GCPercent %d (stored %d): err %v, want ok=%v", tc.set, tc.stored, err, tc.ok)
		}
		if tc.ok && got.GCPercent != tc.want {
			t.Fatalf("GCPercent %d (stored %d) resolved to %d, want %d", tc.set, tc.stored, got.GCPercent, tc.want)
		}
	}
}
