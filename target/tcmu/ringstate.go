package tcmu

import (
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"
)

// ring is the user-space side of one device's command ring: it consumes the
// entries the kernel queued (between our private read position and the
// kernel's cmd_head) and completes commands in any order by rewriting the
// entry at cmd_tail, as libtcmu does.
//
// consume is called by one goroutine (the device's ring loop); complete may
// be called from many goroutines at once and serialises on mu.
type ring struct {
	mm     []byte
	layout ringLayout

	// next is the ring position of the next entry to consume. Only the
	// consuming goroutine touches it, but complete reads it (under mu)
	// through consumedUpTo.
	next uint32

	mu sync.Mutex
	// consumedUpTo mirrors next for completers: the tail never passes it.
	consumedUpTo uint32
	// tail mirrors mailbox.cmd_tail; only complete writes it.
	tail uint32
	// owed counts consumed CMD entries not yet reused by a completion; a
	// completion without one would overwrite an entry we never read.
	owed int
}

func newRing(mm []byte) (*ring, error) {
	l, err := parseMailbox(mm)
	if err != nil {
		return nil, err
	}
	if !l.outOfOrder() {
		return nil, fmt.Errorf("%w: kernel does not offer out-of-order completion (mailbox flags %#x)", errRing, l.flags)
	}
	r := &ring{mm: mm, layout: l}
	r.tail = r.loadU32(mbCmdTail)
	if r.tail >= l.cmdrSize || r.tail%8 != 0 {
		return nil, fmt.Errorf("%w: cmd_tail %d", errRing, r.tail)
	}
	// Entries between cmd_tail and cmd_head on a ring we did not reset
	// would belong to a previous owner; start where the completions stand.
	r.next, r.consumedUpTo = r.tail, r.tail
	return r, nil
}

func (r *ring) u32(off int) *uint32 { return (*uint32)(unsafe.Pointer(&r.mm[off])) }

func (r *ring) loadU32(off int) uint32 { return atomic.LoadUint32(r.u32(off)) }

// consume decodes every entry the kernel queued since the last call. TMR
// notices are returned in ring order with the commands; PAD entries are
// skipped. An error means the ring is corrupt and must not be touched
// further.
func (r *ring) consume(cmds []cmdRequest, tmrs []tmrNotice) ([]cmdRequest, []tmrNotice, error) {
	head := r.loadU32(mbCmdHead)
	if head >= r.layout.cmdrSize || head%8 != 0 {
		return cmds, tmrs, fmt.Errorf("%w: cmd_head %d", errRing, head)
	}
	var newCmds int
	// The entries from next to head cover less than one lap of the ring;
	// a walk that goes further never meets head (a corrupt length).
	var walked uint64
	for r.next != head {
		h, err := r.layout.readHeader(r.mm, r.next)
		if err != nil {
			return cmds, tmrs, err
		}
		if walked += uint64(h.length); walked >= uint64(r.layout.cmdrSize) {
			return cmds, tmrs, fmt.Errorf("%w: entries from %d never reach cmd_head %d", errRing, r.next, head)
		}
		switch h.op {
		case opPad:
		case opCmd:
			req, err := r.layout.decodeCommand(r.mm, r.next, h)
			if err != nil {
				return cmds, tmrs, err
			}
			cmds = append(cmds, req)
			newCmds++
		case opTMR:
			t, err := r.layout.decodeTMR(r.mm, r.next, h)
			if err != nil {
				return cmds, tmrs, err
			}
			tmrs = append(tmrs, t)
		default:
			return cmds, tmrs, fmt.Errorf("%w: entry at %d has opcode %d", errRing, r.next, h.op)
		}
		r.next = r.layout.next(r.next, h.length)
	}
	r.mu.Lock()
	r.consumedUpTo = r.next
	r.owed += newCmds
	if r.owed == 0 && r.tail != r.next {
		// Only PAD and TMR entries remain between the tail and what we
		// consumed: hand their space back without waiting for a command.
		r.tail = r.next
		atomic.StoreUint32(r.u32(mbCmdTail), r.tail)
	}
	r.mu.Unlock()
	return cmds, tmrs, nil
}

// complete writes c into the next free completion slot and publishes it by
// advancing cmd_tail. The caller then kicks the kernel.
func (r *ring) complete(c completion) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.owed == 0 {
		return fmt.Errorf("%w: completion of command %d with no consumed entry to carry it", errRing, c.id)
	}
	tail := r.tail
	var walked uint64
	for {
		if tail == r.consumedUpTo || walked >= uint64(r.layout.cmdrSize) {
			return fmt.Errorf("%w: no consumed command entry between cmd_tail and %d", errRing, r.consumedUpTo)
		}
		h, err := r.layout.readHeader(r.mm, tail)
		if err != nil {
			return err
		}
		walked += uint64(h.length)
		if h.op == opCmd {
			if h.length < minCmdEntry {
				return fmt.Errorf("%w: command entry at %d shorter than a response", errRing, tail)
			}
			r.layout.writeCompletion(r.mm, tail, c)
			tail = r.layout.next(tail, h.length)
			break
		}
		// PAD and TMR entries need no completion; the kernel skips them.
		tail = r.layout.next(tail, h.length)
	}
	r.owed--
	r.tail = tail
	atomic.StoreUint32(r.u32(mbCmdTail), tail)
	return nil
}

// inFlight reports how many consumed commands are not completed yet.
func (r *ring) inFlight() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.owed
}

// dataSlices returns the data-area slices of a command's data-out (or
// data-in) iovecs. bidi selects the trailing bidirectional iovecs.
func (r *ring) dataSlices(req *cmdRequest, bidi bool) [][]byte {
	iovs := req.iovs[:len(req.iovs)-req.bidi]
	if bidi {
		iovs = req.iovs[len(req.iovs)-req.bidi:]
	}
	out := make([][]byte, 0, len(iovs))
	for _, v := range iovs {
		out = append(out, r.mm[v.off:v.off+v.len:v.off+v.len])
	}
	return out
}
