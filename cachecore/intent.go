package cachecore

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cachelun/cachelun/internal/flock"
	"github.com/cachelun/cachelun/persist"
)

// IntentLog keeps every key appended to an open kset, before the write it
// belongs to is acknowledged, in memory that outlives the process but not
// the machine: a file on tmpfs (or any file, see below) mapped shared.
//
// Why: a write is acknowledged once its data is in the cache file and its
// key is in an open kset (C1). The data was written with pwrite (or
// into a DAX mapping), so a killed process leaves it in the page cache, but
// the open kset lived only in the process. Without the intent log a daemon
// crash reverts acknowledged writes; the host, reconnected to the restarted
// daemon, then gets GOOD for its next SYNCHRONIZE CACHE although writes it
// sent before were lost, and a database believes its log is durable. With
// it, Open after a process crash finds the keys that were acknowledged but
// not yet journaled, verifies them, serves them and journals them again:
// a daemon crash loses no acknowledged write.
//
// Why it is safe: the record names the boot it was written in
// (/proc/sys/kernel/random/boot_id). Within one boot the page cache is
// coherent, so the data a recovered key points at is exactly what the dead
// process wrote, even if none of it reached the disk yet. After a reboot
// (power cut, kernel crash) the data may not be on the disk, so the records
// are ignored and C5 applies (unjournaled writes may revert), as for
// a disk that loses its volatile cache. The file may therefore live anywhere;
// tmpfs (/run) avoids writing it back to a disk for nothing.
//
// Ownership: OpenIntentFile claims the file (internal/flock, exclusive)
// before it reads, resizes or maps it, and holds the claim until Close. A
// file another process holds (the owner of the cache file, or of a copy of
// it with the same UUID) is refused with its pid and left untouched; only
// the holder removes it, after a clean Close and before the claim ends.
//
// Layout (little-endian), fixed size intentFileSize:
//
//	0      [8]  magic "clunINTL"
//	8      u32  version (1)
//	12     u32  slots (16)      16 u32 entries per slot   20 u32 entry size (80)
//	24     [16] cache UUID      40 [16] boot id
//	56     u64  session nonce (random per Open)
//	64     u32  CRC32C of bytes [0, 64)
//	4096   per slot, 64 bytes: u64 keys journaled (all keys with seq <= it
//	       are durable in the cache file), u64 overflow flag
//	8192   per slot, a ring of entries; entry seq s is at index s % entries:
//	       0 u64 seq (1-based, per slot)   8 u64 session nonce
//	       16 u64 flush epoch   24 [40] key (persist key image)
//	       64 u32 CRC32C of bytes [0, 64)
//	       68 u32 group: keys of the same atomic write that follow (0: none)
//	       72 u32 CRC32C of bytes [0, 72) when group is not 0, else 0
//	       76 [4] zero
//
// The group field (in bytes that version 1 left zero, so a record without
// a group reads the same) marks the keys of one atomic write: recovery
// applies such a run of records whole or not at all.
//
// Concurrency: entries of a slot are written under that slot's mutex; the
// journaled counter is an atomic maximum. Recovery runs in Open, alone.
type IntentLog struct {
	mem    []byte
	unmap  func() error
	bootID [16]byte
	path   string
	file   bool // path names a file (removed after a clean Close)
	// claim is the open, claimed file (nil for memory logs); closing it
	// ends the claim.
	claim *os.File

	nonce     uint64
	overflows atomic.Uint64
}

const (
	intentMagic        = "clunINTL"
	intentVersion      = 1
	intentSlotEntries  = 8192
	intentEntrySize    = 80
	intentSlotHdrOff   = 4096
	intentSlotHdrSize  = 64
	intentEntriesOff   = 8192
	intentFileSize     = intentEntriesOff + ksetSlots*intentSlotEntries*intentEntrySize
	intentHeaderCRCEnd = 64
)

// ErrIntentLog is wrapped by errors opening an intent log.
var ErrIntentLog = errors.New("cachecore: intent log")

// OpenIntentFile maps the intent log at path, creating it (mode 0600) if
// needed. Its contents are recovered by OpenWithIntent.
func OpenIntentFile(path string) (*IntentLog, error) {
	boot, err := currentBootID()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrIntentLog, err)
	}
	f, err := flock.OpenLocked(path, os.O_RDWR|os.O_CREATE, 0o600, flock.Exclusive, "intent log")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrIntentLog, err)
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
		}
	}()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrIntentLog, err)
	}
	if fi.Size() != intentFileSize {
		// A file of another size is not ours (or a version with another
		// geometry): start over.
		if err := f.Truncate(0); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrIntentLog, path, err)
		}
		if err := f.Truncate(intentFileSize); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrIntentLog, path, err)
		}
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, intentFileSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("%w: mmap %s: %v", ErrIntentLog, path, err)
	}
	ok = true
	return &IntentLog{mem: mem, unmap: func() error { return unix.Munmap(mem) }, bootID: boot, path: path, file: true, claim: f}, nil
}

// NewIntentLogMemory returns an intent log over mem (IntentLogSize bytes,
// owned by the caller), as written in boot bootID. Tests use it to model a
// process crash (copy mem) and a reboot (another boot id).
func NewIntentLogMemory(mem []byte, bootID [16]byte) (*IntentLog, error) {
	if len(mem) != intentFileSize {
		return nil, fmt.Errorf("%w: %d bytes, want %d", ErrIntentLog, len(mem), intentFileSize)
	}
	return &IntentLog{mem: mem, bootID: bootID, path: "memory"}, nil
}

// IntentLogSize is the size of an intent log.
const IntentLogSize = intentFileSize

// Close unmaps the log and ends the claim on its file. The Cache that owns
// it closes it.
func (l *IntentLog) Close() error {
	return l.close(false)
}

// closeClean is Close after a clean shutdown of the cache: every key is
// journaled, so the file is removed (on tmpfs it holds memory), while the
// claim still holds: a file this log does not hold is never removed.
func (l *IntentLog) closeClean() error {
	return l.close(true)
}

func (l *IntentLog) close(remove bool) error {
	if l == nil {
		return nil
	}
	var err error
	if l.unmap != nil {
		u := l.unmap
		l.unmap = nil
		err = u()
	}
	if l.claim == nil {
		return err
	}
	if remove && l.file {
		if rerr := os.Remove(l.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
			err = rerr
		}
	}
	if cerr := l.claim.Close(); cerr != nil && err == nil {
		err = cerr
	}
	l.claim = nil
	return err
}

func currentBootID() ([16]byte, error) {
	var id [16]byte
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return id, fmt.Errorf("boot id: %v", err)
	}
	h, err := hex.DecodeString(strings.ReplaceAll(strings.TrimSpace(string(b)), "-", ""))
	if err != nil || len(h) != 16 {
		return id, fmt.Errorf("boot id %q: not a UUID", strings.TrimSpace(string(b)))
	}
	copy(id[:], h)
	return id, nil
}

func (l *IntentLog) u64(off int) *uint64 {
	return (*uint64)(unsafe.Pointer(&l.mem[off]))
}

func slotHdrOff(slot int) int { return intentSlotHdrOff + slot*intentSlotHdrSize }

func entryOff(slot int, seq uint64) int {
	return intentEntriesOff + (slot*intentSlotEntries+int(seq%intentSlotEntries))*intentEntrySize
}

// journaled returns how many keys of slot are durable in the cache file.
func (l *IntentLog) journaled(slot int) uint64 {
	return atomic.LoadUint64(l.u64(slotHdrOff(slot)))
}

// setJournaled records that keys up to seq of slot are durable.
func (l *IntentLog) setJournaled(slot int, seq uint64) {
	p := l.u64(slotHdrOff(slot))
	for {
		cur := atomic.LoadUint64(p)
		if cur >= seq || atomic.CompareAndSwapUint64(p, cur, seq) {
			return
		}
	}
}

// record writes key k (the seq-th key appended to slot, of flush epoch
// epoch), followed by groupLeft more keys of its atomic write. The slot's
// mutex is held.
func (l *IntentLog) record(slot int, seq, epoch uint64, k *persist.Key, groupLeft uint32) {
	if seq-l.journaled(slot) > intentSlotEntries {
		// The ring wraps onto a key that is not journaled yet: recovery
		// of this slot is incomplete from now on. The ring holds 8192
		// keys per slot; only a journal stalled far longer than writes
		// can continue gets here.
		if atomic.LoadUint64(l.u64(slotHdrOff(slot)+8)) == 0 {
			atomic.StoreUint64(l.u64(slotHdrOff(slot)+8), 1)
		}
		l.overflows.Add(1)
	}
	e := l.mem[entryOff(slot, seq):][:intentEntrySize]
	binary.LittleEndian.PutUint64(e[0:], seq)
	binary.LittleEndian.PutUint64(e[8:], l.nonce)
	binary.LittleEndian.PutUint64(e[16:], epoch)
	persist.EncodeKey(e[24:64], k)
	binary.LittleEndian.PutUint32(e[64:], crc32.Checksum(e[:64], castagnoli))
	// The ring slot may hold a group record of an earlier lap: always
	// rewrite the group fields.
	binary.LittleEndian.PutUint32(e[68:], groupLeft)
	var gsum uint32
	if groupLeft != 0 {
		gsum = crc32.Checksum(e[:72], castagnoli)
	}
	binary.LittleEndian.PutUint32(e[72:], gsum)
}

// intentKey is a key recovered from the intent log.
type intentKey struct {
	slot  int
	seq   uint64
	epoch uint64
	key   persist.Key
	left  uint32 // keys of its atomic write that follow it
}

// recover returns the keys of the previous session that were appended but
// not journaled, in the order they must be journaled again (flush epoch,
// then slot, then sequence), or nil with the reason there is nothing to
// recover. It never writes.
func (l *IntentLog) recover(store *persist.Store, log *slog.Logger) ([]intentKey, error) {
	h := l.mem[:intentSlotHdrOff]
	if string(h[0:8]) != intentMagic {
		return nil, errors.New("no intent log (fresh file)")
	}
	if got := binary.LittleEndian.Uint32(h[64:]); got != crc32.Checksum(h[:intentHeaderCRCEnd], castagnoli) {
		return nil, errors.New("header CRC mismatch")
	}
	if v := binary.LittleEndian.Uint32(h[8:]); v != intentVersion {
		return nil, fmt.Errorf("version %d, want %d", v, intentVersion)
	}
	if binary.LittleEndian.Uint32(h[12:]) != ksetSlots || binary.LittleEndian.Uint32(h[16:]) != intentSlotEntries ||
		binary.LittleEndian.Uint32(h[20:]) != intentEntrySize {
		return nil, errors.New("geometry differs")
	}
	uuid := store.Superblock().UUID
	if !bytes.Equal(h[24:40], uuid[:]) {
		return nil, errors.New("written for another cache file (UUID differs)")
	}
	if !bytes.Equal(h[40:56], l.bootID[:]) {
		return nil, errors.New("written before a reboot: unjournaled writes may not have reached the disk, so they are not recovered")
	}
	nonce := binary.LittleEndian.Uint64(h[56:])
	var out []intentKey
	for slot := range ksetSlots {
		done := l.journaled(slot)
		if atomic.LoadUint64(l.u64(slotHdrOff(slot)+8)) != 0 {
			log.Error("intent log ring of a kset slot overflowed: some writes acknowledged before the crash may be lost", "slot", slot)
		}
		var found []intentKey
		for i := range intentSlotEntries {
			e := l.mem[intentEntriesOff+(slot*intentSlotEntries+i)*intentEntrySize:][:intentEntrySize]
			seq := binary.LittleEndian.Uint64(e[0:])
			if seq <= done || binary.LittleEndian.Uint64(e[8:]) != nonce ||
				binary.LittleEndian.Uint32(e[64:]) != crc32.Checksum(e[:64], castagnoli) {
				continue
			}
			if int(seq%intentSlotEntries) != i {
				return nil, fmt.Errorf("slot %d entry %d holds sequence %d (corrupt)", slot, i, seq)
			}
			left := binary.LittleEndian.Uint32(e[68:])
			if left != 0 && binary.LittleEndian.Uint32(e[72:]) != crc32.Checksum(e[:72], castagnoli) {
				continue // torn while being written: a gap
			}
			k, err := store.DecodeKey(e[24:64])
			if err != nil {
				return nil, fmt.Errorf("slot %d sequence %d: %w", slot, seq, err)
			}
			found = append(found, intentKey{slot: slot, seq: seq, epoch: binary.LittleEndian.Uint64(e[16:]), key: k, left: left})
		}
		slices.SortFunc(found, func(a, b intentKey) int { return cmpU64(a.seq, b.seq) })
		// Keys are appended with consecutive sequence numbers; a gap is a
		// record torn by the crash (its write was not acknowledged), and
		// nothing after it can be (its slot mutex was not released).
		want := done + 1
		var epoch uint64
		for i, k := range found {
			if k.seq != want {
				log.Warn("intent log: gap in a slot's sequence: later records ignored", "slot", slot, "expected", want, "found", k.seq)
				break
			}
			if k.left != 0 && !wholeGroup(found[i:]) {
				// The crash came while the keys of an atomic write were
				// being recorded: it was not acknowledged, and none of
				// it may appear.
				log.Warn("intent log: an atomic write's records are incomplete: it and later records ignored", "slot", slot, "sequence", k.seq)
				break
			}
			if k.epoch < epoch {
				// A slot's keys are appended in epoch order; anything else
				// is corruption, and applying it could reorder a block's
				// writes.
				log.Error("intent log: flush epoch goes back within a slot: later records ignored", "slot", slot, "sequence", k.seq)
				break
			}
			epoch = k.epoch
			out = append(out, k)
			want++
		}
	}
	slices.SortStableFunc(out, func(a, b intentKey) int {
		if c := cmpU64(a.epoch, b.epoch); c != 0 {
			return c
		}
		if a.slot != b.slot {
			return a.slot - b.slot
		}
		return cmpU64(a.seq, b.seq)
	})
	return out, nil
}

// wholeGroup reports whether found (sorted by sequence) starts with a
// complete group: consecutive records counting down to a last one with
// nothing left.
func wholeGroup(found []intentKey) bool {
	first := found[0]
	if uint64(len(found)) <= uint64(first.left) {
		return false
	}
	for j := uint32(1); j <= first.left; j++ {
		k := found[j]
		if k.seq != first.seq+uint64(j) || k.left != first.left-j || k.epoch != first.epoch {
			return false
		}
	}
	return true
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// reset starts a new session: everything recorded before is journaled or
// given up. The counters are cleared before the header names the new
// nonce, so a crash in between leaves either the old session (recovered
// again, which is idempotent because nothing was written since) or the new
// one.
func (l *IntentLog) reset(uuid [16]byte) {
	for slot := range ksetSlots {
		atomic.StoreUint64(l.u64(slotHdrOff(slot)), 0)
		atomic.StoreUint64(l.u64(slotHdrOff(slot)+8), 0)
	}
	var nb [8]byte
	for l.nonce == 0 {
		_, _ = rand.Read(nb[:])
		l.nonce = binary.LittleEndian.Uint64(nb[:])
	}
	h := l.mem[:intentSlotHdrOff]
	clear(h[:intentHeaderCRCEnd+4])
	copy(h[0:8], intentMagic)
	binary.LittleEndian.PutUint32(h[8:], intentVersion)
	binary.LittleEndian.PutUint32(h[12:], ksetSlots)
	binary.LittleEndian.PutUint32(h[16:], intentSlotEntries)
	binary.LittleEndian.PutUint32(h[20:], intentEntrySize)
	copy(h[24:40], uuid[:])
	copy(h[40:56], l.bootID[:])
	binary.LittleEndian.PutUint64(h[56:], l.nonce)
	binary.LittleEndian.PutUint32(h[64:], crc32.Checksum(h[:intentHeaderCRCEnd], castagnoli))
}

// journaledFinder tells which keys recovered from the intent log are in
// the replayed log already. A slot's journaled counter is raised after
// its kset became durable, so a process killed in between leaves keys
// that are both in the log and, by the counter, not journaled. Appending
// them again would put a second key with the same data (segment, offset,
// generation) in the log: when GC passes the first one it evicts the
// index extent they share, and writeback, which wrote the first one's
// range as part of a collapsed pass, may not yet have written the data,
// so a read would return the backing device's older data. A slot journals
// its keys in sequence order, so every recovered key of a slot up to the
// highest sequence found in the log is journaled.
type journaledFinder struct {
	byData map[journaledID]int // data key identity -> index in recovered
	found  [ksetSlots]uint64   // per slot: highest sequence seen in the log
	seen   []int               // indexes of recovered keys seen in the log
}

// journaledID identifies a data key: a cache position and generation hold
// the data of one write, which keys made by CopyFrom share with other
// volumes and offsets; with the volume and its offset the identity is
// unique among the keys that may be live (see dirtyKeyID).
type journaledID struct {
	seg, off uint32
	gen      uint64
	vol      uint32
	voff     uint64
}

func journaledIDOf(k *persist.Key) journaledID {
	return journaledID{k.Pos.Seg, k.Pos.Off, k.Gen, k.Volume, k.Offset}
}

func newJournaledFinder(recovered []intentKey) *journaledFinder {
	f := &journaledFinder{byData: make(map[journaledID]int, len(recovered))}
	for i := range recovered {
		k := &recovered[i].key
		if k.Flags != persist.KeyTombstone {
			f.byData[journaledIDOf(k)] = i
		}
	}
	return f
}

// see is called for every key of the replayed log.
func (f *journaledFinder) see(k *persist.Key) {
	if len(f.byData) == 0 || k.Flags == persist.KeyTombstone {
		return
	}
	if i, ok := f.byData[journaledIDOf(k)]; ok {
		f.seen = append(f.seen, i)
	}
}

// drop returns recovered without the keys the log already holds.
func (f *journaledFinder) drop(recovered []intentKey) []intentKey {
	for _, i := range f.seen {
		k := &recovered[i]
		f.found[k.slot] = max(f.found[k.slot], k.seq)
	}
	out := recovered[:0]
	for _, k := range recovered {
		if k.seq > f.found[k.slot] {
			out = append(out, k)
		}
	}
	return out
}
