package persist

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
)

func errorsIs(err, target error) bool { return errors.Is(err, target) }

// Journal appends ksets at the log head. Commit is safe for concurrent use;
// concurrent commits share persists (group commit).
//
// Locking: flush (guards the durable LSN and the leader flag; never held
// across Persist) is taken before mu; mu guards the head and the pending
// ranges and is never held across Persist. alloc is called with mu held and
// must not call back into the Journal.
type Journal struct {
	s     *Store
	alloc func() (uint32, error)
	nonce uint64
	// padToPage: write each kset up to the next page boundary (zeros after
	// it), so that no log page is ever first written in part. On
	// pwrite-fdatasync media a write that covers part of a page the page
	// cache does not hold reads that page from the device first; packed
	// ksets would do that read, synchronously, for nearly every kset.
	padToPage bool

	mu struct {
		sync.Mutex
		head      Tail
		prevNonce uint64
		pending   []span // written, not yet persisted
		written   uint64 // highest LSN written
		err       error  // sticky: after a failed write/persist nothing is committed
	}

	flush struct {
		sync.Mutex
		cond    sync.Cond
		running bool   // a leader is persisting
		durable uint64 // highest LSN known durable
		err     error  // sticky persist failure
	}

	// durableLSN mirrors flush.durable for append, which holds mu and so
	// may not take flush. A stale value only overstates Unconfirmed.
	durableLSN atomic.Uint64

	commits atomic.Uint64
	flushes atomic.Uint64
}

type span struct{ off, n int64 }

// JournalStats counts commits and the persists (flush groups) that made
// them durable.
type JournalStats struct {
	Commits uint64
	Flushes uint64
}

// OpenJournal returns the writer at the log head. head must be the Head of
// a Replayer that walked the log to its end (or the key tail of a freshly
// formatted store); the journal continues the session chain from the record
// before it. alloc supplies a free segment when the current one is full (the
// journal writes a LAST record pointing to it); an error from alloc makes
// Commit fail with ErrJournalFull and nothing written.
func (s *Store) OpenJournal(head Tail, alloc func() (uint32, error)) *Journal {
	j := &Journal{s: s, alloc: alloc, padToPage: FlushCoversMedia(s.m)}
	var nb [8]byte
	for j.nonce == 0 {
		_, _ = rand.Read(nb[:])
		j.nonce = binary.LittleEndian.Uint64(nb[:])
	}
	hi, ok := s.headInfo(head)
	if !ok {
		// Not the end of a replay seen by this store: walk the log from
		// the key tail to learn the chain value at its end.
		r := s.ReplayVerified(s.KeyTail())
		for {
			if _, more := r.Next(); !more {
				break
			}
		}
		if hi, ok = s.headInfo(head); !ok {
			hi = headInfo{confirmed: head.LSN}
		}
	}
	j.mu.head = head
	j.mu.prevNonce = hi.nonce
	j.mu.written = head.LSN - 1
	j.flush.cond.L = &j.flush.Mutex
	j.flush.durable = head.LSN - 1
	// What the replayed log proved durable, not head.LSN-1: after a
	// process crash its tail may be in the page cache only, so the ksets
	// of this session must not confirm it until this session's first
	// persist (which covers it).
	j.durableLSN.Store(min(hi.confirmed, head.LSN) - 1)
	if err := s.checkTail(head); err != nil {
		j.mu.err = fmt.Errorf("%w: journal head: %v", ErrInvalidArgument, err)
	}
	return j
}

// Head is where the next kset will be written.
func (j *Journal) Head() Tail {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.mu.head
}

// Durable returns an LSN up to which every kset is known durable: a
// persist that covered it has returned in this session (or the replay
// that opened the journal proved it). It may lag the truth, never lead it,
// so it is what Store.SetDurableMark may be given.
func (j *Journal) Durable() uint64 { return j.durableLSN.Load() }

// Stats returns commit and flush counts.
func (j *Journal) Stats() JournalStats {
	return JournalStats{Commits: j.commits.Load(), Flushes: j.flushes.Load()}
}

// Commit writes keys (1..MaxKSetKeys, each valid for this store) as one kset
// of flush epoch epoch and returns when it and every kset before it are
// durable. If the current segment cannot hold it, Commit first writes a LAST
// record pointing to a segment from alloc.
func (j *Journal) Commit(keys []Key, epoch uint64) (KSet, error) {
	ks, err := j.Append(keys, epoch)
	if err != nil {
		return KSet{}, err
	}
	if err := j.WaitDurable(ks.LSN); err != nil {
		return KSet{}, err
	}
	return ks, nil
}

// Append is the first half of Commit: it writes the kset at the log head
// (after a LAST record if needed) and returns without waiting for it to be
// durable. Ksets appended later get higher LSNs and, being behind it in the
// log, are never durable without it. WaitDurable(ks.LSN) completes the
// commit.
func (j *Journal) Append(keys []Key, epoch uint64) (KSet, error) {
	return j.appendChecked(keys, epoch, false)
}

// AppendUnfenced is Append for keys whose data has been written but not
// persisted. It needs Store.UnfencedCommits: the persist that makes the
// kset durable (WaitDurable) then makes the data durable too, and replay
// ends the log at the first kset of the unconfirmed tail whose data did
// not reach the media (doc.go, "Unfenced ksets"). The data must have been
// written (WriteAt returned) before AppendUnfenced is called.
func (j *Journal) AppendUnfenced(keys []Key, epoch uint64) (KSet, error) {
	if !j.s.UnfencedCommits() {
		return KSet{}, fmt.Errorf("%w: unfenced kset on a store or media that does not allow them", ErrInvalidArgument)
	}
	return j.appendChecked(keys, epoch, true)
}

func (j *Journal) appendChecked(keys []Key, epoch uint64, unfenced bool) (KSet, error) {
	if len(keys) == 0 || len(keys) > MaxKSetKeys {
		return KSet{}, fmt.Errorf("%w: %d keys in a kset, want 1..%d", ErrInvalidArgument, len(keys), MaxKSetKeys)
	}
	for i := range keys {
		if err := validateKey(&keys[i], j.s.lim); err != nil {
			return KSet{}, fmt.Errorf("%w: key %d: %v", ErrInvalidArgument, i, err)
		}
	}
	return j.append(keys, epoch, unfenced)
}

// WaitDurable returns once every kset up to lsn (one Append returned) is
// durable, sharing persists with concurrent callers.
func (j *Journal) WaitDurable(lsn uint64) error {
	if err := j.waitDurable(lsn); err != nil {
		return err
	}
	j.commits.Add(1)
	return nil
}

func (j *Journal) append(keys []Key, epoch uint64, unfenced bool) (KSet, error) {
	s := j.s
	size := ksetSize(len(keys))
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.mu.err != nil {
		return KSet{}, j.mu.err
	}
	head := j.mu.head
	// Keep room for a LAST record after every kset.
	if uint64(head.Pos.Off)+uint64(size)+ksetHeaderSize > uint64(s.dataSize) {
		seg, err := j.alloc()
		if err != nil {
			return KSet{}, fmt.Errorf("%w: %w", ErrJournalFull, err)
		}
		if seg >= s.sb.SegmentCount || seg == head.Pos.Seg || s.isQuarantined(seg) {
			return KSet{}, fmt.Errorf("%w: allocator returned segment %d (count %d, current %d)", ErrInvalidArgument, seg, s.sb.SegmentCount, head.Pos.Seg)
		}
		last := make([]byte, ksetHeaderSize)
		encodeKSet(last, &ksetHeader{flags: ksetFlagLast, uuid: s.sb.UUID, lsn: head.LSN, nonce: j.nonce, prevNonce: j.mu.prevNonce, nextSeg: seg}, nil)
		off := s.DataOffset(head.Pos)
		if err := s.m.WriteAt(last, off); err != nil {
			j.mu.err = err
			return KSet{}, err
		}
		j.mu.pending = append(j.mu.pending, span{off, ksetHeaderSize})
		j.mu.prevNonce = j.nonce
		head.Pos = Pos{Seg: seg}
	}
	img := make([]byte, j.writeSize(head.Pos, size))
	h := ksetHeader{uuid: s.sb.UUID, lsn: head.LSN, epoch: epoch, nonce: j.nonce, prevNonce: j.mu.prevNonce}
	// Every kset says how far durability had got when it was written, so
	// that replay can tell the unconfirmed tail (where an unfenced kset's
	// data may be missing) from the confirmed log before it.
	if durable := j.durableLSN.Load(); durable < head.LSN {
		h.unconfirmed = uint32(min(head.LSN-1-durable, 1<<32-1))
	}
	if unfenced {
		h.flags |= ksetFlagUnfenced
	}
	encodeKSet(img[:size], &h, keys)
	off := s.DataOffset(head.Pos)
	if err := s.m.WriteAt(img, off); err != nil {
		j.mu.err = err
		return KSet{}, err
	}
	j.mu.pending = append(j.mu.pending, span{off, int64(size)})
	j.mu.prevNonce = j.nonce
	ks := KSet{LSN: head.LSN, Epoch: epoch, Pos: head.Pos, Keys: append([]Key(nil), keys...), Unfenced: unfenced, Unconfirmed: h.unconfirmed}
	head.Pos.Off += size
	head.LSN++
	ks.Next = head
	j.mu.head = head
	j.mu.written = ks.LSN
	return ks, nil
}

// writeSize is how many bytes a kset of size bytes at pos is written with:
// size, or with padToPage up to the next page boundary of the media
// (within the segment). The padding lies past the log's head, where nothing
// valid is (the next kset overwrites it), and replay reads its zeros as the
// end of the log. Only the kset's own bytes need to be durable.
func (j *Journal) writeSize(pos Pos, size uint32) int {
	if !j.padToPage {
		return int(size)
	}
	end := j.s.DataOffset(pos) + int64(size)
	padded := (end + pageSize - 1) &^ (pageSize - 1)
	limit := j.s.DataOffset(Pos{Seg: pos.Seg, Off: j.s.dataSize})
	return int(size) + int(min(padded, limit)-end)
}

// waitDurable returns once every kset up to lsn is durable. One goroutine
// at a time persists everything written so far (the leader); the others
// wait on flushCond and return as soon as a flush covers their kset, without
// queueing behind the next flush.
func (j *Journal) waitDurable(lsn uint64) error {
	j.flush.Lock()
	defer j.flush.Unlock()
	for j.flush.durable < lsn {
		if j.flush.err != nil {
			return j.flush.err
		}
		if j.flush.running {
			j.flush.cond.Wait()
			continue
		}
		j.flush.running = true
		// Yield once before taking what is written: committers that are
		// about to write their ksets (woken by the flush that just ended)
		// run first and share this flush instead of waiting for the next.
		// 4 KiB FUA writes at QD32 through the daemon: a fifth fewer
		// flushes per write, 6 % more writes per second.
		j.flush.Unlock()
		runtime.Gosched()
		j.flush.Lock()
		j.mu.Lock()
		pending, target := j.mu.pending, j.mu.written
		j.mu.pending = nil
		j.mu.Unlock()
		j.flush.Unlock()
		merged := mergeSpans(pending)
		spans := make([]Span, len(merged))
		for i, sp := range merged {
			spans[i] = Span{sp.off, sp.n}
		}
		err := PersistRanges(j.s.m, spans)
		if err != nil {
			err = fmt.Errorf("persist: journal persist: %w", err)
		}
		j.flush.Lock()
		j.flush.running = false
		if err != nil {
			// Fail-stop: nothing written after this point is known durable.
			j.flush.err = err
			j.mu.Lock()
			j.mu.err = err
			j.mu.Unlock()
		} else {
			j.flush.durable = target
			j.durableLSN.Store(target)
			j.flushes.Add(1)
		}
		j.flush.cond.Broadcast()
	}
	return nil
}

// mergeSpans joins adjacent or overlapping spans (they arrive in log order,
// which is ascending within a segment).
func mergeSpans(in []span) []span {
	var out []span
	for _, sp := range in {
		if n := len(out); n > 0 && sp.off >= out[n-1].off && sp.off <= out[n-1].off+out[n-1].n {
			out[n-1].n = max(out[n-1].n, sp.off+sp.n-out[n-1].off)
			continue
		}
		out = append(out, sp)
	}
	return out
}
