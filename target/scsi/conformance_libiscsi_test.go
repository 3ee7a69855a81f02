//go:build libiscsi

package scsi_test

// Conformance against libiscsi's iscsi-test-cu, through the project's own
// iSCSI target, on three logical units: thick 512-byte blocks (LUN 0), thin
// 512-byte blocks (LUN 1) and thin 4096-byte blocks (LUN 2).
//
//	go test -tags libiscsi -run Conformance ./target/scsi/
//
// Needs iscsi-test-cu (Debian libiscsi-bin); traffic stays on 127.0.0.1.

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/memvol"
	"github.com/cachelun/cachelun/target/iscsi"
	"github.com/cachelun/cachelun/target/scsi"
)

const conformanceIQN = "iqn.2026-01.io.cachelun.test:conformance"

var summaryLine = regexp.MustCompile(`tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)`)

func TestConformanceLibiscsi(t *testing.T) {
	if _, err := exec.LookPath("iscsi-test-cu"); err != nil {
		t.Skip("iscsi-test-cu not installed")
	}
	tgt := scsi.NewTarget(scsi.TargetConfig{Name: conformanceIQN})
	luns := []struct {
		size int64
		bs   int
		thin bool
	}{{128 << 20, 512, false}, {128 << 20, 512, true}, {256 << 20, 4096, true}}
	for i, l := range luns {
		vol, err := memvol.New(l.size, l.bs)
		if err != nil {
			t.Fatal(err)
		}
		cfg := scsi.LUConfig{Volume: vol, Thin: l.thin, WriteCache: true, StatePath: t.TempDir() + "/state"}
		if _, err := tgt.AddLU(uint64(i), cfg); err != nil {
			t.Fatal(err)
		}
	}
	srv := iscsi.NewServer(iscsi.Config{})
	if err := srv.AddTarget(iscsi.TargetConfig{Name: conformanceIQN, SCSI: tgt, TPGT: 1}); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	defer func() {
		cancel()
		<-done
	}()

	out, err := exec.Command("iscsi-test-cu", "-l").Output()
	if err != nil {
		t.Fatal(err)
	}
	// Residual reporting depends on the device server's TransferLen, so
	// that iSCSI suite runs too.
	suites := []string{"iSCSI.iSCSIResiduals"}
	for _, s := range strings.Fields(string(out)) {
		if strings.HasPrefix(s, "SCSI.") && strings.Count(s, ".") == 1 {
			suites = append(suites, s)
		}
	}
	for lun := range luns {
		url := fmt.Sprintf("iscsi://%s/%s/%d", l.Addr(), conformanceIQN, lun)
		for _, suite := range suites {
			t.Run(fmt.Sprintf("lun%d/%s", lun, suite), func(t *testing.T) {
				cctx, ccancel := context.WithTimeout(ctx, 120*time.Second)
				defer ccancel()
				args := []string{"-d", "--test=" + suite, url}
				if suite == "SCSI.MultipathIO" && os.Getenv("CACHELUN_MULTIPATH") != "" {
					// A second path to the same LU (MultipathIO.Reset
					// checks the reset unit attention on both paths).
					args = append(args, url)
				}
				log, _ := exec.CommandContext(cctx, "iscsi-test-cu", args...).CombinedOutput()
				m := summaryLine.FindSubmatch(log)
				if m == nil {
					t.Fatalf("no result (timeout or crash); log tail:\n%s", tail(log, 2000))
				}
				if string(m[4]) != "0" {
					t.Fatalf("%s tests failed:\n%s", m[4], tail(log, 4000))
				}
				t.Logf("run %s passed %s", m[2], m[3])
			})
		}
	}
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
