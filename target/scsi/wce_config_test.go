package scsi

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/memvol"
	"github.com/cachelun/cachelun/internal/testkit"
)

// durabilityVolume tracks which acknowledged writes are durable: a
// non-FUA write stays volatile until the next Flush. A FUA write that
// completes while earlier acknowledged writes are still volatile is what
// a write-cache switch must never allow (a crash would keep the later
// write and lose the earlier ones). Writes to gateOff block until gate is
// closed.
type durabilityVolume struct {
	*memvol.Volume
	gateOff int64
	gate    chan struct{}
	entered chan struct{}

	mu               sync.Mutex
	volatile         int
	fuaWhileVolatile int
	flushErr         error
}

func newDurabilityVolume(t *testing.T) *durabilityVolume {
	t.Helper()
	mv, err := memvol.New(testBlocks*testBS, testBS)
	if err != nil {
		t.Fatal(err)
	}
	return &durabilityVolume{Volume: mv, gateOff: -1}
}

func (v *durabilityVolume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if off == v.gateOff && v.gate != nil {
		close(v.entered)
		<-v.gate
	}
	if err := v.Volume.WriteAt(ctx, p, off, fua); err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if fua {
		if v.volatile > 0 {
			v.fuaWhileVolatile++
		}
	} else {
		v.volatile++
	}
	return nil
}

func (v *durabilityVolume) Flush(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.flushErr != nil {
		return v.flushErr
	}
	v.volatile = 0
	return v.Volume.Flush(ctx)
}

func (v *durabilityVolume) state() (volatile, fuaWhileVolatile int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.volatile, v.fuaWhileVolatile
}

func newDurabilityFixture(t *testing.T, mod func(*LUConfig)) (*fixture, *durabilityVolume) {
	t.Helper()
	dv := newDurabilityVolume(t)
	tgt := NewTarget(TargetConfig{Name: "iqn.test:tgt"})
	cfg := LUConfig{Volume: dv, SerialNumber: "SER0002", WriteCache: true}
	if mod != nil {
		mod(&cfg)
	}
	lu, err := tgt.AddLU(0, cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, tgt: tgt, lu: lu, vol: dv.Volume}
	f.clearUA(nexusA)
	f.clearUA(nexusB)
	return f, dv
}

func currentWCE(t *testing.T, f *fixture, n *Nexus, pc byte) bool {
	t.Helper()
	return cachingPage(t, modeSense6(f, n, pageCaching, pc))[2]&0x04 != 0
}

// The configured WCE changes the current WCE of a unit whose host saved
// nothing: off flushes first, every nexus is told, later writes are FUA;
// on again needs no flush.
func TestSetConfiguredWriteCache(t *testing.T) {
	f, dv := newDurabilityFixture(t, nil)
	ctx := context.Background()
	f.good(f.exec(nexusA, testkit.CDB10(0x2a, 0, 10, 1), pattern(testBS, 1), 0))
	if v, _ := dv.state(); v != 1 {
		t.Fatalf("WCE=1 write: %d volatile writes, want 1", v)
	}
	fl0, _, _, _ := f.vol.Counters()
	changed, err := f.lu.SetConfiguredWriteCache(ctx, false)
	if err != nil || !changed {
		t.Fatalf("SetConfiguredWriteCache(false) = %v, %v", changed, err)
	}
	if fl1, _, _, _ := f.vol.Counters(); fl1 != fl0+1 {
		t.Fatalf("%d flushes when the write cache went off, want 1", fl1-fl0)
	}
	if v, _ := dv.state(); v != 0 {
		t.Fatal("acknowledged WCE=1 write still volatile after the switch")
	}
	if f.lu.WriteCacheEnabled() || f.lu.ConfiguredWriteCache() {
		t.Fatal("WCE still on")
	}
	// every nexus, none issued the change
	f.sense(f.exec(nexusA, []byte{0, 0, 0, 0, 0, 0}, nil, 0), SenseUnitAttention, ASCModeParametersChanged)
	f.sense(f.exec(nexusB, []byte{0, 0, 0, 0, 0, 0}, nil, 0), SenseUnitAttention, ASCModeParametersChanged)
	if currentWCE(t, f, nexusA, pcCurrent) {
		t.Fatal("MODE SENSE current page still shows WCE=1")
	}
	if currentWCE(t, f, nexusA, pcDefault) {
		t.Fatal("default page still shows WCE=1; it reports the configured write_cache")
	}
	_, fua0, _, _ := f.vol.Counters()
	f.good(f.exec(nexusA, testkit.CDB10(0x2a, 0, 11, 1), pattern(testBS, 2), 0))
	if _, fua1, _, _ := f.vol.Counters(); fua1 != fua0+1 {
		t.Fatal("write after the switch to WCE=0 is not FUA")
	}
	if _, bad := dv.state(); bad != 0 {
		t.Fatal("a FUA write completed while earlier acknowledged writes were volatile")
	}

	// the same value again: no change, no unit attention
	if changed, err := f.lu.SetConfiguredWriteCache(ctx, false); err != nil || changed {
		t.Fatalf("repeat: %v, %v", changed, err)
	}
	f.good(f.exec(nexusB, []byte{0, 0, 0, 0, 0, 0}, nil, 0))

	fl2, _, _, _ := f.vol.Counters()
	if changed, err := f.lu.SetConfiguredWriteCache(ctx, true); err != nil || !changed {
		t.Fatalf("SetConfiguredWriteCache(true) = %v, %v", changed, err)
	}
	if fl3, _, _, _ := f.vol.Counters(); fl3 != fl2 {
		t.Fatal("turning the write cache on flushed")
	}
	f.sense(f.exec(nexusB, []byte{0, 0, 0, 0, 0, 0}, nil, 0), SenseUnitAttention, ASCModeParametersChanged)
	_, fua2, _, _ := f.vol.Counters()
	f.good(f.exec(nexusB, testkit.CDB10(0x2a, 0, 12, 1), pattern(testBS, 3), 0))
	if _, fua3, _, _ := f.vol.Counters(); fua3 != fua2 || !f.lu.WriteCacheEnabled() {
		t.Fatal("WCE=1 write still FUA")
	}
}

// A write in flight when the write cache goes off is waited for and
// flushed before the switch; a write queued behind the switch is FUA and
// never completes while an earlier write is volatile.
func TestSetConfiguredWriteCacheWaitsForWritesInFlight(t *testing.T) {
	f, dv := newDurabilityFixture(t, nil)
	dv.gateOff = 20 * testBS
	dv.gate, dv.entered = make(chan struct{}), make(chan struct{})
	ctx := context.Background()

	inFlight := make(chan Response, 1)
	go func() { inFlight <- f.exec(nexusA, testkit.CDB10(0x2a, 0, 20, 1), pattern(testBS, 4), 0) }()
	<-dv.entered // the write holds the task set and waits in the volume

	switched := make(chan error, 1)
	go func() {
		_, err := f.lu.SetConfiguredWriteCache(ctx, false)
		switched <- err
	}()
	select {
	case err := <-switched:
		t.Fatalf("the switch returned (%v) while a write of the task set was in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	if !f.lu.WriteCacheEnabled() {
		t.Fatal("WCE went off while a write issued under WCE=1 was in flight")
	}
	close(dv.gate)
	f.good(<-inFlight)
	if err := <-switched; err != nil {
		t.Fatal(err)
	}
	if v, _ := dv.state(); v != 0 {
		t.Fatal("the in-flight write is volatile after the switch to WCE=0")
	}
	f.sense(f.exec(nexusB, testkit.CDB10(0x2a, 0, 21, 1), pattern(testBS, 5), 0), SenseUnitAttention, ASCModeParametersChanged)
	f.good(f.exec(nexusB, testkit.CDB10(0x2a, 0, 21, 1), pattern(testBS, 5), 0))
	if v, bad := dv.state(); v != 0 || bad != 0 {
		t.Fatalf("after the switch: %d volatile writes, %d FUA writes completed over volatile ones", v, bad)
	}
}

// A failed flush keeps the write cache on and tells nobody.
func TestSetConfiguredWriteCacheFlushFails(t *testing.T) {
	f, dv := newDurabilityFixture(t, nil)
	dv.flushErr = errors.New("backing device gone")
	changed, err := f.lu.SetConfiguredWriteCache(context.Background(), false)
	if err == nil || changed || !errors.Is(err, dv.flushErr) {
		t.Fatalf("SetConfiguredWriteCache with a failing flush = %v, %v", changed, err)
	}
	if !f.lu.WriteCacheEnabled() || !currentWCE(t, f, nexusA, pcCurrent) {
		t.Fatal("WCE off although the flush failed")
	}
	f.good(f.exec(nexusA, []byte{0, 0, 0, 0, 0, 0}, nil, 0))
}

// A caching page the host saved wins over the configuration, also on the
// next start; a host's unsaved change does not.
func TestConfiguredWriteCacheHostPrecedence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lun0.state")
	f, _ := newDurabilityFixture(t, func(c *LUConfig) { c.StatePath = path })
	ctx := context.Background()
	page := func() []byte {
		p := cachingPage(t, modeSense6(f, nexusA, pageCaching, pcCurrent))
		sel := append([]byte{0, 0, 0, 0}, p...)
		sel[4] &^= 0x80
		return sel
	}

	// unsaved (SP=0): WCE=0 by the host, then the configuration says on
	sel := page()
	sel[6] &^= 0x04
	f.good(f.exec(nexusA, []byte{0x15, 0x10, 0, 0, byte(len(sel)), 0}, sel, 0))
	f.clearUA(nexusB)
	if changed, err := f.lu.SetConfiguredWriteCache(ctx, true); err != nil || !changed || !f.lu.WriteCacheEnabled() {
		t.Fatalf("configuration over an unsaved host change: %v, %v, WCE %v", changed, err, f.lu.WriteCacheEnabled())
	}
	f.clearUA(nexusA)
	f.clearUA(nexusB)

	// saved (SP=1): WCE=1 by the host, then the configuration says off
	sel = page()
	sel[6] |= 0x04
	f.good(f.exec(nexusA, []byte{0x15, 0x11, 0, 0, byte(len(sel)), 0}, sel, 0))
	fl0, _, _, _ := f.vol.Counters()
	changed, err := f.lu.SetConfiguredWriteCache(ctx, false)
	if err != nil || changed {
		t.Fatalf("configuration over a saved host choice: %v, %v", changed, err)
	}
	if !f.lu.WriteCacheEnabled() || !f.lu.WriteCacheSavedByHost() || f.lu.ConfiguredWriteCache() {
		t.Fatalf("WCE %v saved-by-host %v configured %v", f.lu.WriteCacheEnabled(), f.lu.WriteCacheSavedByHost(), f.lu.ConfiguredWriteCache())
	}
	if fl1, _, _, _ := f.vol.Counters(); fl1 != fl0 {
		t.Fatal("flushed although WCE did not change")
	}
	f.good(f.exec(nexusB, []byte{0, 0, 0, 0, 0, 0}, nil, 0))

	// the next start keeps the host's choice too
	f2, _ := newDurabilityFixture(t, func(c *LUConfig) { c.StatePath = path; c.WriteCache = false })
	if !f2.lu.WriteCacheEnabled() {
		t.Fatal("saved WCE=1 lost against write_cache=false at the next start")
	}
}

// MODE SELECT turning the write cache off flushes first: when the flush
// fails the command fails and the cache stays on (no write is treated as
// FUA-only while earlier acknowledged writes are volatile).
func TestModeSelectWCEOffFlushesFirst(t *testing.T) {
	f, dv := newDurabilityFixture(t, nil)
	p := cachingPage(t, modeSense6(f, nexusA, pageCaching, pcCurrent))
	sel := append([]byte{0, 0, 0, 0}, p...)
	sel[4] &^= 0x80
	sel[6] &^= 0x04
	dv.flushErr = errors.New("backing device gone")
	r := f.exec(nexusA, []byte{0x15, 0x10, 0, 0, byte(len(sel)), 0}, sel, 0)
	if r.Status == StatusGood {
		t.Fatal("MODE SELECT WCE=0 succeeded although the flush failed")
	}
	if !f.lu.WriteCacheEnabled() {
		t.Fatal("WCE off although the flush failed")
	}
	dv.flushErr = nil
	f.good(f.exec(nexusA, []byte{0x15, 0x10, 0, 0, byte(len(sel)), 0}, sel, 0))
	if f.lu.WriteCacheEnabled() {
		t.Fatal("WCE still on after a good MODE SELECT")
	}
	if v, _ := dv.state(); v != 0 {
		t.Fatal("acknowledged WCE=1 writes still volatile after the switch")
	}
}
