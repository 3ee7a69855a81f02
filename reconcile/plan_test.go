package reconcile

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cachelun/cachelun/conf"
)

var update = flag.Bool("update", false, "rewrite the want section of testdata/*.txt from the code")

// TestPlanScripts runs the golden scripts in testdata: each gives the
// running and the desired configuration (and optionally live values and a
// step to fail at) and expects, as text, the plan (the dry-run lines), the
// steps with their undos, and with a failure the calls the executor makes:
// the steps applied, the one that failed, the undos in reverse order.
//
// Script format: sections "-- name --" (running, desired, live, fail,
// want); text before the first section is a comment. A live line is
// "volume NAME mode VALUE SOURCE..."; fail is the 1-based step number.
// go test ./reconcile -run TestPlanScripts -update rewrites the want
// sections.
func TestPlanScripts(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.txt"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no scripts: %v", err)
	}
	for _, path := range files {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".txt"), func(t *testing.T) {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			comment, sec := parseScript(t, string(data))
			got := runScript(t, sec)
			if *update {
				out := comment
				for _, name := range []string{"running", "desired", "live", "fail"} {
					if v, ok := sec[name]; ok {
						out += "-- " + name + " --\n" + v
					}
				}
				out += "-- want --\n" + got
				if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if got != sec["want"] {
				t.Errorf("%s:\ngot:\n%s\nwant:\n%s", path, got, sec["want"])
			}
		})
	}
}

func parseScript(t *testing.T, s string) (comment string, sections map[string]string) {
	t.Helper()
	sections = map[string]string{}
	name := ""
	for _, line := range strings.SplitAfter(s, "\n") {
		if line == "" {
			continue
		}
		if h := strings.TrimSpace(line); strings.HasPrefix(h, "-- ") && strings.HasSuffix(h, " --") {
			name = strings.TrimSuffix(strings.TrimPrefix(h, "-- "), " --")
			sections[name] += ""
			continue
		}
		if name == "" {
			comment += line
		} else {
			sections[name] += line
		}
	}
	for _, need := range []string{"running", "desired"} {
		if _, ok := sections[need]; !ok {
			t.Fatalf("script lacks -- %s --", need)
		}
	}
	return comment, sections
}

// configs parses a script's running and desired configurations.
func configs(t *testing.T, sec map[string]string) (running, desired *conf.Config) {
	t.Helper()
	running, err := conf.Parse("running.toml", []byte(sec["running"]))
	if err != nil {
		t.Fatal(err)
	}
	desired, err = conf.Parse("desired.toml", []byte(sec["desired"]))
	if err != nil {
		t.Fatal(err)
	}
	return running, desired
}

func runScript(t *testing.T, sec map[string]string) string {
	running, desired := configs(t, sec)
	var live []LiveValue
	for _, line := range strings.Split(strings.TrimSpace(sec["live"]), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) < 5 || f[0] != "volume" {
			t.Fatalf("bad live line %q", line)
		}
		live = append(live, LiveValue{Section: conf.SectionVolume, Name: f[1], Field: f[2], Value: f[3], Source: strings.Join(f[4:], " ")})
	}
	var b strings.Builder
	plan, err := MakePlan(running, desired, live)
	b.WriteString("plan:\n")
	for _, l := range strings.Split(strings.TrimRight(plan.String(), "\n"), "\n") {
		b.WriteString("  " + l + "\n")
	}
	if err != nil {
		fmt.Fprintf(&b, "refused: %v\n", err)
		if !errors.Is(err, ErrNotLive) {
			t.Errorf("refusal does not wrap ErrNotLive: %v", err)
		}
		if len(plan.Steps) > 0 {
			t.Errorf("a refused plan has %d steps", len(plan.Steps))
		}
		return b.String()
	}
	b.WriteString("steps:\n")
	for i, s := range plan.Steps {
		fmt.Fprintf(&b, "  %2d %s\n", i+1, s)
	}
	failAt := 0
	if f := strings.TrimSpace(sec["fail"]); f != "" {
		if failAt, err = strconv.Atoi(f); err != nil {
			t.Fatalf("fail: %v", err)
		}
	}
	rec := &recorder{failAt: failAt}
	err = Apply(context.Background(), plan.Steps, Effects{Engine: rec, Targets: rec, TCMU: rec, Daemon: rec},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if failAt == 0 {
		if err != nil {
			t.Fatalf("apply without a failure: %v", err)
		}
		if rec.calls != len(plan.Steps) {
			t.Errorf("apply made %d calls for %d steps", rec.calls, len(plan.Steps))
		}
		return b.String()
	}
	fmt.Fprintf(&b, "run (fail at step %d):\n", failAt)
	for _, l := range rec.log {
		b.WriteString("  " + l + "\n")
	}
	fmt.Fprintf(&b, "error: %v\n", err)
	return b.String()
}

// recorder stands in for the daemon: it records each call and fails the
// failAt-th one; the calls after the failure are the undos.
type recorder struct {
	failAt int
	calls  int
	failed bool
	log    []string
}

var errInjected = errors.New("injected failure")

// note records a call that cannot fail.
func (r *recorder) note(what string) {
	if r.calls+1 == r.failAt {
		panic("fail names a step that cannot fail: " + what)
	}
	_ = r.call(what)
}

func (r *recorder) call(what string) error {
	r.calls++
	switch {
	case r.failed:
		r.log = append(r.log, "undo  "+what)
	case r.calls == r.failAt:
		r.failed = true
		r.log = append(r.log, "FAIL  "+what)
		return errInjected
	default:
		r.log = append(r.log, "apply "+what)
	}
	return nil
}

func (r *recorder) CheckNewFiles(caches []conf.Cache, volumes []conf.Volume) error {
	return r.call(Action{Op: OpCheckNewFiles, Caches: caches, Volumes: volumes}.String())
}
func (r *recorder) OpenCache(_ context.Context, c conf.Cache) error {
	return r.call("open cache " + c.Name + " at " + c.Path)
}
func (r *recorder) CloseCache(_ context.Context, c conf.Cache) error {
	return r.call("close cache " + c.Name)
}
func (r *recorder) SetCacheConfig(c conf.Cache) error {
	return r.call(fmt.Sprintf("cache %s gc_percent %d", c.Name, *c.GCPercent))
}
func (r *recorder) AddVolume(_ context.Context, v conf.Volume) error {
	return r.call("add volume " + v.Name + " to cache " + v.Cache)
}
func (r *recorder) RemoveVolume(_ context.Context, v conf.Volume) error {
	return r.call("drain and remove volume " + v.Name)
}
func (r *recorder) SetVolumeTunables(v conf.Volume, mode string) error {
	return r.call(fmt.Sprintf("volume %s tunables sequential_cutoff %s, mode kept %s", v.Name, v.SequentialCutoff, mode))
}
func (r *recorder) SetVolumeMode(_ context.Context, volume, mode string) error {
	return r.call("volume " + volume + " mode " + mode)
}
func (r *recorder) OpenPortal(p string) error  { return r.call("listen " + p) }
func (r *recorder) ClosePortal(p string) error { return r.call("stop listening " + p) }
func (r *recorder) AddTarget(t conf.Target, wce []bool) error {
	return r.call(fmt.Sprintf("add target %s with %d LUNs, write_cache %v", t.IQN, len(t.LUNs), wce))
}
func (r *recorder) RemoveTarget(t conf.Target) error  { return r.call("remove target " + t.IQN) }
func (r *recorder) RestoreTarget(t conf.Target) error { return r.call("restore target " + t.IQN) }
func (r *recorder) UpdateTarget(t conf.Target) error {
	return r.call(fmt.Sprintf("update target %s portals %v initiators %v chap %v", t.IQN, t.Portals, t.Initiators, t.CHAP != nil))
}
func (r *recorder) MapLUN(iqn string, l conf.LUN, wce bool) error {
	return r.call(fmt.Sprintf("map %s LUN %d to %s write_cache %v", iqn, l.LUN, l.Volume, wce))
}
func (r *recorder) UnmapLUN(iqn string, lun uint64) error {
	return r.call(fmt.Sprintf("unmap %s LUN %d", iqn, lun))
}
func (r *recorder) SetDiscoveryCHAP(c *conf.CHAP) {
	r.note(fmt.Sprintf("discovery CHAP %v", c != nil))
}
func (r *recorder) SetWriteCache(_ context.Context, volume string, on bool) error {
	return r.call(fmt.Sprintf("volume %s LUNs write_cache %v", volume, on))
}
func (r *recorder) SetVolumes(names []string) error {
	return r.call(fmt.Sprintf("TCMU exports %v", names))
}
func (r *recorder) SetLogLevel(level string)    { r.note("log level " + level) }
func (r *recorder) SwapConfig(cfg *conf.Config) { r.note("running configuration: " + cfg.Source) }

// TestApplyRollsBackEveryPrefix fails each script's plan at every step in
// turn and checks the executor's rollback against the plan: the undos of
// exactly the steps applied before the failure run, newest first, and the
// error names the failed step's object and says the rollback completed.
func TestApplyRollsBackEveryPrefix(t *testing.T) {
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
		for k := 1; k <= len(plan.Steps); k++ {
			switch plan.Steps[k-1].Do.Op {
			case OpLogLevel, OpDiscoveryCHAP, OpSwapConfig:
				continue // cannot fail
			}
			rec := &recorder{failAt: k}
			err := Apply(context.Background(), plan.Steps, Effects{Engine: rec, Targets: rec, TCMU: rec, Daemon: rec},
				slog.New(slog.NewTextHandler(io.Discard, nil)))
			if !errors.Is(err, errInjected) || !strings.HasSuffix(err.Error(), "rolled back, the previous configuration is in effect") {
				t.Fatalf("%s, fail at %d: %v", path, k, err)
			}
			// what the recorder saw undone, against the plan's undos
			want := &recorder{}
			for i := k - 2; i >= 0; i-- {
				if u := plan.Steps[i].Undo; u != nil {
					if err := (Effects{Engine: want, Targets: want, TCMU: want, Daemon: want}).run(context.Background(), *u); err != nil {
						t.Fatal(err)
					}
				}
			}
			var got []string
			for _, l := range rec.log[k:] {
				got = append(got, strings.TrimPrefix(l, "undo  "))
			}
			var exp []string
			for _, l := range want.log {
				exp = append(exp, strings.TrimPrefix(l, "apply "))
			}
			if !slices.Equal(got, exp) {
				t.Errorf("%s, fail at %d: undone\n%s\nwant\n%s", path, k, strings.Join(got, "\n"), strings.Join(exp, "\n"))
			}
		}
	}
}
