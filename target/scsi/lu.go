package scsi

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/cachelun/cachelun/internal/blk"
)

// LUConfig configures a logical unit.
type LUConfig struct {
	// Volume is the block device the logical unit serves. Required.
	Volume Volume
	// SerialNumber is the unit serial number (VPD 80h). Printable ASCII.
	SerialNumber string
	// DeviceID is the 16-byte identifier the VPD 83h designators (NAA
	// IEEE Registered Extended, T10 vendor ID) are derived from.
	DeviceID [16]byte
	// VendorID, ProductID and Revision are the INQUIRY identification;
	// empty means "CACHELUN", "cached-lun" and "0001".
	VendorID, ProductID, Revision string
	// Thin advertises logical block provisioning: LBPME, UNMAP, WRITE
	// SAME with UNMAP, and the VPD B2h page.
	Thin bool
	// StatePath is a file that persists the saved caching mode page (WCE)
	// and persistent reservations with APTPL; "" keeps them in memory.
	StatePath string
	// WriteCache is the initial WCE when StatePath holds no saved
	// caching page. The zero value is write-through (WCE=0: every write is
	// FUA), the safe choice; the daemon sets it from its write_cache
	// setting, which defaults to true.
	WriteCache bool
	// Logger receives state-file errors; nil uses the target's logger.
	Logger *slog.Logger
	// ALUA, when set, makes the logical unit report implicit asymmetric
	// logical unit access with these target port groups (alua.go); nil
	// is no ALUA. LU.SetALUA and LU.SetTargetPortGroupStates change it.
	ALUA *ALUAConfig
	// PR, when set, shares the persistent reservations with the other
	// gateways that export the volume (pr_share.go); nil keeps them here.
	PR PRShare
	// SanitizeMaxBytesPerSec bounds the rate at which SANITIZE OVERWRITE
	// writes the volume, as md bounds a resync (dev.raid.speed_limit_max):
	// the job runs in the background on a backing device other logical
	// units share, and must not starve them. 0 is
	// DefaultSanitizeMaxBytesPerSec; negative is no limit.
	// LU.SetSanitizeMaxBytesPerSec changes it, for a running job too.
	SanitizeMaxBytesPerSec int64
}

// LU is one logical unit: a Volume plus its SCSI state (mode pages, unit
// attentions, reservations). Methods are safe for concurrent use.
//
// Locking: nexusMu guards changes of the nexus map (readers load it
// atomically); each nexusState has its own mutex for its UA queue; resMu
// guards reservations and PREVENT state; stateMu serializes writes of the
// state file; capacityMu serializes capacity refreshes (capacity.go).
// Order: resMu → nexusMu → nexusState.mu, capacityMu → nexusState.mu;
// stateMu is taken last and never held during volume I/O.
type LU struct {
	t   *Target
	lun uint64
	vol Volume
	log *slog.Logger

	serial            string
	deviceID          [16]byte
	vendor, product   string
	revision          string
	thin              bool
	statePath         string
	blockSize         uint32
	blockShift        uint
	maxXferBlocks     uint32
	maxWriteSameBlks  uint64
	maxUnmapBlocks    uint32
	maxUnmapDescs     uint32
	maxCAWBlocks      uint32
	optimalXferBlocks uint32
	// atomic is non-nil when the volume offers atomic writes (atomic.go).
	atomic *atomicLimits
	// sanitize is the SANITIZE job and failure mode (sanitize.go).
	sanitize sanitizeState
	// alua is the ALUA configuration and states (alua.go).
	alua aluaState

	configuredWCE atomic.Bool // LUConfig.WriteCache or SetConfiguredWriteCache
	wce           atomic.Bool // current WCE
	// swp is the Control mode page's SWP bit (software write protect,
	// set by MODE SELECT, not saved): while set, commands that change the
	// medium fail with DATA PROTECT (opWritesMedium).
	swp      atomic.Bool
	savedWCE atomic.Bool // saved WCE (what the state file holds)
	wceSaved atomic.Bool // the state file holds a WCE (MODE SELECT SP=1)

	// taskSet orders tasks by attribute: SIMPLE (and ACA, untagged) hold
	// it shared, ORDERED exclusively, HEAD OF QUEUE not at all.
	taskSet sync.RWMutex

	nexusMu sync.Mutex
	nexuses atomic.Pointer[map[nexusKey]*nexusState]

	// reservationActive is true while a RESERVE(6)/(10) or persistent
	// reservation exists; while false no conflict check runs.
	reservationActive atomic.Bool
	resMu             sync.Mutex
	resv6             *nexusKey // RESERVE(6)/(10) holder
	pr                prState
	prShare           PRShare // nil: the reservations are this unit's alone
	// prNotices collects, during a PERSISTENT RESERVE OUT on a unit
	// whose reservations are shared, the unit attentions it raises, for
	// the other gateways (PRShare.Notify). Guarded by resMu.
	prNotices []PRNotice
	prevent   map[nexusKey]bool

	stateMu sync.Mutex

	// capacity is the size in bytes the unit reports (capacity.go);
	// capacityMu serializes its refreshes.
	capacity   atomic.Int64
	capacityMu sync.Mutex
}

// nexusKey identifies an I_T nexus.
type nexusKey struct {
	initiatorPort string
	targetPort    string
}

func keyOf(n *Nexus) nexusKey {
	if n == nil {
		return nexusKey{}
	}
	return nexusKey{initiatorPort: n.InitiatorPort, targetPort: n.TargetPort}
}

// nexusState is what a logical unit keeps per I_T nexus.
type nexusState struct {
	key   nexusKey
	nexus Nexus
	// streamCtx carries the stream name (blk.WithStream) for volume I/O.
	streamCtx context.Context

	pending atomic.Int32 // len(uas), readable without mu
	mu      sync.Mutex
	uas     []ASC

	// xcopy holds the EXTENDED COPY results of this nexus (xcopy.go),
	// lid4 those of POPULATE TOKEN and WRITE USING TOKEN (odx.go).
	xcopy xcopyState
	lid4  lid4State
}

// maxQueuedUA bounds the unit attention queue per nexus; when full, the
// oldest is dropped (SPC-4 allows reporting a single generic condition).
const maxQueuedUA = 16

func (ns *nexusState) raise(asc ASC) {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	for _, q := range ns.uas {
		if q == asc {
			return
		}
	}
	if len(ns.uas) >= maxQueuedUA {
		ns.uas = ns.uas[1:]
	}
	ns.uas = append(ns.uas, asc)
	ns.pending.Store(int32(len(ns.uas)))
}

// takeUA pops the oldest pending unit attention.
func (ns *nexusState) takeUA() (ASC, bool) {
	if ns.pending.Load() == 0 {
		return 0, false
	}
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if len(ns.uas) == 0 {
		return 0, false
	}
	asc := ns.uas[0]
	ns.uas = ns.uas[1:]
	ns.pending.Store(int32(len(ns.uas)))
	return asc, true
}

// clearUA drops a pending unit attention of the given code.
func (ns *nexusState) clearUA(asc ASC) {
	if ns.pending.Load() == 0 {
		return
	}
	ns.mu.Lock()
	defer ns.mu.Unlock()
	out := ns.uas[:0]
	for _, q := range ns.uas {
		if q != asc {
			out = append(out, q)
		}
	}
	ns.uas = out
	ns.pending.Store(int32(len(ns.uas)))
}

func newLU(t *Target, lun uint64, cfg LUConfig) (*LU, error) {
	if cfg.Volume == nil {
		return nil, fmt.Errorf("scsi: LUN %d: no volume: %w", lun, ErrInvalidConfig)
	}
	bs := cfg.Volume.BlockSize()
	if bs < 512 || bs > 65536 || bs&(bs-1) != 0 {
		return nil, fmt.Errorf("scsi: LUN %d: block size %d: %w", lun, bs, ErrInvalidConfig)
	}
	if cfg.Volume.Size() < int64(bs) || cfg.Volume.Size()%int64(bs) != 0 {
		return nil, fmt.Errorf("scsi: LUN %d: size %d not a positive multiple of %d: %w", lun, cfg.Volume.Size(), bs, ErrInvalidConfig)
	}
	lu := &LU{
		t: t, lun: lun, vol: cfg.Volume, log: cfg.Logger,
		serial: cfg.SerialNumber, deviceID: cfg.DeviceID,
		vendor: orDefault(cfg.VendorID, "CACHELUN"), product: orDefault(cfg.ProductID, "cached-lun"),
		revision: orDefault(cfg.Revision, "0001"), thin: cfg.Thin, statePath: cfg.StatePath,
		blockSize: uint32(bs), prevent: map[nexusKey]bool{},
	}
	if lu.log == nil {
		lu.log = t.log
	}
	for 1<<lu.blockShift != bs {
		lu.blockShift++
	}
	if lu.deviceID == ([16]byte{}) {
		// derived from the target name and LUN: two logical units never
		// share a VPD 83h identity (multipath would merge them)
		lu.deviceID = defaultIdentity(t.name, lun).DeviceID
	}
	if lu.serial == "" {
		lu.serial = fmt.Sprintf("%x", lu.deviceID[:8])
	}
	lu.maxXferBlocks = uint32(maxTransferBytes >> lu.blockShift)
	lu.optimalXferBlocks = uint32(optimalTransferBytes >> lu.blockShift)
	lu.maxWriteSameBlks = min(uint64(maxWriteSameBytes>>lu.blockShift), maxWriteSameBlocks)
	lu.maxUnmapBlocks = uint32(min(maxUnmapBytes>>lu.blockShift, maxUnmapBlocks))
	lu.maxUnmapDescs = maxUnmapDescriptors
	lu.maxCAWBlocks = maxCompareAndWriteBlocks
	lu.atomic = newAtomicLimits(cfg.Volume, uint64(bs), lu.maxXferBlocks)
	if err := lu.initALUA(cfg.ALUA); err != nil {
		return nil, err
	}
	lu.prShare = cfg.PR
	lu.capacity.Store(cfg.Volume.Size())
	empty := map[nexusKey]*nexusState{}
	lu.nexuses.Store(&empty)

	lu.SetSanitizeMaxBytesPerSec(cfg.SanitizeMaxBytesPerSec)
	lu.sanitize.clock = realSanitizeClock{}
	lu.configuredWCE.Store(cfg.WriteCache)
	lu.wce.Store(cfg.WriteCache)
	lu.savedWCE.Store(cfg.WriteCache)
	if err := lu.loadState(); err != nil {
		return nil, err
	}
	return lu, nil
}

// Limits advertised in VPD B0h. Transfers are bounded so a transport never
// has to hold more than maxTransferBytes for one command.
const (
	maxTransferBytes     = 8 << 20
	optimalTransferBytes = 1 << 20
	// A WRITE SAME that writes data goes through the cache like any
	// write; bounding it keeps one command well inside an initiator's
	// command timeout even on a slow backing device.
	maxWriteSameBytes        = 32 << 20
	maxWriteSameBlocks       = 0xffff
	maxUnmapBytes            = 1 << 30
	maxUnmapBlocks           = 1 << 20 // libiscsi and sd treat more as insane
	maxUnmapDescriptors      = 256
	maxCompareAndWriteBlocks = 1
)

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// LUN returns the logical unit number.
func (lu *LU) LUN() uint64 { return lu.lun }

// Volume returns the volume the logical unit serves.
func (lu *LU) Volume() Volume { return lu.vol }

// WriteCacheEnabled reports the current WCE bit.
func (lu *LU) WriteCacheEnabled() bool { return lu.wce.Load() }

// SetConfiguredWriteCache changes the configured WCE (LUConfig.WriteCache)
// of a running logical unit: the operator's setting, as opposed to the
// host's MODE SELECT.
//
// Precedence: a caching page the host saved (MODE SELECT with SP=1, kept in
// StatePath) wins; the new setting is then only recorded and the current
// WCE stays the host's. Otherwise the current (and reported saved) WCE
// becomes on, and when it changed every I_T nexus gets MODE PARAMETERS
// CHANGED so hosts re-read the caching page. A host's unsaved MODE SELECT
// (SP=0) does not survive this call. The default page (PC=10b) reports the
// configured value.
//
// Turning the write cache off waits for the commands in the task set to
// finish (as an ORDERED task would) and flushes the volume before any later
// write is treated as FUA-only: a host that sees WCE=0 stops sending
// SYNCHRONIZE CACHE, so every write it got GOOD for under WCE=1 must be
// durable first. If the flush fails, WCE stays on and the error is
// returned. HEAD OF QUEUE commands bypass the task set and are not waited
// for. The call reports whether the current WCE changed.
func (lu *LU) SetConfiguredWriteCache(ctx context.Context, on bool) (changed bool, err error) {
	lu.taskSet.Lock()
	defer lu.taskSet.Unlock()
	lu.configuredWCE.Store(on)
	if lu.wceSaved.Load() {
		return false, nil
	}
	if lu.wce.Load() == on {
		lu.savedWCE.Store(on)
		return false, nil
	}
	if !on {
		if err := lu.vol.Flush(ctx); err != nil {
			return false, fmt.Errorf("scsi: LUN %d: flush before turning the write cache off: %w", lu.lun, err)
		}
	}
	lu.wce.Store(on)
	lu.savedWCE.Store(on)
	lu.raiseAll(ASCModeParametersChanged, nil)
	return true, nil
}

// ConfiguredWriteCache reports the configured WCE: LUConfig.WriteCache or
// the last SetConfiguredWriteCache.
func (lu *LU) ConfiguredWriteCache() bool { return lu.configuredWCE.Load() }

// WriteCacheSavedByHost reports whether a host saved the caching page
// (MODE SELECT with SP=1), which takes precedence over the configured WCE.
func (lu *LU) WriteCacheSavedByHost() bool { return lu.wceSaved.Load() }

// nexus returns the state for n, creating it (with a POWER ON, RESET OR
// BUS DEVICE RESET OCCURRED unit attention) on first contact.
func (lu *LU) nexus(n *Nexus) *nexusState {
	k := keyOf(n)
	if ns := (*lu.nexuses.Load())[k]; ns != nil {
		return ns
	}
	lu.nexusMu.Lock()
	defer lu.nexusMu.Unlock()
	old := *lu.nexuses.Load()
	if ns := old[k]; ns != nil {
		return ns
	}
	ns := &nexusState{key: k, streamCtx: blk.WithStream(context.Background(), k.initiatorPort+"/lun"+strconv.FormatUint(lu.lun, 10))}
	if n != nil {
		ns.nexus = *n
	}
	ns.uas = append(ns.uas, ASCPowerOnReset)
	ns.pending.Store(1)
	next := make(map[nexusKey]*nexusState, len(old)+1)
	for kk, v := range old {
		next[kk] = v
	}
	next[k] = ns
	lu.nexuses.Store(&next)
	return ns
}

// raiseAll queues a unit attention on every known nexus except skip.
func (lu *LU) raiseAll(asc ASC, skip *nexusKey) {
	for k, ns := range *lu.nexuses.Load() {
		if skip != nil && k == *skip {
			continue
		}
		ns.raise(asc)
	}
}

// raiseFor queues a unit attention on the nexuses of initiator port ip.
func (lu *LU) raiseForInitiator(asc ASC, ip string) {
	for k, ns := range *lu.nexuses.Load() {
		if k.initiatorPort == ip {
			ns.raise(asc)
		}
	}
}

// reset applies a logical unit reset issued on nexus n. SAM-5 (LOGICAL
// UNIT RESET) establishes the BUS DEVICE RESET FUNCTION OCCURRED unit
// attention for every I_T nexus, the issuing one included: other commands
// of the issuer were aborted too, and multipath initiators rely on seeing it
// on the path that sent the reset.
func (lu *LU) reset(_ *Nexus) {
	lu.resMu.Lock()
	lu.resv6 = nil
	clear(lu.prevent)
	lu.updateReservationActiveLocked()
	lu.resMu.Unlock()
	lu.raiseAll(ASCBusDeviceResetOccurred, nil)
}

func (lu *LU) nexusLost(n *Nexus) {
	k := keyOf(n)
	lu.resMu.Lock()
	if lu.resv6 != nil && *lu.resv6 == k {
		lu.resv6 = nil
	}
	delete(lu.prevent, k)
	lu.updateReservationActiveLocked()
	lu.resMu.Unlock()

	lu.nexusMu.Lock()
	defer lu.nexusMu.Unlock()
	old := *lu.nexuses.Load()
	if _, ok := old[k]; !ok {
		return
	}
	next := make(map[nexusKey]*nexusState, len(old))
	for kk, v := range old {
		if kk != k {
			next[kk] = v
		}
	}
	lu.nexuses.Store(&next)
}

func (lu *LU) updateReservationActiveLocked() {
	lu.reservationActive.Store(lu.resv6 != nil || lu.pr.Reserved)
}

// checkRange validates an LBA range against the capacity.
func (lu *LU) checkRange(lba, n uint64) error {
	nb := lu.blocks()
	if lba > nb || n > nb-lba {
		return errLBAOutOfRange()
	}
	return nil
}
