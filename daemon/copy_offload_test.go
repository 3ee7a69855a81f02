package daemon

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cachelun/cachelun/target/scsi"
)

// TestCopyOffloadReachesEngine starts a daemon with two volumes of one
// cache exported as two LUNs and runs EXTENDED COPY and POPULATE TOKEN +
// WRITE USING TOKEN through the SCSI target the daemon built: the copies
// reach the engine's CopyFrom (through the admin latency wrapper, a
// blk.Unwrapper) and share the source's cached data instead of moving it.
func TestCopyOffloadReachesEngine(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	const iqn = "iqn.2026-11.io.cachelun:copy"
	src := fmt.Sprintf(`
[global]
data_dir = %q
admin_socket = "admin.sock"
metrics_listen = "off"

[[cache]]
name = "c0"
path = "cache.img"
size = "64MiB"
segment_size = "1MiB"

[[volume]]
name = "v0"
cache = "c0"
backing = "v0.img"
backing_size = "8MiB"
mode = "writeback"

[[volume]]
name = "v1"
cache = "c0"
backing = "v1.img"
backing_size = "8MiB"
mode = "writeback"

[[target]]
iqn = %q
portals = ["127.0.0.1:3260"]

[[target.lun]]
lun = 0
volume = "v0"

[[target.lun]]
lun = 1
volume = "v1"
`, dir, iqn)
	p := filepath.Join(dir, "c.toml")
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(p, "", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d, err := startDaemon(ctx, cfg, "127.0.0.1:0", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := d.shutdown(sctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	}()
	d.mu.Lock()
	tgt := d.targets[iqn]
	d.mu.Unlock()
	if tgt == nil {
		t.Fatal("target not built")
	}
	nx := &scsi.Nexus{InitiatorName: "iqn.test:host", InitiatorPort: "iqn.test:host,i,0x000000000001", TargetPort: iqn + ",t,0x0001", RelativePortID: 1}
	exec := func(lun uint64, cdb, out []byte, in uint32) scsi.Response {
		t.Helper()
		return tgt.Execute(ctx, &scsi.Command{Nexus: nx, LUN: lun, CDB: cdb, DataOut: out, DataInLen: in})
	}
	good := func(what string, r scsi.Response) {
		t.Helper()
		if r.Status != scsi.StatusGood {
			t.Fatalf("%s: status %#x sense % x", what, r.Status, r.Sense)
		}
	}
	for lun := range uint64(2) { // the power-on unit attention
		for range 4 {
			exec(lun, []byte{0x00, 0, 0, 0, 0, 0}, nil, 0)
		}
	}
	v0, _ := d.eng.cacheVolume("v0")
	v1, _ := d.eng.cacheVolume("v1")
	data := bytes.Repeat([]byte("cachelun copy offload 0123456789"), (1<<20)/32)
	if err := v0.WriteAt(ctx, data, 0, false); err != nil {
		t.Fatal(err)
	}

	// EXTENDED COPY (LID1): v0 [0, 1 MiB) to v1 at 2 MiB.
	cscd := func(vol string) []byte {
		c := make([]byte, 32)
		c[0], c[4], c[5], c[7] = 0xe4, 0x01, 0x03, 16
		naa := scsi.LUNIdentity(iqn, vol).NAA()
		copy(c[8:], naa[:])
		c[30] = 0x02 // block size 512
		return c
	}
	seg := make([]byte, 28)
	seg[0] = 0x02
	binary.BigEndian.PutUint16(seg[2:], 0x18)
	binary.BigEndian.PutUint16(seg[4:], 0) // source: CSCD 0
	binary.BigEndian.PutUint16(seg[6:], 1) // destination: CSCD 1
	binary.BigEndian.PutUint16(seg[10:], 2048)
	binary.BigEndian.PutUint64(seg[12:], 0)
	binary.BigEndian.PutUint64(seg[20:], 4096)
	hdr := make([]byte, 16)
	hdr[1] = 3 << 3 // list identifier not used
	binary.BigEndian.PutUint16(hdr[2:], 64)
	binary.BigEndian.PutUint32(hdr[8:], 28)
	params := append(append(append(hdr, cscd("v0")...), cscd("v1")...), seg...)
	cdb := make([]byte, 16)
	cdb[0] = 0x83
	binary.BigEndian.PutUint32(cdb[10:], uint32(len(params)))
	good("EXTENDED COPY", exec(0, cdb, params, 0))
	got := make([]byte, len(data))
	if err := v1.ReadAt(ctx, got, 2<<20); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("v1 after EXTENDED COPY: %v, equal %v", err, bytes.Equal(got, data))
	}
	if s := v1.Stats(); s.CopySharedBytes != 1<<20 {
		t.Fatalf("EXTENDED COPY: the engine shared %d bytes, moved %d, want 1 MiB shared", s.CopySharedBytes, s.CopyMovedBytes)
	}

	// POPULATE TOKEN on v0 [0, 1 MiB), WRITE USING TOKEN into v1 at 4 MiB.
	tokenCDB := func(sa byte, plen int) []byte {
		c := make([]byte, 16)
		c[0], c[1] = 0x83, sa
		binary.BigEndian.PutUint32(c[6:], 9) // list identifier
		binary.BigEndian.PutUint32(c[10:], uint32(plen))
		return c
	}
	rng := func(lba uint64, n uint32) []byte {
		r := make([]byte, 16)
		binary.BigEndian.PutUint64(r, lba)
		binary.BigEndian.PutUint32(r[8:], n)
		return r
	}
	pp := make([]byte, 16)
	binary.BigEndian.PutUint16(pp[0:], 14+16)
	binary.BigEndian.PutUint16(pp[14:], 16)
	pp = append(pp, rng(0, 2048)...)
	good("POPULATE TOKEN", exec(0, tokenCDB(0x10, len(pp)), pp, 0))
	rrti := make([]byte, 16)
	rrti[0], rrti[1] = 0x84, 0x07
	binary.BigEndian.PutUint32(rrti[2:], 9)
	binary.BigEndian.PutUint32(rrti[10:], 4096)
	r := exec(0, rrti, nil, 4096)
	good("RECEIVE ROD TOKEN INFORMATION", r)
	tok := r.Data[38 : 38+512]
	wp := make([]byte, 536)
	binary.BigEndian.PutUint16(wp[0:], 534+16)
	copy(wp[16:528], tok)
	binary.BigEndian.PutUint16(wp[534:], 16)
	wp = append(wp, rng(8192, 2048)...)
	good("WRITE USING TOKEN", exec(1, tokenCDB(0x11, len(wp)), wp, 0))
	if err := v1.ReadAt(ctx, got, 4<<20); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("v1 after WRITE USING TOKEN: %v, equal %v", err, bytes.Equal(got, data))
	}
	if s := v1.Stats(); s.CopySharedBytes != 2<<20 {
		t.Fatalf("WRITE USING TOKEN: the engine shared %d bytes in all, moved %d, want 2 MiB shared", s.CopySharedBytes, s.CopyMovedBytes)
	}
}
