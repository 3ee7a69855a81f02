//go:build ceph

package vm

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/cephtest"
)

//go:embed testdata/multipath-guest.sh
var multipathGuest string

// tier4IQN is the target both nodes export the volume under.
const tier4IQN = "iqn.2026-11.io.cachelun:mpath"

// TestTier4Multipath: two cachelun nodes on the host serve one RBD image
// of a throwaway Ceph cluster as one LUN, node a the owner (ALUA
// active/optimized), node b standby. A Debian guest logs in to both
// portals with open-iscsi (over qemu's user network), dm-multipath groups
// the two paths by ALUA priority, ext4 on the map gets fsync'd files. The
// guest then asks for the owner's death: a is killed (SIGKILL) with a
// writer running in the guest and its cache file is deleted; b fences a and
// takes the volume over, and multipath moves the I/O to b's path. Every
// file whose fsync returned, before or during the failover, reads back
// intact from b, after a remount too, e2fsck finds the file system clean,
// and no I/O error reaches the multipath map or ext4 (the killed path's
// own errors are expected). The stall the guest's writer saw is printed.
func TestTier4Multipath(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the VM tiers boot a kernel under TCG for minutes; the full run keeps them")
	}
	if err := cephtest.Available(); err != nil {
		t.Fatalf("tier 4 needs Ceph on this machine: %v", err)
	}
	a, rfs := prepareDebian(t)

	work := t.TempDir()
	start := time.Now()
	bin := filepath.Join(work, "cachelun")
	if err := buildCephDaemon(bin); err != nil {
		t.Fatal(err)
	}
	guest := filepath.Join(work, "guest-test.sh")
	if err := os.WriteFile(guest, []byte(multipathGuest), 0o755); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(work, "root.ext4")
	if err := a.BuildRootDisk(rfs, RootDisk{
		Modules: []string{"virtio_net", "iscsi_tcp", "sd_mod", "scsi_dh_alua", "dm_multipath", "dm_service_time",
			"dm_round_robin", "crc32c_generic"},
		Files: map[string]string{"/root/guest-test.sh": guest},
	}, disk); err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(work, "initrd.gz")
	if err := a.Build(Initramfs{Init: switchrootInit, Modules: []string{"virtio_pci", "virtio_blk", "crc32c_generic", "ext4"}}, initrd); err != nil {
		t.Fatal(err)
	}
	t.Logf("daemon, root disk and initramfs built in %v", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	c, err := cephtest.Start(context.Background(), 3*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Error(err)
		}
	})
	const image = "cachelun/tier4"
	for _, args := range [][]string{
		{"ceph", "osd", "pool", "create", "cachelun", "8"},
		{"rbd", "pool", "init", "cachelun"},
		{"rbd", "create", "--size", "256M", image},
	} {
		if _, err := c.Run(context.Background(), args[0], args[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("Ceph cluster and image ready in %v", time.Since(start).Round(time.Millisecond))

	// The portals are on the host's 127.0.0.1 (the guest's 10.0.2.2); the
	// peer links on 127.0.0.2 and 127.0.0.3, as in the cluster tests.
	portalA, portalB := freeAddr(t, "127.0.0.1"), freeAddr(t, "127.0.0.1")
	peerA, peerB := freeAddr(t, "127.0.0.2"), freeAddr(t, "127.0.0.3")
	na := startNode(t, bin, "a", portalA, nodeConfig(t, c.Conf, image, "a", peerA, "b@"+peerB))
	na.wantStatus(t, "a", "owner", "active/optimized")
	nb := startNode(t, bin, "b", portalB, nodeConfig(t, c.Conf, image, "b", peerB, "a@"+peerA))
	nb.wantStatus(t, "a", "standby", "standby")

	var (
		killedAt time.Time
		takeover time.Duration
		takeErr  error
	)
	b := Boot{Assets: a, Initrd: initrd, MemoryMB: 1536, Timeout: 6 * time.Minute, UserNet: true,
		Append:    fmt.Sprintf("cachelun.iqn=%s cachelun.portals=10.0.2.2:%s,10.0.2.2:%s", tier4IQN, port(portalA), port(portalB)),
		ExtraArgs: []string{"-drive", "file=" + disk + ",format=raw,if=virtio,cache=unsafe"},
		OnMarker: map[string]func(){
			// The owner dies with the guest writing, and its cache
			// file is lost with it: b has only its mirror of a's
			// journal.
			"@@KILL-OWNER": func() {
				killedAt = time.Now()
				na.kill()
				if err := os.Remove(filepath.Join(na.dir, "cache.img")); err != nil {
					takeErr = err
					return
				}
				takeover, takeErr = nb.waitOwner(90 * time.Second)
			},
		}}
	if testing.Verbose() {
		b.Console = os.Stdout
	}
	r, err := b.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(CacheDir(), "tier4-last.log")
	if err := r.SaveLog(logPath); err != nil {
		t.Log(err)
	}
	t.Logf("qemu wall %v; guest timeline: %v", r.Wall.Round(time.Millisecond), r.Marks)
	for _, p := range r.Passed {
		t.Logf("PASS %s", p)
	}
	if killedAt.IsZero() {
		t.Error("the guest never asked for the owner's death (@@KILL-OWNER)")
	} else if takeErr != nil {
		t.Errorf("after the owner's SIGKILL: %v\nnode b's log:\n%s", takeErr, nb.log)
	} else {
		t.Logf("SIGKILL of node a to node b owning the volume: %v", takeover.Round(10*time.Millisecond))
	}
	if s := stallOf(r.Log); s != "" {
		fmt.Printf("tier 4 multipath failover: longest wait between two fsync'd files in the guest across the owner's SIGKILL: %s s (node b owned the volume %v after the kill)\n",
			s, takeover.Round(10*time.Millisecond))
	}
	if err := r.Err("net", "login", "multipath-map", "mkfs", "mount", "fsync-files", "owner-path-lost",
		"io-across-failover", "stall", "multipath-other-node", "files-after-failover", "umount", "fsck",
		"files-after-remount", "no-fs-errors"); err != nil {
		t.Fatal(r.Report(err, logPath) + "\n---- node a's log (tail):\n" + tail(na.log.String(), 4000) +
			"\n---- node b's log (tail):\n" + tail(nb.log.String(), 4000))
	}
	nb.wantStatus(t, "b", "owner", "active/optimized")
	if !strings.Contains(nb.log.String(), "this node took the volume over") {
		t.Errorf("b did not log the takeover:\n%s", nb.log)
	}
	nb.stop(t)
}

// stallOf is the guest's "@@STALL SECONDS" value, or "".
func stallOf(log string) string {
	sc := bufio.NewScanner(strings.NewReader(log))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "@@STALL "); ok {
			return v
		}
	}
	return ""
}

// buildCephDaemon builds cachelun with the ceph build tag (cgo, librbd):
// the nodes run on the host and serve an RBD image.
func buildCephDaemon(out string) error {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	if _, err := run(root, os.Environ(), "go", "build", "-tags", "ceph", "-o", out, "./cmd/cachelun"); err != nil {
		return fmt.Errorf("vm: build the ceph-tagged daemon: %w", err)
	}
	return nil
}

// freeAddr returns HOST:PORT with a TCP port that was free on host a
// moment ago.
func freeAddr(t *testing.T, host string) string {
	t.Helper()
	l, err := net.Listen("tcp", host+":0")
	if err != nil {
		t.Fatalf("cannot listen on %s (the loopback range is needed): %v", host, err)
	}
	defer l.Close()
	return l.Addr().String()
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// nodeConfig is a node's configuration, in the shape of the integration
// cluster tests': volume "vol" on the RBD image, write-back with nothing
// written back on its own (the owner's flushed writes live in its cache
// and in the peer's mirror only), exported as LUN 0 of tier4IQN, and the
// [cluster] table naming its peer.
func nodeConfig(t *testing.T, cephConf, image, node, listen, peer string) string {
	t.Helper()
	return fmt.Sprintf(`[global]
admin_socket = "admin.sock"
metrics_listen = "off"

[[cache]]
name = "c0"
path = "cache.img"
size = "128MiB"
segment_size = "4MiB"
journal_flush_interval = "200ms"

[cache.writeback]
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
iqn = %q
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
`, image, cephConf, tier4IQN, node, listen, peer)
}

// node is one `cachelun serve` on the host.
type node struct {
	name, dir, bin string
	cmd            *exec.Cmd
	log            *syncBuffer
	exited         chan struct{}
	waitErr        error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startNode runs the daemon with config in a new data directory, its
// portal on portal (the --listen flag replaces the configured one), and
// waits for its ready line.
func startNode(t *testing.T, bin, name, portal, config string) *node {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "cachelun.toml")
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	runDir := filepath.Join(dir, "run")
	if err := os.MkdirAll(runDir, 0o750); err != nil {
		t.Fatal(err)
	}
	n := &node{name: name, dir: dir, bin: bin, log: &syncBuffer{}, exited: make(chan struct{})}
	n.cmd = exec.Command(bin, "serve", "--data-dir", dir, "--listen", portal, "--metrics", "off", "--config", cfg)
	n.cmd.Env = append(os.Environ(), "RUNTIME_DIRECTORY="+runDir)
	n.cmd.Stdout, n.cmd.Stderr = n.log, n.log
	if err := n.cmd.Start(); err != nil {
		t.Fatalf("start node %s: %v", name, err)
	}
	go func() {
		n.waitErr = n.cmd.Wait()
		close(n.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-n.exited:
		default:
			n.cmd.Process.Kill() // this test's own daemon, by its pid
			<-n.exited
		}
		if t.Failed() {
			p := filepath.Join(CacheDir(), "tier4-node-"+name+".log")
			if os.WriteFile(p, []byte(n.log.String()), 0o644) == nil {
				t.Logf("node %s's log saved to %s", name, p)
			}
		}
	})
	deadline := time.After(60 * time.Second)
	for !strings.Contains(n.log.String(), "cachelun ready") {
		select {
		case <-n.exited:
			t.Fatalf("node %s exited before it was ready (%v):\n%s", name, n.waitErr, n.log)
		case <-deadline:
			t.Fatalf("node %s not ready after 60 s:\n%s", name, n.log)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return n
}

// clusterVolume is the volume of `cachelun cluster status --json`.
type clusterVolume struct {
	Name, Owner, State, ALUA, Mode string
}

func (n *node) status() (clusterVolume, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, n.bin, "cluster", "status", "--json", "--socket", filepath.Join(n.dir, "admin.sock"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return clusterVolume{}, string(out), fmt.Errorf("node %s: cluster status: %w:\n%s", n.name, err, out)
	}
	var st struct{ Volumes []clusterVolume }
	if err := json.Unmarshal(out, &st); err != nil || len(st.Volumes) != 1 {
		return clusterVolume{}, string(out), fmt.Errorf("node %s: cluster status: %v:\n%s", n.name, err, out)
	}
	return st.Volumes[0], string(out), nil
}

func (n *node) wantStatus(t *testing.T, owner, state, alua string) {
	t.Helper()
	v, out, err := n.status()
	if err != nil {
		t.Fatal(err)
	}
	if v.Owner != owner || v.State != state || v.ALUA != alua || v.Mode != "writeback" {
		t.Fatalf("node %s: cluster status: want owner %s, this node %s, ALUA %s, writeback:\n%s", n.name, owner, state, alua, out)
	}
}

// waitOwner waits until the node says it owns the volume and returns how
// long that took.
func (n *node) waitOwner(limit time.Duration) (time.Duration, error) {
	start := time.Now()
	for {
		v, out, err := n.status()
		if err == nil && v.Owner == n.name && v.State == "owner" && v.ALUA == "active/optimized" {
			return time.Since(start), nil
		}
		if time.Since(start) > limit {
			return 0, fmt.Errorf("node %s does not own the volume after %v: %v %s", n.name, limit, err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// kill sends SIGKILL (by the pid this test started) and waits for the exit.
func (n *node) kill() {
	n.cmd.Process.Kill()
	<-n.exited
}

// stop sends SIGTERM and requires a clean exit within 60 s.
func (n *node) stop(t *testing.T) {
	t.Helper()
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("node %s: SIGTERM: %v", n.name, err)
	}
	select {
	case <-n.exited:
	case <-time.After(60 * time.Second):
		t.Fatalf("node %s did not exit within 60 s of SIGTERM:\n%s", n.name, n.log)
	}
	if n.waitErr != nil {
		t.Fatalf("node %s exited with %v after SIGTERM:\n%s", n.name, n.waitErr, n.log)
	}
}
