package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/testkit"
)

// tgtd is a tgtd instance on 127.0.0.1 used as the reference target: one
// target with LUN 1 (thick) and LUN 2 (thin provisioning) on files of the
// same size as cachelun's LUNs. LUN 0 is tgtd's controller LUN.
type tgtd struct {
	t       *testing.T
	port    int
	control int
	iqn     string
	cmd     *exec.Cmd
	log     bytes.Buffer
	exited  chan struct{}
}

func startTgtd(t *testing.T, dir string, size int64) *tgtd {
	t.Helper()
	g := &tgtd{t: t, port: freePort(t), iqn: "iqn.2024-01.test.tgtd:ref"}
	// the control "port" names tgtd's unix socket; derive it from the TCP
	// port so parallel runs do not share one
	g.control = 1000 + g.port%30000
	for _, name := range []string{"thick.img", "thin.img"} {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	g.cmd = exec.Command("tgtd", "-f", "-C", strconv.Itoa(g.control), "--iscsi", fmt.Sprintf("portal=127.0.0.1:%d", g.port))
	g.cmd.Stdout, g.cmd.Stderr = &g.log, &g.log
	if err := g.cmd.Start(); err != nil {
		t.Fatalf("start tgtd: %v", err)
	}
	g.exited = make(chan struct{})
	go func() { g.cmd.Wait(); close(g.exited) }()
	t.Cleanup(g.stop)

	// tgtd needs a moment before its control socket answers
	testkit.WaitFor(t, 20*time.Second, "tgtd's control socket to answer", func() bool {
		r := runTool(t, 10*time.Second, "tgtadm", "-C", strconv.Itoa(g.control), "--lld", "iscsi", "--op", "show", "--mode", "target")
		if r.exitCode != 0 && !g.running() {
			t.Fatalf("tgtd did not come up: %s\n%s", r.out, g.log.String())
		}
		return r.exitCode == 0
	})
	g.adm("--op", "new", "--mode", "target", "--tid", "1", "-T", g.iqn)
	g.adm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "1", "-b", filepath.Join(dir, "thick.img"))
	g.adm("--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", "2", "-b", filepath.Join(dir, "thin.img"))
	g.adm("--op", "update", "--mode", "logicalunit", "--tid", "1", "--lun", "2", "--params", "thin_provisioning=1")
	g.adm("--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")
	return g
}

func (g *tgtd) adm(args ...string) {
	g.t.Helper()
	mustRun(g.t, 30*time.Second, "tgtadm", append([]string{"-C", strconv.Itoa(g.control), "--lld", "iscsi"}, args...)...)
}

func (g *tgtd) url(lun int) string {
	return fmt.Sprintf("iscsi://127.0.0.1:%d/%s/%d", g.port, g.iqn, lun)
}

func (g *tgtd) running() bool {
	select {
	case <-g.exited:
		return false
	default:
		return true
	}
}

// stop removes the target (tgtd ignores SIGTERM while targets exist), asks
// tgtd to exit, and kills it if it does not.
func (g *tgtd) stop() {
	if !g.running() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := strconv.Itoa(g.control)
	exec.CommandContext(ctx, "tgtadm", "-C", c, "--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", "1", "--force").Run()
	exec.CommandContext(ctx, "tgtadm", "-C", c, "--op", "delete", "--mode", "system").Run()
	select {
	case <-g.exited:
	case <-time.After(5 * time.Second):
		g.cmd.Process.Kill()
		<-g.exited
	}
}
