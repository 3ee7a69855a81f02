package tcmu

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"
)

// fakeKernel plays the kernel's side of a TCMU mapping held in an ordinary
// byte slice, following drivers/target/target_core_user.c: it queues CMD
// entries (inserting a PAD entry when one does not fit before the end of the
// ring), hands out data-area blocks that need not be contiguous, and reaps
// completions the way tcmu_handle_completions does (walk from the last
// cleaned position to cmd_tail, look each CMD entry's cmd_id up).
type fakeKernel struct {
	mu       sync.Mutex
	mm       []byte
	cmdrOff  uint32
	cmdrSize uint32
	dataOff  uint32
	blockLen uint32
	free     []bool // data blocks

	head, lastCleaned uint32
	nextID            uint16
	pending           map[uint16]*fakeCmd
	broken            error
}

type fakeCmd struct {
	id     uint16
	cdb    []byte
	iovs   []iovec
	blocks []int
	inLen  int

	// Filled by reap.
	status  byte
	sense   []byte
	data    []byte // data-in as the kernel would gather it
	readLen uint32
	uflags  byte
}

var errRingFull = errors.New("fake kernel: ring or data area full")

func newFakeKernel(cmdrSize, dataBlocks, blockLen uint32, flags uint16) *fakeKernel {
	const cmdrOff = 128
	dataOff := cmdrOff + cmdrSize
	k := &fakeKernel{
		mm:       make([]byte, int(dataOff)+int(dataBlocks*blockLen)),
		cmdrOff:  cmdrOff,
		cmdrSize: cmdrSize,
		dataOff:  dataOff,
		blockLen: blockLen,
		free:     make([]bool, dataBlocks),
		pending:  make(map[uint16]*fakeCmd),
	}
	for i := range k.free {
		k.free[i] = true
	}
	binary.LittleEndian.PutUint16(k.mm[mbVersion:], mailboxVersion)
	binary.LittleEndian.PutUint16(k.mm[mbFlags:], flags)
	binary.LittleEndian.PutUint32(k.mm[mbCmdrOff:], cmdrOff)
	binary.LittleEndian.PutUint32(k.mm[mbCmdrSize:], cmdrSize)
	return k
}

func (k *fakeKernel) u32(off int) *uint32 { return (*uint32)(unsafe.Pointer(&k.mm[off])) }

func (k *fakeKernel) ringUsed() uint32 {
	return (k.head + k.cmdrSize - k.lastCleaned) % k.cmdrSize
}

// queue places a command on the ring. For a data-out command out holds the
// data; for data-in, inLen is the buffer size.
func (k *fakeKernel) queue(cdb []byte, out []byte, inLen int) (*fakeCmd, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	n := len(out)
	if out == nil {
		n = inLen
	}
	nblocks := (n + int(k.blockLen) - 1) / int(k.blockLen)
	var blocks []int
	// Take free blocks from the end backwards so iovecs are often split.
	for i := len(k.free) - 1; i >= 0 && len(blocks) < nblocks; i-- {
		if k.free[i] {
			blocks = append(blocks, i)
		}
	}
	if len(blocks) < nblocks {
		return nil, errRingFull
	}
	c := &fakeCmd{cdb: append([]byte(nil), cdb...), blocks: blocks, inLen: inLen}
	left := n
	for _, b := range blocks {
		l := min(left, int(k.blockLen))
		off := uint64(k.dataOff) + uint64(b)*uint64(k.blockLen)
		if last := len(c.iovs) - 1; last >= 0 && c.iovs[last].off+c.iovs[last].len == off {
			c.iovs[last].len += uint64(l)
		} else {
			c.iovs = append(c.iovs, iovec{off: off, len: uint64(l)})
		}
		left -= l
	}
	base := max(reqIov+iovecSize*len(c.iovs), minCmdEntry)
	size := uint32((base + len(cdb) + 7) &^ 7)
	// Room: the entry, plus a PAD if it does not fit before the end, and
	// never fill the ring completely (head == tail means empty).
	need := size
	if k.cmdrSize-k.head < size {
		need += k.cmdrSize - k.head
	}
	if k.ringUsed()+need >= k.cmdrSize {
		return nil, errRingFull
	}
	for _, b := range blocks {
		k.free[b] = false
	}
	if k.cmdrSize-k.head < size {
		pad := k.cmdrSize - k.head
		e := k.mm[k.cmdrOff+k.head:]
		binary.LittleEndian.PutUint32(e[entLenOp:], pad|opPad)
		k.head = 0
	}
	k.nextID++
	if k.nextID == 0 {
		k.nextID = 1
	}
	for k.pending[k.nextID] != nil {
		k.nextID++
	}
	c.id = k.nextID
	pos := k.cmdrOff + k.head
	e := k.mm[pos : pos+size]
	clear(e)
	binary.LittleEndian.PutUint32(e[entLenOp:], size|opCmd)
	binary.LittleEndian.PutUint16(e[entCmdID:], c.id)
	binary.LittleEndian.PutUint32(e[reqIovCnt:], uint32(len(c.iovs)))
	for i, v := range c.iovs {
		binary.LittleEndian.PutUint64(e[reqIov+i*iovecSize:], v.off)
		binary.LittleEndian.PutUint64(e[reqIov+i*iovecSize+8:], v.len)
	}
	cdbOff := base
	binary.LittleEndian.PutUint64(e[reqCdbOff:], uint64(pos)+uint64(cdbOff))
	copy(e[cdbOff:], cdb)
	// Scatter data-out into the data area; poison data-in buffers so a
	// missing copy shows.
	rest := out
	for _, v := range c.iovs {
		seg := k.mm[v.off : v.off+v.len]
		if out != nil {
			rest = rest[copy(seg, rest):]
		} else {
			for i := range seg {
				seg[i] = 0xEE
			}
		}
	}
	k.pending[c.id] = c
	k.head = (k.head + size) % k.cmdrSize
	atomic.StoreUint32(k.u32(mbCmdHead), k.head)
	return c, nil
}

// queueTMR places a TMR notification listing aborted command ids.
func (k *fakeKernel) queueTMR(kind byte, ids []uint16) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	size := uint32((tmrCmdIDs + 2*len(ids) + 7) &^ 7)
	if k.cmdrSize-k.head < size || k.ringUsed()+size >= k.cmdrSize {
		return errRingFull
	}
	pos := k.cmdrOff + k.head
	e := k.mm[pos : pos+size]
	clear(e)
	binary.LittleEndian.PutUint32(e[entLenOp:], size|opTMR)
	e[tmrType] = kind
	binary.LittleEndian.PutUint32(e[tmrCmdCnt:], uint32(len(ids)))
	for i, id := range ids {
		binary.LittleEndian.PutUint16(e[tmrCmdIDs+2*i:], id)
	}
	k.head = (k.head + size) % k.cmdrSize
	atomic.StoreUint32(k.u32(mbCmdHead), k.head)
	return nil
}

// reap processes completions up to cmd_tail and returns the commands that
// completed.
func (k *fakeKernel) reap() ([]*fakeCmd, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.reapLocked(), k.broken
}

func (k *fakeKernel) reapLocked() []*fakeCmd {
	var done []*fakeCmd
	tail := atomic.LoadUint32(k.u32(mbCmdTail))
	for k.broken == nil && k.lastCleaned != tail {
		e := k.mm[k.cmdrOff+k.lastCleaned:]
		lenOp := binary.LittleEndian.Uint32(e[entLenOp:])
		size, op := lenOp&^opMask, lenOp&opMask
		if op == opCmd {
			id := binary.LittleEndian.Uint16(e[entCmdID:])
			c := k.pending[id]
			if c == nil {
				k.broken = fmt.Errorf("fake kernel: cmd_id %d not found, ring is broken", id)
				break
			}
			delete(k.pending, id)
			c.uflags = e[entUFlags]
			c.status = e[rspStatus]
			c.sense = append([]byte(nil), e[rspSense:rspSense+senseSize]...)
			c.readLen = binary.LittleEndian.Uint32(e[rspReadLen:])
			if c.inLen > 0 {
				for _, v := range c.iovs {
					c.data = append(c.data, k.mm[v.off:v.off+v.len]...)
				}
				if c.uflags&uflagReadLen != 0 && c.readLen != 0 && int(c.readLen) < len(c.data) {
					c.data = c.data[:c.readLen]
				}
			}
			for _, b := range c.blocks {
				k.free[b] = true
			}
			done = append(done, c)
		}
		k.lastCleaned = (k.lastCleaned + size) % k.cmdrSize
	}
	return done
}

// fakePort is the UIO file of a fakeKernel: irq wakes the ring loop, kicks
// counts completions announced.
type fakePort struct {
	irq      chan struct{}
	stopped  chan struct{}
	kicks    chan struct{}
	stopOnce sync.Once
}

func newFakePort() *fakePort {
	return &fakePort{irq: make(chan struct{}, 1), stopped: make(chan struct{}), kicks: make(chan struct{}, 1<<16)}
}

func (p *fakePort) interrupt() {
	select {
	case p.irq <- struct{}{}:
	default:
	}
}

func (p *fakePort) wait() (bool, error) {
	select {
	case <-p.irq:
		return false, nil
	case <-p.stopped:
		return true, nil
	}
}

func (p *fakePort) kick() error {
	select {
	case p.kicks <- struct{}{}:
	default:
	}
	return nil
}

func (p *fakePort) stop()        { p.stopOnce.Do(func() { close(p.stopped) }) }
func (p *fakePort) close() error { return nil }
