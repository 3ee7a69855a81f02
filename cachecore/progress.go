package cachecore

import "time"

// Progress reports how far writing back a volume's dirty data has come
// (Drain, a mode switch that leaves writeback, RemoveVolume, Detach).
type Progress struct {
	// WrittenBytes were written to the backing device by writeback since
	// the operation started: it only grows, run by run (up to 1 MiB each),
	// not pass by pass.
	WrittenBytes int64
	// DirtyBytes are still to be written back: dirty in the index, less
	// what the writeback pass in flight has written already.
	DirtyBytes int64
	// StartDirtyBytes were dirty when the operation started.
	StartDirtyBytes int64
	// Rate is the writeback rate over the last progressWindow in bytes/s,
	// 0 until it has been measured over progressMinSpan.
	Rate int64
	// Remaining is DirtyBytes at Rate, 0 while Rate is unknown.
	Remaining time.Duration
	// Done is set on the last report of an operation that completed.
	Done bool
}

// Fraction is the share written back so far, in [0, 1]: WrittenBytes over
// WrittenBytes + DirtyBytes. It is 1 only once Done: the last pass is
// written but not yet flushed and recorded before that.
func (p Progress) Fraction() float64 {
	if p.Done {
		return 1
	}
	total := p.WrittenBytes + p.DirtyBytes
	if total <= 0 {
		return 0
	}
	return min(float64(p.WrittenBytes)/float64(total), 0.999)
}

const (
	// progressWindow: the rate and the time left follow the last few
	// seconds, not the average since the start, which a slow start (the
	// first pass, a backing device busy with the host) skews for the whole
	// operation.
	progressWindow      = 5 * time.Second
	progressMinSpan     = 500 * time.Millisecond
	progressSampleEvery = 50 * time.Millisecond
)

type progressSample struct {
	at      time.Time
	written int64
}

// progressMeter turns the writeback counters of some volumes (one for a
// drain, all of a cache for Detach) into Progress.
type progressMeter struct {
	c          *Cache
	vols       []*Volume
	start      int64 // the volumes' writeback bytes at the start
	startDirty int64
	samples    []progressSample
}

func newProgressMeter(c *Cache, vols ...*Volume) *progressMeter {
	m := &progressMeter{c: c, vols: vols}
	for _, v := range vols {
		// As report counts what is left: a pass in flight has written
		// part of the dirty data already, and that part is not counted
		// as written by this operation.
		v.stats.progMu.RLock()
		m.start += int64(v.stats.writebackBytes.Load())
		m.startDirty += max(v.st.dirtyBytes.Load()-v.stats.wbUnmarked.Load(), 0)
		v.stats.progMu.RUnlock()
	}
	return m
}

// report returns the progress now.
func (m *progressMeter) report(done bool) Progress {
	now := m.c.clock().Now()
	written, left := -m.start, int64(0)
	for _, v := range m.vols {
		v.stats.progMu.RLock()
		written += int64(v.stats.writebackBytes.Load())
		left += max(v.st.dirtyBytes.Load()-v.stats.wbUnmarked.Load(), 0)
		v.stats.progMu.RUnlock()
	}
	p := Progress{WrittenBytes: written, DirtyBytes: left, StartDirtyBytes: m.startDirty, Done: done}
	if done {
		p.DirtyBytes = 0
		return p
	}
	if n := len(m.samples); n == 0 || now.Sub(m.samples[n-1].at) >= progressSampleEvery {
		m.samples = append(m.samples, progressSample{now, written})
	}
	// Keep one sample at or before the window's start, so the span covers
	// the whole window once the operation is that old.
	i := 0
	for i+1 < len(m.samples) && !m.samples[i+1].at.After(now.Add(-progressWindow)) {
		i++
	}
	m.samples = m.samples[i:]
	first := m.samples[0]
	if span := now.Sub(first.at); span >= progressMinSpan {
		p.Rate = int64(float64(written-first.written) / span.Seconds())
		if p.Rate > 0 {
			p.Remaining = time.Duration(float64(left) / float64(p.Rate) * float64(time.Second))
		}
	}
	return p
}
