package cachecore

// ErrorKinds lists the kinds VolumeStats.Errors counts, so that exporters
// can show every kind from the start, at zero, instead of a series that
// appears only with its first error (an alert on a rate of it would not
// fire on the first one).
func ErrorKinds() []string {
	return []string{"backing_read", "backing_write", "backing_flush", "backing_discard", "cache_media", "data_crc", "writeback"}
}
