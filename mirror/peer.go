package mirror

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/cluster"
	"github.com/cachelun/cachelun/internal/blk"
)

// TrimKind is the peer-link call a Shipper makes to trim its peers' Logs.
const TrimKind = "mirror-trim"

// Receiver keeps the Logs of the volumes peers ship to this node (one
// file per volume in a directory) and serves their trims. It implements
// cluster.Receiver and cluster.Handler.
type Receiver struct {
	dir string

	mu   sync.Mutex
	logs map[string]*Log
}

// NewReceiver keeps its Logs in dir.
func NewReceiver(dir string) *Receiver { return &Receiver{dir: dir, logs: map[string]*Log{}} }

var (
	_ cluster.Receiver = (*Receiver)(nil)
	_ cluster.Handler  = (*Receiver)(nil)
)

// Log returns the Log of volume, opening it the first time.
func (r *Receiver) Log(volume string) (*Log, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if l := r.logs[volume]; l != nil {
		return l, nil
	}
	l, err := OpenLog(filepath.Join(r.dir, url.PathEscape(volume)+".mirror"))
	if err != nil {
		return nil, err
	}
	r.logs[volume] = l
	return l, nil
}

// Receive appends a batch of shipments to their volumes' Logs; it returns
// once they are durable. A payload that does not decode fails the batch
// (nothing of it is acknowledged).
func (r *Receiver) Receive(_ context.Context, from string, batch []cluster.Shipment) error {
	type group struct {
		lsns     []uint64
		payloads [][]byte
	}
	byVol := map[string]*group{}
	var order []string
	for _, s := range batch {
		if _, err := Decode(s.Payload); err != nil {
			return fmt.Errorf("mirror: shipment %d of volume %s from %s: %w", s.LSN, s.Volume, from, err)
		}
		g := byVol[s.Volume]
		if g == nil {
			g = &group{}
			byVol[s.Volume] = g
			order = append(order, s.Volume)
		}
		g.lsns = append(g.lsns, s.LSN)
		g.payloads = append(g.payloads, s.Payload)
	}
	for _, v := range order {
		l, err := r.Log(v)
		if err != nil {
			return err
		}
		if err := l.Append(byVol[v].lsns, byVol[v].payloads); err != nil {
			return fmt.Errorf("mirror: volume %s: %w", v, err)
		}
	}
	return nil
}

// Handle serves TrimKind calls: a volume name and an LSN.
func (r *Receiver) Handle(_ context.Context, from, kind string, body []byte) ([]byte, error) {
	if kind != TrimKind {
		return nil, fmt.Errorf("mirror: unknown request %q from %s", kind, from)
	}
	volume, lsn, err := decodeTrim(body)
	if err != nil {
		return nil, err
	}
	l, err := r.Log(volume)
	if err != nil {
		return nil, err
	}
	return nil, l.Trim(lsn)
}

// Close closes every Log.
func (r *Receiver) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for _, l := range r.logs {
		errs = append(errs, l.Close())
	}
	r.logs = map[string]*Log{}
	return errors.Join(errs...)
}

func encodeTrim(volume string, lsn uint64) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(volume)))
	b = append(b, volume...)
	return binary.BigEndian.AppendUint64(b, lsn)
}

func decodeTrim(b []byte) (string, uint64, error) {
	if len(b) < 2 {
		return "", 0, fmt.Errorf("%w: trim of %d bytes", ErrCorrupt, len(b))
	}
	n := int(binary.BigEndian.Uint16(b))
	if len(b) != 2+n+8 || n == 0 {
		return "", 0, fmt.Errorf("%w: trim of %d bytes for a name of %d", ErrCorrupt, len(b), n)
	}
	return string(b[2 : 2+n]), binary.BigEndian.Uint64(b[2+n:]), nil
}

// Reshipper ships a volume's journal from dirty_tail again, kset by kset
// in log order, after telling from the LSN of dirty_tail
// (cachecore.Volume.Reship).
type Reshipper func(ctx context.Context, from func(dirtyTail uint64) error, send func(lsn uint64, recs []cachecore.MirrorRecord) error) error

// Shipper ships one volume's journal to every peer of a cluster node (a
// cachecore.Replicator). The link's LSN of a kset is LinkLSN: its LSN + 1
// (links refuse 0) with the owner epoch above. Trims go to the peers in the background, the latest only. A
// peer that fell out of sync and is heard from again is brought up to date
// (Link.Resync, then everything from dirty_tail it did not acknowledge,
// then Link.ResyncDone) by the resync goroutine.
type Shipper struct {
	node   *cluster.Node
	volume string
	epoch  uint64 // this node's owner epoch of the volume (LinkLSN)
	log    *slog.Logger
	reship Reshipper
	// resyncEvery is how often links are checked for a resync.
	resyncEvery time.Duration
	// removeResyncer takes resyncVolume out of the node's resyncs.
	removeResyncer func()

	// behind records the peers whose mirrors may lack ksets this node
	// writes back (nil: not recorded); recordMu serialises its calls (a
	// write to Ceph: never held by a kset's wait). behindMu, held briefly,
	// guards marked, the peers last recorded, and missedBy, the peers that
	// missed a kset and are not recorded yet.
	behind   BehindRecorder
	recordMu sync.Mutex
	behindMu sync.Mutex
	marked   []string
	missedBy []string

	mu      sync.Mutex
	trimLSN uint64
	kick    chan struct{}
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	done    chan struct{}
}

var (
	_ cachecore.Replicator    = (*Shipper)(nil)
	_ cachecore.WritebackGate = (*Shipper)(nil)
)

// BehindRecorder records, durably and where the next owner of the volume
// reads it before it applies its mirror (the backing image's metadata),
// the peers whose mirrors may lack ksets that this node writes back: the
// peers that missed a kset (out of sync). The Shipper records them before
// writeback passes such a kset (BeforeWriteback). An empty list clears
// the record.
//
// Why: a peer out of sync keeps the ksets it received before it fell
// behind, and misses the later ones and the trims. Once this node has
// written back a later kset that overwrote some of their blocks, applying
// that mirror at a takeover would put the older data back over the newer
// data the backing device holds: stale blocks, in a mix no crash produces.
// The next owner does not apply a mirror recorded as behind; it serves the
// backing device as it is (the writes only this node held are lost, as
// the degraded policy says).
type BehindRecorder func(ctx context.Context, peers []string) error

// NewShipper starts a Shipper for volume, owned by this node in owner
// epoch (higher than every earlier owner's: LinkLSN); reship (nil: no
// resync) brings peers back in sync; behind (nil: none) records the peers
// out of sync before a kset they missed is written back (BehindRecorder).
// Close stops it.
func NewShipper(node *cluster.Node, volume string, epoch uint64, reship Reshipper, behind BehindRecorder, log *slog.Logger) *Shipper {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Shipper{node: node, volume: volume, epoch: epoch, log: log, reship: reship, behind: behind, resyncEvery: 200 * time.Millisecond,
		kick: make(chan struct{}, 1), ctx: ctx, cancel: cancel, done: make(chan struct{})}
	s.wg.Add(1)
	go s.trimLoop()
	if reship != nil {
		s.removeResyncer = node.AddResyncer(volume, s.resyncVolume)
	}
	if reship != nil || behind != nil {
		s.wg.Add(1)
		go s.resyncLoop()
	}
	go func() {
		s.wg.Wait()
		close(s.done)
	}()
	return s
}

// Close stops the Shipper's goroutines and waits for them.
func (s *Shipper) Close() {
	if s.removeResyncer != nil {
		s.removeResyncer()
	}
	s.cancel()
	<-s.done
}

// resyncLoop brings back in sync the links that are out of sync while
// their peer is heard from (its link to this node is up).
func (s *Shipper) resyncLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.resyncEvery)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		for _, l := range s.node.Links() {
			ps := l.Snapshot()
			if s.reship == nil || ps.State != cluster.StateOutOfSync || !ps.Inbound {
				continue
			}
			if err := s.node.ResyncLink(l); err != nil {
				s.log.Warn("mirror: resync of a peer failed; retrying", "peer", l.Peer().Name, "err", err)
			}
		}
		s.clearBehind()
	}
}

// resyncVolume is the volume's part of a resync of l's peer
// (cluster.Node.ResyncLink, which every Shipper of the node takes part
// in: the link is out of sync for all its volumes): first a trim up to
// the dirty_tail the reship starts from, then what the peer has not
// acknowledged of the volume's journal (above acked) from there on.
//
// The trim comes first because a peer out of sync also missed the trims:
// its log may still hold a kset whose blocks this node has since
// overwritten and written back, the newer data never shipped to it. Once in
// sync, flushes count on the peer; a takeover would then apply that kset
// over the newer data the backing device holds, and lose acknowledged
// writes. It reaches the dirty_tail the reship starts from (read with the
// commits held off), not only the latest trim this Shipper was told of:
// writeback may have moved dirty_tail since, and the ksets in between are
// neither trimmed nor shipped again. A resync that fails leaves the link
// out of sync, never in sync with a peer that lacks shipments or holds
// such ksets.
func (s *Shipper) resyncVolume(l *cluster.Link, from uint64) error {
	trimTo := func(dirtyTail uint64) error {
		s.mu.Lock()
		trim := s.trimLSN
		s.mu.Unlock()
		// everything of earlier owner epochs and of this one before
		// dirtyTail: LinkLSN(epoch, dirtyTail-1), also for a dirtyTail of 0
		trim = max(trim, s.epoch<<EpochShift|dirtyTail)
		if trim == 0 {
			return nil
		}
		ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
		defer cancel()
		if _, err := l.Call(ctx, TrimKind, encodeTrim(s.volume, trim)); err != nil {
			return fmt.Errorf("mirror: trim of volume %s to %d before its resync: %w", s.volume, trim, err)
		}
		return nil
	}
	n := 0
	err := s.reship(s.ctx, trimTo, func(lsn uint64, recs []cachecore.MirrorRecord) error {
		if LinkLSN(s.epoch, lsn) <= from {
			return nil
		}
		_, err := l.Send(s.volume, LinkLSN(s.epoch, lsn), Encode(nil, toRecords(recs)))
		n++
		return err
	})
	s.log.Info("mirror: peer resynchronised", "volume", s.volume, "peer", l.Peer().Name, "shipments", n, "err", err)
	return err
}

func toRecords(recs []cachecore.MirrorRecord) []Record {
	rs := make([]Record, len(recs))
	for i, r := range recs {
		rs[i] = Record{Off: r.Off, Len: r.Len, Discard: r.Discard, Data: r.Data}
	}
	return rs
}

// Ship queues the records on every link (cluster.Node.Ship: peers out of
// sync are skipped, and fail the wait with cluster.ErrDegraded under
// refuse-sync). With a BehindRecorder, the wait notes the peers that
// missed the kset, to be recorded as behind before writeback passes it
// (BeforeWriteback), and a peer noted or recorded counts as out of sync
// for the degraded policy until it is in sync again and its record is
// cleared (clearBehind): a takeover would not apply its mirror meanwhile.
func (s *Shipper) Ship(lsn uint64, recs []cachecore.MirrorRecord) func(context.Context) error {
	wait := s.node.ShipAcks(s.volume, LinkLSN(s.epoch, lsn), Encode(nil, toRecords(recs)))
	return func(ctx context.Context) error {
		missed, err := wait(ctx)
		if err != nil {
			return err
		}
		if s.behind != nil {
			missed = s.noteMissed(missed)
		}
		return s.node.DegradedErr(missed)
	}
}

// noteMissed notes the peers of missed, to be recorded as behind, and
// returns them with every other peer noted or recorded.
func (s *Shipper) noteMissed(missed []cluster.Missed) []cluster.Missed {
	s.behindMu.Lock()
	defer s.behindMu.Unlock()
	for _, m := range missed {
		if !slices.Contains(s.marked, m.Peer) && !slices.Contains(s.missedBy, m.Peer) {
			s.missedBy = append(s.missedBy, m.Peer)
		}
	}
	for _, p := range slices.Concat(s.marked, s.missedBy) {
		if !slices.ContainsFunc(missed, func(m cluster.Missed) bool { return m.Peer == p }) {
			missed = append(missed, cluster.Missed{Peer: p, Err: fmt.Errorf("%w: %s: its mirror is behind until it is back in sync", cluster.ErrOutOfSync, p)})
		}
	}
	return missed
}

// BeforeWriteback records as behind the peers that missed a kset and are
// not recorded yet (a cachecore.WritebackGate): writeback passes no kset
// a peer missed before that peer is recorded.
func (s *Shipper) BeforeWriteback(ctx context.Context) error {
	if s.behind == nil {
		return nil
	}
	s.recordMu.Lock()
	defer s.recordMu.Unlock()
	s.behindMu.Lock()
	if len(s.missedBy) == 0 {
		s.behindMu.Unlock()
		return nil
	}
	want := slices.Sorted(slices.Values(slices.Concat(s.marked, s.missedBy)))
	s.behindMu.Unlock()
	if err := s.behind(ctx, want); err != nil {
		return fmt.Errorf("mirror: volume %s: recording that the mirrors of %s are behind: %w", s.volume, strings.Join(want, ", "), err)
	}
	s.log.Warn("mirror: peers out of sync recorded as behind: a takeover by them serves the backing device without their mirrors until they are back in sync",
		"volume", s.volume, "peers", want)
	s.behindMu.Lock()
	// peers noted while the record was written stay noted
	s.marked = want
	s.missedBy = slices.DeleteFunc(s.missedBy, func(p string) bool { return slices.Contains(want, p) })
	s.behindMu.Unlock()
	return nil
}

// AssumeBehind sets the peers already recorded as behind (by the
// BehindRecorder's owner, before this Shipper): they are cleared like the
// peers it records itself. Call it before the Shipper is a Replicator.
func (s *Shipper) AssumeBehind(peers []string) {
	s.behindMu.Lock()
	defer s.behindMu.Unlock()
	for _, p := range peers {
		if !slices.Contains(s.marked, p) {
			s.marked = append(s.marked, p)
		}
	}
	slices.Sort(s.marked)
}

// Behind returns the peers recorded as behind (BehindRecorder).
func (s *Shipper) Behind() []string {
	s.behindMu.Lock()
	defer s.behindMu.Unlock()
	return slices.Clone(s.marked)
}

// clearBehind clears the record of the peers recorded as behind that are
// in sync again: they acknowledged everything this node shipped since
// their resync, which delivered the latest trim first, so their mirrors
// hold every kset not yet written back.
func (s *Shipper) clearBehind() {
	s.recordMu.Lock()
	defer s.recordMu.Unlock()
	inSync := func(p string) bool { l := s.node.Link(p); return l != nil && l.State() == cluster.StateInSync }
	s.behindMu.Lock()
	// noted, not recorded: nothing they missed was written back, and a
	// peer in sync again holds it all
	s.missedBy = slices.DeleteFunc(s.missedBy, inSync)
	keep := slices.DeleteFunc(slices.Clone(s.marked), inSync)
	cleared := len(keep) < len(s.marked)
	s.behindMu.Unlock()
	if !cleared {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, 30*time.Second)
	defer cancel()
	if err := s.behind(ctx, keep); err != nil {
		s.log.Warn("mirror: clearing the record of peers back in sync failed; retrying", "volume", s.volume, "err", err)
		return
	}
	s.log.Info("mirror: peers back in sync no longer recorded as behind", "volume", s.volume, "behind", keep)
	s.behindMu.Lock()
	s.marked = keep
	s.behindMu.Unlock()
}

// Trim records that dirty_tail passed lsn (kset LSNs below it are on the
// backing device: link LSNs up to LinkLSN(epoch, lsn-1)) and wakes the
// trim goroutine.
func (s *Shipper) Trim(lsn uint64) {
	if lsn == 0 {
		return
	}
	s.mu.Lock()
	s.trimLSN = max(s.trimLSN, LinkLSN(s.epoch, lsn-1))
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *Shipper) trimLoop() {
	defer s.wg.Done()
	var sent uint64
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.kick:
		}
		s.mu.Lock()
		lsn := s.trimLSN
		s.mu.Unlock()
		if lsn <= sent {
			continue
		}
		ok := true
		for _, l := range s.node.Links() {
			ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
			_, err := l.Call(ctx, TrimKind, encodeTrim(s.volume, lsn))
			cancel()
			if err != nil {
				ok = false
				s.log.Debug("mirror: trim not delivered", "volume", s.volume, "peer", l.Peer().Name, "lsn", lsn, "err", err)
			}
		}
		if ok {
			sent = lsn
		}
	}
}

// Apply puts the shipments of log into vol, in order, flushes it, and
// empties the log: the takeover of a volume this node mirrored. vol must
// be the volume on the backing device the old owner can no longer write
// (fenced).
func Apply(ctx context.Context, log *Log, vol blk.Volume) (int, error) {
	ships, err := log.Replay()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, s := range ships {
		recs, err := Decode(s.Payload)
		if err != nil {
			return n, fmt.Errorf("mirror: %s: shipment %d: %w", log.Path(), s.LSN, err)
		}
		for _, r := range recs {
			if r.Discard {
				err = vol.Discard(ctx, r.Off, r.Len)
			} else {
				err = vol.WriteAt(ctx, r.Data, r.Off, false)
			}
			if err != nil {
				return n, fmt.Errorf("mirror: applying shipment %d at %d: %w", s.LSN, r.Off, err)
			}
			n++
		}
	}
	if err := vol.Flush(ctx); err != nil {
		return n, err
	}
	return n, log.Reset()
}
