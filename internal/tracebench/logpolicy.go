package tracebench

// LogConfig shapes the log-structured cache Log simulates.
type LogConfig struct {
	// SegBlocks is the blocks of data a segment holds (the engine's:
	// Engine.SegmentBlocks).
	SegBlocks int
	// Clean frees, instead of the oldest segment, the one a cleaner picks
	// out of log order as Sprite LFS does (Rosenblum and Ousterhout, 1992):
	// the most (1-u)·age/(1+u), u its live share and age the blocks
	// appended since it was opened. (Picking the emptiest does worse on the
	// mixed trace within write amplifications of 1.2 and 1.5,
	// docs/yardstick.md.)
	Clean bool
	// MoveShare bounds the live blocks the cleaner appends again rather
	// than evicts, as a share of the blocks the host appended: its write
	// amplification is at most 1 + MoveShare. 0 evicts them.
	MoveShare float64
}

// moveMaxLiveEighths: the cleaner moves the live blocks of a segment at
// most this many eighths live (and evicts those of a fuller one): moving
// a fuller one writes nearly a segment to free a few blocks.
const moveMaxLiveEighths = 6

// Log simulates a log-structured cache of capacity blocks without an
// admission or second-chance policy: the engine's layout, its fifo policy
// in the ideal. Every read miss and every write appends its block at the
// head; the block's older copy, if any, stays in its segment as dead space
// until that segment is freed. When the head needs a segment while the log
// holds capacity/SegBlocks of them, one is freed (the oldest, or see
// LogConfig.Clean) with the live blocks it still holds.
//
// Against LRU of the same capacity it tells what the log itself costs: on
// a trace without overwrites, nearly nothing beyond FIFO's order; with
// overwrites, the dead copies the log holds, which no cleaning within a
// small write budget gets back (docs/yardstick.md).
func Log(t Trace, capacity int, cfg LogConfig) LogResult {
	l := &logCache{cfg: cfg, maxSegs: max(1, capacity/cfg.SegBlocks), where: map[uint64]logSlot{}}
	r := simulate(t, l)
	return LogResult{Result: r, WriteAmp: ratio(uint64(l.appended+l.moved), uint64(l.appended))}
}

// LogResult is Log's outcome: the hit ratios, and the blocks written to
// the log (the host's and the cleaner's moves) per block the host wrote.
type LogResult struct {
	Result
	WriteAmp float64
}

const deadSlot = ^uint64(0)

type logSeg struct {
	blocks []uint64 // deadSlot where the copy was superseded
	live   int
	opened int // blocks appended (host and moves) when it became the head
}

type logSlot struct {
	seg  *logSeg
	slot int
}

type logCache struct {
	cfg             LogConfig
	maxSegs         int
	segs            []*logSeg // oldest first; the last is the head
	where           map[uint64]logSlot
	appended, moved int
}

func (c *logCache) access(_ int, b uint64, write bool) bool {
	_, hit := c.where[b]
	if write || !hit {
		c.appended++
		c.put(b)
	}
	return hit
}

// put appends b at the head, superseding its older copy.
func (c *logCache) put(b uint64) {
	if old, ok := c.where[b]; ok {
		old.seg.blocks[old.slot] = deadSlot
		old.seg.live--
		delete(c.where, b)
	}
	for {
		n := len(c.segs)
		if n > 0 && len(c.segs[n-1].blocks) < c.cfg.SegBlocks {
			break // the head has room (a cleaner's moves may have made one)
		}
		if n < c.maxSegs {
			c.segs = append(c.segs, &logSeg{blocks: make([]uint64, 0, c.cfg.SegBlocks), opened: c.appended + c.moved})
			break
		}
		c.free()
	}
	head := c.segs[len(c.segs)-1]
	head.blocks = append(head.blocks, b)
	head.live++
	c.where[b] = logSlot{head, len(head.blocks) - 1}
}

// free frees one segment; put calls it when every segment is full.
func (c *logCache) free() {
	victim := 0
	if c.cfg.Clean {
		now := c.appended + c.moved
		best := -1.0
		for i, s := range c.segs {
			u := float64(s.live) / float64(c.cfg.SegBlocks)
			if benefit := (1 - u) * float64(now-s.opened) / (1 + u); benefit > best {
				victim, best = i, benefit
			}
		}
	}
	s := c.segs[victim]
	c.segs = append(c.segs[:victim], c.segs[victim+1:]...)
	move := c.cfg.Clean && s.live*8 <= c.cfg.SegBlocks*moveMaxLiveEighths &&
		float64(c.moved+s.live) <= c.cfg.MoveShare*float64(c.appended)
	if move {
		// Counted before the moves: putting them may free (and move)
		// again, within what is left of the budget.
		c.moved += s.live
	}
	for _, b := range s.blocks {
		if b == deadSlot {
			continue
		}
		delete(c.where, b)
		if move {
			c.put(b)
		}
	}
}
