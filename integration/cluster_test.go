//go:build ceph

package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/cephtest"
)

// The cluster tests run two daemons, nodes a on 127.0.0.2 and b on
// 127.0.0.3, serving one RBD image of the test process's cluster.

// clusterPort returns a free TCP port on host.
func clusterPort(t *testing.T, host string) int {
	t.Helper()
	l, err := net.Listen("tcp", host+":0")
	if err != nil {
		t.Skipf("cannot listen on %s (a loopback alias is needed): %v", host, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// clusterConfig writes node's configuration: volume "vol" on image (LUN
// 0, mode writeback: its journal is replicated to the peer), the
// [cluster] table with its peer.
func clusterConfig(t *testing.T, dir string, c *cephtest.Cluster, image, node, listen, peer string) string {
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

[cache.writeback]
# the owner writes nothing back on its own: its flushed writes live in
# its cache and in the peer's mirror only
target_dirty_percent = 90
high_watermark_percent = 95
idle_after = "1h"

[[volume]]
name = "vol"
cache = "c0"
backing = "rbd:%s"
mode = "writeback"
ceph_conf = %q
ceph_connect_timeout = "5s"
ceph_op_timeout = "5s"

[[target]]
iqn = "iqn.2026-11.io.cachelun:cluster"
portals = ["127.0.0.1:3260"]

[[target.lun]]
lun = 0
volume = "vol"

[cluster]
node = %q
listen = %q
peers = [%q]
heartbeat_interval = "250ms"
peer_timeout = "2s"
connect_timeout = "1s"
reconnect_max = "500ms"
`, image, c.Conf, node, listen, peer)
	p := filepath.Join(dir, "cachelun.toml")
	if err := os.WriteFile(p, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// startPair starts nodes a (127.0.0.2) and b (127.0.0.3) sharing a new
// image of sizeMiB of the test process's cluster: a, started first, owns
// the volume and b is standby. It returns the cluster, the image, both
// daemons and their data directories.
func startPair(t *testing.T, sizeMiB int) (c *cephtest.Cluster, image string, a, b *daemon, dirA, dirB string) {
	t.Helper()
	c, image, a, b, dirA, dirB, _ = startPairAs(t, sizeMiB, 0)
	return c, image, a, b, dirA, dirB
}

// startPairAs is startPair with node a in group gidA (0: the test's);
// it also returns a's peer link address.
func startPairAs(t *testing.T, sizeMiB int, gidA uint32) (c *cephtest.Cluster, image string, a, b *daemon, dirA, dirB, addrA string) {
	t.Helper()
	c = needCeph(t)
	image = rbdImage(t, c, sizeMiB)
	addrA = fmt.Sprintf("127.0.0.2:%d", clusterPort(t, "127.0.0.2"))
	addrB := fmt.Sprintf("127.0.0.3:%d", clusterPort(t, "127.0.0.3"))
	dirA, dirB = t.TempDir(), t.TempDir()
	a = startDaemonAs(t, gidA, "127.0.0.2:0", dirA, clusterConfig(t, dirA, c, image, "a", addrA, "b@"+addrB))
	wantCluster(t, dirA, "a", "owner", "active/optimized")
	b = startDaemonOn(t, "127.0.0.3:0", dirB, clusterConfig(t, dirB, c, image, "b", addrB, "a@"+addrA))
	wantCluster(t, dirB, "a", "standby", "standby")
	wantServedBy(t, dirA, "")
	wantServedBy(t, dirB, "a")
	return c, image, a, b, dirA, dirB, addrA
}

// wantServedBy checks `cachelun volume list --json` on the node in dir:
// owner "" wants the volume served by this node, else listed among the
// clustered volumes served elsewhere, by owner.
func wantServedBy(t *testing.T, dir, owner string) {
	t.Helper()
	r := adminRun(t, dir, "volume", "list", "--json")
	var l struct {
		Volumes   []struct{ Name string }
		Clustered []clusterVolume
	}
	if err := json.Unmarshal([]byte(r.out), &l); r.exitCode != 0 || err != nil {
		t.Fatalf("volume list: exit %d %v:\n%s", r.exitCode, err, r.out)
	}
	served := len(l.Volumes) == 1 && l.Volumes[0].Name == "vol" && len(l.Clustered) == 0
	elsewhere := len(l.Volumes) == 0 && len(l.Clustered) == 1 && l.Clustered[0].Name == "vol" && l.Clustered[0].Owner == owner
	if owner == "" && !served || owner != "" && !elsewhere {
		t.Fatalf("volume list: want vol served by %q (\"\": this node):\n%s", owner, r.out)
	}
}

// clusterVolume is one volume of `cachelun cluster status --json`.
type clusterVolume struct {
	Name, Owner, State, ALUA, Mode string
	Behind                         []string
}

func clusterStatus(t *testing.T, dir string) (clusterVolume, string) {
	t.Helper()
	r := adminRun(t, dir, "cluster", "status", "--json")
	if r.exitCode != 0 {
		t.Fatalf("cluster status: exit %d:\n%s", r.exitCode, r.out)
	}
	var st struct {
		Node    string
		Volumes []clusterVolume
	}
	if err := json.Unmarshal([]byte(r.out), &st); err != nil || len(st.Volumes) != 1 {
		t.Fatalf("cluster status: %v\n%s", err, r.out)
	}
	return st.Volumes[0], r.out
}

func wantCluster(t *testing.T, dir, owner, state, alua string) {
	t.Helper()
	v, out := clusterStatus(t, dir)
	if v.Owner != owner || v.State != state || v.ALUA != alua || v.Mode != "writeback" {
		t.Fatalf("cluster status: want owner %s, this node %s, ALUA %s, writeback:\n%s", owner, state, alua, out)
	}
}

// TestClusterFailover: two nodes share one image. a starts first and owns
// it, b is standby (it refuses I/O with NOT READY, standby). Writes flushed
// through a stay in a's write-back cache (nothing is written back: its
// writeback waits for the volume to be idle) and in b's mirror of a's
// journal; a is killed (SIGKILL) and its cache file taken away; b takes
// the volume over once a's link has been down for peer_timeout, breaking
// (fencing) a's lock, applies its mirror and serves every flushed write.
// The failover time, from the kill to the first successful read on b, is
// printed. a restarted with its (stale) cache file finds b the owner and
// stays standby, and b brings its mirror up to date; when a takes the
// volume back it serves what b wrote, never its stale cached copy.
func TestClusterFailover(t *testing.T) {
	needTools(t, "qemu-io")
	c, image, a, b, dirA, dirB := startPair(t, 64)
	if !strings.Contains(b.log.String(), "LUN ready") {
		t.Errorf("the standby node logged no LUN ready line:\n%s", b.log)
	}
	// the standby path refuses I/O: libiscsi's connect already stops at
	// its TEST UNIT READY, which standby refuses (SPC-4 5.15.2.4.4) with
	// NOT READY, TARGET PORT IN STANDBY STATE (READ CAPACITY on a standby
	// logical unit is daemon's TestClusterALUAStates)
	if out := qemuIOFails(t, b.url(0), "read 0 4k"); !strings.Contains(out, "0x040b") {
		t.Errorf("I/O on the standby node: want NOT READY, standby (04h/0Bh):\n%s", out)
	}

	m := make(model, 64<<20)
	var cmds, reads []string
	for i := range 32 {
		off := int64(i) * (2 << 20)
		p := byte(0x30 + i)
		cmds = append(cmds, fmt.Sprintf("write -P 0x%02x %d 64k", p, off))
		reads = append(reads, fmt.Sprintf("read -P 0x%02x %d 64k", p, off))
		m.write(off, 64<<10, p)
	}
	qemuIO(t, a.url(0), append(cmds, "flush")...)

	a.kill()
	killed := time.Now()
	// the dead node's cache file is gone (a lost disk): b has only its mirror
	cacheA := filepath.Join(dirA, "cache.img")
	if err := os.Rename(cacheA, cacheA+".away"); err != nil {
		t.Fatal(err)
	}
	var took time.Duration
	for {
		r := runTool(t, toolTimeout, "qemu-io", "-f", "raw", "-c", reads[0], b.url(0))
		if r.exitCode == 0 && !strings.Contains(r.out, "failed") && !strings.Contains(r.out, "Pattern verification") {
			took = time.Since(killed)
			break
		}
		if time.Since(killed) > 90*time.Second {
			t.Fatalf("b does not serve 90 s after a was killed:\n%s\n%s", r.out, b.log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Printf("cluster failover: SIGKILL of the owner to the first successful I/O on the other node: %v (peer_timeout 2s)\n", took.Round(10*time.Millisecond))
	t.Logf("failover time %v", took.Round(10*time.Millisecond))
	if took > 15*time.Second {
		t.Errorf("failover took %v", took)
	}
	qemuIO(t, b.url(0), reads...)
	wantCluster(t, dirB, "b", "owner", "active/optimized")
	if !strings.Contains(b.log.String(), "this node took the volume over") {
		t.Errorf("b did not log the takeover:\n%s", b.log)
	}
	// b's mirror held a's flushed writes (the reads above checked them)
	if n := appliedRecords(b.log.String()); n < 1 {
		t.Errorf("b applied %d records of its mirror of a's journal:\n%s", n, b.log)
	} else {
		t.Logf("b applied %d records of a's journal from its mirror", n)
	}

	// a restarts with its stale cache file: b owns the image and its link
	// is up; a stays standby
	if err := os.Rename(cacheA+".away", cacheA); err != nil {
		t.Fatal(err)
	}
	a.restart()
	wantCluster(t, dirA, "b", "standby", "standby")
	time.Sleep(5 * time.Second) // more than peer_timeout
	wantCluster(t, dirA, "b", "standby", "standby")
	wantCluster(t, dirB, "b", "owner", "active/optimized")
	if out := qemuIOFails(t, a.url(0), "read 0 4k"); !strings.Contains(out, "0x040b") {
		t.Errorf("I/O on the restarted standby node: want NOT READY, standby (04h/0Bh):\n%s", out)
	}
	// b overwrites a block a's cache file still holds from before the
	// kill (dirty there)
	qemuIO(t, b.url(0), "write -P 0x7e 40M 64k", "write -P 0x7f 0 64k", "flush")
	m.write(40<<20, 64<<10, 0x7e)
	m.write(0, 64<<10, 0x7f)
	// a takes the volume back (a planned move): it serves b's data, never
	// the stale copy in its cache file
	if r := adminRun(t, dirB, "volume", "move", "vol", "a"); r.exitCode != 0 {
		t.Fatalf("volume move: exit %d:\n%s", r.exitCode, r.out)
	}
	waitCluster(t, dirA, "a", "owner", 30*time.Second)
	qemuIO(t, a.url(0), "read -P 0x7f 0 64k", "read -P 0x7e 40M 64k", reads[1])
	drainVolume(t, dirA)
	b.stop()
	a.stop()
	m.equal(t, rbdExport(t, c, image), "the image after the failover")
}

// appliedRecords is the records count of the daemon's "journal applied
// from this node's mirror" log line (0 if none).
func appliedRecords(log string) int {
	for _, l := range strings.Split(log, "\n") {
		if !strings.Contains(l, "journal applied from this node's mirror") {
			continue
		}
		if i := strings.Index(l, " records="); i >= 0 {
			var n int
			fmt.Sscanf(l[i+len(" records="):], "%d", &n)
			return n
		}
	}
	return 0
}

// drainVolume writes the owner's dirty data of "vol" back to the image
// (a clean shutdown leaves it in the cache, for the next owner).
func drainVolume(t *testing.T, dir string) {
	t.Helper()
	if r := adminRun(t, dir, "volume", "drain", "vol"); r.exitCode != 0 {
		t.Fatalf("volume drain: exit %d:\n%s", r.exitCode, r.out)
	}
}

// waitCluster polls `cluster status` of dir until the volume's owner and
// this node's state are as wanted, or fails after limit.
func waitCluster(t *testing.T, dir, owner, state string, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		v, out := clusterStatus(t, dir)
		if v.Owner == owner && v.State == state {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			t.Fatalf("after %v: want owner %q, this node %s:\n%s", limit, owner, state, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestClusterFenceFrozenOwner: the owner a is frozen (SIGSTOP): to its
// peer it is gone, to Ceph it is a live client cut off (its watch stays
// for 30 s). b takes over after peer_timeout, breaking a's lock, which
// blocklists a at the OSDs. a resumed (SIGCONT), as after a partition that
// healed, still believes it owns the volume: its late write is refused
// (the OSDs refuse a blocklisted client; nothing is acknowledged), it
// notices that its lock is gone and makes the volume unavailable, and the
// image holds b's data only: no split brain.
func TestClusterFenceFrozenOwner(t *testing.T) {
	needTools(t, "qemu-io")
	c, image, a, b, dirA, dirB := startPair(t, 16)
	// a host on a's path: a write, then (while a is frozen) a late
	// write that waits in a's socket until a resumes
	late := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 0x11 0 64k", "-c", "flush", "-c", "sleep 2500",
		"-c", "write -f -P 0x33 0 64k", a.url(0))
	var lateOut bytes.Buffer
	late.Stdout, late.Stderr = &lateOut, &lateOut
	if err := late.Start(); err != nil {
		t.Fatal(err)
	}
	lateDone := make(chan error, 1)
	go func() { lateDone <- late.Wait() }()
	defer func() {
		late.Process.Kill()
		<-lateDone
	}()
	time.Sleep(1500 * time.Millisecond) // the first write and flush are done

	if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	frozen := true
	defer func() {
		if frozen {
			a.cmd.Process.Signal(syscall.SIGCONT)
		}
	}()
	took := waitCluster(t, dirB, "b", "owner", 60*time.Second)
	t.Logf("b took over %v after a was frozen", took.Round(10*time.Millisecond))
	qemuIO(t, b.url(0), "read -P 0x11 0 64k", "write -P 0x22 0 64k", "flush")

	if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	frozen = false
	select {
	case <-lateDone:
	case <-time.After(toolTimeout):
		t.Fatalf("the late write through the fenced node did not end:\n%s", lateOut.String())
	}
	lateDone <- nil // for the deferred wait
	if !strings.Contains(lateOut.String(), "wrote 65536/65536 bytes at offset 0") {
		t.Fatalf("the first write through a failed:\n%s", lateOut.String())
	}
	if strings.Count(lateOut.String(), "wrote 65536/65536") != 1 || !strings.Contains(lateOut.String(), "failed") {
		t.Fatalf("the fenced node acknowledged its late write:\n%s", lateOut.String())
	}
	t.Logf("the fenced node's late write: %s", lastLine(lateOut.String()))
	for _, l := range strings.Split(a.log.String(), "\n") {
		if strings.Contains(l, "fenced") || strings.Contains(l, "lock lost") || strings.Contains(l, "lost the image's lock") {
			t.Logf("a: %s", l)
		}
	}
	waitCluster(t, dirA, "", "unavailable", 30*time.Second)
	wantCluster(t, dirB, "b", "owner", "active/optimized")
	if out := qemuIOFails(t, a.url(0), "read 0 4k"); !strings.Contains(out, "NOT READY") {
		t.Errorf("I/O on the fenced node: want NOT READY:\n%s", out)
	}
	if !strings.Contains(a.log.String(), "this node lost the image's lock") {
		t.Errorf("a did not log its fencing:\n%s", a.log)
	}
	qemuIO(t, b.url(0), "read -P 0x22 0 64k")
	m := make(model, 16<<20)
	m.write(0, 64<<10, 0x22)
	drainVolume(t, dirB)
	b.stop()
	a.kill() // blocklisted: its image cannot be closed cleanly
	m.equal(t, rbdExport(t, c, image), "the image after the fencing")
}

// TestClusterPlannedMove: `cachelun volume move vol b` on the owner a
// hands the volume over without breaking a lock: b owns it within a
// second, serves what a wrote, and moves it back; a was never fenced (it
// serves again after the move back).
func TestClusterPlannedMove(t *testing.T) {
	needTools(t, "qemu-io")
	c, image, a, b, dirA, dirB := startPair(t, 16)
	qemuIO(t, a.url(0), "write -P 0x41 0 64k", "flush")

	if r := adminRun(t, dirB, "volume", "move", "vol", "a"); r.exitCode == 0 || !strings.Contains(r.out, "does not own") {
		t.Errorf("a move on the standby: exit %d, want a refusal:\n%s", r.exitCode, r.out)
	}
	start := time.Now()
	if r := adminRun(t, dirA, "volume", "move", "vol", "b"); r.exitCode != 0 {
		t.Fatalf("volume move: exit %d:\n%s", r.exitCode, r.out)
	}
	took := waitCluster(t, dirB, "b", "owner", 30*time.Second)
	t.Logf("planned move a → b: %v", (time.Since(start)).Round(10*time.Millisecond))
	_ = took
	wantCluster(t, dirA, "b", "standby", "standby")
	qemuIO(t, b.url(0), "read -P 0x41 0 64k", "write -P 0x42 64k 64k", "flush")
	if strings.Contains(b.log.String(), "broke_lock=true") {
		t.Errorf("the planned move broke a lock:\n%s", b.log)
	}

	if r := adminRun(t, dirB, "volume", "move", "vol", "a"); r.exitCode != 0 {
		t.Fatalf("volume move back: exit %d:\n%s", r.exitCode, r.out)
	}
	waitCluster(t, dirA, "a", "owner", 30*time.Second)
	qemuIO(t, a.url(0), "read -P 0x41 0 64k", "read -P 0x42 64k 64k", "write -P 0x43 128k 64k", "flush")
	m := make(model, 16<<20)
	m.write(0, 64<<10, 0x41)
	m.write(64<<10, 64<<10, 0x42)
	m.write(128<<10, 64<<10, 0x43)
	drainVolume(t, dirA)
	b.stop()
	a.stop()
	m.equal(t, rbdExport(t, c, image), "the image after two moves")
}

// clusterShipped is what node (its admin socket in dir) shipped to its one
// peer: shipments and payload bytes.
func clusterShipped(t *testing.T, dir string) (shipments, bytes uint64, state string) {
	t.Helper()
	r := adminRun(t, dir, "cluster", "status", "--json")
	if r.exitCode != 0 {
		t.Fatalf("cluster status: exit %d:\n%s", r.exitCode, r.out)
	}
	var st struct {
		Snapshot struct {
			Peers []struct {
				State        string `json:"state"`
				Shipments    uint64 `json:"shipments"`
				ShippedBytes uint64 `json:"shipped_bytes"`
			} `json:"peers"`
		} `json:"snapshot"`
	}
	if err := json.Unmarshal([]byte(r.out), &st); err != nil || len(st.Snapshot.Peers) != 1 {
		t.Fatalf("cluster status: %v\n%s", err, r.out)
	}
	p := st.Snapshot.Peers[0]
	return p.Shipments, p.ShippedBytes, p.State
}

// fuaBench runs `qemu-img bench` of n 4 KiB writes at QD32 with
// -t writethrough (each write is FUA) and returns the writes per second.
func fuaBench(t *testing.T, url string, n int) float64 {
	t.Helper()
	r := runTool(t, 5*time.Minute, "qemu-img", "bench", "-f", "raw", "-w", "-t", "writethrough", "-d", "32",
		"-s", "4k", "-c", fmt.Sprint(n), url)
	if r.exitCode != 0 {
		t.Fatalf("qemu-img bench: exit %d:\n%s", r.exitCode, r.out)
	}
	var secs float64
	for _, l := range strings.Split(r.out, "\n") {
		if i := strings.Index(l, "Run completed in "); i >= 0 {
			fmt.Sscanf(l[i+len("Run completed in "):], "%f", &secs)
		}
	}
	if secs <= 0 {
		t.Fatalf("qemu-img bench printed no time:\n%s", r.out)
	}
	return float64(n) / secs
}

// TestClusterReplicationCost: FUA writes (QD32, 4 KiB) through the owner
// with its peer in sync, then with the peer gone (the owner serves
// degraded, shipping nothing: the single-node rate), in alternating rounds
// (the peer restarts and resyncs between them) so that both rates see the
// same machine, each from a drained cache; the figures are the medians. Every FUA write is shipped
// once, its 4 KiB with a small header: the replication traffic per written
// byte stays between 1 and 1.1. The rates and their ratio are printed
// (figures, not assertions).
func TestClusterReplicationCost(t *testing.T) {
	needTools(t, "qemu-io", "qemu-img")
	_, _, a, b, dirA, _ := startPair(t, 64)

	const n, rounds = 10000, 3
	var withPeer, alone []float64
	for round := range rounds {
		// a's link to b connects (and resyncs) in the background after b
		// started
		var ships0, bytes0 uint64
		var state string
		for start := time.Now(); ; time.Sleep(100 * time.Millisecond) {
			if ships0, bytes0, state = clusterShipped(t, dirA); state == "in_sync" {
				break
			}
			if time.Since(start) > 30*time.Second {
				t.Fatalf("round %d: a's link to b: %s 30 s after b started, want in_sync", round, state)
			}
		}
		// each measurement starts with nothing dirty: writeback to Ceph
		// left over from the last one would share the disk with it
		drainVolume(t, dirA)
		withPeer = append(withPeer, fuaBench(t, a.url(0), n))
		ships1, bytes1, state := clusterShipped(t, dirA)
		if state != "in_sync" {
			t.Fatalf("round %d: a's link to b after the FUA writes: %s, want in_sync", round, state)
		}
		perByte := float64(bytes1-bytes0) / float64(n*4096)
		t.Logf("round %d: shipped %d shipments, %d bytes for %d FUA writes of 4 KiB: %.3f bytes per written byte",
			round, ships1-ships0, bytes1-bytes0, n, perByte)
		if perByte < 1 || perByte > 1.1 {
			t.Errorf("round %d: replication traffic per written byte %.3f, want 1..1.1", round, perByte)
		}

		b.stop()
		// the first flush waits sync_timeout for the gone peer, then a
		// serves degraded
		qemuIO(t, a.url(0), "write -f 0 4k")
		if _, _, state := clusterShipped(t, dirA); state != "out_of_sync" {
			t.Fatalf("round %d: a's link to the stopped b: %s, want out_of_sync", round, state)
		}
		drainVolume(t, dirA)
		alone = append(alone, fuaBench(t, a.url(0), n))
		t.Logf("round %d: FUA QD32: %.0f/s with the peer in sync, %.0f/s alone: %.2fx",
			round, withPeer[round], alone[round], withPeer[round]/alone[round])
		if round < rounds-1 {
			b.restart()
		}
	}
	mp, ma := median(withPeer), median(alone)
	fmt.Printf("cluster FUA writes 4 KiB QD32, median of %d alternating rounds: %.0f/s with the peer in sync, %.0f/s without (single node): %.2fx\n",
		rounds, mp, ma, mp/ma)
	a.stop()
}

// median returns the median of xs (the mean of the middle two for an even
// count).
func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// TestClusterLostCacheYields: the owner a dies with flushed writes in its
// cache and in b's mirror only, loses its cache file, and restarts before
// b's peer_timeout: a must not serve the volume from its new, empty cache
// (its writes are in b's mirror); it leaves the volume to b, which applies
// its mirror and serves every flushed write.
func TestClusterLostCacheYields(t *testing.T) {
	needTools(t, "qemu-io")
	c, image, a, b, dirA, dirB := startPair(t, 16)
	qemuIO(t, a.url(0), "write -P 0x5a 0 64k", "write -P 0x5b 1M 64k", "flush")

	a.kill()
	if err := os.Remove(filepath.Join(dirA, "cache.img")); err != nil {
		t.Fatal(err)
	}
	a.restart()
	waitCluster(t, dirB, "b", "owner", 60*time.Second)
	qemuIO(t, b.url(0), "read -P 0x5a 0 64k", "read -P 0x5b 1M 64k")
	if !strings.Contains(a.log.String(), "volume left to a peer") {
		t.Errorf("a did not leave the volume to b:\n%s", a.log)
	}
	// b tells a of its takeover in the background (announce), and a,
	// just restarted, may not have its link to b yet: a's next ownership
	// step reads the lock's holder.
	waitCluster(t, dirA, "b", "standby", 10*time.Second)
	wantCluster(t, dirA, "b", "standby", "standby")
	m := make(model, 16<<20)
	m.write(0, 64<<10, 0x5a)
	m.write(1<<20, 64<<10, 0x5b)
	drainVolume(t, dirB)
	a.stop()
	b.stop()
	m.equal(t, rbdExport(t, c, image), "the image after a's lost cache")
}
