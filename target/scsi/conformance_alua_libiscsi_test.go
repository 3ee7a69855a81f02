//go:build libiscsi

package scsi_test

// Conformance of logical units with ALUA against libiscsi's iscsi-test-cu,
// through the project's own iSCSI target: every SCSI.* suite on a thin
// 512-byte logical unit whose port's group is active/optimized (LUN 0) and
// one whose group is active/non-optimized (LUN 1), each with a second group
// in standby (another node's port) as a cluster reports it, plus
// SCSI.MultipathIO over two sessions.
//
//	go test -tags libiscsi -run ConformanceALUA ./target/scsi/

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/memvol"
	"github.com/cachelun/cachelun/target/iscsi"
	"github.com/cachelun/cachelun/target/scsi"
)

func TestConformanceALUALibiscsi(t *testing.T) {
	if _, err := exec.LookPath("iscsi-test-cu"); err != nil {
		t.Skip("iscsi-test-cu not installed")
	}
	tgt := scsi.NewTarget(scsi.TargetConfig{Name: conformanceIQN})
	states := []scsi.ALUAState{scsi.ALUAActiveOptimized, scsi.ALUAActiveNonOptimized}
	for i, st := range states {
		vol, err := memvol.New(128<<20, 512)
		if err != nil {
			t.Fatal(err)
		}
		cfg := scsi.LUConfig{Volume: vol, Thin: true, WriteCache: true, StatePath: t.TempDir() + "/state",
			ALUA: &scsi.ALUAConfig{TransitionTime: 10, Groups: []scsi.TargetPortGroup{
				{ID: 1, State: st, RelativePorts: []uint16{1}},
				{ID: 2, State: scsi.ALUAStandby, RelativePorts: []uint16{2}},
			}}}
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
	suites := []string{"iSCSI.iSCSIResiduals"}
	for _, s := range strings.Fields(string(out)) {
		if strings.HasPrefix(s, "SCSI.") && strings.Count(s, ".") == 1 {
			suites = append(suites, s)
		}
	}
	for lun, st := range states {
		url := fmt.Sprintf("iscsi://%s/%s/%d", l.Addr(), conformanceIQN, lun)
		for _, suite := range suites {
			t.Run(fmt.Sprintf("lun%d-%s/%s", lun, strings.ReplaceAll(st.String(), "/", "-"), suite), func(t *testing.T) {
				cctx, ccancel := context.WithTimeout(ctx, 120*time.Second)
				defer ccancel()
				args := []string{"-d", "--test=" + suite, url}
				if suite == "SCSI.MultipathIO" {
					args = append(args, url) // a second session: a second path
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
