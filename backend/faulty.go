package backend

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"

	"github.com/cachelun/cachelun/internal/blk"
)

// Op is a set of request kinds, used to select which requests a fault or a
// gate applies to.
type Op uint8

// Request kinds.
const (
	OpRead Op = 1 << iota
	OpWrite
	OpFlush
	OpDiscard

	OpAll = OpRead | OpWrite | OpFlush | OpDiscard
)

func (o Op) String() string {
	var parts []string
	for _, k := range []struct {
		op   Op
		name string
	}{{OpRead, "read"}, {OpWrite, "write"}, {OpFlush, "flush"}, {OpDiscard, "discard"}} {
		if o&k.op != 0 {
			parts = append(parts, k.name)
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "|")
}

// Range is a byte range of a device. Len <= 0 means "to the end of the
// device", so the zero Range is the whole device.
type Range struct{ Off, Len int64 }

// overlaps reports whether the request [off, off+n) touches r. Flushes carry
// no range and match every Range.
func (r Range) overlaps(op Op, off, n int64) bool {
	if op == OpFlush {
		return true
	}
	if n == 0 {
		n = 1 // a zero-length request still "touches" its offset
	}
	if off+n <= r.Off {
		return false
	}
	return r.Len <= 0 || off < r.Off+r.Len
}

// Action is what a Fault does to a request it fires on.
type Action uint8

// Fault actions.
const (
	// ActFail returns Err without touching the device.
	ActFail Action = iota
	// ActTorn (writes) lets only the first TornBytes bytes land, then
	// returns Err.
	ActTorn
	// ActDrop returns nil and does nothing: a write or discard that never
	// lands, a read that leaves the buffer as it was, a flush that makes
	// nothing durable (a lost flush: a later PowerCut still drops the
	// writes it claimed to persist).
	ActDrop
	// ActHang blocks until the request's context ends and returns ctx.Err().
	ActHang
)

// ErrInjected is the default error of a Fault. It wraps blk.ErrMedium, like a
// real I/O error of a backing device.
var ErrInjected = fmt.Errorf("backend: injected fault: %w", blk.ErrMedium)

// Fault describes an injected failure. It fires on requests whose kind is in
// Op and whose byte range overlaps Range: the first After matching requests
// pass untouched, then it fires on the next Times requests (Times == 0: on
// every one). So "fail once" is Times: 1, "fail always" is the zero values,
// "fail after N" is After: N.
type Fault struct {
	Op        Op
	Range     Range
	Action    Action
	Err       error // returned by ActFail and ActTorn; nil means ErrInjected
	After     int
	Times     int
	TornBytes int // bytes of the write that land with ActTorn
}

// Rule is an installed Fault.
type Rule struct {
	f     *Faulty
	fault Fault
	seen  int // matching requests so far (guarded by f.rulesMu)
	hits  int // requests fired on (guarded by f.rulesMu)
}

// Remove uninstalls the rule. Requests already affected are not undone.
func (r *Rule) Remove() {
	r.f.rulesMu.Lock()
	defer r.f.rulesMu.Unlock()
	for i, x := range r.f.rules {
		if x == r {
			r.f.rules = append(r.f.rules[:i:i], r.f.rules[i+1:]...)
			return
		}
	}
}

// Hits returns how many requests the rule has fired on.
func (r *Rule) Hits() int {
	r.f.rulesMu.Lock()
	defer r.f.rulesMu.Unlock()
	return r.hits
}

// Gate parks matching requests until Release or until their context ends.
// A gate made by Gate parks requests before they reach the wrapped device;
// one made by GateAfter parks reads and writes after the device completed
// them, before they return (a read then already holds its data).
type Gate struct {
	f     *Faulty
	op    Op
	rng   Range
	after bool
	open  chan struct{}
	once  sync.Once
	mu    sync.Mutex
	cond  chan struct{} // closed and replaced whenever arrived changes
	arriv int
	wait  int
}

// Release opens the gate: parked requests continue, later ones pass, and the
// gate is uninstalled. Release is idempotent.
func (g *Gate) Release() {
	g.once.Do(func() {
		g.f.rulesMu.Lock()
		for i, x := range g.f.gates {
			if x == g {
				g.f.gates = append(g.f.gates[:i:i], g.f.gates[i+1:]...)
				break
			}
		}
		g.f.rulesMu.Unlock()
		close(g.open)
	})
}

// Waiting returns how many requests are parked at the gate now.
func (g *Gate) Waiting() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.wait
}

// Arrived returns how many requests have reached the gate so far.
func (g *Gate) Arrived() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.arriv
}

// WaitArrived blocks until at least n requests have reached the gate (they
// may have left since if the gate was released), or ctx ends.
func (g *Gate) WaitArrived(ctx context.Context, n int) error {
	for {
		g.mu.Lock()
		arrived, ch := g.arriv, g.cond
		g.mu.Unlock()
		if arrived >= n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (g *Gate) pass(ctx context.Context) error {
	g.mu.Lock()
	g.arriv++
	g.wait++
	close(g.cond)
	g.cond = make(chan struct{})
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		g.wait--
		g.mu.Unlock()
	}()
	select {
	case <-g.open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Faulty wraps a Device with fault injection, gates and a volatile write
// cache. Writes and discards reach the wrapped device at once, but Faulty
// remembers the durable content of every sector changed since the last
// successful Flush, so it can produce the image a power cut would leave
// (DurableImage) or roll the device back to it (PowerCut).
//
// Request order inside Faulty: gates, then faults, then the device.
type Faulty struct {
	dev Device

	rulesMu sync.Mutex
	rules   []*Rule
	gates   []*Gate
	hook    func(op Op, off, n int64)

	// volMu serializes writes, discards and flushes so that the undo log
	// and the device agree; reads do not take it.
	volMu sync.Mutex
	undo  map[int64][]byte // sector → durable content before the first unflushed change (nil: zeroes)

	countMu sync.Mutex
	counts  OpCounts
}

// OpCounts counts completed requests (successful or not) by kind.
type OpCounts struct{ Reads, Writes, Flushes, Discards int }

// faultySector is the granularity at which unflushed writes survive or vanish
// in a power cut: a disk writes a sector atomically.
const faultySector = 512

var _ Device = (*Faulty)(nil)

// NewFaulty wraps dev. With no faults or gates installed it behaves like dev.
func NewFaulty(dev Device) *Faulty {
	return &Faulty{dev: dev, undo: make(map[int64][]byte)}
}

// Inner returns the wrapped device.
func (f *Faulty) Inner() Device { return f.dev }

// Inject installs a fault and returns its rule.
func (f *Faulty) Inject(fl Fault) *Rule {
	if fl.Err == nil {
		fl.Err = ErrInjected
	}
	r := &Rule{f: f, fault: fl}
	f.rulesMu.Lock()
	f.rules = append(f.rules, r)
	f.rulesMu.Unlock()
	return r
}

// ClearFaults removes every fault rule (gates stay).
func (f *Faulty) ClearFaults() {
	f.rulesMu.Lock()
	f.rules = nil
	f.rulesMu.Unlock()
}

// Gate installs a gate that parks requests of kind op overlapping r before
// they reach the wrapped device.
func (f *Faulty) Gate(op Op, r Range) *Gate { return f.addGate(op, r, false) }

// GateAfter installs a gate that parks reads and writes of kind op
// overlapping r after the wrapped device completed them, before they return
// to the caller. Other kinds of request pass it.
func (f *Faulty) GateAfter(op Op, r Range) *Gate { return f.addGate(op&(OpRead|OpWrite), r, true) }

func (f *Faulty) addGate(op Op, r Range, after bool) *Gate {
	g := &Gate{f: f, op: op, rng: r, after: after, open: make(chan struct{}), cond: make(chan struct{})}
	f.rulesMu.Lock()
	f.gates = append(f.gates, g)
	f.rulesMu.Unlock()
	return g
}

// passAfter runs the after-gates matching a completed request; err is the
// request's result, returned unchanged unless the context ends first.
func (f *Faulty) passAfter(ctx context.Context, op Op, off, n int64, err error) error {
	f.rulesMu.Lock()
	var gates []*Gate
	for _, g := range f.gates {
		if g.after && g.op&op != 0 && g.rng.overlaps(op, off, n) {
			gates = append(gates, g)
		}
	}
	f.rulesMu.Unlock()
	for _, g := range gates {
		if gerr := g.pass(ctx); gerr != nil {
			return gerr
		}
	}
	return err
}

// SetHook installs fn (nil removes it), called after every request completes
// with its kind and range. It runs on the caller's goroutine outside Faulty's
// locks, so it may call DurableImage.
func (f *Faulty) SetHook(fn func(op Op, off, n int64)) {
	f.rulesMu.Lock()
	f.hook = fn
	f.rulesMu.Unlock()
}

// Counts returns the number of completed requests by kind.
func (f *Faulty) Counts() OpCounts {
	f.countMu.Lock()
	defer f.countMu.Unlock()
	return f.counts
}

// admit runs the gates and selects the fault to apply (nil: none).
func (f *Faulty) admit(ctx context.Context, op Op, off, n int64) (*Fault, error) {
	f.rulesMu.Lock()
	var gates []*Gate
	for _, g := range f.gates {
		if !g.after && g.op&op != 0 && g.rng.overlaps(op, off, n) {
			gates = append(gates, g)
		}
	}
	f.rulesMu.Unlock()
	for _, g := range gates {
		if err := g.pass(ctx); err != nil {
			return nil, err
		}
	}
	f.rulesMu.Lock()
	defer f.rulesMu.Unlock()
	for _, r := range f.rules {
		fl := &r.fault
		if fl.Op&op == 0 || !fl.Range.overlaps(op, off, n) {
			continue
		}
		r.seen++
		if r.seen <= fl.After || (fl.Times > 0 && r.hits >= fl.Times) {
			continue
		}
		r.hits++
		fc := *fl
		return &fc, nil
	}
	return nil, nil
}

func (f *Faulty) done(op Op, off, n int64) {
	f.countMu.Lock()
	switch op {
	case OpRead:
		f.counts.Reads++
	case OpWrite:
		f.counts.Writes++
	case OpFlush:
		f.counts.Flushes++
	case OpDiscard:
		f.counts.Discards++
	}
	f.countMu.Unlock()
	f.rulesMu.Lock()
	hook := f.hook
	f.rulesMu.Unlock()
	if hook != nil {
		hook(op, off, n)
	}
}

// Size returns the wrapped device's size.
func (f *Faulty) Size() int64 { return f.dev.Size() }

// ReadAt reads from the wrapped device unless a gate or fault intervenes.
func (f *Faulty) ReadAt(ctx context.Context, p []byte, off int64) error {
	defer f.done(OpRead, off, int64(len(p)))
	fl, err := f.admit(ctx, OpRead, off, int64(len(p)))
	if err != nil {
		return err
	}
	if fl != nil {
		switch fl.Action {
		case ActDrop:
			return nil
		case ActHang:
			<-ctx.Done()
			return ctx.Err()
		default:
			return fl.Err
		}
	}
	return f.passAfter(ctx, OpRead, off, int64(len(p)), f.dev.ReadAt(ctx, p, off))
}

// WriteAt writes p unless a gate or fault intervenes. The write is volatile
// until the next successful Flush.
func (f *Faulty) WriteAt(ctx context.Context, p []byte, off int64) error {
	defer f.done(OpWrite, off, int64(len(p)))
	fl, err := f.admit(ctx, OpWrite, off, int64(len(p)))
	if err != nil {
		return err
	}
	if fl != nil {
		switch fl.Action {
		case ActDrop:
			return nil
		case ActHang:
			<-ctx.Done()
			return ctx.Err()
		case ActTorn:
			k := min(max(fl.TornBytes, 0), len(p))
			if err := f.volatileWrite(ctx, p[:k], off); err != nil {
				return err
			}
			return fl.Err
		default:
			return fl.Err
		}
	}
	return f.passAfter(ctx, OpWrite, off, int64(len(p)), f.volatileWrite(ctx, p, off))
}

func (f *Faulty) volatileWrite(ctx context.Context, p []byte, off int64) error {
	if err := checkRange("write", off, int64(len(p)), f.dev.Size()); err != nil {
		return err
	}
	f.volMu.Lock()
	defer f.volMu.Unlock()
	if err := f.saveUndoLocked(ctx, off, int64(len(p))); err != nil {
		return err
	}
	return f.dev.WriteAt(ctx, p, off)
}

// saveUndoLocked records the durable content of every sector in
// [off, off+n) that has no undo entry yet.
func (f *Faulty) saveUndoLocked(ctx context.Context, off, n int64) error {
	if n == 0 {
		return nil
	}
	size := f.dev.Size()
	var buf []byte
	for s := off / faultySector; s*faultySector < off+n; s++ {
		if _, ok := f.undo[s]; ok {
			continue
		}
		start := s * faultySector
		k := min(int64(faultySector), size-start)
		if buf == nil {
			buf = make([]byte, faultySector)
		}
		if err := f.dev.ReadAt(ctx, buf[:k], start); err != nil {
			return fmt.Errorf("backend: faulty: saving sector %d: %w", s, err)
		}
		if isZero(buf[:k]) {
			f.undo[s] = nil
		} else {
			f.undo[s] = append([]byte(nil), buf[:k]...)
		}
	}
	return nil
}

// Flush flushes the wrapped device; on success every write that completed
// before it becomes durable.
func (f *Faulty) Flush(ctx context.Context) error {
	defer f.done(OpFlush, 0, 0)
	fl, err := f.admit(ctx, OpFlush, 0, 0)
	if err != nil {
		return err
	}
	if fl != nil {
		switch fl.Action {
		case ActDrop:
			return nil
		case ActHang:
			<-ctx.Done()
			return ctx.Err()
		default:
			return fl.Err
		}
	}
	f.volMu.Lock()
	defer f.volMu.Unlock()
	if err := f.dev.Flush(ctx); err != nil {
		return err
	}
	clear(f.undo)
	return nil
}

// Discard discards the range on the wrapped device unless a gate or fault
// intervenes. Like a write, it is volatile until the next Flush.
func (f *Faulty) Discard(ctx context.Context, off, n int64) error {
	defer f.done(OpDiscard, off, n)
	fl, err := f.admit(ctx, OpDiscard, off, n)
	if err != nil {
		return err
	}
	if fl != nil {
		switch fl.Action {
		case ActDrop:
			return nil
		case ActHang:
			<-ctx.Done()
			return ctx.Err()
		default:
			return fl.Err
		}
	}
	if err := checkRange("discard", off, n, f.dev.Size()); err != nil {
		return err
	}
	f.volMu.Lock()
	defer f.volMu.Unlock()
	if err := f.saveUndoLocked(ctx, off, n); err != nil {
		return err
	}
	return f.dev.Discard(ctx, off, n)
}

// Close closes the wrapped device and releases parked requests' gates.
func (f *Faulty) Close() error {
	f.rulesMu.Lock()
	gates := append([]*Gate(nil), f.gates...)
	f.rulesMu.Unlock()
	for _, g := range gates {
		g.Release()
	}
	return f.dev.Close()
}

// UnflushedSectors returns how many sectors differ (or may differ) from
// their durable content.
func (f *Faulty) UnflushedSectors() int {
	f.volMu.Lock()
	defer f.volMu.Unlock()
	return len(f.undo)
}

// DurableImage returns a copy of what the device would hold after a power
// cut now: with rng == nil exactly the flushed state; otherwise each
// unflushed sector independently keeps its new content or reverts (a torn
// cache flush). The device itself is not changed.
func (f *Faulty) DurableImage(rng *rand.Rand) (*Memory, error) {
	f.volMu.Lock()
	defer f.volMu.Unlock()
	var img *Memory
	if m, ok := f.dev.(*Memory); ok {
		img = m.Clone()
	} else {
		img = NewMemory(f.dev.Size())
		buf := make([]byte, 1<<20)
		for off := int64(0); off < img.Size(); off += int64(len(buf)) {
			k := min(int64(len(buf)), img.Size()-off)
			if err := f.dev.ReadAt(context.Background(), buf[:k], off); err != nil {
				return nil, fmt.Errorf("backend: faulty: reading image: %w", err)
			}
			img.writeLocked(buf[:k], off)
		}
	}
	for s, old := range f.undo {
		if rng != nil && rng.IntN(2) == 0 {
			continue
		}
		restoreSector(img, s, old)
	}
	return img, nil
}

func restoreSector(img *Memory, s int64, old []byte) {
	start := s * faultySector
	k := min(int64(faultySector), img.Size()-start)
	if old == nil {
		img.discardLocked(start, k)
	} else {
		img.writeLocked(old, start)
	}
}

// PowerCut rolls the device back to what a power cut would leave (see
// DurableImage for rng) and forgets the unflushed state. The device stays
// usable, as after a reboot. Requests running concurrently may land before
// or after the cut.
func (f *Faulty) PowerCut(rng *rand.Rand) error {
	f.volMu.Lock()
	defer f.volMu.Unlock()
	ctx := context.Background()
	zero := make([]byte, faultySector)
	for s, old := range f.undo {
		if rng != nil && rng.IntN(2) == 0 {
			continue
		}
		start := s * faultySector
		data := old
		if data == nil {
			data = zero[:min(int64(faultySector), f.dev.Size()-start)]
		}
		if err := f.dev.WriteAt(ctx, data, start); err != nil {
			return fmt.Errorf("backend: faulty: power cut: %w", err)
		}
	}
	clear(f.undo)
	return nil
}
