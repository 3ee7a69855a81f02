package integration

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/testkit"
)

const (
	toolTimeout = 60 * time.Second
	gib         = int64(1) << 30
	mib         = int64(1) << 20
)

// TestEmbeddedDefault starts the daemon exactly as the README's quick start
// does (no --config) and checks the demo LUN with libiscsi's tools.
func TestEmbeddedDefault(t *testing.T) {
	needTools(t, "iscsi-ls", "iscsi-inq", "iscsi-readcapacity16", "qemu-io")
	d := startDaemon(t, t.TempDir(), "")
	url := d.url(0)
	if want := "/iqn.2026-11.io.cachelun:demo/0"; !strings.HasSuffix(url, want) {
		t.Fatalf("demo URL %q does not end in %q", url, want)
	}

	ls := mustRun(t, toolTimeout, "iscsi-ls", "-s", "iscsi://"+d.portal)
	if !strings.Contains(ls, "iqn.2026-11.io.cachelun:demo") || !strings.Contains(ls, "Lun:0") {
		t.Errorf("iscsi-ls does not show the demo target and LUN 0:\n%s", ls)
	}
	inq := mustRun(t, toolTimeout, "iscsi-inq", url)
	if !strings.Contains(inq, "Vendor:CACHELUN") || !strings.Contains(inq, "DIRECT_ACCESS") {
		t.Errorf("iscsi-inq:\n%s", inq)
	}
	rc := mustRun(t, toolTimeout, "iscsi-readcapacity16", url)
	// the demo volume is 1 GiB of 512-byte blocks
	if !strings.Contains(rc, "RETURNED LOGICAL BLOCK ADDRESS:2097151") || !strings.Contains(rc, "LOGICAL BLOCK LENGTH IN BYTES:512") {
		t.Errorf("iscsi-readcapacity16:\n%s", rc)
	}
	qemuIO(t, url, "write -P 0x5a 0 1M", "read -P 0x5a 0 1M")
	d.stop()
}

// qemuIO runs qemu-io commands against a URL; every command must succeed
// (qemu-io exits 1 on a failed command or a pattern mismatch).
func qemuIO(t *testing.T, url string, cmds ...string) string {
	t.Helper()
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	args = append(args, url)
	out := mustRun(t, toolTimeout, "qemu-io", args...)
	if strings.Contains(out, "failed") || strings.Contains(out, "Pattern verification") {
		t.Fatalf("qemu-io %v:\n%s", cmds, out)
	}
	return out
}

// qemuIOFails runs one qemu-io command that must be refused.
func qemuIOFails(t *testing.T, url, cmd string) string {
	t.Helper()
	r := runTool(t, toolTimeout, "qemu-io", "-f", "raw", "-c", cmd, url)
	if r.timedOut {
		t.Fatalf("qemu-io %q timed out:\n%s", cmd, r.out)
	}
	if r.exitCode == 0 && !strings.Contains(r.out, "failed") {
		t.Fatalf("qemu-io %q succeeded, want it refused:\n%s", cmd, r.out)
	}
	return r.out
}

// The patterns written across a 1 GiB LUN and checked after restarts.
type region struct {
	off, n  int64
	pattern byte
}

func (r region) write(fua bool) string {
	f := ""
	if fua {
		f = "-f "
	}
	return fmt.Sprintf("write %s-P 0x%02x %d %d", f, r.pattern, r.off, r.n)
}

func (r region) read() string { return fmt.Sprintf("read -P 0x%02x %d %d", r.pattern, r.off, r.n) }

var layout = struct {
	start, middle, end, fua, zeroed, around region
	unaligned, unalignedHead, unalignedTail region
}{
	start:  region{0, mib, 0xa1},
	middle: region{gib/2 - 64*1024, 256 * 1024, 0xa2}, // crosses the 512 MiB mark
	end:    region{gib - mib, mib, 0xa3},
	fua:    region{8 * mib, 64 * 1024, 0xa4},
	// write -z zeroes the first 16 KiB of the FUA region
	zeroed: region{8 * mib, 16 * 1024, 0x00},
	around: region{8*mib + 16*1024, 48 * 1024, 0xa4},
	// byte-unaligned write inside a 4 KiB block: the initiator must
	// read-modify-write; neighbouring bytes keep their data
	unalignedHead: region{4 * mib, 100, 0xcd},
	unaligned:     region{4*mib + 100, 1000, 0x11},
	unalignedTail: region{4*mib + 1100, 4096 - 1100, 0xcd},
}

// writePatterns writes every region and checks each right away.
func writePatterns(t *testing.T, url string) {
	t.Helper()
	l := layout
	qemuIO(t, url,
		l.start.write(false), l.middle.write(false), l.end.write(false),
		l.start.read(), l.middle.read(), l.end.read(),
		fmt.Sprintf("write -P 0xcd %d 4096", 4*mib), l.unaligned.write(false),
		l.unalignedHead.read(), l.unaligned.read(), l.unalignedTail.read(),
		l.fua.write(true), l.fua.read(),
		"flush",
		fmt.Sprintf("write -z %d %d", l.zeroed.off, l.zeroed.n),
		l.zeroed.read(), l.around.read(),
		"flush",
	)
	// requests past the end are refused and the target carries on
	qemuIOFails(t, url, fmt.Sprintf("write -P 0x11 %d 4096", gib))
	qemuIOFails(t, url, fmt.Sprintf("write -P 0x11 %d 1024", gib-512))
	qemuIOFails(t, url, fmt.Sprintf("read %d 1024", gib-512))
	qemuIO(t, url, l.end.read())
}

// checkPatterns reads every region written by writePatterns.
func checkPatterns(t *testing.T, url string) {
	t.Helper()
	l := layout
	qemuIO(t, url, l.start.read(), l.middle.read(), l.end.read(),
		l.unalignedHead.read(), l.unaligned.read(), l.unalignedTail.read(),
		l.zeroed.read(), l.around.read())
}

// TestDataAcrossModesAndRestarts writes data patterns across the LUN in
// each cache mode, then checks them after a graceful restart (SIGTERM) and
// after a crash (SIGKILL) of the daemon. Data acknowledged and flushed
// before the SIGKILL must survive it.
func TestDataAcrossModesAndRestarts(t *testing.T) {
	needTools(t, "qemu-io", "iscsi-readcapacity16")
	variants := []struct{ name, mode, slow string }{
		{"writeback", "writeback", ""},
		{"writethrough", "writethrough", ""},
		{"writearound", "writearound", ""},
		// a slow backing device keeps data dirty in the cache across the
		// restarts, so they exercise journal replay rather than writeback
		{"writeback-slow-backing", "writeback", "latency=2ms"},
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			dir := t.TempDir()
			d := startDaemon(t, dir, writeConfig(t, dir, configOptions{mode: v.mode, slow: v.slow}))
			url := d.url(0)
			if !strings.Contains(strings.Join(d.urls, " "), "iqn.2026-11.io.cachelun:test/0") {
				t.Fatalf("urls %v", d.urls)
			}
			writePatterns(t, url)
			d.alive()

			d.stop()
			d.restart()
			checkPatterns(t, d.url(0))

			// acknowledged and flushed, then the process dies
			after := region{16 * mib, 2 * mib, 0xb1}
			fuaOnly := region{32 * mib, 128 * 1024, 0xb2}
			qemuIO(t, d.url(0), after.write(false), "flush", fuaOnly.write(true))
			d.kill()
			d.restart()
			checkPatterns(t, d.url(0))
			qemuIO(t, d.url(0), after.read(), fuaOnly.read())

			// overwrite after the crash, then restart once more
			over := region{16 * mib, 64 * 1024, 0xb3}
			qemuIO(t, d.url(0), over.write(false), "flush")
			d.stop()
			d.restart()
			qemuIO(t, d.url(0), over.read(),
				region{16*mib + 64*1024, 2*mib - 64*1024, 0xb1}.read())
			d.stop()
		})
	}
}

// TestCrashKeepsAcknowledgedWrites: writes the daemon acknowledged but
// that no flush has made durable yet survive a crash (SIGKILL) of the
// daemon: their keys are recovered from the intent log at the restart. The
// ksets stay open for a minute, so nothing but the intent log holds those
// keys at the kill. (C3 across a crash: the host's next SYNCHRONIZE
// CACHE, sent to the restarted daemon, must not answer GOOD over lost
// writes.)
func TestCrashKeepsAcknowledgedWrites(t *testing.T) {
	needTools(t, "qemu-io", "stdbuf")
	dir := t.TempDir()
	d := startDaemon(t, dir, writeConfig(t, dir, configOptions{lunSize: "256MiB", journalFlushInterval: "1m"}))
	base := region{0, 4 * mib, 0xd1}
	qemuIO(t, d.url(0), base.write(false), "flush")

	// A client writes (no flush, no FUA) and stays connected; the daemon
	// is killed once the writes are acknowledged.
	acked := []region{{1 * mib, 256 * 1024, 0xd2}, {8 * mib, 64 * 1024, 0xd3}, {64 * mib, 1 * mib, 0xd4}, {200 * mib, 4096, 0xd5}}
	stop := writeAckedAndStay(t, d.url(0), acked)
	d.kill()
	stop()

	d.restart()
	if !strings.Contains(d.log.String(), "recovered acknowledged writes") {
		t.Errorf("the restarted daemon did not report recovering writes from its intent log")
	}
	// one line per cache says what the restart recovered, as a warning
	if m := regexp.MustCompile(`level=WARN msg="cache recovered after a crash" cache=\S+ keys_replayed=[0-9]+ dirty_bytes=([0-9]+) dirty=\S+ intent_recovered_keys=([0-9]+)`).FindStringSubmatch(d.log.String()); m == nil || m[1] == "0" || m[2] == "0" {
		t.Errorf("the restart's recovery line is missing or shows nothing recovered: %q", m)
	}
	cmds := []string{"flush"}
	for _, r := range acked {
		cmds = append(cmds, r.read())
	}
	cmds = append(cmds, region{0, 1 * mib, 0xd1}.read(), region{1*mib + 256*1024, 3*mib - 256*1024, 0xd1}.read())
	qemuIO(t, d.url(0), cmds...)

	// Recovered writes were journaled durably at the restart: after a
	// clean stop and start they are still there.
	d.stop()
	d.restart()
	qemuIO(t, d.url(0), cmds[1:]...)
	d.stop()
}

// TestSIGHUPDoesNotKill: SIGHUP with an unchanged configuration is a reload
// that applies nothing; the daemon stays up and keeps serving.
func TestSIGHUPDoesNotKill(t *testing.T) {
	needTools(t, "qemu-io")
	dir := t.TempDir()
	d := startDaemon(t, dir, writeConfig(t, dir, configOptions{lunSize: "64MiB"}))
	if err := d.cmd.Process.Signal(sighup); err != nil {
		t.Fatal(err)
	}
	// handled once the daemon logs the outcome; it must still be up then
	d.waitLog("SIGHUP: configuration", 1)
	d.alive()
	qemuIO(t, d.url(0), "write -P 0x33 0 64k", "read -P 0x33 0 64k")
	d.stop()
}

// TestBadConfigRefused: a configuration error names file:line and the
// daemon exits non-zero without creating anything.
func TestBadConfigRefused(t *testing.T) {
	dir := t.TempDir()
	p := writeConfig(t, dir, configOptions{mode: "wrback"})
	r := runTool(t, toolTimeout, binaryPath, "serve", "--config", p, "--data-dir", dir+"/data")
	if r.exitCode == 0 || r.timedOut {
		t.Fatalf("bad config accepted: %+v", r)
	}
	if !strings.Contains(r.out, p+":") || !strings.Contains(r.out, "volume[0].mode") {
		t.Errorf("error does not name file:line and key:\n%s", r.out)
	}
	if entries, _ := readDirNames(dir + "/data"); len(entries) != 0 {
		t.Errorf("data dir populated by a refused config: %v", entries)
	}
}

// writeAckedAndStay starts a qemu-io client that writes the regions (no
// flush, no FUA) and stays connected, and returns once every write is
// acknowledged; stop ends the client (it is ended at cleanup anyway).
func writeAckedAndStay(t *testing.T, url string, acked []region) (stop func()) {
	t.Helper()
	// stdbuf: qemu-io's "wrote" lines must arrive as they happen; -t
	// writeback: no flush after each write (qemu-io's default is writethrough).
	args := []string{"-oL", "qemu-io", "-t", "writeback", "-f", "raw"}
	for _, r := range acked {
		args = append(args, "-c", r.write(false))
	}
	args = append(args, "-c", "sleep 30000", url)
	ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
	client := exec.CommandContext(ctx, "stdbuf", args...)
	var out lockedBuffer
	client.Stdout, client.Stderr = &out, &out
	if err := client.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			client.Process.Kill()
			client.Wait()
			cancel()
		})
	}
	t.Cleanup(stop) // on a failure, do not leave the client behind
	testkit.WaitFor(t, toolTimeout, "qemu-io to acknowledge every write", func() bool {
		if strings.Contains(out.String(), "failed") {
			t.Fatalf("writes not acknowledged:\n%s", out.String())
		}
		return strings.Count(out.String(), "wrote ") >= len(acked)
	})
	return stop
}
