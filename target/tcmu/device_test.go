package tcmu

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cachelun/cachelun/internal/memvol"
	"github.com/cachelun/cachelun/internal/testkit"
	"github.com/cachelun/cachelun/target/scsi"
)

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// rig is one device served over a simulated kernel.
type rig struct {
	t        testing.TB
	h        *Handler
	k        *fakeKernel
	port     *fakePort
	od       *openDevice
	dir      string
	released atomic.Int32
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func newRig(t testing.TB, vol scsi.Volume, size int64, flags uint16) *rig {
	t.Helper()
	h, err := New(Config{Logger: testLogger(t), WriteCache: true, ShutdownGrace: 2 * time.Second,
		Resolve: func(string, int64) (scsi.Volume, error) { return vol, nil }})
	if err != nil {
		t.Fatal(err)
	}
	h.configfs = t.TempDir()
	name := uioName{hba: 0, object: "vol", subtype: "cachelun", cfg: "db1"}
	dir := filepath.Join(h.configfs, name.configDir())
	writeFile(t, filepath.Join(dir, "attrib", "dev_size"), "0")
	r := &rig{t: t, h: h, k: newFakeKernel(64<<10, 512, 4096, flags), port: newFakePort(), dir: dir}
	sv, err := newSizedVolume(vol, size)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.startDevice(name, 0, dir, sv, r.port, r.k.mm, func() { r.released.Add(1) }); err != nil {
		t.Fatal(err)
	}
	r.od = h.devices[0]
	t.Cleanup(func() { h.closeAll() })
	return r
}

// run queues the commands, raises the interrupt and waits until the kernel
// reaped all of them; it returns them in completion order.
func (r *rig) run(cmds ...*fakeCmd) []*fakeCmd {
	r.t.Helper()
	r.port.interrupt()
	var done []*fakeCmd
	deadline := time.After(20 * time.Second)
	for len(done) < len(cmds) {
		select {
		case <-r.port.kicks:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			r.t.Fatalf("only %d of %d commands completed", len(done), len(cmds))
		}
		got, err := r.k.reap()
		if err != nil {
			r.t.Fatal(err)
		}
		done = append(done, got...)
	}
	return done
}

func (r *rig) queue(cdb []byte, out []byte, inLen int) *fakeCmd {
	r.t.Helper()
	c, err := r.k.queue(cdb, out, inLen)
	if err != nil {
		r.t.Fatal(err)
	}
	return c
}

func (r *rig) do(cdb []byte, out []byte, inLen int) *fakeCmd {
	r.t.Helper()
	return r.run(r.queue(cdb, out, inLen))[0]
}

func senseKey(c *fakeCmd) (key, asc, ascq byte) { return c.sense[2] & 0xf, c.sense[12], c.sense[13] }

// clearUA consumes the power-on unit attention of a fresh logical unit.
func (r *rig) clearUA() {
	r.t.Helper()
	c := r.do([]byte{0x00, 0, 0, 0, 0, 0}, nil, 0)
	if c.status == byte(scsi.StatusCheckCondition) {
		c = r.do([]byte{0x00, 0, 0, 0, 0, 0}, nil, 0)
	}
	if c.status != 0 {
		r.t.Fatalf("TEST UNIT READY: status %#x sense % x", c.status, c.sense[:18])
	}
}

func TestDeviceWriteReadBack(t *testing.T) {
	for _, flags := range []uint16{mbFlagOOOC | mbFlagReadLen, mbFlagOOOC} {
		vol, _ := memvol.New(16<<20, 512)
		r := newRig(t, vol, 16<<20, flags)
		r.clearUA()
		pattern := make([]byte, 128<<10)
		for i := range pattern {
			pattern[i] = byte(i*7 + i>>9)
		}
		// 128 KiB over 32 data blocks handed out in reverse: many iovecs.
		w := r.do(testkit.Write10(100, 256), pattern, 0)
		if w.status != 0 || len(w.iovs) < 2 {
			t.Fatalf("WRITE(10): status %#x sense % x iovecs %d", w.status, w.sense[:18], len(w.iovs))
		}
		back := make([]byte, len(pattern))
		if err := vol.ReadAt(context.Background(), back, 100*512); err != nil || !bytes.Equal(back, pattern) {
			t.Fatalf("volume content differs after WRITE (err %v)", err)
		}
		rd := r.do(testkit.Read10(100, 256), nil, len(pattern))
		if rd.status != 0 || !bytes.Equal(rd.data, pattern) {
			t.Fatalf("READ(10): status %#x, data equal %v", rd.status, bytes.Equal(rd.data, pattern))
		}
		// One block: one iovec, served without a bounce buffer.
		if d := r.h.Devices(); len(d) != 1 || d[0].ConfigDir != "user_0/vol" || d[0].Cfgstring != "db1" || d[0].SizeBytes != 16<<20 || d[0].Commands < 3 || d[0].InFlight != 0 {
			t.Fatalf("Devices() = %+v", d)
		}
		one := r.do(testkit.Read10(101, 8), nil, 4096)
		if one.status != 0 || len(one.iovs) != 1 || !bytes.Equal(one.data, pattern[512:512+4096]) {
			t.Fatalf("READ(10) of one data block: status %#x iovecs %d", one.status, len(one.iovs))
		}
	}
}

// TestDeviceShortDataIn checks that a command returning less than its
// buffer neither leaks stale data-area bytes (no READ_LEN) nor claims more
// than it produced (READ_LEN).
func TestDeviceShortDataIn(t *testing.T) {
	inquiry := []byte{0x12, 0, 0, 0x10, 0, 0} // allocation length 4096
	for _, flags := range []uint16{mbFlagOOOC, mbFlagOOOC | mbFlagReadLen} {
		vol, _ := memvol.New(1<<20, 512)
		r := newRig(t, vol, 1<<20, flags)
		c := r.do(inquiry, nil, 4096)
		if c.status != 0 {
			t.Fatalf("INQUIRY status %#x", c.status)
		}
		n := int(c.data[4]) + 5
		if flags&mbFlagReadLen != 0 {
			if len(c.data) != n || c.uflags&uflagReadLen == 0 {
				t.Fatalf("READ_LEN: %d bytes returned, INQUIRY has %d", len(c.data), n)
			}
		} else if len(c.data) != 4096 || bytes.Count(c.data[n:], []byte{0}) != 4096-n {
			t.Fatalf("no READ_LEN: tail of the buffer not zeroed (%d bytes, % x...)", len(c.data), c.data[n:n+8])
		}
		if !bytes.Equal(c.data[8:16], []byte("CACHELUN")) {
			t.Fatalf("INQUIRY vendor %q", c.data[8:16])
		}
	}
}

// gatedVolume blocks each read until its gate opens, so tests control the
// order in which commands finish.
type gatedVolume struct {
	*memvol.Volume
	mu    sync.Mutex
	gates map[int64]chan struct{}
}

func (g *gatedVolume) gate(off int64) chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	c, ok := g.gates[off]
	if !ok {
		c = make(chan struct{})
		g.gates[off] = c
	}
	return c
}

func (g *gatedVolume) ReadAt(ctx context.Context, p []byte, off int64) error {
	select {
	case <-g.gate(off):
	case <-ctx.Done():
		return ctx.Err()
	}
	return g.Volume.ReadAt(ctx, p, off)
}

func TestDeviceManyInFlightOutOfOrder(t *testing.T) {
	mv, _ := memvol.New(8<<20, 512)
	vol := &gatedVolume{Volume: mv, gates: map[int64]chan struct{}{}}
	r := newRig(t, vol, 8<<20, mbFlagOOOC|mbFlagReadLen)
	r.clearUA()
	const n = 48
	for i := range n {
		blk := bytes.Repeat([]byte{byte(i + 1)}, 4096)
		if err := mv.WriteAt(context.Background(), blk, int64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	var cmds []*fakeCmd
	for i := range n {
		cmds = append(cmds, r.queue(testkit.Read10(uint32(i*8), 8), nil, 4096))
	}
	r.port.interrupt()
	// Every command must be in flight at once before any finishes.
	testkit.WaitFor(t, 10*time.Second, "every command in flight", func() bool { return r.od.dev.ring.inFlight() == n })
	order := rand.New(rand.NewPCG(3, 4)).Perm(n)
	go func() {
		for _, i := range order {
			close(vol.gate(int64(i) * 4096))
			time.Sleep(200 * time.Microsecond)
		}
	}()
	done := r.run(cmds...)
	inOrder := true
	for i, c := range done {
		if c.status != 0 {
			t.Fatalf("cmd %d: status %#x", c.id, c.status)
		}
		lba := binary.BigEndian.Uint32(c.cdb[2:])
		want := bytes.Repeat([]byte{byte(lba/8 + 1)}, 4096)
		if !bytes.Equal(c.data, want) {
			t.Fatalf("cmd %d (LBA %d): wrong data %x...", c.id, lba, c.data[:4])
		}
		if c != cmds[i] {
			inOrder = false
		}
	}
	if inOrder {
		t.Fatal("completions arrived in queue order; out-of-order completion was not exercised")
	}
}

func TestDeviceSerialReadLazily(t *testing.T) {
	vol, _ := memvol.New(1<<20, 512)
	r := newRig(t, vol, 1<<20, mbFlagOOOC|mbFlagReadLen)
	// targetcli writes the serial after enable, before the first command.
	writeFile(t, filepath.Join(r.dir, "wwn", "vpd_unit_serial"), "T10 VPD Unit Serial Number: 0123456789abcdef\n")
	c := r.do([]byte{0x12, 1, 0x80, 0, 255, 0}, nil, 255)
	if c.status != 0 || string(c.data[4:]) != "0123456789abcdef" {
		t.Fatalf("VPD 80: status %#x data %q", c.status, c.data)
	}
}

func readCapacity16(r *rig) (lastLBA uint64, c *fakeCmd) {
	c = r.do([]byte{0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}, nil, 32)
	if c.status == 0 {
		lastLBA = binary.BigEndian.Uint64(c.data)
	}
	return lastLBA, c
}

func TestDeviceReconfigSize(t *testing.T) {
	vol, _ := memvol.New(8<<20, 512)
	r := newRig(t, vol, 4<<20, mbFlagOOOC|mbFlagReadLen)
	r.clearUA()
	if last, c := readCapacity16(r); last != 4<<20/512-1 {
		t.Fatalf("capacity: last LBA %d status %#x (device must show dev_size, not the volume size)", last, c.status)
	}
	// Beyond dev_size is out of range even though the volume is larger.
	if c := r.do(testkit.Read10(4<<20/512, 1), nil, 512); c.status != byte(scsi.StatusCheckCondition) {
		t.Fatalf("read past dev_size: status %#x", c.status)
	}
	ev := nlEvent{cmd: nlReconfigDevice, uioName: "tcm-user/0/vol/cachelun/db1", minor: 0, devSize: 6 << 20, hasDevSize: true, hasDeviceID: true}
	if st := r.h.handleEvent(ev); st != 0 {
		t.Fatalf("grow: status %d", st)
	}
	_, c := readCapacity16(r)
	if key, asc, ascq := senseKey(c); c.status != byte(scsi.StatusCheckCondition) || key != 6 || asc != 0x2a || ascq != 0x09 {
		t.Fatalf("after resize: status %#x sense %x/%x/%x, want UNIT ATTENTION CAPACITY DATA HAS CHANGED", c.status, key, asc, ascq)
	}
	if last, _ := readCapacity16(r); last != 6<<20/512-1 {
		t.Fatalf("capacity after resize: last LBA %d", last)
	}
	ev.devSize = 16 << 20
	if st := r.h.handleEvent(ev); st != -int32(unix.ENOSPC) {
		t.Fatalf("grow beyond the volume: status %d, want -ENOSPC", st)
	}
	ev.hasDevSize, ev.hasDevCfg, ev.devCfg = false, true, "cachelun/other"
	if st := r.h.handleEvent(ev); st != -int32(unix.EOPNOTSUPP) {
		t.Fatalf("dev_config change: status %d, want -EOPNOTSUPP", st)
	}
}

func modeSenseWCE(r *rig) bool {
	r.t.Helper()
	c := r.do([]byte{0x1a, 0x08, 0x08, 0, 255, 0}, nil, 255)
	if c.status != 0 {
		r.t.Fatalf("MODE SENSE: status %#x sense % x", c.status, c.sense[:18])
	}
	page := c.data[4+int(c.data[3]):]
	if page[0]&0x3f != 0x08 {
		r.t.Fatalf("MODE SENSE returned page %#x", page[0])
	}
	return page[2]&0x04 != 0
}

func TestDeviceReconfigWriteCache(t *testing.T) {
	vol, _ := memvol.New(1<<20, 512)
	r := newRig(t, vol, 1<<20, mbFlagOOOC|mbFlagReadLen)
	r.clearUA()
	if !modeSenseWCE(r) {
		t.Fatal("WCE off although Config.WriteCache is set")
	}
	ev := nlEvent{cmd: nlReconfigDevice, uioName: "tcm-user/0/vol/cachelun/db1", hasWriteCache: true, writeCache: false}
	if st := r.h.handleEvent(ev); st != 0 {
		t.Fatalf("status %d", st)
	}
	r.clearUA()
	if modeSenseWCE(r) {
		t.Fatal("WCE still on after emulate_write_cache=0")
	}
	// With WCE=0 every write reaches the volume as FUA.
	_, before, _, _ := vol.Counters()
	if c := r.do(testkit.Write10(0, 1), make([]byte, 512), 0); c.status != 0 {
		t.Fatalf("WRITE: %#x", c.status)
	}
	if _, after, _, _ := vol.Counters(); after != before+1 {
		t.Fatal("write with WCE=0 was not FUA")
	}
}

func TestHandleEventRefusals(t *testing.T) {
	resolveErr := map[string]error{
		"missing": ErrUnknownVolume,
		"big":     ErrVolumeTooSmall,
		"busy":    ErrVolumeInUse,
	}
	var resolved []string
	h, err := New(Config{Logger: testLogger(t), Resolve: func(cfg string, size int64) (scsi.Volume, error) {
		resolved = append(resolved, cfg)
		if err := resolveErr[cfg]; err != nil {
			return nil, err
		}
		return memvol.New(1<<20, 512)
	}})
	if err != nil {
		t.Fatal(err)
	}
	h.configfs = t.TempDir()
	h.sysUIO = t.TempDir()
	for _, obj := range []string{"a", "b", "c", "d", "e"} {
		size := "1048576"
		if obj == "e" {
			size = "0"
		}
		writeFile(t, filepath.Join(h.configfs, "user_0", obj, "attrib", "dev_size"), size)
	}
	for _, tc := range []struct {
		cmd  uint8
		name string
		want int32
	}{
		{nlAddedDevice, "tcm-user/0/a/file//var/x.img", -int32(unix.ENOENT)},
		{nlAddedDevice, "tcm-user/0/a/cachelun/missing", -int32(unix.ENOENT)},
		{nlAddedDevice, "tcm-user/0/b/cachelun/big", -int32(unix.ENOSPC)},
		{nlAddedDevice, "tcm-user/0/c/cachelun/busy", -int32(unix.EBUSY)},
		{nlAddedDevice, "tcm-user/0/d/cachelun/", -int32(unix.ENOENT)},
		{nlAddedDevice, "tcm-user/0/e/cachelun/zero", -int32(unix.EINVAL)},
		{nlAddedDevice, "garbage", -int32(unix.EINVAL)},
		// Resolve succeeds but there is no UIO device to map.
		{nlAddedDevice, "tcm-user/0/a/cachelun/good", -int32(unix.ENOENT)},
		{nlRemovedDevice, "tcm-user/0/a/file//var/x.img", 0},
		{nlRemovedDevice, "tcm-user/0/a/cachelun/never-added", 0},
		{nlReconfigDevice, "tcm-user/0/a/cachelun/never-added", -int32(unix.ENODEV)},
	} {
		if got := h.handleEvent(nlEvent{cmd: tc.cmd, uioName: tc.name, minor: 9, hasDeviceID: true}); got != tc.want {
			t.Errorf("%s %s: status %d, want %d", nlCommandName(tc.cmd), tc.name, got, tc.want)
		}
	}
	if len(resolved) != 4 {
		t.Errorf("Resolve called for %v; foreign, malformed and size-less devices must not reach it", resolved)
	}
	if len(h.devices) != 0 {
		t.Fatalf("refused devices registered: %v", h.devices)
	}
}

func TestReleaseOnShutdownAfterDrain(t *testing.T) {
	mv, _ := memvol.New(1<<20, 512)
	vol := &gatedVolume{Volume: mv, gates: map[int64]chan struct{}{}}
	r := newRig(t, vol, 1<<20, mbFlagOOOC|mbFlagReadLen)
	r.od.dev.grace = 100 * time.Millisecond
	r.clearUA()
	r.queue(testkit.Read10(0, 1), nil, 512) // blocks until cancelled
	r.port.interrupt()
	testkit.WaitFor(t, 10*time.Second, "the command in flight", func() bool { return r.od.dev.ring.inFlight() == 1 })
	start := time.Now()
	r.h.closeAll()
	if r.released.Load() != 1 {
		t.Fatalf("Release called %d times", r.released.Load())
	}
	done, err := r.k.reap()
	if err != nil || len(done) != 1 || done[0].status != byte(scsi.StatusTaskAborted) && done[0].status != byte(scsi.StatusCheckCondition) {
		t.Fatalf("blocked command after shutdown: %v err %v (took %v)", done, err, time.Since(start))
	}
	if flushes, _, _, _ := mv.Counters(); flushes == 0 {
		t.Fatal("volume not flushed when the device closed")
	}
}

func TestFindProcess(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "1", "comm"), "init\n")
	writeFile(t, filepath.Join(dir, "4242", "comm"), "tcmu-runner\n")
	writeFile(t, filepath.Join(dir, "self", "comm"), "tcmu-runner\n")
	if pid, ok := findProcess(dir, "tcmu-runner"); !ok || pid != 4242 {
		t.Fatalf("findProcess = %d %v", pid, ok)
	}
	if _, ok := findProcess(dir, "tgtd"); ok {
		t.Fatal("found a process that does not run")
	}
}

func TestRunRefusesNextToRunner(t *testing.T) {
	h, _ := New(Config{Resolve: func(string, int64) (scsi.Volume, error) { return nil, ErrUnknownVolume }})
	h.procDir = t.TempDir()
	writeFile(t, filepath.Join(h.procDir, "77", "comm"), "tcmu-runner\n")
	if err := h.Run(context.Background()); !errors.Is(err, ErrRunnerActive) {
		t.Fatalf("Run next to tcmu-runner: %v", err)
	}
}

func TestDataOutDirection(t *testing.T) {
	for op, want := range map[byte]bool{0x2a: true, 0x8a: true, 0x0a: true, 0xaa: true, 0x89: true, 0x42: true, 0x41: true, 0x93: true, 0x15: true, 0x55: true,
		0x28: false, 0x88: false, 0x12: false, 0x25: false, 0x9e: false, 0x1a: false, 0x00: false, 0x35: false, 0xa0: false} {
		if got := dataOut([]byte{op, 0, 0, 0, 0, 0, 0, 0, 0, 0}); got != want {
			t.Errorf("dataOut(%#02x) = %v, want %v", op, got, want)
		}
	}
}

func TestSizedVolume(t *testing.T) {
	vol, _ := memvol.New(1<<20, 4096)
	if _, err := newSizedVolume(vol, 2<<20); !errors.Is(err, ErrVolumeTooSmall) {
		t.Fatalf("larger than volume: %v", err)
	}
	sv, err := newSizedVolume(vol, 10000)
	if err != nil || sv.Size() != 8192 {
		t.Fatalf("size %d err %v: want rounded down to whole blocks", sv.Size(), err)
	}
}

// TestReadoptionBlocksResetsAndUnblocks checks the configfs actions of a
// re-adoption when the UIO device cannot be opened: the device was blocked,
// its ring reset, and it is unblocked again (never left blocked), and the
// volume is released.
func TestReadoptionBlocksResetsAndUnblocks(t *testing.T) {
	var released atomic.Int32
	vol, _ := memvol.New(1<<20, 512)
	h, _ := New(Config{Logger: testLogger(t),
		Resolve: func(string, int64) (scsi.Volume, error) { return vol, nil },
		Release: func(string, scsi.Volume) { released.Add(1) }})
	h.configfs, h.sysUIO, h.devDir = t.TempDir(), t.TempDir(), t.TempDir()
	dir := filepath.Join(h.configfs, "user_2", "db")
	writeFile(t, filepath.Join(dir, "attrib", "dev_size"), "1048576\n")
	writeFile(t, filepath.Join(dir, "action", "block_dev"), "")
	writeFile(t, filepath.Join(dir, "action", "reset_ring"), "")
	writeFile(t, filepath.Join(h.sysUIO, "uio5", "name"), "tcm-user/2/db/cachelun/db\n")
	writeFile(t, filepath.Join(h.sysUIO, "uio5", "maps", "map0", "size"), "0x40800000\n")
	writeFile(t, filepath.Join(h.sysUIO, "uio6", "name"), "tcm-user/2/other/file//x\n")
	h.adoptExisting() // /dev/uio5 does not exist in devDir
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(dir, "action", name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if read("reset_ring") != "1" || read("block_dev") != "0" {
		t.Fatalf("reset_ring=%q block_dev=%q; want the ring reset and the device unblocked", read("reset_ring"), read("block_dev"))
	}
	if released.Load() != 1 || len(h.devices) != 0 {
		t.Fatalf("released %d, devices %d", released.Load(), len(h.devices))
	}
}
