package tcmu

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cachelun/cachelun/internal/memvol"
	"github.com/cachelun/cachelun/target/scsi"
)

// grownVolume shows the first size bytes of a larger volume.
type grownVolume struct {
	scsi.Volume
	size atomic.Int64
}

func (g *grownVolume) Size() int64 { return g.size.Load() }

// TestGrowDevices: when the volume behind a device that showed all of it
// grows, GrowDevices writes the new dev_size to LIO, and the RECONFIG the
// kernel sends for it gives the device the new capacity with CAPACITY DATA
// HAS CHANGED; a device sized below its volume is left alone.
func TestGrowDevices(t *testing.T) {
	ctx := context.Background()
	mem, _ := memvol.New(16<<20, 512)
	vol := &grownVolume{Volume: mem}
	vol.size.Store(8 << 20)
	r := newRig(t, vol, 8<<20, mbFlagOOOC|mbFlagReadLen)
	r.clearUA()
	var writes atomic.Int32
	// The kernel: store the attribute, send RECONFIG_DEVICE, take the
	// size only if the handler answered 0.
	r.h.writeDevSize = func(dir string, size int64) error {
		writes.Add(1)
		ev := nlEvent{cmd: nlReconfigDevice, uioName: "tcm-user/0/vol/cachelun/db1", minor: 0, devSize: uint64(size), hasDevSize: true, hasDeviceID: true}
		if st := r.h.handleEvent(ev); st != 0 {
			return unix.Errno(-st)
		}
		return os.WriteFile(filepath.Join(dir, "attrib", "dev_size"), []byte(strconv.FormatInt(size, 10)), 0o644)
	}
	vol.size.Store(12 << 20)
	if n, err := r.h.GrowDevices(ctx, "other", 8<<20, 12<<20); n != 0 || err != nil || writes.Load() != 0 {
		t.Fatalf("GrowDevices of another cfgstring: %d, %v", n, err)
	}
	n, err := r.h.GrowDevices(ctx, "db1", 8<<20, 12<<20)
	if n != 1 || err != nil {
		t.Fatalf("GrowDevices: %d, %v", n, err)
	}
	b, _ := os.ReadFile(filepath.Join(r.dir, "attrib", "dev_size"))
	if strings.TrimSpace(string(b)) != strconv.Itoa(12<<20) {
		t.Fatalf("dev_size %q", b)
	}
	_, c := readCapacity16(r)
	if key, asc, ascq := senseKey(c); c.status != byte(scsi.StatusCheckCondition) || key != 6 || asc != 0x2a || ascq != 0x09 {
		t.Fatalf("after GrowDevices: status %#x sense %x/%x/%x, want UNIT ATTENTION CAPACITY DATA HAS CHANGED", c.status, key, asc, ascq)
	}
	if last, _ := readCapacity16(r); last != 12<<20/512-1 {
		t.Fatalf("capacity after GrowDevices: last LBA %d", last)
	}
	if d := r.h.Devices(); len(d) != 1 || d[0].SizeBytes != 12<<20 {
		t.Fatalf("devices %+v", d)
	}

	// The device now shows 12 MiB; a growth from a size it did not show
	// (it was configured smaller than the volume) leaves it alone.
	vol.size.Store(16 << 20)
	if n, err := r.h.GrowDevices(ctx, "db1", 14<<20, 16<<20); n != 0 || err != nil || writes.Load() != 1 {
		t.Fatalf("GrowDevices of a device sized below its volume: %d, %v (%d writes)", n, err, writes.Load())
	}
}
