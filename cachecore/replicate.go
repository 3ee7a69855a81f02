package cachecore

import (
	"context"
	"errors"
	"fmt"

	"github.com/cachelun/cachelun/persist"
)

// Journal replication (several gateways, one volume).
//
// A volume with a Replicator hands every kset's dirty data and discards to
// it, in log order, as the kset is appended to the journal; the kset's
// commit then waits for the Replicator's acknowledgement as well as for
// its own persist. So a FUA write or a flush of the volume returns only
// once its data is durable here and wherever the Replicator keeps copies
// (contracts C2 and C3 across nodes), while writes without FUA are shipped
// when their kset closes, as they are journaled. Clean keys (fills,
// writethrough) are not shipped: the backing device holds their data.
// After a writeback pass the Replicator learns the new dirty_tail (Trim):
// copies of the data before it are on the backing device and no longer
// needed.

// MirrorRecord is one range of a shipped kset: data written to the volume
// at Off, or, with Discard, Len bytes that now read as zeroes.
type MirrorRecord struct {
	Off     int64
	Len     int64
	Discard bool
	Data    []byte // Len bytes unless Discard
}

// Replicator receives a volume's journal (see above). Ship is called in
// LSN order for one volume, never concurrently for it, and must not block:
// it queues the records (they are the Replicator's) and returns a wait
// function that blocks until they are durable on the copies that must
// have them, or returns why not (the commit then fails: a FUA write or a
// flush returns the error). Trim is called after dirty_tail passed lsn:
// records of ksets before it are on the backing device.
type Replicator interface {
	Ship(lsn uint64, recs []MirrorRecord) (wait func(context.Context) error)
	Trim(lsn uint64)
}

// A WritebackGate is a Replicator that writeback asks before each pass:
// BeforeWriteback returns once the ksets whose commits have returned may
// reach the backing device (for example once the copies that missed some
// of them are recorded as such), or why not: the pass then fails and
// writeback tries again later. The ksets of a pass have all had their
// waits return before it is called.
type WritebackGate interface {
	BeforeWriteback(ctx context.Context) error
}

// gateReplicas asks the WritebackGates of the replicated volumes.
func (c *Cache) gateReplicas(ctx context.Context) error {
	if c.replicated.Load() == 0 {
		return nil
	}
	for id := range c.vols {
		v := c.volumeByID(uint32(id))
		if v == nil {
			continue
		}
		if box := v.repl.Load(); box != nil {
			if g, ok := box.r.(WritebackGate); ok {
				if err := g.BeforeWriteback(ctx); err != nil {
					return fmt.Errorf("cachecore: writeback of %s held by its replicator: %w", v.name, err)
				}
			}
		}
	}
	return nil
}

// ErrReplicatedMode: a replicated volume runs in writeback mode, the only
// one in which every change goes through the journal.
var ErrReplicatedMode = errors.New("cachecore: a replicated volume runs in writeback mode")

// SetReplicator starts (r not nil) or stops shipping the volume's journal.
// Ksets appended from then on are shipped; the caller brings a new copy up
// to date from dirty_tail itself. While it is set the volume stays in
// writeback mode (ErrReplicatedMode), its writes never bypass the cache
// and every discard is journaled.
func (v *Volume) SetReplicator(r Replicator) error {
	if r != nil && v.Mode() != ModeWriteback {
		return fmt.Errorf("%w: %s is in %s mode", ErrReplicatedMode, v.name, v.Mode())
	}
	c := v.c
	c.replMu.Lock()
	defer c.replMu.Unlock()
	old := v.repl.Load()
	switch {
	case r == nil && old != nil:
		v.repl.Store(nil)
		c.replicated.Add(-1)
	case r != nil:
		box := &replicatorBox{r: r}
		v.repl.Store(box)
		if old == nil {
			c.replicated.Add(1)
		}
	}
	return nil
}

// replicatedMode refuses a mode other than writeback while the volume has
// a Replicator.
func (v *Volume) replicatedMode(m Mode) error {
	if v.repl.Load() != nil && m != ModeWriteback {
		return fmt.Errorf("%w: %s cannot change to %s while it is replicated", ErrReplicatedMode, v.name, m)
	}
	return nil
}

// replicatorBox lets an interface value live in an atomic.Pointer.
type replicatorBox struct{ r Replicator }

// appendShipped appends pk's kset to the journal and, if a volume of its
// keys has a Replicator, ships their records under replMu, so that the
// order of Ship calls is the log order. It returns the waits.
func (c *Cache) appendShipped(keys []persist.Key, epoch uint64, unfenced bool) (persist.KSet, []func(context.Context) error, error) {
	appendKset := func() (persist.KSet, error) {
		if unfenced {
			return c.journal.AppendUnfenced(keys, epoch)
		}
		return c.journal.Append(keys, epoch)
	}
	if c.replicated.Load() == 0 {
		ks, err := appendKset()
		return ks, nil, err
	}
	// The dirty keys' data is read before replMu is taken, into one
	// buffer: their cache space stays theirs until GC passes them, which
	// it cannot before this kset is in the log, and replMu serialises
	// every commit of a replicated cache, so copies made under it would
	// make the commits wait for each other's.
	data, err := c.readDirtyData(keys)
	if err != nil {
		return persist.KSet{}, nil, err
	}
	c.replMu.Lock()
	defer c.replMu.Unlock()
	ks, err := appendKset()
	if err != nil {
		return ks, nil, err
	}
	var byVol map[uint32][]MirrorRecord
	for i := range keys {
		k := &keys[i]
		if k.Flags != persist.KeyDirty && k.Flags != persist.KeyTombstone {
			continue
		}
		v := c.volumeByID(k.Volume)
		if v == nil || v.repl.Load() == nil {
			continue
		}
		rec := MirrorRecord{Off: int64(k.Offset), Len: int64(k.Length), Discard: k.Flags == persist.KeyTombstone, Data: data[i]}
		if !rec.Discard && rec.Data == nil {
			// Its volume got its replicator since the data was read.
			rec.Data = make([]byte, k.Length)
			if err := c.readShipped(rec.Data, k); err != nil {
				return ks, nil, fmt.Errorf("cachecore: replicating kset %d: %w", ks.LSN, err)
			}
		}
		if byVol == nil {
			byVol = make(map[uint32][]MirrorRecord)
		}
		byVol[k.Volume] = append(byVol[k.Volume], rec)
	}
	var waits []func(context.Context) error
	for id, recs := range byVol {
		if box := c.volumeByID(id).repl.Load(); box != nil {
			waits = append(waits, box.r.Ship(ks.LSN, recs))
		}
	}
	if len(waits) > 0 {
		// in LSN order: appended under replMu
		c.durMu.Lock()
		c.replWaiting = append(c.replWaiting, ks.LSN)
		c.durMu.Unlock()
	}
	return ks, waits, nil
}

// readDirtyData copies into one buffer the cache data of the dirty keys
// of a kset whose volumes are replicated (nil for the others).
func (c *Cache) readDirtyData(keys []persist.Key) ([][]byte, error) {
	shipped := func(k *persist.Key) bool {
		if k.Flags != persist.KeyDirty {
			return false
		}
		v := c.volumeByID(k.Volume)
		return v != nil && v.repl.Load() != nil
	}
	var total int
	for i := range keys {
		if shipped(&keys[i]) {
			total += int(keys[i].Length)
		}
	}
	out := make([][]byte, len(keys))
	if total == 0 {
		return out, nil
	}
	buf := make([]byte, total)
	for i := range keys {
		k := &keys[i]
		if !shipped(k) {
			continue
		}
		out[i], buf = buf[:k.Length:k.Length], buf[k.Length:]
		if err := c.readShipped(out[i], k); err != nil {
			return nil, fmt.Errorf("cachecore: reading data to replicate: %w", err)
		}
	}
	return out, nil
}

// readShipped reads the cache data of key k into dst; a media fault fails
// the cache (a shipment must never carry data other than the key's).
func (c *Cache) readShipped(dst []byte, k *persist.Key) error {
	if err := c.media.ReadAt(dst, c.store.DataOffset(k.Pos)); err != nil {
		c.fail("read data to replicate", err)
		return c.failedErr()
	}
	return nil
}

// volumeByID is the attached volume of id, or nil.
func (c *Cache) volumeByID(id uint32) *Volume {
	if id >= uint32(len(c.vols)) {
		return nil
	}
	vs := c.vols[id].Load()
	if vs == nil {
		return nil
	}
	return vs.vol.Load()
}

// trimReplicas tells the Replicators of attached volumes that dirty_tail
// passed lsn.
func (c *Cache) trimReplicas(lsn uint64) {
	if c.replicated.Load() == 0 {
		return
	}
	for id := range c.vols {
		if v := c.volumeByID(uint32(id)); v != nil {
			if box := v.repl.Load(); box != nil {
				box.r.Trim(lsn)
			}
		}
	}
}

// Reship ships again, through send, the volume's dirty data and discards
// of every committed kset from dirty_tail on, in log order: what a copy
// that missed shipments (out of sync, restarted) needs to be whole again.
// It holds off the Ship calls of new commits meanwhile, so that send sees
// every kset up to the journal head and the Replicator's next Ship comes
// after them. Data before dirty_tail is on the backing device: from (if
// not nil) is told first the LSN of dirty_tail it starts from, so that
// the copy can drop what it holds of the ksets before it (a trim), which
// it may have missed overwritten.
func (v *Volume) Reship(ctx context.Context, from func(dirtyTail uint64) error, send func(lsn uint64, recs []MirrorRecord) error) error {
	c := v.c
	c.replMu.Lock()
	defer c.replMu.Unlock()
	if err := c.failedErr(); err != nil {
		return err
	}
	head := c.journal.Head()
	tail := c.store.DirtyTail()
	if from != nil {
		if err := from(tail.LSN); err != nil {
			return err
		}
	}
	r := c.store.Replay(tail)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		ks, ok := r.Next()
		if !ok || ks.LSN >= head.LSN {
			break
		}
		var recs []MirrorRecord
		for i := range ks.Keys {
			k := &ks.Keys[i]
			if k.Volume != v.st.id || (k.Flags != persist.KeyDirty && k.Flags != persist.KeyTombstone) {
				continue
			}
			rec := MirrorRecord{Off: int64(k.Offset), Len: int64(k.Length), Discard: k.Flags == persist.KeyTombstone}
			if !rec.Discard {
				rec.Data = make([]byte, k.Length)
				if err := c.media.ReadAt(rec.Data, c.store.DataOffset(k.Pos)); err != nil {
					return v.mediaErr("read data to reship", err)
				}
			}
			recs = append(recs, rec)
		}
		if len(recs) == 0 {
			continue
		}
		if err := send(ks.LSN, recs); err != nil {
			return err
		}
	}
	if err := r.StopReason(); err != nil && isMediaFault(err) {
		return v.mediaErr("read the log to reship", err)
	}
	return nil
}
