package rbd

import "time"

// Stats are the Device's request counters since Open, for status pages and
// metrics: a backing whose last failure is newer than its last success is
// degraded, for the reason LastError gives.
type Stats struct {
	InFlight    int64  // submitted and not completed, abandoned ones included
	Timeouts    uint64 // requests failed with ErrTimeout
	Fenced      uint64 // requests failed with ErrFenced
	Errors      uint64 // requests failed otherwise (ErrIO)
	LastOK      time.Time
	LastError   error // nil if no request failed
	LastErrorAt time.Time
}
