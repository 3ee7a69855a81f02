// Package admintest provides fake admin.Backend implementations for tests
// of the admin API, the CLI and the daemon's wiring: volumes, caches and
// sessions whose state a test sets directly, and gates that hold flush,
// drain and mode switches (or the read-only calls) until the test releases
// them, to show that the API keeps answering while they are stuck; and
// StartServer, the one way tests run an admin server in the background.
package admintest

import (
	"context"
	"errors"
	"maps"
	"sync"
	"sync/atomic"

	"github.com/cachelun/cachelun/admin"
)

// Gate blocks callers of Wait until Open is called. The zero value is not
// usable; create gates with NewGate.
type Gate struct {
	once sync.Once
	ch   chan struct{}
}

// NewGate returns a closed-for-now gate.
func NewGate() *Gate { return &Gate{ch: make(chan struct{})} }

// Open releases every present and future waiter. It is idempotent.
func (g *Gate) Open() { g.once.Do(func() { close(g.ch) }) }

// Wait blocks until the gate opens or ctx ends.
func (g *Gate) Wait(ctx context.Context) error {
	select {
	case <-g.ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Volume is a fake admin.VolumeAPI. Its methods are safe for concurrent use.
type Volume struct {
	name, cache string
	size        int64
	blockSize   int

	// Running counts Drain, SetMode and Flush calls in progress.
	Running atomic.Int32
	// Drains, Flushes and ModeSwitches count completed calls.
	Drains, Flushes, ModeSwitches atomic.Int32

	mu        sync.Mutex
	mode      admin.Mode
	stats     admin.VolumeStats
	workGate  *Gate // nil: Drain/SetMode/Flush finish at once
	readGate  *Gate // nil: Stats/Explain answer at once
	failWith  error
	explained map[int64]admin.Explanation
	sz        sizingHolder
}

// NewVolume returns a fake volume in writeback mode.
func NewVolume(name, cache string, size int64, blockSize int) *Volume {
	return &Volume{name: name, cache: cache, size: size, blockSize: blockSize, mode: "writeback",
		explained: make(map[int64]admin.Explanation)}
}

// Name implements admin.VolumeAPI.
func (v *Volume) Name() string { return v.name }

// Cache implements admin.VolumeAPI.
func (v *Volume) Cache() string { return v.cache }

// Size implements admin.VolumeAPI.
func (v *Volume) Size() int64 { return v.size }

// BlockSize implements admin.VolumeAPI.
func (v *Volume) BlockSize() int { return v.blockSize }

// Mode implements admin.VolumeAPI.
func (v *Volume) Mode() admin.Mode {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.mode
}

// SetStats replaces the counters Stats reports.
func (v *Volume) SetStats(st admin.VolumeStats) {
	v.mu.Lock()
	v.stats = cloneStats(st)
	v.mu.Unlock()
}

// UpdateStats applies f to the counters under the volume's lock.
func (v *Volume) UpdateStats(f func(*admin.VolumeStats)) {
	v.mu.Lock()
	f(&v.stats)
	v.mu.Unlock()
}

// HoldWork makes Drain, SetMode and Flush block (after reporting half of the
// drain's progress) until the returned gate opens or their context ends.
func (v *Volume) HoldWork() *Gate {
	g := NewGate()
	v.mu.Lock()
	v.workGate = g
	v.mu.Unlock()
	return g
}

// HoldReads makes Stats and Explain block until the returned gate opens:
// a backend stuck behind data-path work.
func (v *Volume) HoldReads() *Gate {
	g := NewGate()
	v.mu.Lock()
	v.readGate = g
	v.mu.Unlock()
	return g
}

// FailWith makes Drain, SetMode and Flush return err (nil: succeed).
func (v *Volume) FailWith(err error) {
	v.mu.Lock()
	v.failWith = err
	v.mu.Unlock()
}

// SetExplanation sets what Explain returns for a byte offset.
func (v *Volume) SetExplanation(off int64, e admin.Explanation) {
	v.mu.Lock()
	v.explained[off] = e
	v.mu.Unlock()
}

func (v *Volume) waitReads() {
	v.mu.Lock()
	g := v.readGate
	v.mu.Unlock()
	if g != nil {
		_ = g.Wait(context.Background())
	}
}

// Stats implements admin.VolumeAPI.
func (v *Volume) Stats() admin.VolumeStats {
	v.waitReads()
	v.mu.Lock()
	defer v.mu.Unlock()
	return cloneStats(v.stats)
}

// Explain implements admin.VolumeAPI. Offsets without a set explanation
// are misses.
func (v *Volume) Explain(off int64) admin.Explanation {
	v.waitReads()
	v.mu.Lock()
	defer v.mu.Unlock()
	if e, ok := v.explained[off]; ok {
		return e
	}
	return admin.Explanation{Offset: off, State: "miss"}
}

// drain writes back the fake's dirty bytes, reporting progress, holding
// halfway while the work gate is closed.
func (v *Volume) drain(ctx context.Context, progress func(admin.Progress)) error {
	v.mu.Lock()
	start, gate, fail := v.stats.DirtyBytes, v.workGate, v.failWith
	v.mu.Unlock()
	report := func(dirty int64) {
		if progress != nil {
			progress(admin.Progress{WrittenBytes: start - dirty, DirtyBytes: dirty, StartDirtyBytes: start, Done: dirty == 0})
		}
	}
	report(start)
	report(start / 2)
	if gate != nil {
		if err := gate.Wait(ctx); err != nil {
			return err
		}
	}
	if fail != nil {
		return fail
	}
	v.mu.Lock()
	v.stats.DirtyBytes = 0
	v.mu.Unlock()
	report(0)
	return nil
}

// Drain implements admin.VolumeAPI.
func (v *Volume) Drain(ctx context.Context, progress func(admin.Progress)) error {
	v.Running.Add(1)
	defer v.Running.Add(-1)
	err := v.drain(ctx, progress)
	if err == nil {
		v.Drains.Add(1)
	}
	return err
}

// SetMode implements admin.VolumeAPI; leaving writeback drains first.
func (v *Volume) SetMode(ctx context.Context, m admin.Mode, progress func(admin.Progress)) error {
	v.Running.Add(1)
	defer v.Running.Add(-1)
	if !admin.ValidMode(m) {
		return errors.New("admintest: unknown mode " + string(m))
	}
	if v.Mode() == "writeback" && m != "writeback" {
		if err := v.drain(ctx, progress); err != nil {
			return err
		}
	}
	v.mu.Lock()
	v.mode = m
	v.mu.Unlock()
	v.ModeSwitches.Add(1)
	return nil
}

// Flush implements admin.VolumeAPI.
func (v *Volume) Flush(ctx context.Context) error {
	v.Running.Add(1)
	defer v.Running.Add(-1)
	v.mu.Lock()
	gate, fail := v.workGate, v.failWith
	v.mu.Unlock()
	if gate != nil {
		if err := gate.Wait(ctx); err != nil {
			return err
		}
	}
	if fail != nil {
		return fail
	}
	v.Flushes.Add(1)
	return nil
}

func cloneStats(st admin.VolumeStats) admin.VolumeStats {
	st.BypassedRequests = maps.Clone(st.BypassedRequests)
	st.BypassedBytes = maps.Clone(st.BypassedBytes)
	st.Errors = maps.Clone(st.Errors)
	return st
}

// Cache is a fake admin.CacheAPI.
type Cache struct {
	name, path string
	// Detached counts Detach calls that succeeded.
	Detached atomic.Int32
	// Forced counts Detach calls with force.
	Forced atomic.Int32
	// DetachErr, if set, is what Detach without force returns.
	DetachErr error

	mu    sync.Mutex
	stats admin.CacheStats
	sz    sizingHolder
}

// NewCache returns a fake cache.
func NewCache(name, path string) *Cache { return &Cache{name: name, path: path} }

// Name implements admin.CacheAPI.
func (c *Cache) Name() string { return c.name }

// Path implements admin.CacheAPI.
func (c *Cache) Path() string { return c.path }

// SetStats replaces what Stats reports.
func (c *Cache) SetStats(st admin.CacheStats) {
	c.mu.Lock()
	c.stats = st
	c.mu.Unlock()
}

// Stats implements admin.CacheAPI.
func (c *Cache) Stats() admin.CacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// Detach implements admin.CacheAPI; a healthy cache reports its dirty
// bytes written back at once.
func (c *Cache) Detach(ctx context.Context, force bool, progress func(admin.Progress)) error {
	c.mu.Lock()
	dirty, failed := c.stats.DirtyBytes, c.stats.Failed
	c.mu.Unlock()
	if progress != nil && !failed {
		progress(admin.Progress{DirtyBytes: dirty, StartDirtyBytes: dirty})
		progress(admin.Progress{WrittenBytes: dirty, StartDirtyBytes: dirty, Done: true})
	}
	if force {
		c.Forced.Add(1)
	} else if c.DetachErr != nil {
		return c.DetachErr
	}
	c.Detached.Add(1)
	return nil
}

// Backend is a fake admin.Backend.
type Backend struct {
	mu       sync.Mutex
	volumes  []admin.VolumeAPI
	caches   []admin.CacheAPI
	sessions []admin.Session
	reload   func(ctx context.Context, dryRun bool) (string, error)
}

// NewBackend returns a backend serving the given volumes and caches.
func NewBackend(volumes []*Volume, caches []*Cache) *Backend {
	b := &Backend{}
	for _, v := range volumes {
		b.volumes = append(b.volumes, v)
	}
	for _, c := range caches {
		b.caches = append(b.caches, c)
	}
	return b
}

// SetSessions replaces the session list.
func (b *Backend) SetSessions(s []admin.Session) {
	b.mu.Lock()
	b.sessions = append([]admin.Session(nil), s...)
	b.mu.Unlock()
}

// OnReload sets what Reload does; by default it returns an empty plan.
func (b *Backend) OnReload(f func(ctx context.Context, dryRun bool) (string, error)) {
	b.mu.Lock()
	b.reload = f
	b.mu.Unlock()
}

// Volumes implements admin.Backend.
func (b *Backend) Volumes() []admin.VolumeAPI {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]admin.VolumeAPI(nil), b.volumes...)
}

// Caches implements admin.Backend.
func (b *Backend) Caches() []admin.CacheAPI {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]admin.CacheAPI(nil), b.caches...)
}

// Sessions implements admin.Backend.
func (b *Backend) Sessions() []admin.Session {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]admin.Session(nil), b.sessions...)
}

// Reload implements admin.Backend.
func (b *Backend) Reload(ctx context.Context, dryRun bool) (string, error) {
	b.mu.Lock()
	f := b.reload
	b.mu.Unlock()
	if f == nil {
		return "", nil
	}
	return f(ctx, dryRun)
}
