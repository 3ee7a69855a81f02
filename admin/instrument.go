package admin

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cachelun/cachelun/internal/blk"
)

// opMetrics are the resolved series of one operation on one volume.
type opMetrics struct {
	duration prometheus.Observer
	errors   prometheus.Counter
}

func (m opMetrics) done(start time.Time, err error) error {
	m.duration.Observe(time.Since(start).Seconds())
	if err != nil {
		m.errors.Inc()
	}
	return err
}

// instrumentedVolume wraps a blk.Volume and records each call's latency.
type instrumentedVolume struct {
	inner                                      blk.Volume
	read, write, flush, discard, caw, prefetch opMetrics
}

// InstrumentVolume returns a volume that forwards to v and records the
// latency and errors of every call under the given volume name.
func (l *Latency) InstrumentVolume(name string, v blk.Volume) blk.Volume {
	resolve := func(op string) opMetrics {
		return opMetrics{
			duration: l.durations.WithLabelValues(name, op),
			errors:   l.errors.WithLabelValues(name, op),
		}
	}
	return &instrumentedVolume{
		inner:    v,
		read:     resolve(OpRead),
		write:    resolve(OpWrite),
		flush:    resolve(OpFlush),
		discard:  resolve(OpDiscard),
		caw:      resolve(OpCompareAndWrite),
		prefetch: resolve(OpPrefetch),
	}
}

// Unwrap returns the volume the instrumentation forwards to.
func (v *instrumentedVolume) Unwrap() blk.Volume { return v.inner }

func (v *instrumentedVolume) Size() int64    { return v.inner.Size() }
func (v *instrumentedVolume) BlockSize() int { return v.inner.BlockSize() }

func (v *instrumentedVolume) ReadAt(ctx context.Context, p []byte, off int64) error {
	start := time.Now()
	return v.read.done(start, v.inner.ReadAt(ctx, p, off))
}

func (v *instrumentedVolume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	start := time.Now()
	return v.write.done(start, v.inner.WriteAt(ctx, p, off, fua))
}

func (v *instrumentedVolume) Flush(ctx context.Context) error {
	start := time.Now()
	return v.flush.done(start, v.inner.Flush(ctx))
}

func (v *instrumentedVolume) Discard(ctx context.Context, off, n int64) error {
	start := time.Now()
	return v.discard.done(start, v.inner.Discard(ctx, off, n))
}

func (v *instrumentedVolume) CompareAndWrite(ctx context.Context, off int64, compare, data []byte, fua bool) error {
	start := time.Now()
	return v.caw.done(start, v.inner.CompareAndWrite(ctx, off, compare, data, fua))
}

func (v *instrumentedVolume) Prefetch(ctx context.Context, off, n int64) error {
	start := time.Now()
	return v.prefetch.done(start, v.inner.Prefetch(ctx, off, n))
}
