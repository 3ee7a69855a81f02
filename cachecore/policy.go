package cachecore

import (
	"fmt"
	"maps"
	"math/bits"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/cachelun/cachelun/persist"
)

// Cache policies: which read misses are admitted, and which clean data GC
// keeps when key_tail passes it.
//
// The cache is a log, so eviction is first in, first out by nature: GC
// passes the oldest ksets and their clean data goes. Policy2Q adds, in the
// manner of 2Q (Johnson and Shasha, VLDB 1994) and of S3-FIFO (SOSP 2023),
// what FIFO lacks:
//
//   - Admission by a ghost set. Once the cache is full (cacheFull: at
//     GC's threshold; once GC has run, within two segments of it, one on
//     a cache whose threshold is under a hundred segments), a read miss
//     is filled only if the ghost set remembers the block: it was evicted
//     recently, or missed once recently without being admitted. A block
//     read once (a scan, a one-hit wonder) therefore never pushes out
//     data that is read again.
//     Until the cache is full every miss is admitted. The ghost set is
//     short: a block is admitted only if it is missed again soon, which
//     keeps the blocks read a few times per pass of the log out of it, so
//     the log turns more slowly and the budget below protects more of
//     what is read often. Its false positives are at most a few in ten
//     thousand, about one in ten million at its usual window, so a scan
//     of any length admits practically nothing.
//     Data GC evicted although it was read, for want of credit (below),
//     is remembered apart (policyState.evictedHot), which refusals do not
//     flush: data known to be read again then costs one miss to come
//     back, not two.
//   - An adaptive window, in the manner of ARC (Megiddo and Modha, FAST
//     2003). How short the ghost set should be depends on the workload:
//     over a working set many times the cache a longer memory admits the
//     warm blocks that beat the cold ones GC evicts; over one about twice
//     the cache every admission costs a block that is read often, since
//     most of what GC passes was read and the budget covers little of it.
//     The window (the inserts each of its two filters takes, see
//     ghostSet) starts at a sixteenth of the data area's blocks and moves
//     between a quarter and four times that: an admission by the ghost set
//     widens it by one, an admission by evictedHot (GC evicted data that
//     was read again: admitting cost too much) narrows it by
//     ghostNarrowStep.
//   - Second chance. A read hit counts on its extent, and a host write over
//     cached data starts its copy one above that data's count (a write is a
//     reference too, as LRU counts one: installWrite). When GC passes a key
//     whose data is still indexed, clean (a fill, or a write that was written
//     back) and was hit since it was written, the data is appended again at the
//     head of the log (through the fill path: a placeholder, then an install
//     that C7 checks like any fill) instead of being evicted, and its count
//     starts again (CLOCK). The budget goes to the most hit data of a GC step
//     first: its keys were written at about the same time, so their counts
//     compare references over the same stay. Until GC has passed the whole log
//     once, data hit only once is re-appended only from credit beyond half of
//     what may be banked (reappendMinHits): the credit banked while the cache
//     filled, spent on what GC passes first, would be missing when it next
//     passes data read many times. What is evicted goes to the ghost set.
//   - Kept in place. When GC passes the keys of a segment whose clean
//     data of 2q volumes was mostly read since it was written
//     (keepHitPercent of its bytes), moving that data costs more than it
//     is worth and freeing the segment evicts what is read: GC journals
//     the keys of the segment's clean data again instead (keepInPlace),
//     the data stays where it is, its counts start again, and the segment
//     is not freed. A key is 40 bytes of journal for up to a segment's
//     worth of data, so a segment read all over stays for the price of
//     its keys, and the budget below goes to the data of segments that
//     are freed. Only segments read at least as often per byte as those
//     GC judged lately are kept: where nearly everything is read once per
//     pass, being read says little. The keys journaled again get ksets of
//     their own, so that GC's next pass over them passes the segment's
//     keys together and judges it whole. At most maxKeptInARow segments
//     are kept before GC frees one, and none while a writer waits for
//     space, so GC never falls behind.
//   - A write budget. Re-appends are bounded to a fifth of the bytes the
//     host installed in the cache (fills and cached writes) since the
//     cache opened, so GC's write amplification from them stays under 1.2
//     and GC never falls behind the writers: without credit, GC evicts as
//     FIFO does.
//
// Dirty data is never re-appended, kept nor evicted by this: GC still never
// passes dirty_tail nor the keys writeback has yet to mark clean (C-rules
// in doc.go), and only extents the index holds as clean are re-appended.
// A re-append is a clean fill: a crash before its kset is durable loses
// only a copy of backing data. So is a key kept in place: its segment
// keeps a reference for it (the step holds one of its own until the keys
// are appended), and it is appended under the stripe lock while the
// extent is in the index, so a bypass write's tombstone for the range
// follows it in the log (C5, C7).
//
// PolicyFIFO admits every miss and evicts in log order (for comparison).

// Policy names a cache policy.
type Policy string

const (
	PolicyFIFO Policy = "fifo" // every miss admitted, eviction in log order
	Policy2Q   Policy = "2q"   // ghost-set admission and second chance (above)
)

// Policies lists every policy, in the order the documentation gives them.
func Policies() []Policy { return []Policy{Policy2Q, PolicyFIFO} }

// ParsePolicy parses a policy name; "" is PolicyFIFO (the zero
// VolumeConfig), DefaultVolumeConfig sets Policy2Q.
func ParsePolicy(s string) (Policy, error) {
	switch Policy(s) {
	case "", PolicyFIFO:
		return PolicyFIFO, nil
	case Policy2Q:
		return Policy2Q, nil
	}
	return "", fmt.Errorf("cachecore: unknown cache policy %q (want 2q or fifo)", s)
}

const (
	// reappendShare: re-appended bytes at most this share of the bytes
	// installed by the host (1/5: write amplification <= 1.2).
	reappendShareDiv = 5
	// ghostBlock is the granularity of the ghost set: 4 KiB blocks of a
	// volume's address space.
	ghostBlockShift = 12
	// ghostPerExtent bounds the blocks of one evicted extent remembered.
	ghostPerExtent = 16
	// ghostDiv: each Bloom filter of the ghost set is sized for a
	// sixteenth of the blocks of the cache's data area (at least 1024),
	// its window's starting point; a fixed window of a half or a quarter
	// admitted too much of a Zipf tail over twice the cache, one of a
	// thirty-second too little over ten times it (docs/yardstick.md).
	// evictedHot's filters are as large: on Zipf traces over twice to ten
	// times the cache, sizes from a sixteenth to a half do as well, the
	// whole data area admits blocks read long ago.
	ghostDiv = 16
	// ghostNarrowStep: a miss evictedHot admits narrows the ghost set's
	// window by this many inserts, one the ghost set admits widens it by
	// one (admitGhost). Narrowing by one as well let the window grow on
	// traces whose working set is about twice the cache, where every
	// admission costs data that is read again.
	ghostNarrowStep = 4
	// ghostBitsPerEntry and ghostProbes size each Bloom filter: about
	// 1e-7 false positives at its starting window, 6e-4 at four times
	// that. (The bits a filter of twice the entries at 2 % took: a scan's
	// blocks are all new, and 2 % of a long scan admitted, near the
	// threshold, pushed part of the hot set out.)
	ghostBitsPerEntry = 5 * ghostDiv
	ghostProbes       = 6
	// fullMargin: once GC has run, the cache counts as full (admission
	// by the ghost set) within this many segments of GC's threshold, once
	// the threshold is at least fullMarginFrom segments; below, within
	// one (cacheFull). (Two segments of a 21-segment threshold are a
	// tenth of the data: misses refused while the cache still had room
	// for them.)
	fullMargin     = 2
	fullMarginFrom = 100
	// bankDiv: GC banks at most this share of the data area as credit.
	// A fresh cache earns a fifth of what it installs until GC first runs
	// (about gc_percent of it): a fifth of the data area keeps that.
	bankDiv = 5
)

// ghostSet remembers recently evicted or refused blocks: two Bloom filters
// used in turn. Inserts go to the current one; a lookup checks both; when
// the current one has taken limit inserts the older one is cleared and
// becomes current. So it remembers between limit and 2*limit of the latest
// inserts in constant memory. The filters are sized for the initial limit
// (ghostBitsPerEntry bits per entry); an adaptive set's limit (its window)
// moves between a quarter and four times that (widen, narrow), where its
// false positives go from about one in ten million to a few in ten
// thousand per lookup.
// Lookups and inserts are lock-free; mu serialises the swap.
type ghostSet struct {
	mu                 sync.Mutex
	filters            [2][]atomic.Uint64
	cur                atomic.Uint32
	inserted           atomic.Int64 // into the current filter
	limit              atomic.Int64
	minLimit, maxLimit int64
	mask               uint64 // bits per filter - 1 (a power of two)
}

// ghostWindowRange: an adaptive ghost set's window moves within this
// factor of its initial limit either way.
const ghostWindowRange = 4

func newGhostSet(entries int64, adaptive bool) *ghostSet {
	entries = max(entries, 1024)
	nbits := uint64(1) << bits.Len64(uint64(entries*ghostBitsPerEntry)-1)
	g := &ghostSet{mask: nbits - 1, minLimit: entries, maxLimit: entries}
	if adaptive {
		g.minLimit, g.maxLimit = entries/ghostWindowRange, entries*ghostWindowRange
	}
	g.limit.Store(entries)
	for i := range g.filters {
		g.filters[i] = make([]atomic.Uint64, nbits/64)
	}
	return g
}

// widen lets each filter take d more inserts, up to maxLimit.
func (g *ghostSet) widen(d int64) { g.moveLimit(d) }

// narrow lets each filter take d fewer inserts, down to minLimit.
func (g *ghostSet) narrow(d int64) { g.moveLimit(-d) }

func (g *ghostSet) moveLimit(d int64) {
	for {
		l := g.limit.Load()
		n := min(max(l+d, g.minLimit), g.maxLimit)
		if n == l || g.limit.CompareAndSwap(l, n) {
			return
		}
	}
}

// ghostKey names block blk (in 4 KiB units) of volume vol.
func ghostKey(vol uint32, off int64) uint64 {
	x := uint64(vol)<<52 ^ uint64(off)>>ghostBlockShift
	// splitmix64's finaliser
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

func (g *ghostSet) probe(h uint64, i int) uint64 { return (h + uint64(i)*(h>>32|1)) & g.mask }

func (g *ghostSet) has(h uint64) bool {
	for f := range g.filters {
		in := true
		for i := range ghostProbes {
			b := g.probe(h, i)
			if g.filters[f][b/64].Load()&(1<<(b%64)) == 0 {
				in = false
				break
			}
		}
		if in {
			return true
		}
	}
	return false
}

func (g *ghostSet) add(h uint64) {
	cur := g.cur.Load()
	for i := range ghostProbes {
		b := g.probe(h, i)
		g.filters[cur][b/64].Or(1 << (b % 64))
	}
	if g.inserted.Add(1) >= g.limit.Load() {
		g.mu.Lock()
		if g.cur.Load() == cur && g.inserted.Load() >= g.limit.Load() {
			old := 1 - cur
			for i := range g.filters[old] {
				g.filters[old][i].Store(0)
			}
			g.cur.Store(old)
			g.inserted.Store(0)
		}
		g.mu.Unlock()
	}
}

// policyState is the cache-wide part of the policies: the ghost set and the
// re-append budget.
type policyState struct {
	ghost *ghostSet
	// evictedHot remembers the blocks GC evicted although they were hit
	// since written (no re-append credit left); it takes no refusals, so
	// it remembers them longer than ghost does.
	evictedHot *ghostSet
	// credit: bytes GC may still re-append; installed: the host's
	// installed bytes already credited (fills and cached writes).
	credit    atomic.Int64
	installed atomic.Uint64
	// full: GC has had work since the cache opened (gcLoop), so
	// cacheFull keeps its margin.
	full atomic.Bool
	// keptInARow: segments GC chose to keep in place since a step last
	// freed one; decisions: its choices on the
	// current pass of the log; readsAvg: a moving average (over about
	// eight) of the reads per byte of the segments it judged (chooseKept).
	// gcLoop's goroutine only.
	keptInARow int
	decisions  map[uint32]keepDecision
	readsAvg   float64
}

// cacheFull reports whether the cache counts as full: admitting data now
// evicts other data soon, so a 2q volume's read misses are admitted by the
// ghost set.
//
// Until GC first has work, the cache is full once a fill of n more bytes
// could take a segment past GC's threshold: the segments under it are in
// use and a data head has less room left than the fills already queued
// and n (fills take the heads in turn, so any of them may get the next
// one). So the whole cache fills before any miss is refused (stopping a
// segment short of the threshold left a twentieth of a small cache empty
// until GC first ran), and a scan after a warm-up still never makes GC
// run: it fills the cache to the threshold and is refused from there, and
// the hot set, the oldest data, stays.
//
// From GC's first turn on (policyState.full) it is full within fullMargin
// segments (one on a cache whose threshold is under fullMarginFrom
// segments) of the threshold. A GC step frees a segment and leaves the
// heads as they were; the exact rule would then admit every miss until
// the heads had filled again, and the cache would admit as fifo does.
//
// It runs on every read of a 2q volume, so it reads the free count and the
// heads' offsets without a lock and counts quarantined segments (rare) as
// used, where GC's threshold does not: a cache with quarantined segments
// starts admitting by the ghost set that many segments earlier.
func (c *Cache) cacheFull(n int64) bool {
	segs := len(c.segs.segs)
	used := segs - int(c.segs.nFree.Load())
	limit := segs * c.config().GCPercent / 100
	if c.policy.full.Load() {
		margin := fullMargin
		if limit < fullMarginFrom {
			margin = 1
		}
		return used+margin > limit
	}
	if used != limit {
		return used > limit
	}
	room := int64(c.segs.dataSize)
	for i := range c.heads {
		room = min(room, int64(c.heads[i].room()))
	}
	return room < c.fills.pendingBytes.Load()+n
}

// admitGhost decides, for a volume with Policy2Q on a full cache, whether
// a read miss at off is filled: only if the ghost set remembers the block
// (refused or evicted recently, or evicted for lack of credit although it
// was read). A refused block is remembered, so its next miss is admitted.
func (v *Volume) admitGhost(off int64) bool {
	p := &v.c.policy
	g := p.ghost
	h := ghostKey(v.st.id, off)
	switch {
	case p.evictedHot.has(h):
		g.narrow(ghostNarrowStep)
	case g.has(h):
		g.widen(1)
	default:
		g.add(h)
		v.stats.admissionsRefused.Add(1)
		return false
	}
	v.stats.ghostAdmits.Add(1)
	return true
}

// markHit records a read hit on x (under its stripe lock) for GC's second
// chance.
func markHit(x *extent) {
	if x.hits < maxHits {
		x.hits++
	}
}

// maxHits: the hit count saturates here; ranking beyond it buys nothing.
const maxHits = 255

// reappendMinHits: until GC has passed the whole log once, data hit less
// often than this since it was written is re-appended only from credit
// beyond half of creditLimit, which is kept for data read more often
// (secondChance).
const reappendMinHits = 2

// keepHitPercent: a segment GC passes is kept in place only when at least
// this share of its clean bytes of 2q volumes was read since written
// (chooseKept). Measured on the yardstick's Zipf traces (internal/
// tracebench, twelve seeds, 12 and 40 references per block) at 60, 70, 80
// and 90 %: below 80 GC keeps segments whose unread part a fill would
// use better (α=0.8 over 2× falls below LRU), at 90 it keeps too few to
// lift the traces whose working set is about the cache's.
const keepHitPercent = 80

// maxKeptInARow: GC keeps at most this many segments in place before a
// step frees one, so that a log read all over still turns. (Counted from
// a freed segment, not from the last segment GC chose not to keep: with
// several data heads a step judges parts of several segments before one
// is freed, and counted that way GC kept segments of a loop over 1.1
// times a 256 MiB cache while it let others of it go in between, and the
// loop's hit ratio fell from 0.84 to under 0.2.)
const maxKeptInARow = 4

// segReads sums, over the clean data of 2q volumes a GC step passes in one
// segment, the bytes, the bytes read since written, and the bytes times
// their reads.
type segReads struct{ bytes, readBytes, reads uint64 }

// refillCredit adds to GC's re-append budget its share of what the host
// installed since the last call.
func (c *Cache) refillCredit() {
	var total uint64
	for id := range c.vols {
		vs := c.vols[id].Load()
		if vs == nil {
			continue
		}
		if v := vs.vol.Load(); v != nil {
			// Not writeBytes: writes that bypassed the cache installed
			// nothing.
			total += v.stats.fillBytes.Load() + v.stats.cachedWriteBytes.Load()
		}
	}
	p := &c.policy
	last := p.installed.Load()
	if total <= last {
		// A volume went away: restart the count from here.
		p.installed.Store(total)
		return
	}
	p.installed.Store(total)
	p.credit.Store(min(p.credit.Load()+int64((total-last)/reappendShareDiv), c.creditLimit()))
}

// creditLimit is the most credit GC banks: a fifth of the data area
// (bankDiv), so that credit earned long ago does not let GC re-append a
// long burst.
func (c *Cache) creditLimit() int64 {
	return int64(len(c.segs.segs)) * int64(c.store.SegmentDataSize()) / bankDiv
}

// chanceCand is clean data GC is passing that was hit since written: its
// volume, stripe and piece, and a copy of its extent taken under the
// stripe lock.
type chanceCand struct {
	v  *Volume
	vs *volState
	st *stripe
	pc piece
	x  extent
}

// secondChance runs before GC drops the references of the keys it passes
// (their data is still in place). Of the segments whose keys the step
// passes it chooses those to keep in place (chooseKept): their data stays,
// and evictKeys journals its keys again. Elsewhere, clean data of
// Policy2Q volumes that was hit since it was written is queued to be
// appended again, within the budget, the most hit first; the rest of
// their clean data goes to the ghost set. Dirty keys count too: GC passes
// one only once writeback marked its extents clean (cleanLSN), and then
// their data is the backing device's, as a fill's is; an extent still
// dirty (carried forward for a volume that is not attached) is left alone.
func (c *Cache) secondChance(stepLSN uint64, passed []persist.Key, freeing map[uint32]bool) (keep map[uint32]bool) {
	c.refillCredit()
	var cands, unread []chanceCand
	bySeg := map[uint32]*segReads{}
	for i := range passed {
		k := &passed[i]
		vs := c.dataKeyVolume(k)
		if vs == nil {
			continue
		}
		v := vs.vol.Load()
		if !gcPolicyApplies(v) {
			continue
		}
		for st, p := range vs.indexedPieces(k) {
			st.mu.Lock()
			i, j := st.list.span(p.s, p.e)
			for n := i; n < j; n++ {
				x := &st.list.ext[n]
				if x.kind != extClean || !x.sameLineage(p.s, k.Pos.Seg, p.segOff, k.Gen) {
					continue
				}
				cd := chanceCand{v: v, vs: vs, st: st, pc: p.piece, x: *x}
				r := bySeg[x.seg]
				if r == nil {
					r = new(segReads)
					bySeg[x.seg] = r
				}
				r.bytes += uint64(x.length)
				r.reads += uint64(x.length) * uint64(x.hits)
				if x.hits > 0 {
					r.readBytes += uint64(x.length)
					cands = append(cands, cd)
					continue
				}
				unread = append(unread, cd)
			}
			st.mu.Unlock()
		}
	}
	keep = c.chooseKept(stepLSN, freeing, bySeg)
	for n := range unread {
		if cd := &unread[n]; !keep[cd.x.seg] {
			c.policy.ghost.addExtent(cd.vs.id, cd.pc, &cd.x)
		}
	}
	cands = slices.DeleteFunc(cands, func(cd chanceCand) bool { return keep[cd.x.seg] })
	// The keys a step passes were written at about the same time, so
	// their hit counts compare reads over the same stay: the budget goes
	// to the data read most often, which is what a miss would cost most.
	slices.SortStableFunc(cands, func(a, b chanceCand) int { return int(b.x.hits) - int(a.x.hits) })
	var buf []byte
	// Until GC has passed the whole log once, data hit once is
	// re-appended only from credit beyond half of creditLimit: the
	// credit banked while the cache filled is spent on what GC passes
	// first, data filled first, and much of what follows was read more.
	// From then on credit comes as the host installs data, and data read
	// once per pass (a loop) is worth what the budget allows.
	var reserve int64
	if c.stats.gcSegmentsFreed.Load()+c.stats.gcSegmentsKept.Load() < uint64(len(c.segs.segs)) {
		reserve = c.creditLimit() / 2
	}
	for n := range cands {
		cd := &cands[n]
		need := int64(cd.x.length)
		if cd.x.hits < reappendMinHits {
			need += reserve
		}
		if need > c.policy.credit.Load() {
			c.policy.ghost.addExtent(cd.vs.id, cd.pc, &cd.x)
			c.policy.evictedHot.addExtent(cd.vs.id, cd.pc, &cd.x)
			continue
		}
		c.policy.credit.Add(-int64(cd.x.length))
		if int(cd.x.length) > cap(buf) {
			buf = make([]byte, max(cd.x.length, 64<<10))
		}
		cd.v.reappend(cd.st, cd.pc, &cd.x, buf[:cd.x.length])
	}
	return keep
}

// keepDecision is GC's choice for one segment on one pass of the log over
// its keys: kept in place or not. A segment's keys may lie in more ksets
// than a step passes (one kset per slot, and other segments' keys in
// them), so a step may pass part of them; the choice, made from the first
// part, holds for the rest of its keys passed on this pass: those in ksets
// before until (the journal head when it was made).
type keepDecision struct {
	gen   uint64
	until uint64
	keep  bool
}

// chooseKept returns the segments whose clean data the step keeps in place.
// A segment whose keys the step passes keeps the choice made on this pass
// (decisions), or gets one now from the clean data of 2q volumes the step
// passes in it (reads): kept when it was mostly read (keepHitPercent of its
// bytes) and read at least as often per byte as the segments GC judged
// lately (readsAvg), at most maxKeptInARow since a step last freed one,
// none while a writer waits for space. The second test is what tells,
// when most data is read at least once per pass of the log (a long-lived
// working set about twice the cache), the segments worth a pass more from
// those that are not: without it, at 256 MiB and 40 references per block,
// GC kept most of the segments it judged and Zipf α=0.8 over 2× was 0.008
// below LRU (0.008 above with it; 0.013 above when GC keeps nothing in
// place). A segment the step does not free and passes less than a
// sixteenth of is not judged by that part (its data there goes as it
// would without a choice). stepLSN is the LSN of the step's first kset;
// freeing, the segments the step frees unless kept.
func (c *Cache) chooseKept(stepLSN uint64, freeing map[uint32]bool, reads map[uint32]*segReads) map[uint32]bool {
	p := &c.policy
	if p.decisions == nil {
		p.decisions = map[uint32]keepDecision{}
	}
	var keep map[uint32]bool
	for _, seg := range slices.Sorted(maps.Keys(reads)) {
		gen := c.segs.segs[seg].currentGen()
		d, ok := p.decisions[seg]
		if !ok || d.gen != gen || stepLSN >= d.until {
			r := reads[seg]
			if !freeing[seg] && r.bytes < uint64(c.segs.dataSize)/16 {
				continue
			}
			perByte := float64(r.reads) / float64(max(r.bytes, 1))
			d = keepDecision{gen: gen, until: c.journal.Head().LSN,
				keep: !c.config().noKeepInPlace && p.keptInARow < maxKeptInARow && c.spaceWait.Load() == 0 &&
					r.bytes > 0 && r.readBytes*100 >= keepHitPercent*r.bytes && perByte >= p.readsAvg}
			p.readsAvg += (perByte - p.readsAvg) / 8
			p.decisions[seg] = d
			if d.keep {
				p.keptInARow++
				c.stats.gcSegmentsKept.Add(1)
			}
		}
		if d.keep {
			if keep == nil {
				keep = map[uint32]bool{}
			}
			keep[seg] = true
		}
	}
	for seg := range freeing {
		if !keep[seg] {
			p.keptInARow = 0
			delete(p.decisions, seg)
		}
	}
	return keep
}

// gcPolicyApplies reports whether GC's 2q rules (second chance, keeping
// in place) apply to the clean data of v: attached (non-nil), a 2q volume,
// and in a mode that caches reads.
func gcPolicyApplies(v *Volume) bool {
	return v != nil && v.vcfg.Load().Policy == Policy2Q && v.Mode().fillsReads()
}

// keepingVolume returns the volume of vs, entered (Volume.exit after),
// when GC may keep its data in place: gcPolicyApplies, and online (never
// waiting for a paused one). Otherwise nil.
func keepingVolume(vs *volState) *Volume {
	v := vs.vol.Load()
	if !gcPolicyApplies(v) || !v.tryEnter() {
		return nil
	}
	return v
}

// keepInPlace journals a key for the clean extent x of piece pc again (GC
// passes its old key): the data stays where it is, the new key takes a
// reference on its segment, and the extent's hit count starts again. It
// declines, and the extent is evicted, when x is not clean, when the
// extent's data CRC covers more than the extent (a part of an older key:
// its CRC would have to be computed from data not verified), or when a
// bypass write is in flight on the chunk. Called with st.mu held; the
// caller commits the spill after releasing it.
func (v *Volume) keepInPlace(st *stripe, pc piece, x *extent) (spill, bool) {
	c := v.c
	if x.kind != extClean || c.dataCRC && (x.sumOff != x.segOff || x.sumLen != x.length) {
		return spill{}, false
	}
	if v.tracker.count(uint64(pc.abs(x.start))>>chunkShift) != 0 {
		return spill{}, false
	}
	k := persist.Key{Volume: v.st.id, Offset: uint64(pc.abs(x.start)), Length: x.length,
		Pos: persist.Pos{Seg: x.seg, Off: x.segOff}, Gen: x.gen, Flags: persist.KeyClean, DataCRC: x.sum}
	c.segs.segs[x.seg].refs.Add(1)
	x.hits = 0
	return c.appendKey(slotFor(v.st.id, pc.stripe), k), true
}

// addExtent remembers the first blocks (ghostPerExtent) of extent x of
// volume vol.
func (g *ghostSet) addExtent(vol uint32, pc piece, x *extent) {
	for b := uint32(0); b < x.length && b < ghostPerExtent<<ghostBlockShift; b += 1 << ghostBlockShift {
		g.add(ghostKey(vol, pc.abs(x.start+b)))
	}
}

// reappend queues the clean extent x (a copy taken under its stripe lock)
// to be written again at the head of the log: its data is read (and
// verified) from the cache now, while GC still holds its segment, and the
// extent gives way to a fill placeholder, if it is still the same and no
// bypass write is in flight on its chunk (C7). Readers meanwhile read the
// backing device, whose data a clean extent equals.
func (v *Volume) reappend(st *stripe, pc piece, x *extent, data []byte) {
	c := v.c
	if err := v.enter(); err != nil {
		return
	}
	defer v.exit()
	if err := c.readVerified(data, x.seg, x.segOff, x.sumOff, x.sumLen, x.sum); err != nil {
		return // rotten or unreadable: evicted, never copied
	}
	token := c.token.Add(1)
	chunk := uint64(pc.abs(x.start)) >> chunkShift
	st.mu.Lock()
	k := st.list.find(x.start)
	if k < 0 || !sameButHits(st.list.ext[k], *x) || v.tracker.count(chunk) != 0 {
		st.mu.Unlock()
		return
	}
	ph := extent{gen: token, start: x.start, length: x.length, kind: extEmpty}
	st.list.replace(x.start, x.end(), &ph)
	st.mu.Unlock()
	if !v.queueFill(st, pc, x.start, token, data, false, nil, true) {
		st.mu.Lock()
		removePlaceholder(st, x.start, token)
		st.mu.Unlock()
		return
	}
}

// sameButHits reports whether a and b are the same extent, read or not
// since (a read may have counted a hit after GC copied the extent).
func sameButHits(a, b extent) bool {
	a.hits, b.hits = 0, 0
	return a == b
}
