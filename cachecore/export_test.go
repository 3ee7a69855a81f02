package cachecore

// WithWritebackPassKsets returns cfg with writeback passes of at most n
// ksets, so that tests see many passes (and their collapsing across
// passes) in a small workload.
func WithWritebackPassKsets(cfg Config, n int) Config {
	cfg.wbPassKsets = n
	return cfg
}

// WithDiscardZeroLimit returns cfg with discards larger than n (not 1 MiB)
// treated as large ones: over dirty data they wait for its writeback, then
// discard the backing device.
func WithDiscardZeroLimit(cfg Config, n int64) Config {
	cfg.discardZeroLimit = n
	return cfg
}

// WaitFills waits until every read-miss fill queued so far was installed
// in the cache or dropped (fills are asynchronous).
func WaitFills(c *Cache) { c.waitFills() }
