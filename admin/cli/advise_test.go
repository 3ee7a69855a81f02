package cli_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/cachelun/cachelun/admin"
	"github.com/cachelun/cachelun/admin/admintest"
	"github.com/cachelun/cachelun/admin/cli"
)

func TestAdvise(t *testing.T) {
	f := newFixture(t)
	// today 256 MiB; the hit ratio grows linearly to 0.95 at 1 GiB
	f.db1.SetSizing(admintest.LinearSizing(256<<20, 1<<30, 0.95))

	code, out, errOut := f.run(t, cli.Advise, "db1", "--target", "0.5")
	if code != cli.ExitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"volume db1 (cache nvme0): 1000000 block reads, 1% of blocks sampled",
		"64.0 MiB", "(0.25×)", "5.9%", "256.0 MiB", "(1×, today)", "23.8%", "1.0 GiB", "(4×)", "95.0%",
		"50.0% needs 538.9 MiB (2.1× today)"} {
		if !strings.Contains(out, want) {
			t.Errorf("advise output lacks %q:\n%s", want, out)
		}
	}
	// 1 % of 4 KiB blocks: below 100 sampled blocks' worth (39 MiB) the
	// figures are rough; 0.25× of 256 MiB is above that
	if strings.Contains(out, "rough") || strings.Contains(out, "sampled so far") {
		t.Errorf("advise calls 64 MiB rough at 1 %% sampling of 4 KiB blocks:\n%s", out)
	}
	f.db1.SetSizing(admintest.LinearSizing(64<<20, 1<<30, 0.95))
	if code, out, _ = f.run(t, cli.Advise, "db1"); code != cli.ExitOK || !strings.Contains(out, "below 39.1 MiB the estimate rests on fewer than 100 sampled blocks") {
		t.Errorf("small cache: exit %d, no note of rough figures:\n%s", code, out)
	}
	// without a volume: every volume and every cache (no curve: said so)
	code, out, _ = f.run(t, cli.Advise)
	if code != cli.ExitOK || !strings.Contains(out, "volume db1") || !strings.Contains(out, "cache nvme0 (all its volumes): no reads yet") {
		t.Errorf("advise: exit %d:\n%s", code, out)
	}
	code, out, _ = f.run(t, cli.Advise, "db1", "--json", "--target", "0.99")
	var r admin.AdviceResponse
	if code != cli.ExitOK || json.Unmarshal([]byte(out), &r) != nil || len(r.Volumes) != 1 || r.Volumes[0].TargetReachable || r.Volumes[0].Target != 0.99 {
		t.Errorf("advise --json: exit %d, %s", code, out)
	}
	code, out, _ = f.run(t, cli.Advise, "db1", "--target", "0.99")
	if code != cli.ExitOK || !strings.Contains(out, "no cache size reaches 99.0%") {
		t.Errorf("unreachable target: exit %d, %s", code, out)
	}
	for _, args := range [][]string{{"db1", "--target", "1.5"}, {"db1", "db2"}, {"--target", "x"}} {
		if code, _, _ := f.run(t, cli.Advise, args...); code != cli.ExitUsage {
			t.Errorf("advise %v: exit %d, want %d", args, code, cli.ExitUsage)
		}
	}
	if code, _, errOut := f.run(t, cli.Advise, "nope"); code != cli.ExitFailed || !strings.Contains(errOut, "nope") {
		t.Errorf("unknown volume: exit %d, %s", code, errOut)
	}
	// A fresh volume: a few hundred reads sample a few blocks, and every
	// figure is rough, whatever the size.
	few := admintest.LinearSizing(256<<20, 1<<30, 0.95)
	few.References, few.SampledBlocks = 256, 3
	f.db1.SetSizing(few)
	if code, out, _ = f.run(t, cli.Advise, "db1"); code != cli.ExitOK || !strings.Contains(out, "(3 blocks sampled so far: every figure below is rough until about 100 are)") {
		t.Errorf("few sampled blocks: exit %d, no note of rough figures:\n%s", code, out)
	}
	few.SampledBlocks = 1
	f.db1.SetSizing(few)
	if code, out, _ = f.run(t, cli.Advise, "db1"); code != cli.ExitOK || !strings.Contains(out, "(1 block sampled so far:") {
		t.Errorf("one sampled block: exit %d:\n%s", code, out)
	}
}
