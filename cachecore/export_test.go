package cachecore

// WithWritebackPassKsets returns cfg with writeback passes of at most n
// ksets, so that tests see many passes (and their collapsing across
// passes) in a small workload.
func WithWritebackPassKsets(cfg Config, n int) Config {
	cfg.wbPassKsets = n
	return cfg
}

// WaitFills waits until every read-miss fill queued so far was installed
// in the cache or dropped (fills are asynchronous).
func WaitFills(c *Cache) { c.waitFills() }
