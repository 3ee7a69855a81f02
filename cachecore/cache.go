package cachecore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/persist"
)

// Cache is the engine of one cache file (persist.Store) hosting volumes.
type Cache struct {
	store   *persist.Store
	media   persist.Media
	journal *persist.Journal
	dataCRC bool
	// unfenced: commits write their kset without persisting its data
	// first (persist.Store.UnfencedCommits).
	unfenced bool
	// distrustClean: the cache file was retired by a failure; replay
	// keeps only dirty keys. The flag in the cache file is cleared once
	// key_tail has passed distrustUntil (every key of the retired log).
	distrustClean bool
	distrustUntil uint64

	cfg atomic.Pointer[Config]
	log *slog.Logger

	segs   *segTable
	heads  []dataHead
	headRR atomic.Uint64
	// dataSegs counts the segments the data heads have taken: a kset
	// slot closes its open kset when a head has moved to a new segment
	// since it opened (openForLocked), so that the log passes the data
	// area in about the order it was written and GC frees a segment for
	// every segment's worth of keys it passes.
	dataSegs atomic.Uint64
	// shares: the lineages of the keys that share cache data (CopyFrom,
	// volume_copy.go).
	shares shareRegistry

	slots [ksetSlots]ksetSlot
	epoch atomic.Uint64
	token atomic.Uint64 // placeholder tokens
	// durableHead is the LSN after the last kset known durable: writeback
	// never moves dirty_tail past a kset whose commit has not returned.
	// Commits return out of LSN order (16 slots; a replicated kset waits
	// for its copies), so it is the lower of committedTop, the LSN after
	// the last kset whose commit returned, and the first of replWaiting,
	// the ksets whose replication waits have not (durMu guards both).
	durableHead  atomic.Uint64
	durMu        sync.Mutex
	committedTop uint64
	replWaiting  []uint64
	// cleanLSN is GC's limit: every dirty key before it has been written
	// back and marked clean in the index. It follows dirty_tail once
	// writeback's markClean is done with a pass; between the two, GC
	// passing the keys would free segments that index extents still
	// marked dirty point at (invariant: dirty extents are current).
	cleanLSN atomic.Uint64
	// replMu orders the journal appends of ksets with keys of replicated
	// volumes and the Replicators' Ship calls (replicate.go); replicated
	// counts the volumes with a Replicator (0: appends skip replMu).
	replMu     sync.Mutex
	replicated atomic.Int32
	// knobs are test-only interleavings (nil in the product). Atomic:
	// a test sets them on an open cache, whose writeback loop may be in
	// a pass already.
	knobs struct {
		afterDirtyTail atomic.Pointer[func()] // writeback: dirty_tail persisted, keys not yet marked clean
	}

	// logSegs are the kset segments of the live log in log order; GC frees
	// the front ones once key_tail has left them.
	logMu   sync.Mutex
	logSegs []uint32

	// vols is indexed by volume id (the slot of the volume table).
	vols     [persist.MaxVolumes]atomic.Pointer[volState]
	liveKeys [persist.MaxVolumes]atomic.Int64 // keys of the live log per id (id reuse guard)

	mu sync.Mutex // volume add/remove, SetConfig
	// carryMu: writeback carrying keys of volumes that are not attached
	// (from the carry to the uncounting of the originals) excludes
	// AddVolume. Lock order: mu, carryMu, stripe locks, slot locks.
	carryMu sync.Mutex
	volumes map[string]*Volume

	failed     atomic.Bool
	detached   atomic.Bool // Detach: volumes use their backing devices only
	failMu     sync.Mutex
	failReason string
	failCause  error
	failedCh   chan struct{}

	stats cacheCounters
	badMu sync.Mutex
	bad   []BadData // newest checksum failures (noteBadData)
	// ioCount counts host requests; the writeback worker samples it to
	// tell when the volumes have been idle (cheaper than a clock read per
	// request).
	ioCount   atomic.Uint64
	idleMu    sync.Mutex
	idleSeen  uint64
	idleSince time.Time

	drainers  atomic.Int32 // Drain calls in progress: writeback at full speed
	spaceWait atomic.Int32 // writers waiting for a free segment

	// wbFailures counts failed writeback passes, wbErr is the last
	// failure: a healthy Detach gives up when writeback keeps failing.
	wbFailures atomic.Uint64
	wbErrMu    sync.Mutex
	wbErr      error
	// detaching: a healthy Detach runs or has run (one at a time).
	// resumed is closed when it lets the requests it held go on.
	detaching atomic.Bool
	resumed   atomic.Pointer[chan struct{}]

	wbKick, gcKick chan struct{}
	fills          fillQueue // read-miss fills waiting for the fill worker
	policy         policyState
	workersCtx     context.Context
	stopWorkers    context.CancelFunc
	workers        sync.WaitGroup
	bg             sync.WaitGroup // kset commits
	hardStop       chan struct{}
	// intent, if not nil, records appended keys until they are journaled
	// so that a process crash loses no acknowledged write.
	intent *IntentLog
	// carryAfter: writeback carries keys of volumes that are not attached
	// only from then on (Open + carryGrace).
	carryAfter time.Time
	// recoveredKsets are ksets of recovered keys closed during Open,
	// committed once the workers run.
	recoveredKsets []*pendingKset
	closing        chan struct{} // closed when Close starts: waiting writers give up
	closed         atomic.Bool
	adv            atomic.Pointer[cacheAdvisor] // the sizing advisor (advisor.go)
}

type cacheCounters struct {
	gcRuns, gcSegmentsFreed, deferredWrites, journalFullWaits atomic.Uint64
	writebackBytes                                            atomic.Uint64
	dataCRCErrors                                             atomic.Uint64
	intentRecovered                                           atomic.Uint64
	writebackCarried                                          atomic.Uint64
	gcSegmentsKept                                            atomic.Uint64
}

// volState is what the cache knows about a volume id, attached or not: its
// index and dirty accounting exist from replay on, before AddVolume.
type volState struct {
	id   uint32
	name string
	// size only grows (AddVolume of a grown device, Volume.Grow), and only
	// after idx covers it.
	size atomic.Int64
	idx  *volIndex

	// dirtyBytes counts the bytes dirty in the index (an overwrite of
	// dirty data counts once); dirtyKeys counts dirty keys appended and not
	// yet written back (log accounting, one per write), which is what the
	// writeback and epoch accounting uncount key by key.
	dirtyBytes atomic.Int64
	dirtyKeys  atomic.Int64
	vol        atomic.Pointer[Volume]
	// ages: when the volume's dirty ksets in the log were first written
	// to (writeback lag).
	ages *dirtyAges
}

func newVolState(id uint32, name string, size int64) *volState {
	vs := &volState{id: id, name: name, idx: newVolIndex(size), ages: &dirtyAges{}}
	vs.size.Store(size)
	return vs
}

// grow extends the volume's index to size bytes, then its size: whoever
// sees the new size finds the index covering it. Callers hold Cache.mu.
func (vs *volState) grow(size int64) {
	vs.idx.grow(size)
	vs.size.Store(size)
}

// BadData is one checksum failure of cache data (caches with data CRCs).
type BadData struct {
	Volume string // "" when found by writeback (the key's volume may be detached)
	Offset int64  // byte offset in the volume; -1 when unknown
	Op     string // "read" or "writeback"
	Detail string // where in the cache file, expected and found CRC
}

// maxBadData bounds the checksum failures a cache remembers.
const maxBadData = 16

// noteBadData logs a checksum failure with its location, counts it and
// remembers it (the newest maxBadData) for status and explain.
func (c *Cache) noteBadData(volume string, off int64, bad *dataCRCError, op string) {
	c.stats.dataCRCErrors.Add(1)
	c.log.Error("cache data fails its checksum", "op", op, "volume", volume, "offset", off, "segment", bad.seg, "segment_offset", bad.off, "length", bad.length,
		"crc", fmt.Sprintf("0x%08x", bad.got), "key_crc", fmt.Sprintf("0x%08x", bad.want))
	c.badMu.Lock()
	defer c.badMu.Unlock()
	if len(c.bad) == maxBadData {
		c.bad = c.bad[1:]
	}
	c.bad = append(c.bad, BadData{Volume: volume, Offset: off, Op: op, Detail: bad.Error()})
}

// BadData returns the newest checksum failures found (oldest first).
func (c *Cache) BadData() []BadData {
	c.badMu.Lock()
	defer c.badMu.Unlock()
	return append([]BadData(nil), c.bad...)
}

// ErrJournalDamaged is wrapped by Open's error when the journal is damaged
// before its known-durable point (persist.ErrJournalDamaged is wrapped
// too, with the record and the evidence): the cache is refused.
var ErrJournalDamaged = errors.New("cachecore: journal damaged")

// ErrCacheFailed is wrapped by errors of a cache retired after a media
// fault.
var ErrCacheFailed = errors.New("cachecore: cache retired after a media failure")

// Open replays the journal of an opened store, rebuilds the index and
// segment references and starts the flusher, writeback and GC goroutines.
// Keys of volumes in the store's volume table stay in the cache (dirty data
// is kept) until a volume of that name is added.
func Open(ctx context.Context, store *persist.Store, cfg Config) (*Cache, error) {
	return open(ctx, store, cfg, nil)
}

// OpenWithIntent is Open with an intent log (see IntentLog): keys the
// previous process appended but did not journal before it died are
// recovered from it and served, and journaled like keys of writes
// acknowledged now (the next SYNCHRONIZE CACHE covers them; they are
// committed as soon as the workers start); this cache records its own
// unjournaled keys in it. The cache owns intent from here on (it
// closes it in Close, or at once if Open fails).
func OpenWithIntent(ctx context.Context, store *persist.Store, cfg Config, intent *IntentLog) (*Cache, error) {
	c, err := openWith(ctx, store, cfg, nil, intent)
	if err != nil {
		intent.Close()
	}
	return c, err
}

// open is Open; replayed (if not nil) sees the cache after replay, before
// any background goroutine runs, so that tests can inspect the replayed
// index exactly (GC may evict clean keys from it as soon as it starts).
func open(ctx context.Context, store *persist.Store, cfg Config, replayed func(*Cache)) (*Cache, error) {
	return openWith(ctx, store, cfg, replayed, nil)
}

func openWith(ctx context.Context, store *persist.Store, cfg Config, replayed func(*Cache), intent *IntentLog) (*Cache, error) {
	if store == nil {
		return nil, errors.New("cachecore: nil store")
	}
	info := store.Info()
	cfg, err := cfg.withDefaults(info.GCPercent)
	if err != nil {
		return nil, err
	}
	nSeg := store.SegmentCount()
	dataSize := store.SegmentDataSize()
	if nSeg < 3 || dataSize < 64<<10 {
		return nil, fmt.Errorf("cachecore: cache too small: %d segments of %d bytes (need at least 3 of 64 KiB)", nSeg, dataSize)
	}
	c := &Cache{
		store:    store,
		media:    store.Media(),
		dataCRC:  store.DataCRC(),
		unfenced: store.UnfencedCommits(),
		log:      cfg.Logger,
		segs:     newSegTable(nSeg, dataSize),
		volumes:  make(map[string]*Volume),
		failedCh: make(chan struct{}),
		wbKick:   make(chan struct{}, 1),
		gcKick:   make(chan struct{}, 1),
		hardStop: make(chan struct{}),
		closing:  make(chan struct{}),
	}
	c.cfg.Store(&cfg)
	c.fills.init()
	// Each filter of the ghost set and of evictedHot takes a sixteenth of
	// as many inserts as the data area holds blocks (ghostDiv): each set
	// remembers one to two filters' worth; the ghost set's window then
	// moves (ghostSet.widen, narrow).
	dataBlocks := int64(nSeg) * int64(dataSize) >> ghostBlockShift
	c.policy.ghost = newGhostSet(dataBlocks/ghostDiv, true)
	c.policy.evictedHot = newGhostSet(dataBlocks/ghostDiv, false)
	for i := range c.slots {
		c.slots[i].idx = i
	}
	nh := 8
	switch {
	case persist.FlushCoversMedia(c.media):
		// One data head where a flush writes back the whole file
		// (fdatasync): the data of the writes that share a flush then lies
		// side by side (at the two ends of the head's segment when sector
		// and page writes mix: allocData) and goes to the device in one
		// request, or two, not one per head. 4 KiB FUA writes at QD32: 8.4
		// device write requests per flush with 8 heads, 3.1 with one, and
		// 7 % more writes per second.
		nh = 1
	default:
		// Heads take turns (allocData), so the data of one stretch of
		// the log is spread over every head's segment and GC frees them
		// together: on average half the heads' segments stand empty, taken
		// from what the cache holds. One head per 64 segments keeps that
		// near 1 % of the cache while large caches keep 8 locks for
		// concurrent writers.
		nh = min(max(int(nSeg)/64, 1), 8)
	}
	c.heads = make([]dataHead, nh)
	for i := range c.heads {
		c.heads[i].noSegment(c.segs.dataSize)
	}

	for i := range c.segs.segs {
		g, err := store.Gen(uint32(i))
		if err != nil {
			c.segs.segs[i].state.Store(uint32(segQuarantined))
			continue
		}
		c.segs.segs[i].gen = g
	}
	for _, q := range store.Quarantined() {
		if q < nSeg {
			c.segs.segs[q].state.Store(uint32(segQuarantined))
		}
	}
	for _, r := range store.Volumes() {
		if r.ID >= persist.MaxVolumes {
			continue
		}
		c.vols[r.ID].Store(newVolState(r.ID, r.Name, int64(r.Size)))
	}

	if info.Flags&InfoFlagDetached != 0 {
		return nil, fmt.Errorf("%w: its contents are older than its volumes' backing devices; format it (cachelun format) to use it again", ErrDetachedCache)
	}
	c.distrustClean = info.Flags&InfoFlagRetired != 0
	if c.distrustClean {
		c.log.Warn("cache was retired after a media failure: dropping clean cache contents, keeping dirty data")
	}
	var recovered []intentKey
	if intent != nil {
		var why error
		recovered, why = intent.recover(store, c.log)
		if why != nil {
			c.log.Info("intent log: nothing to recover", "path", intent.path, "reason", why)
		}
	}
	journaled := newJournaledFinder(recovered)
	lineages := newReplayedLineages(c)
	head, logSegs, lastEpoch, err := c.replay(ctx, func(k *persist.Key) {
		journaled.see(k)
		lineages.see(k)
	})
	if err != nil {
		return nil, err
	}
	if intent != nil {
		recovered = journaled.drop(recovered)
		for i := range recovered {
			c.replayKey(&recovered[i].key, true)
			lineages.see(&recovered[i].key)
			lastEpoch = max(lastEpoch, recovered[i].epoch)
		}
	}
	// Flush epochs keep increasing across restarts (a new session starts
	// after the last replayed epoch), so epochs compare in log order.
	c.epoch.Store(lastEpoch + 1)
	// Replay counted dirty bytes per key (log accounting); the statistic
	// is the bytes dirty in the index, also for volumes not attached.
	for i := range c.vols {
		if vs := c.vols[i].Load(); vs != nil {
			vs.dirtyBytes.Store(vs.idx.dirtyBytes())
		}
	}
	c.logSegs = logSegs
	// Replay grew the stripes' slices by doubling: trim them to size.
	for i := range c.vols {
		if vs := c.vols[i].Load(); vs != nil {
			vs.idx.each(func(_ uint64, st *stripe) {
				if cap(st.list.ext) > len(st.list.ext)+len(st.list.ext)/8 {
					st.list.ext = slices.Clone(st.list.ext)
				}
			})
		}
	}
	inLog := make(map[uint32]bool, len(logSegs))
	for _, s := range logSegs {
		if s < nSeg {
			inLog[s] = true
			c.segs.segs[s].state.Store(uint32(segKset))
		}
	}
	for i := range c.segs.segs {
		s := &c.segs.segs[i]
		switch {
		case segState(s.state.Load()) == segQuarantined || inLog[uint32(i)]:
		case s.refs.Load() > 0:
			s.state.Store(uint32(segData))
		default:
			s.state.Store(uint32(segFree))
			c.segs.free = append(c.segs.free, uint32(i))
		}
	}
	c.segs.nFree.Store(int32(len(c.segs.free)))
	c.journal = store.OpenJournal(head, c.allocJournalSegment)
	c.durableHead.Store(head.LSN)
	c.committedTop = head.LSN
	c.cleanLSN.Store(c.store.DirtyTail().LSN)
	c.distrustUntil = head.LSN
	if intent != nil {
		intent.reset(store.Superblock().UUID)
		c.intent = intent
	}
	if len(recovered) > 0 {
		// The recovered keys join the open ksets of this session like
		// keys of writes acknowledged just now: recorded in the new
		// session's intent log, journaled by the next sync or right after
		// the workers start (a full journal waits for writeback and GC
		// like any commit, it does not fail the Open).
		c.appendRecovered(recovered)
		c.epoch.Store(lastEpoch + 1)
		c.log.Warn("recovered acknowledged writes of a crashed process from the intent log", "path", intent.path, "keys", len(recovered))
	}
	if cfg.GCPercent != int(info.GCPercent) {
		info.GCPercent = uint8(cfg.GCPercent)
		if err := store.SetInfo(info); err != nil {
			return nil, fmt.Errorf("cachecore: persist gc percent: %w", err)
		}
	}
	if head.LSN > 0 {
		// The log keeps no append times: dirty keys replayed from it count
		// as acknowledged now, a lower bound of their age (see dirtyAges).
		now := cfg.Clock.Now().UnixNano()
		for i := range c.vols {
			if vs := c.vols[i].Load(); vs != nil && vs.dirtyKeys.Load() > 0 {
				vs.ages.add(head.LSN-1, now)
			}
		}
	}
	c.adoptReplayed(lineages)
	if replayed != nil {
		replayed(c)
	}
	if !cfg.noCarryGrace {
		c.carryAfter = cfg.Clock.Now().Add(carryGrace)
	}
	c.workersCtx, c.stopWorkers = context.WithCancel(context.Background())
	c.workers.Add(4)
	go c.flusher()
	go c.writebackLoop()
	go c.gcLoop()
	go c.fillWorker()
	if c.stats.intentRecovered.Load() > 0 {
		for _, pk := range c.recoveredKsets {
			c.commitAsync(pk)
		}
		c.recoveredKsets = nil
		c.closeAged(c.clock().Now(), 0)
	}
	return c, nil
}

// replay walks the log from key_tail and rebuilds index, references and
// dirty accounting. Keys whose generation is older than their segment's are
// dropped (their reference is still taken: GC puts it when it passes them).
func (c *Cache) replay(ctx context.Context, seen func(*persist.Key)) (head persist.Tail, logSegs []uint32, lastEpoch uint64, err error) {
	kt := c.store.KeyTail()
	dirtyLSN := c.store.DirtyTail().LSN
	r := c.store.ReplayVerified(kt)
	n := 0
	for {
		ks, ok := r.Next()
		if !ok {
			break
		}
		if n++; n%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return persist.Tail{}, nil, 0, err
			}
		}
		lastEpoch = max(lastEpoch, ks.Epoch)
		for i := range ks.Keys {
			c.replayKey(&ks.Keys[i], ks.LSN >= dirtyLSN)
			seen(&ks.Keys[i])
		}
	}
	if err := r.StopReason(); err != nil && !errors.Is(err, persist.ErrEndOfLog) {
		if errors.Is(err, persist.ErrMediaFault) {
			return persist.Tail{}, nil, 0, fmt.Errorf("cachecore: replay: %w", err)
		}
		if errors.Is(err, persist.ErrJournalDamaged) {
			// C9: damage to a durable kset is not the end of the
			// log. Replaying only what precedes it would serve older data
			// for every block it (or a kset after it) wrote, so the cache
			// is refused, with the record, offset and evidence.
			return persist.Tail{}, nil, 0, fmt.Errorf("cachecore: replay: %w: %w; the cache is refused (run `cachelun check` on the file to see what is lost, `cachelun check --repair` to salvage)", ErrJournalDamaged, err)
		}
		if errors.Is(err, persist.ErrTornData) {
			c.log.Warn("replay: the log ends at a kset whose data did not reach the media before the crash; it and the ksets after it were never acknowledged and are dropped", "reason", err)
			if eerr := c.store.EndLogAt(r.Head().Pos); eerr != nil {
				return persist.Tail{}, nil, 0, fmt.Errorf("cachecore: replay: ending the log before a torn kset: %w", eerr)
			}
		} else {
			c.log.Info("replay stopped", "reason", err)
		}
	}
	segs := r.LogSegments()
	if len(segs) == 0 {
		segs = []uint32{kt.Pos.Seg}
	}
	return r.Head(), segs, lastEpoch, nil
}

func (c *Cache) replayKey(k *persist.Key, afterDirtyTail bool) {
	if k.Volume < persist.MaxVolumes {
		c.liveKeys[k.Volume].Add(1)
	}
	stale := false
	if k.Flags != persist.KeyTombstone {
		if k.Pos.Seg >= uint32(len(c.segs.segs)) {
			return
		}
		s := &c.segs.segs[k.Pos.Seg]
		s.refs.Add(1)
		stale = k.Gen != s.gen || segState(s.state.Load()) == segQuarantined
	}
	if k.Volume >= persist.MaxVolumes {
		return
	}
	vs := c.vols[k.Volume].Load()
	if vs == nil || int64(k.Offset) >= vs.size.Load() {
		return
	}
	end := min(int64(k.Offset)+int64(k.Length), vs.size.Load())
	dirty := k.Flags == persist.KeyDirty && afterDirtyTail
	if !stale && k.Flags != persist.KeyTombstone && c.dataCRC && !c.dataCRCOK(k) {
		// Generation first, then CRC: a mismatch on a current key is
		// media corruption. Clean data is dropped (the backing device
		// has it); dirty data is kept, as nothing better exists.
		if !dirty {
			c.log.Warn("replay: clean key fails its data CRC: dropped", "volume", k.Volume, "offset", k.Offset, "length", k.Length)
			stale = true
		} else {
			c.log.Error("replay: dirty key fails its data CRC: kept (no other copy exists); reads of it fail with MEDIUM ERROR and writeback refuses it", "volume", k.Volume, "offset", k.Offset, "length", k.Length)
		}
	}
	if dirty {
		vs.dirtyBytes.Add(int64(k.Length))
		vs.dirtyKeys.Add(1)
	}
	for _, p := range splitPieces(int64(k.Offset), end-int64(k.Offset)) {
		st := vs.idx.get(p.stripe)
		if k.Flags == persist.KeyTombstone || stale {
			// A stale key still overrides what came before it in the log.
			st.list.replace(p.s, p.e, nil)
			continue
		}
		if !dirty && c.distrustClean {
			st.list.replace(p.s, p.e, nil)
			continue
		}
		kind := extClean
		if dirty {
			kind = extDirty
		}
		x := withSum(extent{gen: k.Gen, start: p.s, length: p.e - p.s, seg: k.Pos.Seg, segOff: k.Pos.Off + uint32(p.bufOff), kind: kind}, k, c.dataCRC)
		st.list.replace(p.s, p.e, &x)
	}
}

// dataCRCOK verifies the data of a replayed key against its CRC.
func (c *Cache) dataCRCOK(k *persist.Key) bool {
	got, err := c.store.KeyDataCRC(k)
	return err == nil && got == k.DataCRC
}

// appendRecovered appends keys recovered from the intent log (already in
// the index) to the ksets of the slots they were recorded in, in their
// order, each in its own flush epoch. Nothing else runs yet, so no stripe
// lock is needed.
//
// The keys of an atomic write (a group, recovered whole) are appended as a
// group again, so they land in one kset as they would have.
func (c *Cache) appendRecovered(keys []intentKey) {
	for i := 0; i < len(keys); {
		c.epoch.Store(keys[i].epoch)
		n := 1 + int(keys[i].left)
		var sp spill
		if n == 1 {
			sp = c.appendKeyLive(keys[i].slot, keys[i].key, false)
		} else {
			group := make([]persist.Key, n)
			for j := range group {
				group[j] = keys[i+j].key
			}
			sp = c.appendGroup(keys[i].slot, group, false)
		}
		for _, pk := range sp {
			if pk != nil {
				c.recoveredKsets = append(c.recoveredKsets, pk)
			}
		}
		c.stats.intentRecovered.Add(uint64(n))
		i += n
	}
}

// allocJournalSegment is the journal's segment supplier.
func (c *Cache) allocJournalSegment() (uint32, error) {
	id, ok := c.segs.take(true)
	if !ok {
		return 0, errNoSpace
	}
	c.logMu.Lock()
	c.logSegs = append(c.logSegs, id)
	c.logMu.Unlock()
	return id, nil
}

func (c *Cache) config() *Config { return c.cfg.Load() }
func (c *Cache) clock() Clock    { return c.cfg.Load().Clock }

func (c *Cache) kickWriteback() {
	select {
	case c.wbKick <- struct{}{}:
	default:
	}
}

func (c *Cache) kickGC() {
	select {
	case c.gcKick <- struct{}{}:
	default:
	}
}

// InfoFlagRetired is set in the cache info record when the cache was
// retired after a media failure: volumes may have continued on their
// backing devices, so the next Open does not trust clean keys (only dirty
// data is kept).
const InfoFlagRetired uint32 = 1 << 0

// fail retires the cache after a media error. Idempotent.
func (c *Cache) fail(what string, err error) {
	c.failMu.Lock()
	if c.failed.Load() {
		c.failMu.Unlock()
		return
	}
	c.failReason = fmt.Sprintf("%s: %v", what, err)
	c.failCause = err
	c.failed.Store(true)
	close(c.failedCh)
	c.failMu.Unlock()
	c.log.Error("cache media failure: cache retired", "op", what, "err", err, "policy", c.config().OnCacheFailure)
	// Best effort: the media just failed, so this may fail too.
	info := c.store.Info()
	info.Flags |= InfoFlagRetired
	if err := c.store.SetInfo(info); err != nil {
		c.log.Warn("could not record the retirement in the cache file", "err", err)
	}
}

// failedErr returns nil while the cache is healthy.
func (c *Cache) failedErr() error {
	if !c.failed.Load() {
		return nil
	}
	c.failMu.Lock()
	defer c.failMu.Unlock()
	return fmt.Errorf("%w (%s): %w", ErrCacheFailed, c.failReason, blk.ErrMedium)
}

// Err returns a non-nil error once the cache has been retired after a
// media failure.
func (c *Cache) Err() error { return c.failedErr() }

// isMediaFault reports whether err comes from the cache media.
func isMediaFault(err error) bool { return errors.Is(err, persist.ErrMediaFault) }

// flusher closes ksets that have been open for JournalFlushInterval.
func (c *Cache) flusher() {
	defer c.workers.Done()
	var lastMark time.Time
	for {
		iv := c.config().JournalFlushInterval
		tick := max(iv/10, time.Millisecond)
		t := time.NewTimer(tick)
		select {
		case <-c.workersCtx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if c.failed.Load() {
			continue
		}
		now := c.clock().Now()
		c.closeAged(now, iv)
		c.pruneSlots()
		if now.Sub(lastMark) >= durableMarkInterval {
			lastMark = now
			if err := c.markDurable(); err != nil {
				c.fail("durable mark", err)
			}
		}
	}
}

// durableMarkInterval is how often, at most, the flusher records the
// durable mark (persist.Store.SetDurableMark) while the journal advances:
// a kset that became durable more than about this long before a crash, or
// before a clean close, is then known durable to replay even when no later
// kset says so, so damage to it is reported rather than taken for the end
// of the log. Each update is one record persist.
const durableMarkInterval = time.Second

// markDurable records the journal's durable point in the cache file if it
// moved.
func (c *Cache) markDurable() error {
	d := c.journal.Durable()
	if d == 0 || d <= c.store.DurableMark() {
		return nil
	}
	return c.store.SetDurableMark(d)
}

// SetConfig changes the live tunables: GCPercent, JournalFlushInterval,
// Writeback, OnCacheFailure (Logger and Clock keep their values).
func (c *Cache) SetConfig(cfg Config) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.config()
	stored := uint8(old.GCPercent)
	nc, err := cfg.withDefaults(stored)
	if err != nil {
		return err
	}
	nc.Logger, nc.Clock = old.Logger, old.Clock
	if nc.GCPercent != old.GCPercent {
		info := c.store.Info()
		info.GCPercent = uint8(nc.GCPercent)
		if err := c.store.SetInfo(info); err != nil {
			if isMediaFault(err) {
				c.fail("persist cache info", err)
			}
			return fmt.Errorf("cachecore: persist gc percent: %w", err)
		}
	}
	c.cfg.Store(&nc)
	c.kickGC()
	c.kickWriteback()
	return nil
}

// AddVolume attaches a backing device as volume name. A volume recorded in
// the cache file keeps its id and cached data; its backing device must not
// be smaller than the recorded size. The caller keeps ownership of dev.
func (c *Cache) AddVolume(ctx context.Context, name string, dev backend.Device, vc VolumeConfig) (*Volume, error) {
	if dev == nil {
		return nil, errors.New("cachecore: nil backing device")
	}
	if name == "" || len(name) > persist.MaxVolumeName {
		return nil, fmt.Errorf("cachecore: volume name %q must be 1..%d bytes", name, persist.MaxVolumeName)
	}
	vc, err := vc.withDefaults()
	if err != nil {
		return nil, err
	}
	if c.closed.Load() {
		return nil, fmt.Errorf("cachecore: cache closed: %w", blk.ErrNotReady)
	}
	if err := c.failedErr(); err != nil {
		return nil, err
	}
	if c.detaching.Load() {
		return nil, fmt.Errorf("cachecore: cache detached (or detaching): %w", blk.ErrNotReady)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.carryMu.Lock()
	defer c.carryMu.Unlock()
	if _, ok := c.volumes[name]; ok {
		return nil, fmt.Errorf("cachecore: volume %q already attached", name)
	}
	size := dev.Size() &^ int64(vc.BlockSize-1)
	recs := c.store.Volumes()
	var vs *volState
	for _, r := range recs {
		if r.Name != name || r.ID >= persist.MaxVolumes {
			continue
		}
		vs = c.vols[r.ID].Load()
		if int64(r.Size) > dev.Size() {
			return nil, fmt.Errorf("cachecore: volume %q: backing device has %d bytes but the cache recorded %d: refusing it (wrong or shrunk device): %w",
				name, dev.Size(), r.Size, blk.ErrNotReady)
		}
		if int64(r.Size)%int64(vc.BlockSize) != 0 {
			return nil, fmt.Errorf("cachecore: volume %q: recorded size %d is not a multiple of block size %d", name, r.Size, vc.BlockSize)
		}
		flags := replicatedFlag(r.Flags, vc.Replicated)
		if size > int64(r.Size) || flags != r.Flags {
			// The device grew (record the new size), or the volume's
			// replication changed.
			for i := range recs {
				if recs[i].ID == r.ID {
					recs[i].Size = max(recs[i].Size, uint64(size))
					recs[i].Flags = flags
				}
			}
			if err := c.store.SetVolumes(recs); err != nil {
				return nil, c.metaErr("persist volume table", err)
			}
			vs.grow(max(size, int64(r.Size)))
		}
		break
	}
	if vs == nil {
		if size <= 0 {
			return nil, fmt.Errorf("cachecore: volume %q: backing device of %d bytes holds no block", name, dev.Size())
		}
		used := make(map[uint32]bool)
		for _, r := range recs {
			used[r.ID] = true
		}
		id := uint32(persist.MaxVolumes)
		for i := uint32(0); i < persist.MaxVolumes; i++ {
			// An id whose keys are still in the live log is not reused:
			// replay would hand them to the new volume.
			if !used[i] && c.liveKeys[i].Load() == 0 {
				id = i
				break
			}
		}
		if id == persist.MaxVolumes {
			return nil, fmt.Errorf("cachecore: volume table full (%d volumes, or ids still referenced by the log)", persist.MaxVolumes)
		}
		recs = append(recs, persist.VolumeRecord{ID: id, Name: name, Size: uint64(size), Flags: replicatedFlag(0, vc.Replicated)})
		if err := c.store.SetVolumes(recs); err != nil {
			return nil, c.metaErr("persist volume table", err)
		}
		vs = newVolState(id, name, size)
		c.vols[id].Store(vs)
	}
	v := newVolume(c, vs, dev, vc)
	vs.vol.Store(v)
	c.volumes[name] = v
	c.kickWriteback()
	return v, nil
}

// metaErr retires the cache on a media fault and wraps err.
func (c *Cache) metaErr(what string, err error) error {
	if isMediaFault(err) {
		c.fail(what, err)
	}
	return fmt.Errorf("cachecore: %s: %w", what, err)
}

// RemoveVolume stops I/O to the volume, writes back its dirty data
// (reporting progress), then forgets it and its cached data.
func (c *Cache) RemoveVolume(ctx context.Context, name string, progress func(Progress)) error {
	c.mu.Lock()
	v, ok := c.volumes[name]
	c.mu.Unlock()
	if !ok {
		return fmt.Errorf("cachecore: no volume %q", name)
	}
	if !v.state.CompareAndSwap(volOnline, volRemoving) {
		return fmt.Errorf("cachecore: volume %q is being removed: %w", name, blk.ErrNotReady)
	}
	if err := v.waitIdle(ctx); err != nil {
		v.state.Store(volOnline)
		return err
	}
	if err := v.drain(ctx, progress); err != nil {
		v.state.Store(volOnline)
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	recs := c.store.Volumes()
	out := recs[:0]
	for _, r := range recs {
		if r.ID != v.st.id {
			out = append(out, r)
		}
	}
	if err := c.store.SetVolumes(out); err != nil {
		v.state.Store(volOnline)
		return c.metaErr("persist volume table", err)
	}
	c.vols[v.st.id].Store(nil)
	delete(c.volumes, name)
	v.state.Store(volClosed)
	return nil
}

// replicatedFlag returns flags with persist.VolumeFlagReplicated set to on.
func replicatedFlag(flags uint32, on bool) uint32 {
	if on {
		return flags | persist.VolumeFlagReplicated
	}
	return flags &^ persist.VolumeFlagReplicated
}

// ErrNotReplicated: PurgeReplica refuses a volume whose record does not say
// its journal was replicated: its dirty data may have no other copy.
var ErrNotReplicated = errors.New("cachecore: the volume's journal was not replicated when it was last attached")

// PurgeReplica drops everything the cache holds of a volume that is not
// attached and whose journal was replicated (VolumeConfig.Replicated when it
// was last attached), dirty data included, without writing anything back:
// the volume's record leaves the volume table, and with it every key of the
// volume in the log (replay and writeback ignore keys of ids the table does
// not name; the id is not reused while such keys are live). It is what a
// node does when it takes over a volume another node owned since: that
// node's journal, shipped here and applied on top of the backing device,
// supersedes this cache's, whose dirty data the other node applied (or
// wrote back) when it took the volume. It returns the dirty bytes dropped;
// a volume the table does not name is no error (0). A volume whose record is
// not marked replicated is refused with ErrNotReplicated.
func (c *Cache) PurgeReplica(name string) (int64, error) {
	if err := c.failedErr(); err != nil {
		return 0, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// carryMu: writeback is not carrying keys of the volume meanwhile
	// (it reloads the volume's state after taking it).
	c.carryMu.Lock()
	defer c.carryMu.Unlock()
	if _, ok := c.volumes[name]; ok {
		return 0, fmt.Errorf("cachecore: volume %q is attached: %w", name, blk.ErrNotReady)
	}
	recs := c.store.Volumes()
	out := make([]persist.VolumeRecord, 0, len(recs))
	var gone *persist.VolumeRecord
	for i, r := range recs {
		if r.Name == name && r.ID < persist.MaxVolumes {
			gone = &recs[i]
			continue
		}
		out = append(out, r)
	}
	if gone == nil {
		return 0, nil
	}
	if gone.Flags&persist.VolumeFlagReplicated == 0 {
		return 0, fmt.Errorf("%w: %q", ErrNotReplicated, name)
	}
	if err := c.store.SetVolumes(out); err != nil {
		return 0, c.metaErr("persist volume table", err)
	}
	var dirty int64
	if vs := c.vols[gone.ID].Load(); vs != nil {
		dirty = max(vs.dirtyBytes.Load(), 0)
	}
	c.vols[gone.ID].Store(nil)
	c.log.Info("volume purged: its cached data and journal are dropped (a replica elsewhere supersedes them)",
		"volume", name, "dirty_bytes_dropped", dirty)
	c.kickWriteback()
	return dirty, nil
}

// VolumeRecord returns the volume table's record of name, attached or not.
func (c *Cache) VolumeRecord(name string) (persist.VolumeRecord, bool) {
	for _, r := range c.store.Volumes() {
		if r.Name == name {
			return r, true
		}
	}
	return persist.VolumeRecord{}, false
}

// Volume returns the attached volume called name.
func (c *Cache) Volume(name string) (*Volume, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.volumes[name]
	return v, ok
}

// Volumes returns the attached volumes sorted by name.
func (c *Cache) Volumes() []*Volume {
	c.mu.Lock()
	out := make([]*Volume, 0, len(c.volumes))
	for _, v := range c.volumes {
		out = append(out, v)
	}
	c.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// stopWorkersDone stops the workers and returns a channel closed once they
// and every background commit have returned.
func (c *Cache) stopWorkersDone() <-chan struct{} {
	c.stopWorkers()
	done := make(chan struct{})
	go func() {
		c.workers.Wait()
		c.bg.Wait()
		close(done)
	}()
	return done
}

// Close stops I/O, makes every acknowledged key durable, stops the
// goroutines and waits for them. Dirty data stays for the next Open. The
// backing devices are not closed.
func (c *Cache) Close(ctx context.Context) error {
	if !c.closed.CompareAndSwap(false, true) {
		return nil
	}
	c.mu.Lock()
	vols := make([]*Volume, 0, len(c.volumes))
	for _, v := range c.volumes {
		vols = append(vols, v)
	}
	c.mu.Unlock()
	for _, v := range vols {
		v.state.Store(volClosed)
	}
	close(c.closing)
	var err error
	for _, v := range vols {
		if werr := v.waitIdle(ctx); werr != nil && err == nil {
			err = fmt.Errorf("cachecore: close: requests of %s still running: %w", v.name, werr)
		}
	}
	if c.failedErr() == nil {
		if ferr := c.flushAll(); ferr != nil && err == nil {
			err = ferr
		}
		if ferr := c.markDurable(); ferr != nil && err == nil {
			err = ferr
		}
	}
	done := c.stopWorkersDone()
	select {
	case <-done:
	case <-ctx.Done():
		close(c.hardStop)
		<-done
		if err == nil {
			err = ctx.Err()
		}
	}
	if err == nil && c.intent != nil {
		// Only when every request has left: a straggler appending a key
		// would otherwise write to an unmapped page. After an unclean
		// Close the mapping stays until the process exits.
		closeIntent := c.intent.closeClean
		if c.failedErr() != nil && !c.detached.Load() {
			// Keys may not be journaled: keep them for the next Open (a
			// detached cache is never opened again as it is).
			closeIntent = c.intent.Close
		}
		if cerr := closeIntent(); cerr != nil {
			c.log.Warn("closing the intent log", "err", cerr)
		}
	}
	return err
}
