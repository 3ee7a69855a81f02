package reconcile

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cachelun/cachelun/conf"
)

// TestPlanOrderingRules checks the README's ordering rules ("Live reload")
// on the plan of every script, independently of the golden text, and on its
// rollback (the undos in reverse order, a transaction of its own): a cache
// opens before its volumes are added and a volume exists before a LUN maps
// it; LUNs are unmapped before their volume is drained and removed, and a
// volume is removed before its cache closes; a portal listens before a
// target names it and stops only after none does.
func TestPlanOrderingRules(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.txt"))
	for _, path := range files {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		_, sec := parseScript(t, string(data))
		running, desired := configs(t, sec)
		plan, err := MakePlan(running, desired, nil)
		if err != nil {
			continue
		}
		var do, undo []Action
		for _, s := range plan.Steps {
			do = append(do, s.Do)
			if s.Undo != nil {
				undo = append(undo, *s.Undo)
			}
		}
		slices.Reverse(undo)
		checkOrder(t, filepath.Base(path), do)
		checkOrder(t, filepath.Base(path)+" rollback", undo)
	}
}

func checkOrder(t *testing.T, name string, acts []Action) {
	t.Helper()
	where := func(match func(Action) bool) []int {
		var out []int
		for i, a := range acts {
			if match(a) {
				out = append(out, i)
			}
		}
		return out
	}
	before := func(rule string, first, then []int) {
		for _, f := range first {
			for _, th := range then {
				if f > th {
					t.Errorf("%s: %s: %q comes after %q", name, rule, acts[f], acts[th])
				}
			}
		}
	}
	servesVolume := func(b Action, ops []Op, volume string) bool {
		if !slices.Contains(ops, b.Op) {
			return false
		}
		if b.Op == OpMapLUN || b.Op == OpUnmapLUN {
			return b.LUN.Volume == volume
		}
		return slices.ContainsFunc(b.Target.LUNs, func(l conf.LUN) bool { return l.Volume == volume })
	}
	for i, a := range acts {
		here := []int{i}
		switch a.Op {
		case OpAddVolume:
			before("a cache opens before its volumes are added",
				where(func(b Action) bool { return b.Op == OpOpenCache && b.Cache.Name == a.Volume.Cache }), here)
			before("a volume exists before a LUN maps it", here,
				where(func(b Action) bool {
					return servesVolume(b, []Op{OpMapLUN, OpAddTarget, OpRestoreTarget}, a.Volume.Name)
				}))
		case OpRemoveVolume:
			before("LUNs are unmapped before their volume is removed",
				where(func(b Action) bool { return servesVolume(b, []Op{OpUnmapLUN, OpRemoveTarget}, a.Volume.Name) }), here)
			before("a volume is removed before its cache closes", here,
				where(func(b Action) bool { return b.Op == OpCloseCache && b.Cache.Name == a.Volume.Cache }))
		case OpOpenPortal:
			before("a portal listens before a target names it", here,
				where(func(b Action) bool {
					return (b.Op == OpAddTarget || b.Op == OpRestoreTarget || b.Op == OpUpdateTarget) &&
						slices.Contains(b.Target.Portals, a.Name)
				}))
		case OpClosePortal:
			before("a portal stops after no target names it",
				where(func(b Action) bool { return b.Op == OpRemoveTarget || b.Op == OpUpdateTarget }), here)
		}
	}
}
