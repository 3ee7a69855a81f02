//go:build ceph

package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/cephtest"
)

// The RBD tests run the daemon built with -tags ceph on volumes backed by
// images of the test process's throwaway cluster (needCeph).

// rbdImage creates an image of sizeMiB MiB named after the test and
// returns POOL/IMAGE. It is removed at cleanup, after the daemon stopped.
func rbdImage(t *testing.T, c *cephtest.Cluster, sizeMiB int) string {
	t.Helper()
	return rbdImageFrom(t, c, make([]byte, sizeMiB<<20))
}

// rbdImageFrom creates an image holding content (`rbd import`: zeroes are
// not written, the objects of ranges that are exist on the OSDs).
func rbdImageFrom(t *testing.T, c *cephtest.Cluster, content []byte) string {
	t.Helper()
	name := strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()) + "-" + strconv.FormatInt(time.Now().UnixNano()%1e6, 10)
	image := rbdPool + "/" + name
	src := filepath.Join(t.TempDir(), "content.img")
	if err := os.WriteFile(src, content, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Run(context.Background(), "rbd", "import", "--no-progress", src, image); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// a killed daemon's watch lingers for 30 s, and rbd rm waits
		// for it: an image still watched after 5 s is left to the
		// throwaway cluster
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if out, err := c.Command(ctx, "rbd", "rm", "--no-progress", image).CombinedOutput(); err != nil {
			t.Logf("leaving image %s: %v %s", image, err, out)
		}
	})
	return image
}

// rbdConfig writes a configuration with one volume "vol" on image (LUN 0),
// its admin socket in dir. extraVolume and extraCache are added to the
// volume's and the cache's tables.
func rbdConfig(t *testing.T, dir string, c *cephtest.Cluster, image, extraVolume, extraCache string) string {
	t.Helper()
	cfg := fmt.Sprintf(`[global]
admin_socket = "admin.sock"
metrics_listen = "off"

[[cache]]
name = "c0"
path = "cache.img"
size = "128MiB"
segment_size = "4MiB"
journal_flush_interval = "200ms"
%s
[[volume]]
name = "vol"
cache = "c0"
backing = "rbd:%s"
ceph_conf = %q
ceph_connect_timeout = "5s"
ceph_op_timeout = "5s"
%s
[[target]]
iqn = "iqn.2026-11.io.cachelun:rbd"
portals = ["127.0.0.1:3260"]

[[target.lun]]
lun = 0
volume = "vol"
`, extraCache, image, c.Conf, extraVolume)
	p := filepath.Join(dir, "cachelun.toml")
	if err := os.WriteFile(p, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// adminRun runs a cachelun admin command against the daemon of dir.
func adminRun(t *testing.T, dir string, args ...string) result {
	t.Helper()
	return runTool(t, 3*time.Minute, binaryPath, append(args, "--socket", filepath.Join(dir, "admin.sock"))...)
}

// drain writes the volume's dirty data back to the image, or fails.
func drain(t *testing.T, dir string) {
	t.Helper()
	if r := adminRun(t, dir, "volume", "drain", "vol"); r.exitCode != 0 || r.timedOut {
		t.Fatalf("volume drain: exit %d (timed out %v):\n%s", r.exitCode, r.timedOut, r.out)
	}
}

// rbdExport returns the image's content as `rbd export` reads it from the
// cluster: what really reached Ceph.
func rbdExport(t *testing.T, c *cephtest.Cluster, image string) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "export.img")
	if _, err := c.Run(context.Background(), "rbd", "export", "--no-progress", image, p); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// model is what the image must hold: the writes applied in order.
type model []byte

func (m model) write(off, n int64, pattern byte) {
	for i := off; i < off+n; i++ {
		m[i] = pattern
	}
}

// equal fails the test at the first byte where got differs.
func (m model) equal(t *testing.T, got []byte, what string) {
	t.Helper()
	if len(got) != len(m) {
		t.Fatalf("%s: %d bytes, want %d", what, len(got), len(m))
	}
	if i := firstDiff(m, got); i >= 0 {
		t.Fatalf("%s differs at byte %d (block %d): 0x%02x, want 0x%02x", what, i, i/512, got[i], m[i])
	}
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// TestRBDVolume: qemu-io patterns on an RBD volume (across an object
// boundary, write-zeroes, the last MiB, never-written blocks read from the
// image), the volume's size is the image's, status shows the backing; a
// drain, then `rbd export` holds exactly what was written.
func TestRBDVolume(t *testing.T) {
	needTools(t, "qemu-io", "iscsi-readcapacity16")
	c := needCeph(t)
	image := rbdImage(t, c, 64)
	dir := t.TempDir()
	d := startDaemon(t, dir, rbdConfig(t, dir, c, image, "", ""))
	url := d.url(0)
	rc := mustRun(t, toolTimeout, "iscsi-readcapacity16", url)
	if !strings.Contains(rc, "RETURNED LOGICAL BLOCK ADDRESS:131071") {
		t.Errorf("a 64 MiB image must be 131072 blocks of 512 bytes:\n%s", rc)
	}
	m := make(model, 64<<20)
	qemuIO(t, url,
		"write -P 0x11 0 1M",
		"write -P 0x22 4092k 8k", // across the first 4 MiB object boundary
		"write -P 0x33 10M 64k",
		"write -z 10256k 16k",
		"write -P 0x44 63M 1M",
		"flush",
		"read -P 0x11 0 1M", "read -P 0x22 4092k 8k", "read -P 0x33 10M 16k", "read -P 0 10256k 16k",
		"read -P 0x33 10272k 32k", "read -P 0x44 63M 1M", "read -P 0 2M 1M")
	m.write(0, 1<<20, 0x11)
	m.write(4092<<10, 8<<10, 0x22)
	m.write(10<<20, 64<<10, 0x33)
	m.write(10256<<10, 16<<10, 0)
	m.write(63<<20, 1<<20, 0x44)

	r := adminRun(t, dir, "volume", "show", "vol")
	if r.exitCode != 0 || !regexp.MustCompile(`backing:\s+rbd:`+regexp.QuoteMeta(image)+` OK`).MatchString(r.out) {
		t.Errorf("volume show does not report the backing OK:\n%s", r.out)
	}
	drain(t, dir)
	m.equal(t, rbdExport(t, c, image), "the image after a drain")
	d.stop()
}

// TestRBDRefusals: each reason an image cannot be served refuses the
// start, says which, in bounded time, and creates nothing (no cache file).
func TestRBDRefusals(t *testing.T) {
	c := needCeph(t)
	image := rbdImage(t, c, 16)
	// a daemon serving image: a second gateway must be refused
	owner := t.TempDir()
	d := startDaemon(t, owner, rbdConfig(t, owner, c, image, "", ""))

	unreachable := filepath.Join(t.TempDir(), "ceph.conf")
	if err := os.WriteFile(unreachable, []byte("[global]\nmon host = 127.0.0.1:1\nauth supported = none\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, image, extra, want string
	}{
		{"no pool", "nopool/img", "", "no such pool"},
		{"no image", rbdPool + "/noimage", "", "no such image"},
		{"unknown user", image, `ceph_user = "nobody"`, "permission denied"},
		{"unreachable", image, "", "cluster unreachable"},
		{"locked", image, "", "locked by another client"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := rbdConfig(t, dir, c, tc.image, tc.extra, "")
			if tc.name == "unreachable" {
				b, _ := os.ReadFile(cfg)
				b = bytes.Replace(b, []byte(strconv.Quote(c.Conf)), []byte(strconv.Quote(unreachable)), 1)
				if err := os.WriteFile(cfg, b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			start := time.Now()
			r := runTool(t, 2*time.Minute, binaryPath, "serve", "--config", cfg, "--data-dir", dir, "--listen", "127.0.0.1:0", "--metrics", "off")
			took := time.Since(start)
			if r.timedOut || r.exitCode != 1 || !strings.Contains(r.out, tc.want) {
				t.Fatalf("serve: exit %d (timed out %v) after %v, want exit 1 saying %q:\n%s", r.exitCode, r.timedOut, took, tc.want, r.out)
			}
			// ceph_connect_timeout is 5s; an open takes at most that
			// plus a few ceph_op_timeout
			if took > 40*time.Second {
				t.Errorf("the refusal took %v", took)
			}
			if _, err := os.Stat(filepath.Join(dir, "cache.img")); !os.IsNotExist(err) {
				t.Errorf("the cache file was created before the refusal: %v", err)
			}
			t.Logf("refused in %v: %s", took.Round(100*time.Millisecond), lastLine(r.out))
		})
	}
	d.stop()
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// ackedWrites runs qemu-io with FUA writes of 64 KiB at distinct offsets
// (pattern i%250+1 at i*64 KiB) and records each write qemu-io reports
// done: acknowledged by the daemon, durable (FUA).
type ackedWrites struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	done map[int64]byte // offset -> pattern
	out  bytes.Buffer
	eof  chan struct{}
}

var wrotePattern = regexp.MustCompile(`^wrote 65536/65536 bytes at offset (\d+)`)

func startWriteLoad(t *testing.T, url string, n int) *ackedWrites {
	t.Helper()
	// stdbuf: qemu-io's stdout is a pipe, and each line must arrive as
	// soon as the write completed
	args := []string{"-oL", "qemu-io", "-f", "raw"}
	for i := range n {
		args = append(args, "-c", fmt.Sprintf("write -f -P 0x%02x %d 64k", i%250+1, int64(i)<<16))
	}
	a := &ackedWrites{cmd: exec.Command("stdbuf", append(args, url)...), done: map[int64]byte{}, eof: make(chan struct{})}
	pr, err := a.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	a.cmd.Stderr = &a.out
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.cmd.Process.Kill()
		<-a.eof
		a.cmd.Wait()
	})
	go func() {
		defer close(a.eof)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if m := wrotePattern.FindStringSubmatch(sc.Text()); m != nil {
				off, _ := strconv.ParseInt(m[1], 10, 64)
				a.mu.Lock()
				a.done[off] = byte((off>>16)%250 + 1)
				a.mu.Unlock()
			}
		}
	}()
	return a
}

func (a *ackedWrites) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.done)
}

// stop kills qemu-io (this test's process, by its pid) and returns the
// writes it saw acknowledged.
func (a *ackedWrites) stop() map[int64]byte {
	a.cmd.Process.Kill()
	<-a.eof
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.done
}

// TestRBDKillUnderWriteLoad: SIGKILL of the daemon under a FUA write load;
// the restart takes the image over at once (it names its dead predecessor,
// whose lock and watch linger), every acknowledged write reads back, and
// after a drain the image holds them.
func TestRBDKillUnderWriteLoad(t *testing.T) {
	needTools(t, "qemu-io")
	c := needCeph(t)
	image := rbdImage(t, c, 64)
	dir := t.TempDir()
	d := startDaemon(t, dir, rbdConfig(t, dir, c, image, "", ""))
	load := startWriteLoad(t, d.url(0), 900)
	for deadline := time.Now().Add(2 * time.Minute); load.count() < 150; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d writes acknowledged in 2 minutes:\n%s", load.count(), load.out.String())
		}
	}
	d.kill()
	acked := load.stop()
	start := time.Now()
	d.restart()
	t.Logf("%d FUA writes acknowledged before the SIGKILL; restarted and serving in %v", len(acked), time.Since(start).Round(100*time.Millisecond))
	if took := time.Since(start); took > 25*time.Second {
		t.Errorf("the restart took %v: it waited for the dead daemon's lock to expire", took)
	}
	var reads []string
	m := make(model, 64<<20)
	for off, p := range acked {
		reads = append(reads, fmt.Sprintf("read -P 0x%02x %d 64k", p, off))
		m.write(off, 64<<10, p)
	}
	qemuIO(t, d.url(0), reads...)
	drain(t, dir)
	got := rbdExport(t, c, image)
	for off := range acked {
		if i := firstDiff(m[off:off+64<<10], got[off:off+64<<10]); i >= 0 {
			t.Fatalf("acknowledged write at %d: the image has 0x%02x at +%d, want 0x%02x", off, got[off+int64(i)], i, m[off])
		}
	}
	d.stop()
}

// TestRBDOSDOutage: the OSD stopped under the daemon. Writes the cache
// absorbs and read hits go on; a read miss fails (NOT READY) after
// ceph_op_timeout instead of hanging; the admin API answers and reports the
// backing degraded with the reason. The OSD back, writeback resumes without
// a restart: the drain finishes, the image holds everything, the backing
// is OK again.
func TestRBDOSDOutage(t *testing.T) {
	needTools(t, "qemu-io")
	c := needCeph(t)
	m := make(model, 64<<20)
	// data on the image the cache has never seen: reading it is a miss
	// that needs the OSD (a never-written object librbd answers itself)
	m.write(32<<20, 1<<20, 0x61)
	image := rbdImageFrom(t, c, m)
	dir := t.TempDir()
	// no sequential cutoff: the 4 MiB write must stay in the cache
	d := startDaemon(t, dir, rbdConfig(t, dir, c, image, `sequential_cutoff = "0"`, ""))
	url := d.url(0)
	qemuIO(t, url, "write -P 0x51 0 4M", "flush")
	m.write(0, 4<<20, 0x51)
	drain(t, dir)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := c.StopOSD(ctx); err != nil {
		t.Fatal(err)
	}
	osdUp := false
	defer func() {
		if !osdUp {
			c.StartOSD(context.Background())
		}
	}()
	start := time.Now()
	qemuIO(t, url, "write -P 0x52 8M 1M", "write -f -P 0x53 12M 64k", "flush", "read -P 0x51 0 4M", "read -P 0x52 8M 1M")
	m.write(8<<20, 1<<20, 0x52)
	m.write(12<<20, 64<<10, 0x53)
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("writes and read hits took %v with the OSD down; the cache must absorb them", took)
	}
	start = time.Now()
	r := runTool(t, 2*time.Minute, "qemu-io", "-f", "raw", "-c", "read -P 0x61 32M 64k", url)
	took := time.Since(start)
	if r.timedOut || !strings.Contains(r.out, "failed") || !strings.Contains(r.out, "NOT READY") {
		t.Fatalf("a read miss with the OSD down: exit %d (timed out %v) after %v, want NOT READY:\n%s", r.exitCode, r.timedOut, took, r.out)
	}
	t.Logf("read miss failed after %v: %s", took.Round(100*time.Millisecond), lastLine(r.out))
	if took > 60*time.Second {
		t.Errorf("the read miss took %v to fail (ceph_op_timeout is 5s)", took)
	}
	start = time.Now()
	r = adminRun(t, dir, "volume", "show", "vol")
	if r.exitCode != 0 || !strings.Contains(r.out, "DEGRADED") || !strings.Contains(r.out, "timed out") || time.Since(start) > 10*time.Second {
		t.Errorf("volume show during the outage (%v): want the backing DEGRADED, timed out:\n%s", time.Since(start), r.out)
	}
	// the outage lasts while writeback retries
	time.Sleep(5 * time.Second)
	if err := c.StartOSD(ctx); err != nil {
		t.Fatal(err)
	}
	osdUp = true
	drain(t, dir)
	m.equal(t, rbdExport(t, c, image), "the image after the outage and a drain")
	qemuIO(t, url, "read -P 0x61 32M 64k") // the miss works again
	r = adminRun(t, dir, "volume", "show", "vol")
	if !regexp.MustCompile(`backing:\s+rbd:\S+ OK`).MatchString(r.out) {
		t.Errorf("volume show after the outage: want the backing OK:\n%s", r.out)
	}
	d.stop()
}

// TestRBDContract6: contract C6 on an RBD image. Epochs of overlapping
// writes, each ended by a flush; the daemon is killed while writeback
// (throttled) is part way; the cache file is thrown away. The image alone
// must be a crash image that respects the flushes: for some epoch k,
// everything of the epochs before k, nothing of the epochs after k, and of
// epoch k any part.
func TestRBDContract6(t *testing.T) { contract6(t, false) }

// TestRBDContract6OSDRestart: the same with the OSD stopped and restarted
// while writeback is part way (its requests time out and are retried),
// then the daemon killed.
func TestRBDContract6OSDRestart(t *testing.T) { contract6(t, true) }

func contract6(t *testing.T, osdRestart bool) {
	needTools(t, "qemu-io")
	c := needCeph(t)
	image := rbdImage(t, c, 16)
	dir := t.TempDir()
	d := startDaemon(t, dir, rbdConfig(t, dir, c, image, "",
		"\n[cache.writeback]\nmax_bytes_per_sec = \"1MiB\"\nidle_after = \"100ms\"\n"))
	const epochs, perEpoch, slots, slot = 24, 8, 32, 64 << 10
	var cmds []string
	wrote := make([][]int, slots) // the epochs that wrote each slot, in order
	for e := 1; e <= epochs; e++ {
		seen := map[int]bool{}
		for j := range perEpoch {
			s := (e*7 + j*5) % slots
			if seen[s] {
				continue
			}
			seen[s] = true
			cmds = append(cmds, fmt.Sprintf("write -P 0x%02x %d 64k", e, s*slot))
			wrote[s] = append(wrote[s], e)
		}
		cmds = append(cmds, "flush")
	}
	qemuIO(t, d.url(0), cmds...)
	time.Sleep(3 * time.Second) // writeback part way: about 3 of 12 MiB
	if osdRestart {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if err := c.StopOSD(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(6 * time.Second) // writeback requests time out (ceph_op_timeout 5s)
		if err := c.StartOSD(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second) // writeback resumes
	}
	d.kill()
	if err := os.Remove(filepath.Join(dir, "cache.img")); err != nil {
		t.Fatal(err)
	}
	img := rbdExport(t, c, image)
	got := make([]int, slots)
	for s := range slots {
		b := img[s*slot : (s+1)*slot]
		if i := firstDiff(bytes.Repeat(b[:1], slot), b); i >= 0 {
			t.Fatalf("slot %d is torn: 0x%02x at +0, 0x%02x at +%d", s, b[0], b[i], i)
		}
		got[s] = int(b[0])
	}
	// before(s, k) is the last epoch before k that wrote s (0: none)
	before := func(s, k int) int {
		v := 0
		for _, e := range wrote[s] {
			if e < k {
				v = e
			}
		}
		return v
	}
	consistent := -1
	for k := 1; k <= epochs+1 && consistent < 0; k++ {
		ok := true
		for s := range slots {
			if got[s] != before(s, k) && got[s] != k {
				ok = false
				break
			}
			if got[s] == k && !containsInt(wrote[s], k) {
				ok = false
				break
			}
		}
		if ok {
			consistent = k
		}
	}
	if consistent < 0 {
		t.Fatalf("the image is not flush-consistent: slot epochs %v, written %v", got, wrote)
	}
	t.Logf("the image holds epochs 1..%d complete and part of epoch %d (of %d)", consistent-1, consistent, epochs)
}

func containsInt(s []int, x int) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}

// TestRBDFenced: another client breaks the daemon's image lock (rbd lock
// rm, which blocklists the daemon's client). Within seconds the volume
// shows FENCED and fails every command with NOT READY, read hits
// included: another gateway may now write the image, so the cache's data
// is no longer the image's.
func TestRBDFenced(t *testing.T) {
	needTools(t, "qemu-io")
	c := needCeph(t)
	image := rbdImage(t, c, 16)
	dir := t.TempDir()
	d := startDaemon(t, dir, rbdConfig(t, dir, c, image, "", ""))
	url := d.url(0)
	qemuIO(t, url, "write -P 0x71 0 1M", "flush", "read -P 0x71 0 64k")
	drain(t, dir)
	out, err := c.Run(context.Background(), "rbd", "lock", "ls", "--format", "json", image)
	if err != nil {
		t.Fatal(err)
	}
	var locks []struct{ ID, Locker string }
	if err := json.Unmarshal([]byte(out), &locks); err != nil || len(locks) != 1 {
		t.Fatalf("rbd lock ls: %v %q", err, out)
	}
	if _, err := c.Run(context.Background(), "rbd", "lock", "rm", image, locks[0].ID, locks[0].Locker); err != nil {
		t.Fatal(err)
	}
	// a write the cache absorbs; its writeback is refused (ESHUTDOWN)
	runTool(t, toolTimeout, "qemu-io", "-f", "raw", "-c", "write -P 0x72 4M 64k", url)
	var show string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		show = adminRun(t, dir, "volume", "show", "vol").out
		if strings.Contains(show, "FENCED") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("volume show does not say FENCED 30 s after the lock was broken:\n%s", show)
		}
	}
	r := runTool(t, toolTimeout, "qemu-io", "-f", "raw", "-c", "read -P 0x71 0 64k", url)
	if r.timedOut || !strings.Contains(r.out, "NOT READY") {
		t.Fatalf("a read hit on a fenced volume: exit %d (timed out %v), want NOT READY:\n%s", r.exitCode, r.timedOut, r.out)
	}
	if !strings.Contains(d.log.String(), "rbd image lock lost to another client") {
		t.Errorf("the daemon did not log the fencing:\n%s", d.log)
	}
	d.kill() // its client is blocklisted: nothing more reaches the image
}
