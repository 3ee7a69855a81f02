//go:build ceph

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/cephtest"
)

// partitionGID is the group a node runs as when a test cuts it off the
// network: iptables' owner match tells its sockets apart by it.
const partitionGID = 4242

// partition cuts one node (a daemon started in group partitionGID) off the
// network on the loopback, with iptables rules in a chain of its own that
// the OUTPUT chain jumps to. Every TCP segment the node's sockets send is
// dropped except from its iSCSI portal (hosts still reach it), and so is
// every segment to the ports in cutIn (its peer link's listener): the node
// reaches neither Ceph nor its peers, and its peers cannot reach it. The
// rules match this node's group and ports only, so other tests running
// meanwhile are not affected. Cleanup removes the chain.
type partition struct {
	t     *testing.T
	gid   string // the node's group
	chain string
	rules [][]string
}

func iptables(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("iptables", append([]string{"-w", "5"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("iptables %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// newPartition prepares the rules that isolate the node of group gid
// whose portal is portal (HOST:PORT), and whose peer link listens on each
// address of cutIn (HOST:PORT); the node stays connected until cut.
func newPartition(t *testing.T, gid uint32, portal string, cutIn ...string) *partition {
	t.Helper()
	needTools(t, "iptables")
	p := &partition{t: t, gid: strconv.Itoa(int(gid)), chain: fmt.Sprintf("CLUN-PART-%d", os.Getpid())}
	_, portalPort := splitHostPort(t, portal)
	p.rules = append(p.rules, []string{"-o", "lo", "-p", "tcp", "-m", "owner", "--gid-owner", p.gid,
		"!", "--sport", portalPort, "-j", "DROP"})
	for _, addr := range cutIn {
		host, port := splitHostPort(t, addr)
		p.rules = append(p.rules, []string{"-o", "lo", "-p", "tcp", "-d", host, "--dport", port, "-j", "DROP"})
	}
	iptables(t, "-N", p.chain)
	iptables(t, "-I", "OUTPUT", "1", "-j", p.chain)
	t.Cleanup(func() {
		exec.Command("iptables", "-w", "5", "-D", "OUTPUT", "-j", p.chain).Run()
		exec.Command("iptables", "-w", "5", "-F", p.chain).Run()
		exec.Command("iptables", "-w", "5", "-X", p.chain).Run()
	})
	return p
}

func splitHostPort(t *testing.T, addr string) (host, port string) {
	t.Helper()
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		t.Fatalf("%q is not HOST:PORT", addr)
	}
	return addr[:i], addr[i+1:]
}

// cut installs the rules: from now on the node is isolated.
func (p *partition) cut() {
	p.t.Helper()
	for _, r := range p.rules {
		iptables(p.t, append([]string{"-A", p.chain}, r...)...)
	}
}

// heal removes the rules: the node reaches everything again.
func (p *partition) heal() {
	p.t.Helper()
	iptables(p.t, "-F", p.chain)
}

// cutTo installs, instead of cut's rules, one that drops the node's
// segments to dests (HOST:PORT) only.
func (p *partition) cutTo(dests ...string) {
	p.t.Helper()
	for _, d := range dests {
		host, port := splitHostPort(p.t, d)
		iptables(p.t, "-A", p.chain, "-o", "lo", "-p", "tcp", "-m", "owner", "--gid-owner", p.gid,
			"-d", host, "--dport", port, "-j", "DROP")
	}
}

// cephAddrs lists the monitor and OSD addresses (HOST:PORT) of cluster c:
// cutting a node's segments to them cuts it off Ceph alone.
func cephAddrs(t *testing.T, c *cephtest.Cluster) []string {
	t.Helper()
	// `ceph mon dump` lists "mons", `ceph osd dump` "osds", each entry
	// with its public address vector
	type daemons struct {
		Mons, OSDs []struct {
			PublicAddrs struct{ Addrvec []struct{ Addr string } } `json:"public_addrs"`
		}
	}
	seen := map[string]bool{}
	var addrs []string
	for _, kind := range []string{"mon", "osd"} {
		out, err := c.Run(context.Background(), "ceph", kind, "dump", "--format", "json")
		if err != nil {
			t.Fatal(err)
		}
		var d daemons
		if err := json.Unmarshal([]byte(out), &d); err != nil {
			t.Fatalf("ceph %s dump: %v\n%s", kind, err, out)
		}
		for _, e := range append(d.Mons, d.OSDs...) {
			for _, a := range e.PublicAddrs.Addrvec {
				addr, _, _ := strings.Cut(a.Addr, "/") // HOST:PORT/NONCE
				if addr != "" && !seen[addr] {
					seen[addr] = true
					addrs = append(addrs, addr)
				}
			}
		}
	}
	if len(addrs) < 2 {
		t.Fatalf("ceph mon/osd dump: want a monitor and an OSD address, got %v", addrs)
	}
	return addrs
}

// lockAddr returns the address of the client holding image's exclusive
// lock (rbd lock ls), as the OSD blocklist names it.
func lockAddr(t *testing.T, c *cephtest.Cluster, image string) string {
	t.Helper()
	out, err := c.Run(context.Background(), "rbd", "lock", "ls", "--format", "json", image)
	if err != nil {
		t.Fatal(err)
	}
	var locks []struct{ ID, Locker, Address string }
	if err := json.Unmarshal([]byte(out), &locks); err != nil || len(locks) != 1 || locks[0].Address == "" {
		t.Fatalf("rbd lock ls: %v %q", err, out)
	}
	return locks[0].Address
}

// blocklisted reports whether the OSD blocklist names addr.
func blocklisted(t *testing.T, c *cephtest.Cluster, addr string) bool {
	t.Helper()
	out, err := c.Run(context.Background(), "ceph", "osd", "blocklist", "ls")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(out, strings.TrimPrefix(addr, "v1:"))
}

// TestClusterPartitionIsolatesOwner: the owner a is cut off the network
// (iptables: it reaches neither Ceph nor b, b cannot reach it) while it
// runs; hosts still reach its portal. Before the cut a host wrote and
// flushed through a; then a lost Ceph first, and a host's flushed write
// through a is in a's cache and b's mirror only. During the full cut a
// host's write through a is acknowledged by a's cache (serve: b falls out
// of sync), and a drain on a tries to write the image and cannot. b takes the volume over after peer_timeout,
// breaking a's lock (a's client is on the OSD blocklist), serves both
// flushed writes from its mirror and writes its own. When the partition
// heals, a's writeback reaches the OSDs, which refuse it; a notices that
// it lost the lock and serves nothing more. The image holds what was
// flushed through a and b's write, never a's late write: no split brain.
func TestClusterPartitionIsolatesOwner(t *testing.T) {
	needTools(t, "qemu-io", "iptables")
	c, image, a, b, dirA, dirB, peerA := startPairAs(t, 16, partitionGID)
	qemuIO(t, a.url(0), "write -P 0x51 0 64k", "flush")
	holderA := lockAddr(t, c, image)
	p := newPartition(t, partitionGID, a.portal, peerA)

	p.cutTo(cephAddrs(t, c)...)
	qemuIO(t, a.url(0), "write -P 0x52 1M 64k", "flush") // in a's cache and b's mirror: a's writeback will try it
	p.cut()
	cutAt := time.Now()
	// acknowledged by a's cache alone (serve: b falls out of sync); it
	// never reaches the image
	qemuIO(t, a.url(0), "write -P 0x54 3M 64k")
	drainA := make(chan result, 1)
	go func() {
		drainA <- runTool(t, 90*time.Second, binaryPath, "volume", "drain", "vol", "--socket", filepath.Join(dirA, "admin.sock"))
	}()
	waitCluster(t, dirB, "b", "owner", 60*time.Second)
	t.Logf("b took over %v after a was cut off", time.Since(cutAt).Round(10*time.Millisecond))
	if !blocklisted(t, c, holderA) {
		t.Fatalf("b owns the volume but a's client %s is not on the OSD blocklist", holderA)
	}
	qemuIO(t, b.url(0), "read -P 0x51 0 64k", "read -P 0x52 1M 64k", "read -P 0 3M 64k", "write -P 0x53 2M 64k", "flush")
	t.Logf("partition held for %v", time.Since(cutAt).Round(100*time.Millisecond))

	p.heal()
	healedAt := time.Now()
	waitCluster(t, dirA, "", "unavailable", 60*time.Second)
	t.Logf("a unavailable %v after the heal", time.Since(healedAt).Round(10*time.Millisecond))
	r := <-drainA
	t.Logf("a's drain ended %v after the heal: exit %d, timed out %v: %s", time.Since(healedAt).Round(10*time.Millisecond), r.exitCode, r.timedOut, lastLine(r.out))
	if r.exitCode == 0 || r.timedOut {
		t.Errorf("the drain on the isolated owner: want a failure once it is fenced:\n%s", r.out)
	}
	if out := qemuIOFails(t, a.url(0), "read 0 4k"); !strings.Contains(out, "NOT READY") {
		t.Errorf("I/O on the fenced node: want NOT READY:\n%s", out)
	}
	if !strings.Contains(a.log.String(), "this node lost the image's lock") {
		t.Errorf("a did not log its fencing:\n%s", a.log)
	}
	// the OSDs refused a's writeback once it reached them
	show := backingLine(adminRun(t, dirA, "volume", "show", "vol").out)
	t.Logf("a's backing after the heal: %s", show)
	if m := regexp.MustCompile(` (\d+) fenced`).FindStringSubmatch(show); !strings.Contains(show, "FENCED") || m == nil || m[1] == "0" {
		t.Errorf("a's backing: want FENCED with requests refused as fenced:\n%s", show)
	}
	wantCluster(t, dirB, "b", "owner", "active/optimized")

	m := make(model, 16<<20)
	m.write(0, 64<<10, 0x51)
	m.write(1<<20, 64<<10, 0x52)
	m.write(2<<20, 64<<10, 0x53)
	drainVolume(t, dirB)
	b.stop()
	// a fenced node's shutdown gives up its release at once (nothing it
	// holds may reach the image) instead of draining until its deadline;
	// its exit status says that its image could not be flushed
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.exited:
	case <-time.After(60 * time.Second):
		t.Fatalf("the fenced node did not exit within 60 s of SIGTERM:\n%s", a.log)
	}
	gaveUp := false
	for _, l := range strings.Split(a.log.String(), "\n") {
		gaveUp = gaveUp || strings.Contains(l, "shutdown: the volume's dirty data is not written back") &&
			strings.Contains(l, "its dirty data cannot be written back here")
	}
	if !gaveUp {
		t.Errorf("the fenced node's shutdown did not give up its release for the fencing:\n%s", a.log)
	}
	m.equal(t, rbdExport(t, c, image), "the image after the partition")
}

// TestClusterPartitionOwnerFromCeph: the owner a loses Ceph (iptables
// drops its segments to the monitor and the OSD) but not its peer. Its
// lock is never broken — b hears a and stays standby — so no node writes
// the image meanwhile; a keeps acknowledging flushes, which its peer's
// mirror holds. When Ceph comes back, a writes everything back and the
// image holds every write.
func TestClusterPartitionOwnerFromCeph(t *testing.T) {
	needTools(t, "qemu-io", "iptables")
	c, image, a, b, dirA, dirB, _ := startPairAs(t, 16, partitionGID)
	qemuIO(t, a.url(0), "write -P 0x61 0 64k", "flush")
	p := newPartition(t, partitionGID, a.portal)

	p.cutTo(cephAddrs(t, c)...)
	qemuIO(t, a.url(0), "write -P 0x62 1M 64k", "flush") // durable in a's cache and b's mirror
	// three times peer_timeout: b must not take over from a live peer
	deadline := time.Now().Add(6 * time.Second)
	for time.Now().Before(deadline) {
		wantCluster(t, dirB, "a", "standby", "standby")
		time.Sleep(500 * time.Millisecond)
	}
	wantCluster(t, dirA, "a", "owner", "active/optimized")
	p.heal()
	qemuIO(t, a.url(0), "read -P 0x61 0 64k", "read -P 0x62 1M 64k")
	drainVolume(t, dirA)
	if strings.Contains(a.log.String(), "lost the image's lock") {
		t.Errorf("a was fenced though its peer heard it:\n%s", a.log)
	}
	b.stop()
	a.stop()
	m := make(model, 16<<20)
	m.write(0, 64<<10, 0x61)
	m.write(1<<20, 64<<10, 0x62)
	m.equal(t, rbdExport(t, c, image), "the image after Ceph came back")
}

// backingLine returns the line of `volume show` about the backing.
func backingLine(show string) string {
	for _, l := range strings.Split(show, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "backing") {
			return strings.TrimSpace(l)
		}
	}
	return "(no backing line)"
}

// TestClusterTakeoverFromMirrorBehind: the owner a loses its peer b but not
// Ceph, so b stays standby and falls out of sync; a overwrites a block b's
// mirror holds, the flush is acknowledged (serve) and a writes it back. a
// then dies. b's mirror would put the older data back over the image's,
// so a recorded b as behind in the image before that write committed, and
// b takes over without applying its mirror: the block reads as a wrote it
// back.
func TestClusterTakeoverFromMirrorBehind(t *testing.T) {
	needTools(t, "qemu-io", "iptables")
	c, _, a, b, dirA, dirB, _ := startPairAs(t, 16, partitionGID)
	for _, addr := range cephAddrs(t, c) {
		if host, _ := splitHostPort(t, addr); host == "127.0.0.3" {
			t.Fatalf("Ceph listens on %s, b's address: cutting a from b would cut it from Ceph", addr)
		}
	}
	qemuIO(t, a.url(0), "write -P 0x71 0 64k", "flush") // in a's cache and b's mirror
	p := newPartition(t, partitionGID, a.portal)
	// a's segments to b (both peer links) are dropped; Ceph is reached
	iptables(t, "-A", p.chain, "-o", "lo", "-p", "tcp", "-m", "owner", "--gid-owner", p.gid, "-d", "127.0.0.3", "-j", "DROP")
	qemuIO(t, a.url(0), "write -P 0x72 0 64k", "flush") // acknowledged once b is out of sync (serve)
	drainVolume(t, dirA)                                // the image holds 0x72; b's mirror still 0x71
	wantCluster(t, dirB, "a", "standby", "standby")
	if v, out := clusterStatus(t, dirA); !slices.Equal(v.Behind, []string{"b"}) {
		t.Errorf("a's status: want b's mirror recorded behind:\n%s", out)
	}
	a.kill()
	killed := time.Now()
	waitCluster(t, dirB, "b", "owner", 90*time.Second)
	t.Logf("b took over %v after a was killed", time.Since(killed).Round(10*time.Millisecond))
	qemuIO(t, b.url(0), "read -P 0x72 0 64k", "write -P 0x73 64k 64k", "flush")
	if !strings.Contains(b.log.String(), "recorded this node's mirror as behind") {
		t.Errorf("b did not log why it left its mirror out:\n%s", b.log)
	}
	// a, dead, missed b's flushed write: b records it behind in turn
	if v, out := clusterStatus(t, dirB); !slices.Equal(v.Behind, []string{"a"}) {
		t.Errorf("b's status: want a's mirror recorded behind:\n%s", out)
	}
}
