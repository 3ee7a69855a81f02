package admin

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
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

// BlockVolume has exactly the method set of target/scsi.Volume, so any
// scsi.Volume is a BlockVolume and the result of InstrumentVolume is a
// scsi.Volume. It is restated here to keep admin independent of the SCSI
// server's package.
type BlockVolume interface {
	Size() int64
	BlockSize() int
	ReadAt(ctx context.Context, p []byte, off int64) error
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
	Flush(ctx context.Context) error
	Discard(ctx context.Context, off, n int64) error
	CompareAndWrite(ctx context.Context, off int64, compare, data []byte, fua bool) error
	Prefetch(ctx context.Context, off, n int64) error
}

// instrumentedVolume wraps a BlockVolume and records each call's latency.
type instrumentedVolume struct {
	BlockVolume
	read, write, flush, discard, caw, prefetch opMetrics
}

// InstrumentVolume returns a volume that forwards to v and records the
// latency and errors of every call under the given volume name.
func (l *Latency) InstrumentVolume(name string, v BlockVolume) BlockVolume {
	resolve := func(op string) opMetrics {
		return opMetrics{
			duration: l.durations.WithLabelValues(name, op),
			errors:   l.errors.WithLabelValues(name, op),
		}
	}
	return &instrumentedVolume{
		BlockVolume: v,
		read:        resolve(OpRead),
		write:       resolve(OpWrite),
		flush:       resolve(OpFlush),
		discard:     resolve(OpDiscard),
		caw:         resolve(OpCompareAndWrite),
		prefetch:    resolve(OpPrefetch),
	}
}

// Unwrap returns the volume the instrumentation forwards to.
func (v *instrumentedVolume) Unwrap() BlockVolume { return v.BlockVolume }

func (v *instrumentedVolume) ReadAt(ctx context.Context, p []byte, off int64) error {
	start := time.Now()
	return v.read.done(start, v.BlockVolume.ReadAt(ctx, p, off))
}

func (v *instrumentedVolume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	start := time.Now()
	return v.write.done(start, v.BlockVolume.WriteAt(ctx, p, off, fua))
}

func (v *instrumentedVolume) Flush(ctx context.Context) error {
	start := time.Now()
	return v.flush.done(start, v.BlockVolume.Flush(ctx))
}

func (v *instrumentedVolume) Discard(ctx context.Context, off, n int64) error {
	start := time.Now()
	return v.discard.done(start, v.BlockVolume.Discard(ctx, off, n))
}

func (v *instrumentedVolume) CompareAndWrite(ctx context.Context, off int64, compare, data []byte, fua bool) error {
	start := time.Now()
	return v.caw.done(start, v.BlockVolume.CompareAndWrite(ctx, off, compare, data, fua))
}

func (v *instrumentedVolume) Prefetch(ctx context.Context, off, n int64) error {
	start := time.Now()
	return v.prefetch.done(start, v.BlockVolume.Prefetch(ctx, off, n))
}
