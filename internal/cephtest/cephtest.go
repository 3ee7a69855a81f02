// Package cephtest starts and stops throwaway single-node Ceph clusters for
// tests, through scripts/ceph-cluster.sh (mon, mgr and one OSD on
// 127.0.0.1, in a temporary directory, on a port range of their own so
// parallel test processes do not collide). It needs the Debian packages
// ceph-mon, ceph-osd, ceph-mgr and ceph-common; tests that use it carry the
// ceph build tag.
//
// A test package starts one cluster in TestMain and stops it after m.Run;
// daemons are stopped by the pids the script recorded, never by name. If
// the test process dies first (a test timeout), the script's watcher stops
// the cluster and removes its directory.
package cephtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// portSpan is how many ports a cluster uses from its base (the script binds
// in PORT_BASE..PORT_BASE+29).
const portSpan = 30

// Cluster is a running throwaway cluster.
type Cluster struct {
	Dir      string // everything of the cluster lives here
	Conf     string // its ceph.conf (client.admin's keyring named in it)
	Keyring  string
	PortBase int
	script   string
	ownsDir  bool
}

// Script returns the path of scripts/ceph-cluster.sh in this source tree.
func Script() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "scripts", "ceph-cluster.sh")
}

// Available reports why a cluster cannot be started here, or nil.
func Available() error {
	for _, tool := range []string{"ceph", "ceph-mon", "ceph-mgr", "ceph-osd", "rbd", "rados"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("cephtest: %s not installed (apt-get install ceph-mon ceph-osd ceph-mgr ceph-common): %w", tool, err)
		}
	}
	return nil
}

// Start starts a cluster in a new temporary directory and waits until it
// is usable, for at most timeout. The port base comes from
// $CEPHTEST_PORT_BASE, or is a free range picked at random.
func Start(ctx context.Context, timeout time.Duration) (*Cluster, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "cephtest-")
	if err != nil {
		return nil, err
	}
	base := 0
	if s := os.Getenv("CEPHTEST_PORT_BASE"); s != "" {
		if base, err = strconv.Atoi(s); err != nil {
			return nil, fmt.Errorf("cephtest: CEPHTEST_PORT_BASE=%q: %w", s, err)
		}
	} else if base, err = freePortBase(); err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, PortBase: base, script: Script(), ownsDir: true}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", c.script, "start", dir)
	cmd.Env = append(os.Environ(), "PORT_BASE="+strconv.Itoa(base), fmt.Sprintf("READY_TIMEOUT=%d", int(timeout.Seconds())),
		// if this process dies before Stop (a test timeout), the
		// script's watcher stops the cluster and removes dir
		"WATCH_PID="+strconv.Itoa(os.Getpid()), "REMOVE_DIR=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.Output()
	if err != nil {
		c.Stop()
		return nil, fmt.Errorf("cephtest: starting a cluster in %s on ports %d+: %w\n%s", dir, base, err, stderr.String())
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CEPH_CONF="); ok {
			c.Conf = v
		}
		if v, ok := strings.CutPrefix(sc.Text(), "CEPH_KEYRING="); ok {
			c.Keyring = v
		}
	}
	if c.Conf == "" || c.Keyring == "" {
		c.Stop()
		return nil, fmt.Errorf("cephtest: the script printed no CEPH_CONF/CEPH_KEYRING: %q", out)
	}
	return c, nil
}

// freePortBase picks a base whose portSpan ports are all free on 127.0.0.1
// now. Another process may still take one before the cluster binds it; the
// start then fails and says so.
func freePortBase() (int, error) {
	for range 20 {
		base := 20000 + rand.IntN(1300)*portSpan
		free := true
		for p := base; p < base+portSpan && free; p++ {
			l, err := net.Listen("tcp4", "127.0.0.1:"+strconv.Itoa(p))
			if err != nil {
				free = false
				continue
			}
			l.Close()
		}
		if free {
			return base, nil
		}
	}
	return 0, errors.New("cephtest: no free range of ports found")
}

func (c *Cluster) runScript(ctx context.Context, verb string) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", c.script, verb, c.Dir)
	cmd.Env = append(os.Environ(), "PORT_BASE="+strconv.Itoa(c.PortBase))
	cmd.WaitDelay = 5 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("cephtest: ceph-cluster.sh %s %s: %w\n%s", verb, c.Dir, err, out)
	}
	return nil
}

// Attach uses a cluster already started with `ceph-cluster.sh start DIR`
// (to rerun tests without waiting for a start); Stop then leaves it running.
func Attach(dir string) (*Cluster, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, Conf: filepath.Join(dir, "ceph.conf"), Keyring: filepath.Join(dir, "keyring"), script: Script()}
	if _, err := os.Stat(c.Conf); err != nil {
		return nil, fmt.Errorf("cephtest: no cluster in %s: %w", dir, err)
	}
	return c, nil
}

// Stop stops the cluster's daemons and removes its directory; an attached
// cluster is left alone.
func (c *Cluster) Stop() error {
	if !c.ownsDir {
		return nil
	}
	err := c.runScript(context.Background(), "stop")
	if err == nil {
		err = os.RemoveAll(c.Dir)
	}
	return err
}

// StopOSD stops the OSD (SIGTERM by its recorded pid); the monitor and the
// manager keep running.
func (c *Cluster) StopOSD(ctx context.Context) error { return c.runScript(ctx, "stop-osd") }

// StartOSD starts the OSD again and waits until it is up.
func (c *Cluster) StartOSD(ctx context.Context) error { return c.runScript(ctx, "start-osd") }

// Command returns a ceph CLI command (ceph, rbd, rados, ...) run against
// the cluster as client.admin.
func (c *Cluster) Command(ctx context.Context, tool string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, tool, append([]string{"-c", c.Conf}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Run runs a ceph CLI command for at most 2 minutes and returns its
// standard output; an error carries its standard error.
func (c *Cluster) Run(ctx context.Context, tool string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := c.Command(ctx, tool, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("cephtest: %s %s: %w: %s", tool, strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}
