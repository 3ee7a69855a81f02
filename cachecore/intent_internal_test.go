package cachecore

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/internal/testkit"
	"github.com/cachelun/cachelun/persist"
)

const (
	killWriters = 4 // runWriters' goroutines
	killBlock   = 4096
	killDevSize = 64 << 20
	killSegs    = 96
)

// killRig runs a cache with an intent log and takes process-kill images of
// it: the cache file with every write that reached it (persisted or not,
// as the page cache keeps them), the intent log, and the backing device,
// all at one instant.
type killRig struct {
	t      testing.TB
	boot   [16]byte
	media  *persist.CrashMedia
	intent []byte
	cache  *Cache
	dev    *backend.Memory
	vol    *Volume
}

var killVolConfig = VolumeConfig{Mode: ModeWriteback, BlockSize: 512}

func newKillRig(t testing.TB) *killRig {
	t.Helper()
	r := &killRig{t: t, boot: [16]byte{0xb0, 0x07}}
	r.media = persist.NewCrashMedia(persist.SegmentsOffset+killSegs*itSegSize, persist.TearDAX)
	st, err := persist.Format(r.media, persist.FormatOptions{SegmentSize: itSegSize})
	if err != nil {
		t.Fatal(err)
	}
	r.intent = make([]byte, IntentLogSize)
	r.dev = backend.NewMemory(killDevSize)
	r.open(st, r.intent, r.boot, r.dev)
	return r
}

// open opens a cache on st with an intent log over mem (nil: none).
func (r *killRig) open(st *persist.Store, mem []byte, boot [16]byte, dev *backend.Memory) {
	r.t.Helper()
	// Ksets stay open: only FUA, flushes and full ksets journal keys.
	cfg := Config{JournalFlushInterval: time.Hour}
	var c *Cache
	var err error
	if mem != nil {
		il, ierr := NewIntentLogMemory(mem, boot)
		if ierr != nil {
			r.t.Fatal(ierr)
		}
		c, err = OpenWithIntent(context.Background(), st, cfg, il)
	} else {
		c, err = Open(context.Background(), st, cfg)
	}
	if err != nil {
		r.t.Fatal(err)
	}
	v, err := c.AddVolume(context.Background(), "v", dev, killVolConfig)
	if err != nil {
		r.t.Fatal(err)
	}
	r.cache, r.vol, r.dev = c, v, dev
	r.t.Cleanup(func() { c.Close(context.Background()) })
}

// killImage is what a process kill leaves behind.
type killImage struct {
	media  []byte
	intent []byte
	dev    *backend.Memory
}

// kill takes the image at one instant: no key is appended and no kset
// closed while it is copied (every slot's mutex is held), which is what a
// SIGKILL between two instructions leaves. Commits in flight may land in
// the copy of the cache file or not; both are states a kill can leave.
func (r *killRig) kill() killImage {
	c := r.cache
	for i := range c.slots {
		c.slots[i].mu.Lock()
	}
	img := killImage{intent: snapshotIntent(r.intent), media: r.media.Bytes(), dev: r.dev.Clone()}
	for i := range c.slots {
		c.slots[i].mu.Unlock()
	}
	return img
}

// snapshotIntent copies an intent log in use: the journaled counters are
// updated by commits without the slot mutexes, so they are read
// atomically; entries are written under the slot mutexes the caller holds.
func snapshotIntent(mem []byte) []byte {
	out := make([]byte, len(mem))
	copy(out[:intentSlotHdrOff], mem[:intentSlotHdrOff])
	for off := intentSlotHdrOff; off < intentEntriesOff; off += 8 {
		binary.LittleEndian.PutUint64(out[off:], atomic.LoadUint64((*uint64)(unsafe.Pointer(&mem[off]))))
	}
	copy(out[intentEntriesOff:], mem[intentEntriesOff:])
	return out
}

// restart opens the image (with the intent log from boot, or without it if
// boot is nil) on fresh copies.
func (r *killRig) restart(img killImage, boot *[16]byte) {
	r.t.Helper()
	r.media = persist.NewCrashMediaFrom(img.media, persist.TearDAX)
	st, err := persist.Open(r.media)
	if err != nil {
		r.t.Fatal(err)
	}
	r.intent = nil
	if boot != nil {
		r.intent = bytes.Clone(img.intent)
		r.open(st, r.intent, *boot, img.dev.Clone())
		return
	}
	r.open(st, nil, r.boot, img.dev.Clone())
}

func blockData(block, version int) []byte {
	b := make([]byte, killBlock)
	for i := 0; i < killBlock; i += 16 {
		binary.LittleEndian.PutUint64(b[i:], uint64(block))
		binary.LittleEndian.PutUint64(b[i+8:], uint64(version))
	}
	return b
}

func versionOf(t *testing.T, block int, b []byte) int {
	t.Helper()
	if bytes.Equal(b, make([]byte, len(b))) {
		return 0
	}
	v := int(binary.LittleEndian.Uint64(b[8:]))
	if !bytes.Equal(b, blockData(block, v)) {
		t.Fatalf("block %d holds bytes nobody wrote to it: %x...", block, b[:32])
	}
	return v
}

// writeHistory tracks, per block, each write's version and when it started
// and ended on a global clock of events. Each block has one writer.
type writeHistory struct {
	clock atomic.Int64
	mu    sync.Mutex
	ops   map[int][]histOp
	// quiet makes runWriters' writers stop flushing and issuing FUA
	// writes; quietWrites counts, per writer, the writes acknowledged
	// since it saw quiet set.
	quiet       atomic.Bool
	quietWrites [killWriters]atomic.Int64
}

// waitQuiet sets quiet and waits until every writer has had n writes
// acknowledged since: those are in open ksets only (nothing flushes them),
// so a kill now leaves acknowledged writes that only the intent log holds.
func (h *writeHistory) waitQuiet(t *testing.T, n int64) {
	t.Helper()
	h.quiet.Store(true)
	testkit.WaitFor(t, 10*time.Second, "the writers' progress after going quiet", func() bool {
		for w := range h.quietWrites {
			if h.quietWrites[w].Load() < n {
				return false
			}
		}
		return true
	})
}

type histOp struct {
	version    int
	start, end int64
}

func (h *writeHistory) add(block int, op histOp) {
	h.mu.Lock()
	h.ops[block] = append(h.ops[block], op)
	h.mu.Unlock()
}

// allowed returns the versions block may hold after a kill whose image was
// taken between events t0 and t1: the last write acknowledged before t0
// (0 if none), or a write in flight during the image.
func (h *writeHistory) allowed(block int, t0, t1 int64) (last int, ok map[int]bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ok = map[int]bool{}
	for _, op := range h.ops[block] {
		if op.end < t0 {
			last = op.version
		} else if op.start < t1 {
			ok[op.version] = true
		}
	}
	ok[last] = true
	return last, ok
}

// runWriters writes versioned blocks from 4 goroutines (block b belongs to
// goroutine b%4), some with FUA, and flushes now and then, until stop.
func runWriters(t testing.TB, v *Volume, h *writeHistory, seed uint64, stop <-chan struct{}, maxOps int) *sync.WaitGroup {
	var wg sync.WaitGroup
	const writers = killWriters
	nBlocks := killDevSize / killBlock
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			version := make(map[int]int)
			for i := 0; i < maxOps; i++ {
				select {
				case <-stop:
					return
				default:
				}
				quiet := h.quiet.Load()
				if rng.IntN(100) == 0 && !quiet {
					if err := v.Flush(context.Background()); err != nil {
						t.Error(err)
						return
					}
					continue
				}
				block := rng.IntN(nBlocks/writers)*writers + w
				version[block]++
				ver := version[block]
				op := histOp{version: ver, start: h.clock.Add(1)}
				if err := v.WriteAt(context.Background(), blockData(block, ver), int64(block)*killBlock, rng.IntN(30) == 0 && !quiet); err != nil {
					t.Error(err)
					return
				}
				op.end = h.clock.Add(1)
				h.add(block, op)
				if quiet {
					h.quietWrites[w].Add(1)
				}
			}
		}()
	}
	return &wg
}

// checkAfterKill reads every block written and checks it against the
// history: it returns how many blocks hold an older version than the last
// acknowledged one (lost writes).
func checkAfterKill(t *testing.T, v *Volume, h *writeHistory, t0, t1 int64) (lost int) {
	t.Helper()
	buf := make([]byte, killBlock)
	h.mu.Lock()
	blocks := make([]int, 0, len(h.ops))
	for b := range h.ops {
		blocks = append(blocks, b)
	}
	h.mu.Unlock()
	for _, b := range blocks {
		if err := v.ReadAt(context.Background(), buf, int64(b)*killBlock); err != nil {
			t.Fatal(err)
		}
		got := versionOf(t, b, buf)
		last, ok := h.allowed(b, t0, t1)
		if !ok[got] {
			if got < last {
				lost++
				continue
			}
			t.Fatalf("block %d holds version %d; allowed %v", b, got, ok)
		}
	}
	return lost
}

// TestIntentLogProcessKill kills the process (takes an instantaneous image
// of the cache file, intent log and backing device) while writers and
// flushes run, restarts on the image, and checks that no acknowledged write
// was lost; then that the recovered writes were journaled durably (a power
// cut right after the restart keeps them); and, as a control, that the
// same image restarted as after a reboot (the intent log is ignored) does
// lose acknowledged writes, so the check can fail.
func TestIntentLogProcessKill(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			r := newKillRig(t)
			h := &writeHistory{ops: map[int][]histOp{}}
			stop := make(chan struct{})
			// The writers run until the kill (stop), bounded by count.
			wg := runWriters(t, r.vol, h, seed, stop, 1<<20)
			time.Sleep(time.Duration(5+seed*10) * time.Millisecond)
			// The writers keep running through the kill, but without
			// FUA or flushes for their last writes, so that the control
			// below can tell: some acknowledged writes are only in open
			// ksets, recorded in the intent log alone.
			h.waitQuiet(t, 2)
			t0 := h.clock.Add(1)
			img := r.kill()
			t1 := h.clock.Add(1)
			close(stop)
			wg.Wait()
			if t.Failed() {
				return
			}

			r.restart(img, &r.boot)
			recovered := r.cache.stats.intentRecovered.Load()
			if lost := checkAfterKill(t, r.vol, h, t0, t1); lost != 0 {
				t.Fatalf("%d blocks lost acknowledged writes after a process kill (recovered %d keys)", lost, recovered)
			}
			if recovered == 0 {
				t.Fatalf("nothing was recovered from the intent log: the kill left no unjournaled write (adjust the workload)")
			}
			// Killed again right after the recovery, before anything
			// flushed: the recovered keys were recorded again in the new
			// session's intent log.
			again := r.kill()
			r.restart(again, &r.boot)
			if lost := checkAfterKill(t, r.vol, h, t0, t1); lost != 0 {
				t.Fatalf("%d blocks lost after a second kill right after recovery", lost)
			}
			// The host's next SYNCHRONIZE CACHE makes the recovered keys
			// durable: a power cut after it (only persisted bytes
			// survive), restarted without an intent log, still reads
			// them.
			if err := r.vol.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			power := r.media.CrashImage(r.media.PersistPoints(), nil)
			st, err := persist.Open(power)
			if err != nil {
				t.Fatal(err)
			}
			r.media = power
			r.open(st, nil, r.boot, r.dev.Clone())
			if lost := checkAfterKill(t, r.vol, h, t0, t1); lost != 0 {
				t.Fatalf("%d blocks lost after a power cut that followed the recovery: recovered keys were not made durable", lost)
			}

			// Control: after a reboot the intent log is not trusted.
			other := [16]byte{0xee}
			r.restart(img, &other)
			if got := r.cache.stats.intentRecovered.Load(); got != 0 {
				t.Fatalf("recovered %d keys from an intent log of another boot", got)
			}
			if lost := checkAfterKill(t, r.vol, h, t0, t1); lost == 0 {
				t.Fatalf("control: without the intent log no acknowledged write was lost; the test cannot tell")
			}
		})
	}
}

// TestIntentLogRefusals: an intent log of another cache file, a torn
// header or a corrupt entry is never applied; the refusal says why.
func TestIntentLogRefusals(t *testing.T) {
	r := newKillRig(t)
	h := &writeHistory{ops: map[int][]histOp{}}
	stop := make(chan struct{})
	runWriters(t, r.vol, h, 7, stop, 60).Wait()
	img := r.kill()

	st, err := persist.Open(persist.NewCrashMediaFrom(img.media, persist.TearDAX))
	if err != nil {
		t.Fatal(err)
	}
	il, err := NewIntentLogMemory(bytes.Clone(img.intent), r.boot)
	if err != nil {
		t.Fatal(err)
	}
	keys, why := il.recover(st, r.cache.log)
	if why != nil || len(keys) == 0 {
		t.Fatalf("intact log: %d keys, %v", len(keys), why)
	}

	cases := []struct {
		name   string
		mutate func(b []byte)
		want   string
	}{
		{"uuid", func(b []byte) { b[30] ^= 1; fixHeaderCRC(b) }, "another cache file"},
		{"header crc", func(b []byte) { b[57] ^= 1 }, "header CRC"},
		{"fresh", func(b []byte) { clear(b[:8]) }, "fresh"},
		{"version", func(b []byte) { b[8] = 9; fixHeaderCRC(b) }, "version"},
	}
	for _, tc := range cases {
		b := bytes.Clone(img.intent)
		tc.mutate(b)
		il, _ := NewIntentLogMemory(b, r.boot)
		keys, why := il.recover(st, r.cache.log)
		if why == nil || len(keys) != 0 || !bytes.Contains([]byte(why.Error()), []byte(tc.want)) {
			t.Errorf("%s: %d keys, reason %v; want refusal naming %q", tc.name, len(keys), why, tc.want)
		}
	}

	// A flipped bit in an entry fails its CRC: the slot's recovery stops
	// at that record (a gap), it never applies a corrupt key.
	b := bytes.Clone(img.intent)
	first := keys[0]
	off := entryOff(first.slot, first.seq)
	b[off+30] ^= 0x40
	il, _ = NewIntentLogMemory(b, r.boot)
	got, why := il.recover(st, r.cache.log)
	if why != nil {
		t.Fatal(why)
	}
	for _, k := range got {
		if k.slot == first.slot {
			t.Fatalf("slot %d: recovered sequence %d past a corrupt record", k.slot, k.seq)
		}
	}
}

func fixHeaderCRC(b []byte) {
	binary.LittleEndian.PutUint32(b[64:], crc32.Checksum(b[:intentHeaderCRCEnd], castagnoli))
}

// FuzzIntentLogRecover feeds arbitrary bytes as the header, the journaled
// counters and the first entries of slot 0 of an intent log (the rest is a
// valid log of a real run) to recover: it must never panic, and whatever it
// returns must be keys valid for the store, in order, consecutive per slot
// after that slot's journaled count.
func FuzzIntentLogRecover(f *testing.F) {
	r := newKillRig(f)
	h := &writeHistory{ops: map[int][]histOp{}}
	runWriters(f, r.vol, h, 3, make(chan struct{}), 40).Wait()
	img := r.kill()
	st, err := persist.Open(persist.NewCrashMediaFrom(img.media, persist.TearDAX))
	if err != nil {
		f.Fatal(err)
	}
	const slot0 = intentEntriesOff
	seed := append(append(bytes.Clone(img.intent[:72]), img.intent[intentSlotHdrOff:intentSlotHdrOff+16]...), img.intent[slot0:slot0+4*intentEntrySize]...)
	f.Add(seed)
	f.Add([]byte{})
	f.Add(bytes.Clone(img.intent[:72]))
	f.Fuzz(func(t *testing.T, data []byte) {
		mem := bytes.Clone(img.intent)
		n := copy(mem[:72], data)
		data = data[n:]
		n = copy(mem[intentSlotHdrOff:intentSlotHdrOff+16], data)
		data = data[n:]
		copy(mem[slot0:slot0+64*intentEntrySize], data)
		il, err := NewIntentLogMemory(mem, r.boot)
		if err != nil {
			t.Fatal(err)
		}
		keys, why := il.recover(st, r.cache.log)
		if why != nil && len(keys) != 0 {
			t.Fatalf("refused (%v) but returned %d keys", why, len(keys))
		}
		next := map[int]uint64{}
		var lastEpoch uint64
		for i, k := range keys {
			if _, err := st.DecodeKey(encodeForTest(&k.key)); err != nil {
				t.Fatalf("key %d invalid for the store: %v", i, err)
			}
			if k.epoch < lastEpoch {
				t.Fatalf("key %d: epoch %d after %d", i, k.epoch, lastEpoch)
			}
			lastEpoch = k.epoch
			want, seen := next[k.slot]
			if !seen {
				want = il.journaled(k.slot) + 1
			}
			if k.seq != want {
				t.Fatalf("slot %d: sequence %d, want %d", k.slot, k.seq, want)
			}
			next[k.slot] = k.seq + 1
		}
	})
}

func encodeForTest(k *persist.Key) []byte {
	b := make([]byte, persist.KeySize)
	persist.EncodeKey(b, k)
	return b
}

// TestIntentKeysAlreadyJournaledAreNotAppendedAgain: a process killed
// after a kset became durable but before its slot's journaled counter was
// raised leaves keys both in the log and, by the counter, unjournaled.
// Recovery must not append them again: a second key with the same data
// made GC, passing the first, evict the extent both share before
// writeback had written it, so reads returned the backing device's older
// data (TestIntentLogProcessKill lost blocks this way, about once in 30
// runs).
func TestIntentKeysAlreadyJournaledAreNotAppendedAgain(t *testing.T) {
	r := newKillRig(t)
	ctx := context.Background()
	const blocks = 64
	for b := range blocks {
		if err := r.vol.WriteAt(ctx, blockData(b, 1), int64(b)*killBlock, true); err != nil {
			t.Fatal(err)
		}
	}
	img := r.kill()
	// The counters lag: every key recorded looks unjournaled.
	for slot := range ksetSlots {
		binary.LittleEndian.PutUint64(img.intent[slotHdrOff(slot):], 0)
	}
	r.restart(img, &r.boot)
	if got := r.cache.stats.intentRecovered.Load(); got != 0 {
		t.Fatalf("recovered %d keys that the log already holds", got)
	}
	// Write everything back and let GC pass the whole log: every block
	// still reads its data.
	if err := r.vol.Drain(ctx, nil); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, killBlock)
	for b := range blocks {
		if err := r.vol.ReadAt(ctx, buf, int64(b)*killBlock); err != nil {
			t.Fatal(err)
		}
		if v := versionOf(t, b, buf); v != 1 {
			t.Fatalf("block %d reads version %d after recovery and writeback", b, v)
		}
	}
	// CheckInvariants wants a quiescent cache: writeback and GC may still
	// run after the reads.
	if err := r.cache.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.cache.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}

// TestIntentAtomicGroupWholeOrNothing: the intent records of an atomic
// write (a group) are recovered whole after a process kill, or, when the
// kill tore them, not at all, where plain records would be recovered up to
// the tear.
func TestIntentAtomicGroupWholeOrNothing(t *testing.T) {
	for _, torn := range []bool{false, true} {
		t.Run(fmt.Sprintf("torn=%v", torn), func(t *testing.T) {
			r := newKillRig(t)
			ctx := context.Background()
			// A durable write first, so that the three below find a data
			// head with room and stay in one open kset (a head taking a
			// segment closes the ksets opened before it).
			if err := r.vol.WriteAt(ctx, blockData(3, 1), 3*killBlock, true); err != nil {
				t.Fatal(err)
			}
			for b := range 3 {
				if err := r.vol.WriteAt(ctx, blockData(b, 1), int64(b)*killBlock, false); err != nil {
					t.Fatal(err)
				}
			}
			img := r.kill()
			slot := slotFor(r.vol.st.id, 0)
			done := binary.LittleEndian.Uint64(img.intent[slotHdrOff(slot):])
			// Make the three records one group, as appendGroup writes it.
			for j := range 3 {
				e := img.intent[entryOff(slot, done+1+uint64(j)):][:intentEntrySize]
				if binary.LittleEndian.Uint64(e) != done+1+uint64(j) {
					t.Fatalf("record %d of slot %d not where expected", j, slot)
				}
				binary.LittleEndian.PutUint32(e[68:], uint32(2-j))
				if j < 2 {
					binary.LittleEndian.PutUint32(e[72:], crc32.Checksum(e[:72], castagnoli))
				}
				if torn && j == 2 {
					e[64] ^= 0xff // the last record did not make it whole
				}
			}
			r.restart(img, &r.boot)
			buf := make([]byte, killBlock)
			for b := range 3 {
				if err := r.vol.ReadAt(ctx, buf, int64(b)*killBlock); err != nil {
					t.Fatal(err)
				}
				want := 1
				if torn {
					want = 0
				}
				if v := versionOf(t, b, buf); v != want {
					t.Fatalf("block %d reads version %d, want %d", b, v, want)
				}
			}
			// CheckInvariants wants a quiescent cache: the recovered keys'
			// commits and writeback may still run.
			if err := r.cache.Close(ctx); err != nil {
				t.Fatal(err)
			}
			if err := r.cache.CheckInvariants(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
