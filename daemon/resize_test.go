package daemon

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cachelun/cachelun/admin"
	"github.com/cachelun/cachelun/admin/coreadapter"
	"github.com/cachelun/cachelun/internal/testkit"
	"github.com/cachelun/cachelun/target/scsi"
	"github.com/cachelun/cachelun/target/tcmu"
)

func (f *fakeTCMU) GrowDevices(_ context.Context, cfgstring string, oldSize, newSize int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for i := range f.devices {
		if f.devices[i].Cfgstring == cfgstring && f.devices[i].SizeBytes == oldSize {
			f.devices[i].SizeBytes = newSize
			n++
		}
	}
	return n, nil
}

var resizeNexus = &scsi.Nexus{InitiatorName: "iqn.test:grow", InitiatorPort: "iqn.test:grow,i,0x1", TargetPort: "iqn.2026-11.io.cachelun:unit,t,0x1", RelativePortID: 1}

func execLUN(t *testing.T, st *scsi.Target, cdb, out []byte, inLen uint32) scsi.Response {
	t.Helper()
	return st.Execute(context.Background(), &scsi.Command{Nexus: resizeNexus, LUN: 3, CDB: cdb, DataOut: out, DataInLen: inLen})
}

func readCapacity16(t *testing.T, st *scsi.Target) (blocks uint64, r scsi.Response) {
	t.Helper()
	r = execLUN(t, st, []byte{0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}, nil, 32)
	if r.Status == scsi.StatusGood {
		blocks = binary.BigEndian.Uint64(r.Data[0:8]) + 1
	}
	return blocks, r
}

// isUA reports whether r is CHECK CONDITION / UNIT ATTENTION with asc.
func isUA(r scsi.Response, asc scsi.ASC) bool {
	if r.Status != scsi.StatusCheckCondition || len(r.Sense) < 14 {
		return false
	}
	return r.Sense[2]&0x0f == byte(scsi.SenseUnitAttention) && r.Sense[12] == byte(asc>>8) && r.Sense[13] == byte(asc)
}

// TestBackingGrowsLive: a file backing grown with truncate under the
// running daemon grows its volume within the poll interval; the LUN
// reports CAPACITY DATA HAS CHANGED, then the new capacity, and the blocks
// past the old end read and write. A shrink is reported (backing state
// "shrunk") and changes nothing; the grown size survives a restart.
func TestBackingGrowsLive(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	opts := Options{Logger: testLogger(t), ListenOverride: "127.0.0.1:0", BackingPollInterval: 5 * time.Millisecond}
	d, err := start(ctx, testConfig(t, dir, "writeback"), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if d != nil {
			d.shutdown(context.Background())
		}
	}()
	st := d.targets["iqn.2026-11.io.cachelun:unit"]
	for range 2 { // the power-on unit attention
		execLUN(t, st, []byte{0, 0, 0, 0, 0, 0}, nil, 0)
	}
	if n, r := readCapacity16(t, st); r.Status != scsi.StatusGood || n != 8<<20/512 {
		t.Fatalf("capacity before: %d blocks, status %#x", n, r.Status)
	}
	// A TCMU device showing the whole volume (set while the watcher is
	// stopped: the front end is set once, before it starts).
	fe := &fakeTCMU{devices: []tcmu.DeviceInfo{{Cfgstring: "v0", SizeBytes: 8 << 20}}}
	d.stopResizeWatch()
	d.tcmuFE = fe
	d.startResizeWatch(opts.BackingPollInterval)

	backing := filepath.Join(dir, "v0.img")
	if err := os.Truncate(backing, 24<<20); err != nil {
		t.Fatal(err)
	}
	vol, _ := d.eng.cacheVolume("v0")
	// The TCMU devices are the watcher's last step after a growth.
	testkit.WaitFor(t, 10*time.Second, "the volume and its devices to grow to 24 MiB", func() bool {
		return vol.Size() == 24<<20 && fe.Devices()[0].SizeBytes == 24<<20
	})
	if _, r := readCapacity16(t, st); !isUA(r, scsi.ASCCapacityDataChanged) {
		t.Fatalf("first command after the growth: status %#x sense % x, want CAPACITY DATA HAS CHANGED", r.Status, r.Sense)
	}
	if n, r := readCapacity16(t, st); r.Status != scsi.StatusGood || n != 24<<20/512 {
		t.Fatalf("capacity after: %d blocks, status %#x", n, r.Status)
	}
	data := bytes.Repeat([]byte{0xc3}, 4096)
	lba := uint64(24<<20-4096) / 512
	if r := execLUN(t, st, testkit.CDB16(0x8a, 0x08, lba, 8), data, 0); r.Status != scsi.StatusGood { // FUA
		t.Fatalf("write past the old end: status %#x sense % x", r.Status, r.Sense)
	}
	r := execLUN(t, st, testkit.CDB16(0x88, 0, lba, 8), nil, 4096)
	if r.Status != scsi.StatusGood || !bytes.Equal(r.Data, data) {
		t.Fatalf("read past the old end: status %#x", r.Status)
	}

	// Shrunk under the daemon: reported, nothing truncated. The write past
	// the old end is written back first: writeback of it after the
	// truncate would make the file 24 MiB again.
	if err := vol.Drain(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	av := adminVolume{VolumeAPI: coreadapter.Volume(vol, "c0"), d: d}
	if err := os.Truncate(backing, 16<<20); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "the shrunk backing to be reported", func() bool {
		b := av.Backing()
		return b != nil && b.State == admin.BackingShrunk && b.Size == 16<<20
	})
	if vol.Size() != 24<<20 {
		t.Fatalf("volume size %d after the backing shrank", vol.Size())
	}
	if n, r := readCapacity16(t, st); r.Status != scsi.StatusGood || n != 24<<20/512 {
		t.Fatalf("capacity after the shrink: %d blocks, status %#x sense % x", n, r.Status, r.Sense)
	}
	if err := os.Truncate(backing, 24<<20); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "the shrink report to clear", func() bool { return av.Backing() == nil })

	// Restart: the file is used whole (backing_size only sized it), and
	// the cache's record of 24 MiB matches it.
	if err := d.shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	d, err = start(ctx, testConfig(t, dir, "writeback"), opts)
	if err != nil {
		d = nil
		t.Fatal(err)
	}
	v2, _ := d.eng.volume("v0")
	got := make([]byte, 4096)
	if v2.Size() != 24<<20 {
		t.Fatalf("size after restart %d", v2.Size())
	}
	if err := v2.ReadAt(ctx, got, 24<<20-4096); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("data past the old end after restart: %v", err)
	}
}
