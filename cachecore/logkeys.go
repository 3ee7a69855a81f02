package cachecore

// LogKeys returns the number of keys in the cache's live log (from
// key_tail on), all volumes. Right after Open, before writes and GC, it
// is the number of keys replay put into the index, plus the keys
// recovered from the intent log (IntentRecoveredKeys); the daemon's
// start-up report uses it.
func (c *Cache) LogKeys() uint64 {
	var n int64
	for i := range c.liveKeys {
		n += c.liveKeys[i].Load()
	}
	return uint64(max(n, 0))
}
