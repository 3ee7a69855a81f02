package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachelun/cachelun/admin"
	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/backend/rbd"
	"github.com/cachelun/cachelun/cluster"
	"github.com/cachelun/cachelun/conf"
	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/mirror"
	"github.com/cachelun/cachelun/target/scsi"
)

// clusterVolumeMode is the cache mode a clustered volume runs in: writeback
// with its journal replicated to the peers when its configuration keeps
// dirty data (writeback, writeonly: a replicated volume runs writeback,
// the one mode in which every change goes through the journal), else the
// configured mode, which keeps no dirty data.
func clusterVolumeMode(mode string) string {
	if mode == "writeback" || mode == "writeonly" {
		return "writeback"
	}
	return mode
}

// replicatedVolume: the clustered volume's journal is replicated.
func replicatedVolume(v conf.Volume) bool { return clusterVolumeMode(v.Mode) == "writeback" }

// ownershipInterval is how often the ownership rules run: a standby reads
// the image's lock holder, an owner checks that it still holds the lock.
const ownershipInterval = 500 * time.Millisecond

// ownerMetaKey is the image metadata key in which the holder of a
// clustered volume's lock records itself (ownerRecord as JSON).
const ownerMetaKey = "cachelun.cluster.owner"

// Request kinds of the peer link's Handler.
const (
	// reqOwner: the calling node now owns the volume in the body
	// (ownerNote); the receiver shows it and checks its own lock.
	reqOwner = "owner"
	// reqTake: the calling node released the volume in the body
	// (ownerNote) for the receiver, which takes its free lock at once.
	reqTake = "take"
)

// errRBDLocked is rbd.ErrLocked under the name the ownership code tests.
var errRBDLocked = rbd.ErrLocked

// errOwnerShipment refuses a shipment for a volume this node owns: it
// comes from a node that is not the owner (deposed or partitioned).
var errOwnerShipment = fmt.Errorf("%w (the receiving node owns it)", cluster.ErrDeposed)

// errUnknownVolume refuses a shipment for a volume that is not clustered here.
var errUnknownVolume = errors.New("cluster: not a clustered volume of this node")

// errNotCluster is returned by the cluster status of a single node.
var errNotCluster = errors.New("this daemon is not a cluster node (no [cluster] table)")

// errUnknownRequest answers a request kind this node does not know.
var errUnknownRequest = errors.New("cluster: unknown request")

// clusterd is a cluster node's part of the daemon: the peer link
// (cluster.Node), the ownership of every clustered volume and the ALUA
// states of their logical units.
type clusterd struct {
	d      *Daemon
	cfg    conf.Cluster
	log    *slog.Logger
	node   *cluster.Node
	recv   *mirror.Receiver // the mirrors of the volumes peers own
	own    *ownership
	groups map[string]uint16 // node name → target port group id (names sorted → 1..N)
	vols   map[string]*clusterVolume

	cancel context.CancelFunc
	wg     sync.WaitGroup // the ownership loop and the announcements

	// test seams: a peer call without a link, a target lookup without
	// a daemon (nil in the product)
	callPeer func(ctx context.Context, node, kind string, body []byte) ([]byte, error)
	targetOf func(iqn string) *scsi.Target
}

// clusterVolume is one clustered volume: its configuration (mode as
// clusterVolumeMode says), its image lock, the volume its logical units
// serve (switched from the standby stub to the engine's at takeover),
// those logical units and, while this node owns a replicated volume, the
// Shipper of its journal. mu → ownership.mu; mu is held while a logical
// unit is added and while the ALUA states of its logical units change, so
// both use the latest ownership view.
type clusterVolume struct {
	conf conf.Volume
	lock *rbdLock
	sw   *switchVolume

	mu      sync.Mutex
	lus     []clusterLU
	shipper *mirror.Shipper

	// held is this node's lock of the image while it owns the volume
	// (read by the logical units' PR saves, under their own lock).
	held atomic.Pointer[rbdHeld]
}

// clusterLU is a logical unit of a clustered volume: LUN lun of target iqn.
type clusterLU struct {
	lu  *scsi.LU
	iqn string
	lun uint64
}

// newClusterd prepares the cluster part of a daemon on cfg (with
// [cluster]); start runs it.
func newClusterd(d *Daemon, cfg *conf.Config, clock interface{ Now() time.Time }) (*clusterd, error) {
	c := &clusterd{d: d, cfg: *cfg.Cluster, log: d.log.With("component", "cluster"), groups: map[string]uint16{},
		vols: map[string]*clusterVolume{}}
	names := []string{c.cfg.Node}
	var peers []string
	for _, p := range cfg.ClusterPeers() {
		names = append(names, p.Name)
		peers = append(peers, p.Name)
	}
	sort.Strings(names)
	for i, n := range names {
		c.groups[n] = uint16(i + 1)
	}
	m, err := newOwnerMetrics(d.registry)
	if err != nil {
		return nil, err
	}
	c.own = newOwnership(c.cfg.Node, peers, c.cfg.PeerTimeout.D, clock, c.log, c.linkSeen, c, m)
	return c, nil
}

// tpgt is this node's target portal group tag, its target port group id.
func (c *clusterd) tpgt() uint16 { return c.groups[c.cfg.Node] }

// openVolume opens the watch on a clustered volume's image (NoLock: it
// takes nothing) and registers the volume; it is taken (or not) by start.
func (c *clusterd) openVolume(v conf.Volume, ownerFile string) error {
	v.Mode = clusterVolumeMode(v.Mode)
	nodes := map[string]bool{}
	for n := range c.groups {
		nodes[n] = true
	}
	l, err := openRBDLock(v, ownerFile, c.cfg.Name, c.cfg.Node, nodes)
	if err != nil {
		return err
	}
	size := l.watch.Size() &^ int64(v.BlockSize-1)
	sw := &switchVolume{}
	sw.set(standbyVolume{name: v.Name, size: size, bs: v.BlockSize})
	c.vols[v.Name] = &clusterVolume{conf: v, lock: l, sw: sw}
	c.own.add(v.Name, l)
	return nil
}

// start starts the peer link and takes the volumes it can (ownership
// start). The engine's caches are open.
func (c *clusterd) start(ctx context.Context, clock cluster.Clock) error {
	var modes []string
	for _, v := range c.d.cfg.Volumes {
		m := v.Name + "=" + clusterVolumeMode(v.Mode)
		if replicatedVolume(v) {
			m += " (journal replicated)"
		}
		modes = append(modes, m)
	}
	c.log.Info("cluster node", "node", c.cfg.Node, "target_port_group", c.tpgt(), "modes", modes,
		"degraded", c.cfg.Degraded)
	dir := filepath.Join(c.d.cfg.Global.DataDir, "mirror")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("cluster: the mirrors' directory: %w", err)
	}
	c.recv = mirror.NewReceiver(dir)
	ccfg := cluster.ConfigFrom(&c.cfg)
	ccfg.Receiver = c
	ccfg.Handler = c
	ccfg.Logger = c.log
	ccfg.Clock = clock
	ccfg.Registry = c.d.registry
	node, err := cluster.Start(context.Background(), ccfg)
	if err != nil {
		return err
	}
	c.node = node
	return c.own.start(ctx)
}

// run starts the ownership loop (after the logical units exist).
func (c *clusterd) run() {
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.own.run(ctx, ownershipInterval)
	}()
}

// stopOwnership stops the ownership loop and waits for it and the
// announcements in flight.
func (c *clusterd) stopOwnership() {
	if c.cancel != nil {
		c.cancel()
	}
	c.wg.Wait()
}

// close stops the Shippers, closes the peer link, the mirrors and the
// images' watches (the engine closed the images this node owned, releasing
// their locks, after their last shipments).
func (c *clusterd) close() error {
	var errs []error
	for _, cv := range c.vols {
		cv.mu.Lock()
		sh := cv.shipper
		cv.shipper = nil
		cv.mu.Unlock()
		if sh != nil {
			sh.Close()
		}
	}
	if c.node != nil {
		errs = append(errs, c.node.Close())
	}
	if c.recv != nil {
		errs = append(errs, c.recv.Close())
	}
	for _, cv := range c.vols {
		errs = append(errs, cv.lock.close())
	}
	return errors.Join(errs...)
}

// linkSeen is ownership's view of a peer's links.
func (c *clusterd) linkSeen(peer string) (time.Time, bool) {
	if c.node == nil {
		return time.Time{}, false
	}
	l := c.node.Link(peer)
	if l == nil {
		return time.Time{}, false
	}
	ps := l.Snapshot()
	return ps.LastHeard, ps.Inbound
}

// attach serves a volume on a lock just taken (ownerHooks).
func (c *clusterd) attach(ctx context.Context, volume string, h heldLock) (err error) {
	cv := c.vols[volume]
	rh, ok := h.(*rbdHeld)
	if !ok {
		return fmt.Errorf("volume %s: not an RBD lock", volume)
	}
	cv.held.Store(rh)
	defer func() {
		if err != nil {
			cv.held.Store(nil) // the lock is released: not this node's any more
		}
	}()
	if replicatedVolume(cv.conf) {
		if err := c.attachReplicated(ctx, cv, rh); err != nil {
			return err
		}
	} else if err := c.d.eng.addVolumeFresh(ctx, cv.conf, rh.dev, false); err != nil {
		return err
	}
	vol, ok := c.d.eng.volume(volume)
	if !ok {
		return fmt.Errorf("volume %s: not open after attach", volume)
	}
	// the reservations saved by the previous owner, before any I/O
	if err := c.loadPR(cv, rh); err != nil {
		return errors.Join(err, c.detachReplicated(ctx, cv, false))
	}
	cv.sw.set(vol)
	// an owner needs no watch (it never goes back to standby), and a
	// watch it left behind when killed would linger for 30 s, unfenced:
	// every lock change and close of the next owner would wait for its
	// acknowledgement. Its lock's client is the one blocklisted.
	if err := cv.lock.closeWatch(); err != nil {
		c.log.Debug("cluster: closing the image's watch", "volume", volume, "err", err)
	}
	return nil
}

// attachReplicated opens a replicated volume on a lock just taken and
// brings its cache up to the newest acknowledged write before it serves:
//   - When this node was the image's last holder (no other node took the
//     lock since), its cache is the newest state: the volume is added as
//     it is (its dirty data, replayed, is the journal the peers mirror).
//   - Otherwise another node owned the volume since: what this cache holds
//     of it is dropped (PurgeReplica), and the mirror of the other node's
//     journal that this node kept is applied on top of the image
//     (mirror.Apply: in shipment order, then flushed). Every write the
//     other node acknowledged as durable is then in this cache.
//
// The Shipper is set before the mirror is applied, so the applied data
// reaches the peers in sync like any write.
func (c *clusterd) attachReplicated(ctx context.Context, cv *clusterVolume, rh *rbdHeld) error {
	name := cv.conf.Name
	mlog, err := c.recv.Log(name)
	if err != nil {
		return fmt.Errorf("volume %s: its mirror: %w", name, err)
	}
	current := rh.prevNode == c.cfg.Node
	if current && !rh.prevReleased && !c.d.eng.holdsReplica(cv.conf.Cache, name) {
		// this node held the volume last, did not release it, and its
		// cache has no replicated state of it (a new or another cache
		// file): its acknowledged writes are in a peer's mirror only
		return fmt.Errorf("volume %s: %w", name, errYield)
	}
	if current {
		err = c.d.eng.addVolumeReplicated(ctx, cv.conf, rh.dev, true)
	} else {
		err = c.d.eng.addVolumeFresh(ctx, cv.conf, rh.dev, true)
	}
	if err != nil {
		return err
	}
	vol, ok := c.d.eng.cacheVolume(name)
	if !ok {
		return fmt.Errorf("volume %s: not open after attach", name)
	}
	if !current && !rh.prevReleased && rh.prevNode != "" {
		// the previous owner was fenced (its lock broken): nothing
		// shipped to it will be acknowledged; flushes should not wait
		// sync_timeout to find out
		if l := c.node.Link(rh.prevNode); l != nil {
			l.MarkOutOfSync("this node took the volume over from it")
		}
	}
	sh := mirror.NewShipper(c.node, name, rh.epoch, vol.Reship, rh.recordBehind, c.log.With("volume", name))
	if len(rh.behind) > 0 {
		// recorded at Acquire: they stay behind until a resync with this
		// node has trimmed what they hold of the earlier owners' journals
		sh.AssumeBehind(rh.behind)
		for _, n := range rh.behind {
			if l := c.node.Link(n); l != nil {
				l.MarkOutOfSync("the previous owner recorded its mirror as behind")
			}
		}
	}
	if err := vol.SetReplicator(sh); err != nil {
		sh.Close()
		return errors.Join(err, c.d.eng.removeVolume(ctx, cv.conf.Cache, name, nil))
	}
	cv.mu.Lock()
	cv.shipper = sh
	cv.mu.Unlock()
	if current || rh.prevReleased {
		// the mirror holds nothing newer than the image (the previous
		// owner wrote everything back before it released the lock) or
		// than this node's cache (it was the previous owner); applying
		// it could bring back older data where this node's mirror fell
		// behind
		return mlog.Reset()
	}
	if slices.Contains(rh.prevBehind, c.cfg.Node) {
		// this node was out of sync and the previous owner may have
		// written back ksets it missed: its mirror would put older data
		// back over them. The image serves as it is; what only the
		// previous owner held is lost (the degraded policy's cost).
		c.log.Error("cluster: the previous owner recorded this node's mirror as behind (this node was out of sync): the mirror is not applied, the volume serves the image as the previous owner wrote it back, and writes it acknowledged while this node was out of sync are lost",
			"volume", name, "previous_owner", orUnknown(rh.prevNode), "owner_epoch", rh.epoch)
		return mlog.Reset()
	}
	start := time.Now()
	n, err := mirror.Apply(ctx, mlog, vol)
	if errors.Is(err, cluster.ErrDegraded) {
		// every record is durable in this cache; only its copies on the
		// peers are missing (refuse-sync with a peer out of sync: the
		// fenced owner, in a cluster of two). The volume serves, and
		// refuses flushes until a peer is back in sync.
		c.log.Warn("cluster: the previous owner's journal applied from this node's mirror, not yet replicated to a peer in sync",
			"volume", name, "records", n, "err", err)
		return mlog.Reset()
	}
	if err != nil {
		c.log.Error("cluster: applying the mirror of the previous owner's journal failed; the volume is not served",
			"volume", name, "records_applied", n, "err", err)
		return errors.Join(err, c.detachReplicated(ctx, cv, false))
	}
	c.log.Info("cluster: the previous owner's journal applied from this node's mirror", "volume", name,
		"previous_owner", orUnknown(rh.prevNode), "owner_epoch", rh.epoch, "records", n, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// detachReplicated removes a replicated volume from the engine (writing
// back what its cache holds: this node holds the image's lock) and stops
// its Shipper. With released, the image is recorded as released once
// everything is written back (ownerRecord.Released: the next owner need
// not apply its mirror).
func (c *clusterd) detachReplicated(ctx context.Context, cv *clusterVolume, released bool) error {
	held := cv.held.Load()
	var err error
	if released && held != nil {
		if vol, ok := c.d.eng.cacheVolume(cv.conf.Name); ok {
			if err = c.d.eng.drain(ctx, cv.conf.Name, func(ctx context.Context) error { return vol.Drain(ctx, nil) }); err == nil {
				err = held.markReleased()
			}
		}
	}
	if err == nil {
		err = c.d.eng.removeVolume(ctx, cv.conf.Cache, cv.conf.Name, nil)
	}
	cv.mu.Lock()
	sh := cv.shipper
	cv.shipper = nil
	cv.mu.Unlock()
	cv.held.Store(nil)
	if sh != nil {
		sh.Close()
	}
	return err
}

// releaseOwned writes back the volumes this node owns and replicates and
// records each image as released (ownerRecord.Released), at a clean
// shutdown: the next owner then finds every acknowledged write on the
// image and applies no mirror, which may be behind when a peer was out of
// sync. A volume that cannot be written back is left as it is (its dirty
// data stays in this cache and in the mirrors of the peers in sync).
func (c *clusterd) releaseOwned(ctx context.Context) {
	for name, cv := range c.vols {
		held := cv.held.Load()
		if held == nil || !replicatedVolume(cv.conf) {
			continue
		}
		vol, ok := c.d.eng.cacheVolume(name)
		if !ok {
			continue
		}
		if err := c.d.eng.drain(ctx, name, func(ctx context.Context) error { return vol.Drain(ctx, nil) }); err != nil {
			c.log.Warn("cluster: shutdown: the volume's dirty data is not written back; the next owner applies its mirror",
				"volume", name, "err", err)
			continue
		}
		if err := held.markReleased(); err != nil {
			c.log.Warn("cluster: shutdown: recording the image as released", "volume", name, "err", err)
			continue
		}
		c.log.Info("cluster: shutdown: volume written back and released", "volume", name)
	}
}

// changed makes the ALUA states of the volume's logical units follow its
// ownership (ownerHooks).
func (c *clusterd) changed(volume string, st ownState, owner string) {
	cv := c.vols[volume]
	if cv == nil {
		return
	}
	if st == ownStandby || st == ownUnavailable {
		// nothing of the volume is served here any more (ALUA refuses
		// the I/O already; this is the backstop). A moving volume keeps
		// serving the commands past the ALUA check until release.
		cv.sw.set(standbyVolume{name: volume, size: cv.sw.Size(), bs: cv.conf.BlockSize, unavailable: st == ownUnavailable})
	}
	cv.mu.Lock()
	defer cv.mu.Unlock()
	states := c.aluaStates(volume)
	for _, l := range cv.lus {
		if _, err := l.lu.SetTargetPortGroupStates(states); err != nil {
			c.log.Error("cluster: ALUA state change failed", "volume", volume, "err", err)
		}
	}
	c.log.Info("cluster: volume ownership", "volume", volume, "this_node", string(st), "owner", orUnknown(owner),
		"alua", scsi.ALUAState(states[c.tpgt()]).String())
}

// release stops serving a volume this node moves away (ownerHooks): the
// engine flushes and removes it (waiting for the commands in flight; the
// image's close releases the lock), the logical units get the stub, and
// the image is watched again.
func (c *clusterd) release(ctx context.Context, volume string) error {
	cv := c.vols[volume]
	if vol, ok := c.d.eng.cacheVolume(volume); ok {
		if err := vol.Flush(ctx); err != nil {
			return err
		}
	}
	if err := c.detachReplicated(ctx, cv, true); err != nil {
		return err
	}
	cv.sw.set(standbyVolume{name: volume, size: cv.sw.Size(), bs: cv.conf.BlockSize})
	return cv.lock.reopenWatch()
}

// handOver asks node to take volume (ownerHooks).
func (c *clusterd) handOver(ctx context.Context, volume, node string) error {
	l := c.node.Link(node)
	if l == nil {
		return fmt.Errorf("no link to %s", node)
	}
	body, _ := json.Marshal(ownerNote{Volume: volume})
	ctx, cancel := context.WithTimeout(ctx, c.cfg.PeerTimeout.D)
	defer cancel()
	_, err := l.Call(ctx, reqTake, body)
	return err
}

// moveVolume is `cachelun volume move NAME NODE` on this node.
func (c *clusterd) moveVolume(ctx context.Context, volume, node string) error {
	return c.own.move(ctx, volume, node)
}

// MoveVolume implements admin.VolumeMover.
func (b *adminBackend) MoveVolume(ctx context.Context, volume, node string) error {
	if b.d.clu == nil {
		return errNotCluster
	}
	return b.d.clu.moveVolume(ctx, volume, node)
}

// ownerNote is the body of a reqOwner request.
type ownerNote struct {
	Volume string `json:"volume"`
}

// announce tells every peer that can be reached that this node owns
// volume now (ownerHooks). The calls run in the background, each bounded.
func (c *clusterd) announce(volume string) {
	if c.node == nil {
		return
	}
	body, _ := json.Marshal(ownerNote{Volume: volume})
	for _, l := range c.node.Links() {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), c.cfg.PeerTimeout.D)
			defer cancel()
			if _, err := l.Call(ctx, reqOwner, body); err != nil {
				c.log.Debug("cluster: peer not told of the new owner", "peer", l.Peer().Name, "volume", volume, "err", err)
			}
		}()
	}
}

// Receive keeps the shipments of the volumes peers own in their mirrors
// (cluster.Receiver). A shipment for a volume this node owns comes from a
// deposed owner and is refused, as is one of an older owner epoch than
// the mirror holds (mirror.ErrStaleEpoch).
func (c *clusterd) Receive(ctx context.Context, from string, batch []cluster.Shipment) error {
	for _, s := range batch {
		view, ok := c.own.volumeView(s.Volume)
		if !ok {
			return fmt.Errorf("%w: %s (from %s)", errUnknownVolume, s.Volume, from)
		}
		if view.State == ownOwner || view.State == ownMoving {
			return fmt.Errorf("%w: %s (from %s)", errOwnerShipment, s.Volume, from)
		}
	}
	return c.recv.Receive(ctx, from, batch)
}

// Handle answers the peers' control requests (cluster.Handler).
func (c *clusterd) Handle(ctx context.Context, from, kind string, body []byte) ([]byte, error) {
	switch kind {
	case mirror.TrimKind:
		return c.recv.Handle(ctx, from, kind, body)
	case reqPR:
		return c.handlePR(ctx, from, body)
	case reqPRNotice:
		return nil, c.handlePRNotice(from, body)
	case reqOwner:
		var n ownerNote
		if err := json.Unmarshal(body, &n); err != nil {
			return nil, fmt.Errorf("cluster: %s request: %w", kind, err)
		}
		c.own.noteOwner(n.Volume, from)
		return nil, nil
	case reqTake:
		var n ownerNote
		if err := json.Unmarshal(body, &n); err != nil {
			return nil, fmt.Errorf("cluster: %s request: %w", kind, err)
		}
		c.log.Info("cluster: a peer hands a volume over to this node", "volume", n.Volume, "from", from)
		c.own.noteTake(n.Volume)
		return nil, nil
	}
	return nil, fmt.Errorf("%w %q", errUnknownRequest, kind)
}

// aluaStates are the target port group states of a volume's logical units
// on this node: the owner's group active/optimized, this node's group as
// its state says, every other group standby. Caller holds cv.mu.
func (c *clusterd) aluaStates(volume string) map[uint16]scsi.ALUAState {
	view, _ := c.own.volumeView(volume)
	states := map[uint16]scsi.ALUAState{}
	for _, id := range c.groups {
		states[id] = scsi.ALUAStandby
	}
	if id, ok := c.groups[view.Owner]; ok {
		states[id] = scsi.ALUAActiveOptimized
	}
	switch view.State {
	case ownOwner:
		states[c.tpgt()] = scsi.ALUAActiveOptimized
	case ownStandby:
		states[c.tpgt()] = scsi.ALUAStandby
	case ownMoving:
		states[c.tpgt()] = scsi.ALUATransitioning
	default:
		states[c.tpgt()] = scsi.ALUAUnavailable
	}
	return states
}

// aluaConfig is the ALUA setup of a new logical unit of volume: one
// target port group per node, whose one port is the node's TPGT. Caller
// holds cv.mu.
func (c *clusterd) aluaConfig(volume string) *scsi.ALUAConfig {
	states := c.aluaStates(volume)
	cfg := &scsi.ALUAConfig{}
	for _, id := range c.groups {
		cfg.Groups = append(cfg.Groups, scsi.TargetPortGroup{ID: id, State: states[id], RelativePorts: []uint16{id}})
	}
	slices.SortFunc(cfg.Groups, func(a, b scsi.TargetPortGroup) int { return int(a.ID) - int(b.ID) })
	return cfg
}

// addLU adds LUN lun of target iqn, a logical unit of a clustered volume,
// with its ALUA setup and its shared persistent reservations (loaded from
// the image when this node owns the volume).
func (c *clusterd) addLU(volume, iqn string, lun uint64, add func(vol scsi.Volume, alua *scsi.ALUAConfig, pr scsi.PRShare) (*scsi.LU, error)) error {
	cv := c.vols[volume]
	cv.mu.Lock()
	lu, err := add(cv.sw, c.aluaConfig(volume), &clusterPR{c: c, cv: cv, iqn: iqn, lun: lun})
	if err != nil {
		cv.mu.Unlock()
		return err
	}
	l := clusterLU{lu: lu, iqn: iqn, lun: lun}
	cv.lus = append(cv.lus, l)
	cv.mu.Unlock()
	if held := cv.held.Load(); held != nil {
		return loadLUPR(held, l)
	}
	return nil
}

// call makes a request of a peer over the peer link (callPeer in tests).
func (c *clusterd) call(ctx context.Context, node, kind string, body []byte) ([]byte, error) {
	if c.callPeer != nil {
		return c.callPeer(ctx, node, kind, body)
	}
	if c.node == nil {
		return nil, fmt.Errorf("no link to %s", node)
	}
	l := c.node.Link(node)
	if l == nil {
		return nil, fmt.Errorf("no link to %s", node)
	}
	return l.Call(ctx, kind, body)
}

// target is this daemon's target called iqn, or nil.
func (c *clusterd) target(iqn string) *scsi.Target {
	if c.targetOf != nil {
		return c.targetOf(iqn)
	}
	c.d.mu.RLock()
	defer c.d.mu.RUnlock()
	return c.d.targets[strings.ToLower(iqn)]
}

// status is GET /v1/cluster.
func (c *clusterd) status() (admin.ClusterResponse, error) {
	snap, err := json.Marshal(c.node.Snapshot())
	if err != nil {
		return admin.ClusterResponse{}, err
	}
	r := admin.ClusterResponse{Node: c.cfg.Node, TargetPortGroup: c.tpgt(), Snapshot: snap}
	for name, id := range c.groups {
		r.Groups = append(r.Groups, admin.ClusterGroup{Node: name, ID: id})
	}
	sort.Slice(r.Groups, func(i, j int) bool { return r.Groups[i].ID < r.Groups[j].ID })
	for _, v := range c.own.view() {
		cv := c.vols[v.Volume]
		cv.mu.Lock()
		alua := scsi.ALUAState(c.aluaStates(v.Volume)[c.tpgt()]).String()
		sh := cv.shipper
		cv.mu.Unlock()
		var behind []string
		if sh != nil {
			behind = sh.Behind()
		}
		r.Volumes = append(r.Volumes, admin.ClusterVolume{Name: v.Volume, Owner: v.Owner, State: string(v.State),
			ALUA: alua, Mode: cv.conf.Mode, Since: v.Since, Reason: v.Reason, Behind: behind})
	}
	return r, nil
}

// ClusterStatus implements admin.ClusterSource.
func (b *adminBackend) ClusterStatus() (admin.ClusterResponse, error) {
	if b.d.clu == nil {
		return admin.ClusterResponse{}, errNotCluster
	}
	return b.d.clu.status()
}

// ownerRecord is what the holder of a clustered volume's lock records in
// the image's metadata: a standby maps the lock's holder to a node by it.
type ownerRecord struct {
	Cluster string `json:"cluster"`
	Node    string `json:"node"`
	Addr    string `json:"addr"` // the holder's lock owner address
	// Epoch counts the takings of the lock by the cluster's nodes: each
	// holder records the previous holder's + 1. It orders the owners'
	// shipped journals (mirror.LinkLSN).
	Epoch uint64 `json:"epoch,omitempty"`
	// Released: the holder wrote every acknowledged write back to the
	// image and released the lock cleanly (a move, a shutdown).
	Released bool `json:"released,omitempty"`
	// Behind: the nodes whose mirrors of the holder's journal may lack
	// ksets the holder wrote back (they were out of sync; recorded before
	// such a kset is written back, mirror.BehindRecorder). The next owner, if
	// listed, does not apply its mirror: it would bring older data back
	// over newer data the image holds.
	Behind []string `json:"behind,omitempty"`
}

// rbdLock is a clustered volume's image lock on RBD (imageLock): a watch
// on the image (a NoLock Device, which never writes) tells the holder,
// Acquire opens the image with the lock as openRBDBacking does.
type rbdLock struct {
	v         conf.Volume
	ownerFile string
	cluster   string
	node      string
	nodes     map[string]bool

	mu    sync.Mutex
	watch *rbd.Device // nil once this node owns the volume
}

func openRBDLock(v conf.Volume, ownerFile, clusterName, node string, nodes map[string]bool) (*rbdLock, error) {
	w, err := openRBDWatch(v)
	if err != nil {
		return nil, err
	}
	return &rbdLock{v: v, ownerFile: ownerFile, cluster: clusterName, node: node, nodes: nodes, watch: w}, nil
}

// openRBDWatch opens a volume's image without its lock.
func openRBDWatch(v conf.Volume) (*rbd.Device, error) {
	spec, err := rbd.ParseSpec(v.Backing)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), v.CephConnectTimeout.D+4*v.CephOpTimeout.D)
	defer cancel()
	w, err := rbd.Open(ctx, spec, rbd.Options{CephConf: v.CephConf, User: v.CephUser, Keyring: v.CephKeyring,
		ConnectTimeout: v.CephConnectTimeout.D, OpTimeout: v.CephOpTimeout.D, NoLock: true})
	if err != nil {
		return nil, fmt.Errorf("backing %s: %w", v.Backing, err)
	}
	if w.Size()%int64(v.BlockSize) != 0 || w.Size() < int64(v.BlockSize) {
		w.Close()
		return nil, fmt.Errorf("backing %s: image size %d is not a positive multiple of block_size %d", v.Backing, w.Size(), v.BlockSize)
	}
	return w, nil
}

// reopenWatch watches the image again (after a move away).
func (l *rbdLock) reopenWatch() error {
	w, err := openRBDWatch(l.v)
	if err != nil {
		return err
	}
	l.mu.Lock()
	old := l.watch
	l.watch = w
	l.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

// Holder reads the lock's holder and the node it recorded.
func (l *rbdLock) Holder(context.Context) (lockHolder, error) {
	l.mu.Lock()
	w := l.watch
	l.mu.Unlock()
	if w == nil {
		return lockHolder{}, fmt.Errorf("backing %s: %w", l.v.Backing, errWatchClosed)
	}
	addr, alive, err := w.LockHolder()
	if err != nil || addr == "" {
		return lockHolder{}, err
	}
	h := lockHolder{Addr: addr, Alive: alive}
	val, ok, err := w.Metadata(ownerMetaKey)
	if err != nil || !ok {
		return h, nil // unknown: never broken while alive
	}
	var rec ownerRecord
	if json.Unmarshal([]byte(val), &rec) == nil && rec.Cluster == l.cluster && rec.Addr == addr && l.nodes[rec.Node] {
		h.Node, h.Behind = rec.Node, rec.Behind
	}
	return h, nil
}

// Acquire opens the image with its lock, breaking breakOwner's (and a
// dead holder's, and this data directory's dead predecessor's), and
// records this node as the holder.
func (l *rbdLock) Acquire(_ context.Context, breakOwner string) (heldLock, error) {
	var breaking []string
	if breakOwner != "" {
		breaking = append(breaking, breakOwner)
	}
	dev, err := openRBDBacking(l.v, l.ownerFile, breaking...)
	if err != nil {
		return nil, err
	}
	d, ok := dev.(*rbd.Device)
	if !ok {
		dev.Close()
		return nil, fmt.Errorf("backing %s: not an RBD image", l.v.Backing)
	}
	// the previous holder's record: who wrote the image last, and the
	// epoch this holder follows
	var prev ownerRecord
	val, ok, err := d.Metadata(ownerMetaKey)
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("backing %s: reading the previous holder's record: %w", l.v.Backing, err)
	}
	if ok {
		if json.Unmarshal([]byte(val), &prev) != nil || prev.Cluster != l.cluster {
			prev = ownerRecord{} // another cluster's or garbage: nobody known
		}
	}
	// the nodes the previous holder recorded behind stay so (their
	// mirrors may still hold its ksets they missed the overwrites of)
	// until they are back in sync with this holder: a released image
	// needs no mirror
	var behind []string
	if !prev.Released {
		for _, n := range prev.Behind {
			if n != l.node && l.nodes[n] {
				behind = append(behind, n)
			}
		}
	}
	rec, _ := json.Marshal(ownerRecord{Cluster: l.cluster, Node: l.node, Addr: d.LockOwner(), Epoch: prev.Epoch + 1, Behind: behind})
	if err := d.SetMetadata(ownerMetaKey, string(rec)); err != nil {
		d.Close()
		return nil, fmt.Errorf("backing %s: recording this node as the lock's holder: %w", l.v.Backing, err)
	}
	return &rbdHeld{dev: d, meta: d, cluster: l.cluster, node: l.node, prevNode: prev.Node, prevReleased: prev.Released,
		prevBehind: prev.Behind, behind: behind, epoch: prev.Epoch + 1}, nil
}

// errWatchClosed: an owner's lock has no watch any more.
var errWatchClosed = errors.New("the image's watch is closed (this node owns it)")

// closeWatch closes the watch (an owner's).
func (l *rbdLock) closeWatch() error {
	l.mu.Lock()
	w := l.watch
	l.watch = nil
	l.mu.Unlock()
	if w == nil {
		return nil
	}
	return w.Close()
}

func (l *rbdLock) close() error { return l.closeWatch() }

// rbdHeld is the lock of an image this node opened with it: prevNode is
// the node that held it before (this cluster's, "" unknown), prevReleased
// whether it released it cleanly and prevBehind the nodes whose mirrors
// it recorded as behind, behind those of them this holder recorded behind
// when it took the lock, epoch this holder's owner epoch.
type rbdHeld struct {
	dev           *rbd.Device
	meta          imageMetadata // dev's metadata (a fake in tests)
	cluster, node string        // this holder's, for its record
	prevNode      string
	prevReleased  bool
	prevBehind    []string
	behind        []string
	epoch         uint64

	// mu orders the record's updates; once released is set the record
	// says so and is not written again.
	mu       sync.Mutex
	released bool
}

// imageMetadata is an image's metadata (rbd.Device's).
type imageMetadata interface {
	Metadata(key string) (string, bool, error)
	SetMetadata(key, value string) error
}

// markReleased records in the image that this holder wrote everything
// back and releases the lock (ownerRecord.Released).
func (h *rbdHeld) markReleased() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.setRecord(ownerRecord{Released: true}); err != nil {
		return err
	}
	h.released = true
	return nil
}

// errReleasedRecord: the holder's record says it released the image.
var errReleasedRecord = errors.New("the image is recorded as released")

// recordBehind records the nodes whose mirrors are behind
// (ownerRecord.Behind, a mirror.BehindRecorder).
func (h *rbdHeld) recordBehind(_ context.Context, nodes []string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.released {
		return errReleasedRecord
	}
	return h.setRecord(ownerRecord{Behind: nodes})
}

// setRecord writes rec, completed with this holder's identity, as the
// image's owner record.
func (h *rbdHeld) setRecord(rec ownerRecord) error {
	rec.Cluster, rec.Node, rec.Addr, rec.Epoch = h.cluster, h.node, h.dev.LockOwner(), h.epoch
	b, _ := json.Marshal(rec)
	return h.meta.SetMetadata(ownerMetaKey, string(b))
}

// Holds is false once the lock was broken: librbd says so, or a request
// was refused as fenced.
func (h *rbdHeld) Holds() (bool, error) {
	ok, err := h.dev.HoldsLock()
	if err != nil {
		if errors.Is(err, backend.ErrClosed) {
			return true, nil // the daemon is closing it
		}
		return false, err
	}
	return ok && h.dev.Stats().Fenced == 0, nil
}

func (h *rbdHeld) Release() error { return h.dev.Close() }

// switchVolume is what a clustered volume's logical units serve: the
// standby stub while this node does not own the volume, the engine's
// (fence-gated) volume once it does. Its Unwrap returns the current one,
// so the optional interfaces (copy offload, atomic writes, provisioning)
// are those of the volume being served.
type switchVolume struct {
	cur atomic.Pointer[volBox]
}

type volBox struct{ v scsi.Volume }

func (s *switchVolume) set(v scsi.Volume) { s.cur.Store(&volBox{v}) }
func (s *switchVolume) get() scsi.Volume  { return s.cur.Load().v }

func (s *switchVolume) Size() int64    { return s.get().Size() }
func (s *switchVolume) BlockSize() int { return s.get().BlockSize() }
func (s *switchVolume) ReadAt(ctx context.Context, p []byte, off int64) error {
	return s.get().ReadAt(ctx, p, off)
}
func (s *switchVolume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	return s.get().WriteAt(ctx, p, off, fua)
}
func (s *switchVolume) Flush(ctx context.Context) error { return s.get().Flush(ctx) }
func (s *switchVolume) Discard(ctx context.Context, off, n int64) error {
	return s.get().Discard(ctx, off, n)
}
func (s *switchVolume) CompareAndWrite(ctx context.Context, off int64, compare, data []byte, fua bool) error {
	return s.get().CompareAndWrite(ctx, off, compare, data, fua)
}
func (s *switchVolume) Prefetch(ctx context.Context, off, n int64) error {
	return s.get().Prefetch(ctx, off, n)
}

// Unwrap returns the volume served now.
func (s *switchVolume) Unwrap() blk.Volume { return s.get() }

// standbyVolume is a clustered volume on a node that does not own it: it
// has the image's size (READ CAPACITY answers in standby) and refuses
// every request with NOT READY; it never touches the image.
type standbyVolume struct {
	name        string
	size        int64
	bs          int
	unavailable bool
}

func (v standbyVolume) err() error {
	if v.unavailable {
		return fmt.Errorf("volume %s: this node lost the image's lock (fenced): %w", v.name, blk.ErrNotReady)
	}
	return fmt.Errorf("volume %s: this node does not own it (standby): %w", v.name, blk.ErrNotReady)
}

func (v standbyVolume) Size() int64                                 { return v.size }
func (v standbyVolume) BlockSize() int                              { return v.bs }
func (v standbyVolume) ReadAt(context.Context, []byte, int64) error { return v.err() }
func (v standbyVolume) WriteAt(context.Context, []byte, int64, bool) error {
	return v.err()
}
func (v standbyVolume) Flush(context.Context) error                 { return v.err() }
func (v standbyVolume) Discard(context.Context, int64, int64) error { return v.err() }
func (v standbyVolume) CompareAndWrite(context.Context, int64, []byte, []byte, bool) error {
	return v.err()
}
func (v standbyVolume) Prefetch(context.Context, int64, int64) error { return v.err() }
