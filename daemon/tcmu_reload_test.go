package daemon

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cachelun/cachelun/target/scsi"
	"github.com/cachelun/cachelun/target/tcmu"
)

// fakeTCMU stands in for the TCMU handler (which needs the kernel): the
// devices it reports and the write-cache settings it was given.
type fakeTCMU struct {
	mu      sync.Mutex
	devices []tcmu.DeviceInfo
	wce     map[string]bool
	calls   int
	err     error
}

func (f *fakeTCMU) Devices() []tcmu.DeviceInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]tcmu.DeviceInfo(nil), f.devices...)
}

func (f *fakeTCMU) SetConfiguredWriteCache(_ context.Context, cfgstring string, on bool) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.err != nil {
		return 0, f.err
	}
	if f.wce == nil {
		f.wce = map[string]bool{}
	}
	f.wce[cfgstring] = on
	n := 0
	for _, d := range f.devices {
		if d.Cfgstring == cfgstring {
			n++
		}
	}
	return n, nil
}

const tcmuOn = "\n[tcmu]\nenabled = true\ndbus = \"none\"\n"

// volumeV2 is an extra volume no LUN maps: with TCMU on it is exported
// there.
const volumeV2 = `
[[volume]]
name = "v2"
cache = "c0"
backing = "v2.img"
backing_size = "4MiB"
`

// startTCMUReloadDaemon starts the reload test daemon and makes it look as
// if its TCMU front end ran (the handler itself needs the kernel).
func startTCMUReloadDaemon(t *testing.T) (*Daemon, string, *fakeTCMU) {
	t.Helper()
	d, p := startReloadDaemon(t)
	writeFile(t, p, reloadConfig(filepath.Dir(p), "info", "writeback", false, tcmuOn))
	next, err := d.loadForReload(d.config())
	if err != nil {
		t.Fatal(err)
	}
	fe := &fakeTCMU{}
	d.mu.Lock()
	d.cfg = next
	d.mu.Unlock()
	d.tcmuX, d.tcmuFE = newTCMUExports(d, next), fe
	return d, p, fe
}

// Volumes join and leave the TCMU front end's exported set live; a volume
// bound to a device cannot be taken away: the reload is refused with the
// reason and nothing is applied.
func TestReloadTCMUVolumesLive(t *testing.T) {
	d, p, _ := startTCMUReloadDaemon(t)
	dir := filepath.Dir(p)
	ctx := context.Background()
	x := d.tcmuX
	if _, err := x.resolve("v2", 4<<20); !errors.Is(err, tcmu.ErrUnknownVolume) {
		t.Fatalf("v2 before it exists: %v", err)
	}

	writeFile(t, p, reloadConfig(dir, "info", "writeback", false, volumeV2+tcmuOn))
	plan, err := d.reload(ctx, false)
	if err != nil {
		t.Fatalf("adding a TCMU volume: %v", err)
	}
	if !strings.Contains(plan, "tcmu: volume added (v2)") {
		t.Errorf("plan lacks the TCMU volume:\n%s", plan)
	}
	if err := x.check("v2"); err != nil {
		t.Fatalf("targetcli check of the added volume: %v", err)
	}
	vol, err := x.resolve("v2", 4<<20) // `targetcli create ... cfgstring=v2`
	if err != nil {
		t.Fatalf("binding the added volume: %v", err)
	}
	if _, err := x.resolve("v0", 8<<20); !errors.Is(err, tcmu.ErrUnknownVolume) {
		t.Errorf("v0 is an iSCSI LUN, yet TCMU may bind it: %v", err)
	}

	// v2 backs a device: removing it, or mapping it as an iSCSI LUN, is
	// refused, in a dry run too, and changes nothing
	removeV2 := reloadConfig(dir, "debug", "writeback", false, tcmuOn)
	mapV2 := reloadConfig(dir, "debug", "writeback", false, volumeV2+tcmuOn+`
[[target]]
iqn = "iqn.2026-11.io.cachelun:v2"
portals = ["127.0.0.1:3260"]

[[target.lun]]
lun = 0
volume = "v2"
`)
	for _, file := range []string{removeV2, mapV2} {
		writeFile(t, p, file)
		for _, dry := range []bool{true, false} {
			_, err := d.reload(ctx, dry)
			if !errors.Is(err, errTCMUVolumeBound) || !strings.Contains(err.Error(), "v2") {
				t.Fatalf("dry run %v: reload taking v2 from its device: %v", dry, err)
			}
		}
		if _, ok := d.eng.volume("v2"); !ok || x.check("v2") != nil || d.level.Level() != 0 || len(d.targetNames()) != 1 {
			t.Fatal("a refused reload changed the daemon")
		}
	}

	// once the device is gone (targetcli delete) v2 can go
	x.release("v2", vol)
	writeFile(t, p, removeV2)
	if _, err := d.reload(ctx, false); err != nil {
		t.Fatalf("removing the unbound volume: %v", err)
	}
	if _, ok := d.eng.volume("v2"); ok || x.check("v2") == nil {
		t.Error("v2 still there")
	}
}

// A failing reload puts the exported set back.
func TestReloadTCMUVolumesRollBack(t *testing.T) {
	d, p, _ := startTCMUReloadDaemon(t)
	dir := filepath.Dir(p)
	bad := reloadConfig(dir, "info", "writeback", false, volumeV2+tcmuOn+`
[[volume]]
name = "v3"
cache = "c0"
backing = "missing/v3.img"
`)
	writeFile(t, p, bad)
	if _, err := d.reload(context.Background(), false); err == nil || !strings.Contains(err.Error(), "rolled back") {
		t.Fatalf("failing reload: %v", err)
	}
	if err := d.tcmuX.check("v2"); err == nil {
		t.Error("v2 stays exported over TCMU after the rollback")
	}
}

// write_cache changes reach the mapped iSCSI LUN and the TCMU devices live
// and roll back with a failed reload.
func TestReloadWriteCacheLive(t *testing.T) {
	d, p, fe := startTCMUReloadDaemon(t)
	dir := filepath.Dir(p)
	ctx := context.Background()
	d.mu.RLock()
	lu := d.targets["iqn.2026-11.io.cachelun:unit"].LU(0)
	d.mu.RUnlock()
	if !lu.WriteCacheEnabled() {
		t.Fatal("LUN 0 starts without the write cache")
	}
	nexus := &scsi.Nexus{InitiatorName: "iqn.test:h", InitiatorPort: "iqn.test:h,i,0x1", TargetPort: "t,1"}
	tur := func() scsi.Response {
		return d.targets["iqn.2026-11.io.cachelun:unit"].Execute(ctx, &scsi.Command{Nexus: nexus, CDB: make([]byte, 6)})
	}
	tur() // power-on unit attention
	if r := tur(); r.Status != scsi.StatusGood {
		t.Fatalf("TEST UNIT READY: %#x", r.Status)
	}

	wceOff := func(tail string) string {
		s := reloadConfig(dir, "info", "writeback", false, tail+tcmuOn)
		return strings.Replace(s, "mode = \"writeback\"\n", "mode = \"writeback\"\nwrite_cache = false\n", 1)
	}
	writeFile(t, p, wceOff(""))
	plan, err := d.reload(ctx, false)
	if err != nil || !strings.Contains(plan, "volume v0: write_cache modified true -> false") {
		t.Fatalf("reload: %v\n%s", err, plan)
	}
	if lu.WriteCacheEnabled() {
		t.Fatal("mapped LUN kept WCE=1 after write_cache = false")
	}
	if r := tur(); r.Status != scsi.StatusCheckCondition || r.Sense[12] != 0x2a || r.Sense[13] != 0x01 {
		t.Errorf("no MODE PARAMETERS CHANGED after the reload: %#x % x", r.Status, r.Sense)
	}
	if on, ok := fe.wce["v0"]; !ok || on {
		t.Errorf("TCMU devices of v0 not told: %v %v", on, ok)
	}
	if d.tcmuX.writeCache("v0") {
		t.Error("a TCMU device started now would get WCE=1")
	}

	// back on, but a later step fails: WCE goes back off
	writeFile(t, p, reloadConfig(dir, "info", "writeback", false, tcmuOn+`
[[volume]]
name = "v3"
cache = "c0"
backing = "missing/v3.img"
`))
	if _, err := d.reload(ctx, false); err == nil || !strings.Contains(err.Error(), "rolled back") {
		t.Fatalf("failing reload: %v", err)
	}
	if lu.WriteCacheEnabled() || fe.wce["v0"] || d.tcmuX.writeCache("v0") {
		t.Errorf("rollback left WCE on: LUN %v, TCMU %v/%v", lu.WriteCacheEnabled(), fe.wce["v0"], d.tcmuX.writeCache("v0"))
	}

	// the TCMU handler failing to apply it fails the reload
	fe.mu.Lock()
	fe.err = errors.New("flush failed")
	fe.mu.Unlock()
	writeFile(t, p, reloadConfig(dir, "info", "writeback", false, tcmuOn))
	if _, err := d.reload(ctx, false); err == nil || !strings.Contains(err.Error(), "flush failed") {
		t.Fatalf("reload with a failing TCMU device: %v", err)
	}
	if lu.WriteCacheEnabled() {
		t.Error("LUN kept the new WCE of a failed reload")
	}
	if got := d.config().Volumes[0].WriteCache; got == nil || *got {
		t.Error("configuration replaced by a failed reload")
	}
}

// TCMU devices are listed as sessions, and their I/O lands in the
// per-volume latency histograms like that of iSCSI LUNs.
func TestTCMUSessionsAndLatency(t *testing.T) {
	d, p, fe := startTCMUReloadDaemon(t)
	ctx := context.Background()
	writeFile(t, p, reloadConfig(filepath.Dir(p), "info", "writeback", false, volumeV2+tcmuOn))
	if _, err := d.reload(ctx, false); err != nil {
		t.Fatal(err)
	}
	vol, err := d.tcmuX.resolve("v2", 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	fe.mu.Lock()
	fe.devices = []tcmu.DeviceInfo{{ConfigDir: "user_0/v2", Cfgstring: "v2", UIO: 3, SizeBytes: 4 << 20, InFlight: 2}}
	fe.mu.Unlock()

	var tcmuRows []string
	for _, s := range (&adminBackend{d: d}).Sessions() {
		if s.Transport == "tcmu" {
			tcmuRows = append(tcmuRows, s.Target+" "+s.Volume+" "+s.ID)
			if s.InFlight != 2 {
				t.Errorf("in flight %d, want 2", s.InFlight)
			}
		}
	}
	if len(tcmuRows) != 1 || tcmuRows[0] != "user_0/v2 v2 uio3" {
		t.Errorf("TCMU session rows %q", tcmuRows)
	}

	// what the handler does with the volume it resolved: a logical unit
	// of its own target executing the host's commands
	st := scsi.NewTarget(scsi.TargetConfig{Name: "tcmu:user_0/v2"})
	if _, err := st.AddLU(0, scsi.LUConfig{Volume: vol, WriteCache: true}); err != nil {
		t.Fatal(err)
	}
	labels := func(op string) map[string]string { return map[string]string{"volume": "v2", "op": op} }
	writes0 := metricSum(t, d, "cachelun_volume_op_duration_seconds", labels("write"))
	reads0 := metricSum(t, d, "cachelun_volume_op_duration_seconds", labels("read"))
	nexus := &scsi.Nexus{InitiatorPort: "tcmu", TargetPort: "tcmu"}
	st.Execute(ctx, &scsi.Command{Nexus: nexus, CDB: make([]byte, 6)}) // power-on unit attention
	for i := range 3 {
		write := []byte{0x2a, 0, 0, 0, 0, byte(i), 0, 0, 1, 0}
		if r := st.Execute(ctx, &scsi.Command{Nexus: nexus, CDB: write, DataOut: make([]byte, 512)}); r.Status != scsi.StatusGood {
			t.Fatalf("WRITE: %#x % x", r.Status, r.Sense)
		}
		read := []byte{0x28, 0, 0, 0, 0, byte(i), 0, 0, 1, 0}
		if r := st.Execute(ctx, &scsi.Command{Nexus: nexus, CDB: read, DataInLen: 512}); r.Status != scsi.StatusGood {
			t.Fatalf("READ: %#x % x", r.Status, r.Sense)
		}
	}
	if got := metricSum(t, d, "cachelun_volume_op_duration_seconds", labels("write")) - writes0; got != 3 {
		t.Errorf("write histogram of v2 moved by %v, want 3", got)
	}
	if got := metricSum(t, d, "cachelun_volume_op_duration_seconds", labels("read")) - reads0; got != 3 {
		t.Errorf("read histogram of v2 moved by %v, want 3", got)
	}
}
