package tcmu

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/cachelun/cachelun/internal/memvol"
	"github.com/cachelun/cachelun/internal/testkit"
	"github.com/cachelun/cachelun/target/scsi"
)

// The configured WCE of a live device changes through the handler: the
// write cache going off flushes the volume first, the host gets MODE
// PARAMETERS CHANGED and later writes are FUA. Devices of other volumes
// are not touched.
func TestHandlerSetConfiguredWriteCache(t *testing.T) {
	vol, _ := memvol.New(1<<20, 512)
	r := newRig(t, vol, 1<<20, mbFlagOOOC|mbFlagReadLen)
	r.clearUA()
	if c := r.do(testkit.Write10(0, 1), make([]byte, 512), 0); c.status != 0 {
		t.Fatalf("WRITE: %#x", c.status)
	}
	if n, err := r.h.SetConfiguredWriteCache(context.Background(), "other", false); err != nil || n != 0 {
		t.Fatalf("other volume: %d devices, %v", n, err)
	}
	if !modeSenseWCE(r) {
		t.Fatal("WCE changed for another volume's setting")
	}
	flushes, _, _, _ := vol.Counters()
	n, err := r.h.SetConfiguredWriteCache(context.Background(), "db1", false)
	if err != nil || n != 1 {
		t.Fatalf("SetConfiguredWriteCache: %d devices, %v", n, err)
	}
	if after, _, _, _ := vol.Counters(); after != flushes+1 {
		t.Fatalf("%d flushes when the write cache went off, want 1", after-flushes)
	}
	c := r.do([]byte{0x00, 0, 0, 0, 0, 0}, nil, 0)
	if key, asc, ascq := senseKey(c); c.status != byte(scsi.StatusCheckCondition) || key != 6 || asc != 0x2a || ascq != 0x01 {
		t.Fatalf("no MODE PARAMETERS CHANGED: status %#x sense %x/%02x/%02x", c.status, key, asc, ascq)
	}
	if modeSenseWCE(r) {
		t.Fatal("WCE still on")
	}
	_, fua, _, _ := vol.Counters()
	if c := r.do(testkit.Write10(0, 1), make([]byte, 512), 0); c.status != 0 {
		t.Fatalf("WRITE: %#x", c.status)
	}
	if _, after, _, _ := vol.Counters(); after != fua+1 {
		t.Fatal("write with WCE=0 was not FUA")
	}
}

// A device started after Config.DeviceWriteCache is set takes its
// volume's WCE from it rather than from Config.WriteCache.
func TestDeviceWriteCachePerVolume(t *testing.T) {
	vol, _ := memvol.New(1<<20, 512)
	r := newRig(t, vol, 1<<20, mbFlagOOOC|mbFlagReadLen)
	r.h.cfg.DeviceWriteCache = func(cfg string) bool { return cfg != "db2" }

	name := uioName{hba: 0, object: "vol2", subtype: "cachelun", cfg: "db2"}
	dir := filepath.Join(r.h.configfs, name.configDir())
	writeFile(t, filepath.Join(dir, "attrib", "dev_size"), "0")
	r2 := &rig{t: t, h: r.h, k: newFakeKernel(64<<10, 512, 4096, mbFlagOOOC|mbFlagReadLen), port: newFakePort(), dir: dir}
	vol2, _ := memvol.New(1<<20, 512)
	sv, err := newSizedVolume(vol2, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.h.startDevice(name, 1, dir, sv, r2.port, r2.k.mm, func() {}); err != nil {
		t.Fatal(err)
	}
	r2.clearUA()
	if modeSenseWCE(r2) {
		t.Fatal("WCE on although the volume's setting is off")
	}
	r.clearUA()
	if !modeSenseWCE(r) {
		t.Fatal("the first device lost its WCE")
	}
}
