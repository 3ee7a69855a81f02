package iscsi

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/cachelun/cachelun/internal/memvol"
	"github.com/cachelun/cachelun/target/scsi"
)

// gatedVolume wraps a memvol volume: Gate, when set, runs before every read
// and write, so a test can hold I/O in flight; it counts concurrency.
type gatedVolume struct {
	*memvol.Volume
	mu         sync.Mutex
	gate       func(ctx context.Context, off int64) error
	Running    atomic.Int32
	MaxRunning atomic.Int32
}

func (v *gatedVolume) SetGate(g func(ctx context.Context, off int64) error) {
	v.mu.Lock()
	v.gate = g
	v.mu.Unlock()
}

func (v *gatedVolume) enter(ctx context.Context, off int64) error {
	n := v.Running.Add(1)
	for {
		m := v.MaxRunning.Load()
		if n <= m || v.MaxRunning.CompareAndSwap(m, n) {
			break
		}
	}
	v.mu.Lock()
	g := v.gate
	v.mu.Unlock()
	if g != nil {
		return g(ctx, off)
	}
	return nil
}

func (v *gatedVolume) ReadAt(ctx context.Context, p []byte, off int64) error {
	defer v.Running.Add(-1)
	if err := v.enter(ctx, off); err != nil {
		return err
	}
	return v.Volume.ReadAt(ctx, p, off)
}

func (v *gatedVolume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	defer v.Running.Add(-1)
	if err := v.enter(ctx, off); err != nil {
		return err
	}
	return v.Volume.WriteAt(ctx, p, off, fua)
}

// countingTarget is the real device server with counters on the
// task-management side effects.
type countingTarget struct {
	*scsi.Target
	Resets atomic.Int32
	Lost   atomic.Int32
}

func (t *countingTarget) ResetLU(n *scsi.Nexus, lun uint64) error {
	t.Resets.Add(1)
	return t.Target.ResetLU(n, lun)
}

func (t *countingTarget) ResetTarget(n *scsi.Nexus) {
	t.Resets.Add(1)
	t.Target.ResetTarget(n)
}

func (t *countingTarget) NexusLost(n *scsi.Nexus) {
	t.Lost.Add(1)
	t.Target.NexusLost(n)
}
