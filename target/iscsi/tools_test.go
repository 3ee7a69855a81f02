package iscsi

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/memvol"
	"github.com/cachelun/cachelun/target/scsi"
)

// These tests run real initiators (libiscsi's tools, QEMU) against a
// Server on 127.0.0.1:0 serving the real device server over memvol. They
// need libiscsi-bin and qemu-utils/qemu-block-extra, which CI installs.

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed", name)
	}
	return p
}

// startToolServer serves a 64 MiB LUN 0 (and a thin 16 MiB LUN 1).
func startToolServer(t *testing.T) (url, portal string) {
	t.Helper()
	const iqn = "iqn.2026-11.test.cachelun:tools"
	dev := scsi.NewTarget(scsi.TargetConfig{Name: iqn})
	for i, size := range []int64{64 << 20, 16 << 20} {
		v, err := memvol.New(size, 512)
		if err != nil {
			t.Fatal(err)
		}
		cfg := scsi.LUConfig{Volume: v, WriteCache: true, Thin: i == 1, SerialNumber: fmt.Sprintf("tools%d", i)}
		cfg.DeviceID[0] = byte(i + 1)
		if _, err := dev.AddLU(uint64(i), cfg); err != nil {
			t.Fatal(err)
		}
	}
	srv := NewServer(Config{})
	if err := srv.AddTarget(TargetConfig{Name: iqn, SCSI: dev, TPGT: 1}); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		srv.Serve(ctx, l)
	}()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer scancel()
		srv.Shutdown(sctx)
		cancel()
		wg.Wait()
	})
	portal = l.Addr().String()
	return "iscsi://" + portal + "/" + iqn, portal
}

func run(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestLibiscsiTools(t *testing.T) {
	needTool(t, "iscsi-inq")
	needTool(t, "iscsi-ls")
	needTool(t, "iscsi-readcapacity16")
	url, portal := startToolServer(t)
	out := run(t, 20*time.Second, "iscsi-ls", "-s", "iscsi://"+portal)
	if !strings.Contains(out, "iqn.2026-11.test.cachelun:tools") || !strings.Contains(out, "Lun:1") {
		t.Fatalf("iscsi-ls:\n%s", out)
	}
	out = run(t, 20*time.Second, "iscsi-inq", url+"/0")
	if !strings.Contains(out, "CACHELUN") || !strings.Contains(out, "DIRECT_ACCESS") {
		t.Fatalf("iscsi-inq:\n%s", out)
	}
	out = run(t, 20*time.Second, "iscsi-inq", "-e", "1", "-c", "128", url+"/1")
	if !strings.Contains(out, "tools1") {
		t.Fatalf("iscsi-inq serial page:\n%s", out)
	}
	out = run(t, 20*time.Second, "iscsi-readcapacity16", url+"/0")
	if !strings.Contains(out, "Total size:67108864") {
		t.Fatalf("iscsi-readcapacity16:\n%s", out)
	}
}

func TestQEMUDataPatterns(t *testing.T) {
	needTool(t, "qemu-io")
	url, _ := startToolServer(t)
	lun := url + "/0"
	out := run(t, 60*time.Second, "qemu-io", "-f", "raw",
		"-c", "write -P 0xab 0 1M", "-c", "read -P 0xab 0 1M",
		"-c", "write -P 0x5c 32M 3M", "-c", "read -P 0x5c 32M 3M",
		"-c", "write -f -P 0x11 63M 1M", "-c", "read -P 0x11 63M 1M", // FUA at the end of the LUN
		"-c", "write -z 64k 64k", "-c", "read -P 0 64k 64k", "-c", "read -P 0xab 0 64k",
		"-c", "flush", lun)
	if strings.Contains(out, "Pattern verification failed") || strings.Count(out, "read ") < 5 {
		t.Fatalf("qemu-io:\n%s", out)
	}
	// Again with CRC32C header digests, through QEMU's option syntax.
	u := strings.TrimPrefix(url, "iscsi://")
	portal, iqn, _ := strings.Cut(u, "/")
	opts := "driver=raw,file.driver=iscsi,file.transport=tcp,file.portal=" + portal + ",file.target=" + iqn +
		",file.lun=0,file.header-digest=crc32c"
	out = run(t, 60*time.Second, "qemu-io", "--image-opts",
		"-c", "write -P 0x3c 8M 768k", "-c", "read -P 0x3c 8M 768k", "-c", "read -P 0xab 0 64k", "-c", "read -P 0xab 128k 896k", opts)
	if strings.Contains(out, "Pattern verification failed") || strings.Count(out, "read ") < 2 {
		t.Fatalf("qemu-io with header digests:\n%s", out)
	}
}

var (
	cuTestLine = regexp.MustCompile(`(?m)^\s+Test: (\S+) \.\.\.(.*)$`)
	cuFailed   = regexp.MustCompile(`(?m)(^|\.\.\.)\s*FAILED\b`)
	cuSummary  = regexp.MustCompile(`(?m)^\s+tests\s+\d+\s+\d+\s+\d+\s+(\d+)`)
)

// runSuite runs one iscsi-test-cu suite and returns the names of failed
// tests (CUnit marks them FAILED on the test line or the lines after).
func runSuite(t *testing.T, url, suite string) (failed []string, tests int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, "iscsi-test-cu", "-d", "--test="+suite, url).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s timed out:\n%s", suite, out)
	}
	text := string(out)
	idx := cuTestLine.FindAllStringSubmatchIndex(text, -1)
	for i, m := range idx {
		end := len(text)
		if i+1 < len(idx) {
			end = idx[i+1][0]
		}
		name := text[m[2]:m[3]]
		// "[FAILED]" lines are libiscsi logging an expected error; CUnit
		// marks a failed test with a bare FAILED.
		if cuFailed.MatchString(text[m[4]:end]) {
			failed = append(failed, name)
		}
		tests++
	}
	if tests == 0 {
		t.Fatalf("%s ran no test:\n%s", suite, out)
	}
	if sm := cuSummary.FindStringSubmatch(text); sm == nil || sm[1] != strconv.Itoa(len(failed)) {
		t.Fatalf("%s: parsed %d failures, CUnit summary says %v:\n%s", suite, len(failed), sm, out)
	}
	return failed, tests
}

func TestLibiscsiConformanceISCSI(t *testing.T) {
	needTool(t, "iscsi-test-cu")
	url, _ := startToolServer(t)
	for _, suite := range []string{"iSCSI.iSCSIResiduals", "iSCSI.iSCSITMF", "iSCSI.iSCSIcmdsn", "iSCSI.iSCSIdatasn"} {
		t.Run(suite, func(t *testing.T) {
			failed, n := runSuite(t, url+"/0", suite)
			t.Logf("%s: %d tests", suite, n)
			if len(failed) > 0 {
				t.Errorf("failed: %v", failed)
			}
		})
	}
}

// TestLibiscsiConformanceSCSI runs every SCSI.* suite against the target
// (CACHELUN_LONG=1, about 15 s): no test may fail, and the target must
// still serve afterwards.
func TestLibiscsiConformanceSCSI(t *testing.T) {
	if os.Getenv("CACHELUN_LONG") == "" {
		t.Skip("set CACHELUN_LONG=1 to run the SCSI.* conformance suites")
	}
	needTool(t, "iscsi-test-cu")
	url, _ := startToolServer(t)
	out, err := exec.Command("iscsi-test-cu", "-l").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	var suites []string
	for _, l := range strings.Split(string(out), "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "SCSI.") && !strings.Contains(l[5:], ".") {
			suites = append(suites, l)
		}
	}
	slices.Sort(suites)
	total, fails := 0, 0
	for _, s := range suites {
		failed, n := runSuite(t, url+"/0", s)
		total += n
		fails += len(failed)
		if len(failed) > 0 {
			t.Errorf("%s: %d tests, failed %v", s, n, failed)
		}
	}
	t.Logf("SCSI.*: %d suites, %d tests, %d failed", len(suites), total, fails)
	run(t, 20*time.Second, "iscsi-inq", url+"/0") // still serving
}
