package reconcile

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/conf"
)

// ErrNotLive refuses a reload with changes that need a restart.
var ErrNotLive = errors.New("changes need a restart; nothing applied")

// LiveValue is a running value that differs from the configuration the
// daemon loaded last because it was changed outside the file (today a
// volume's cache mode, set through the admin API). The file is the desired
// state, so a reload compares it with what runs: Plan puts Value in place
// of the loaded one before it compares, and labels the change with Source.
type LiveValue struct {
	Section conf.Section
	Name    string
	Field   string // "mode"
	Value   string // the running value
	Source  string // "live" or "live, set by admin"
}

// Plan is a reload worked out in full before anything runs.
type Plan struct {
	// Changes is the difference between the running and the desired
	// configuration, as `cachelun reload --dry-run` prints it.
	Changes conf.Plan
	// Steps is the transaction that applies Changes, in order. Empty when
	// Changes is empty or needs a restart.
	Steps []Step
}

// String renders the changes, one a line (the dry-run output).
func (p Plan) String() string { return p.Changes.String() }

// Step is one applied change of a reload and how to take it back.
type Step struct {
	Do Action
	// Undo restores what Do changed; nil when Do changes nothing that
	// needs restoring (a check).
	Undo *Action
}

// String is the step's line in golden files and logs.
func (s Step) String() string {
	if s.Undo == nil {
		return s.Do.String() + " | undo: -"
	}
	return s.Do.String() + " | undo: " + s.Undo.String()
}

// Op is the kind of an Action.
type Op string

// Ops. Each is carried out by one method of Effects (see Apply).
const (
	OpLogLevel      Op = "log_level"       // Name: the level
	OpCheckNewFiles Op = "check new files" // Caches, Volumes: those the reload creates or opens
	OpOpenCache     Op = "open cache"      // Cache
	OpCloseCache    Op = "close cache"     // Cache
	OpTuneCache     Op = "tune cache"      // Cache: the settings to run with
	OpOpenPortal    Op = "open portal"     // Name: the portal; Target: the first new target naming it, if any
	OpClosePortal   Op = "close portal"    // Name: the portal
	OpAddVolume     Op = "add volume"      // Volume
	OpRemoveVolume  Op = "remove volume"   // Volume (its dirty data is written back first)
	OpTuneVolume    Op = "tune volume"     // Volume: tunables to run with; Mode: the mode it keeps
	OpVolumeMode    Op = "volume mode"     // Volume, Mode
	OpWriteCache    Op = "write_cache"     // Volume, On: the configured WCE of the LUNs serving it
	OpTCMUVolumes   Op = "TCMU volumes"    // Names: the volumes the TCMU front end exports
	OpRemoveTarget  Op = "remove target"   // Target
	OpRestoreTarget Op = "restore target"  // Target: put back the one Remove took away
	OpAddTarget     Op = "add target"      // Target, WriteCache: per LUN
	OpUpdateTarget  Op = "update target"   // Target: alias, portals, initiators, CHAP
	OpMapLUN        Op = "map LUN"         // Target (IQN), LUN, On: its WCE
	OpUnmapLUN      Op = "unmap LUN"       // Target (IQN), LUN
	OpDiscoveryCHAP Op = "discovery CHAP"  // CHAP (nil: none)
	OpSwapConfig    Op = "switch configuration"
)

// Action is one change to the running daemon, described as data.
type Action struct {
	Op         Op
	Name       string
	Cache      conf.Cache
	Volume     conf.Volume
	Target     conf.Target
	LUN        conf.LUN
	Mode       string
	On         bool
	Names      []string
	CHAP       *conf.CHAP
	Caches     []conf.Cache
	Volumes    []conf.Volume
	WriteCache []bool // AddTarget: the WCE of each of Target.LUNs
	// Config is the configuration SwapConfig makes the running one.
	Config *conf.Config
}

// String is the action's human line; the daemon logs it as it applies and
// undoes steps.
func (a Action) String() string {
	switch a.Op {
	case OpLogLevel:
		return "log_level " + a.Name
	case OpCheckNewFiles:
		var what []string
		for _, c := range a.Caches {
			what = append(what, "cache "+c.Name)
		}
		for _, v := range a.Volumes {
			what = append(what, "volume "+v.Name)
		}
		return "check new files: " + strings.Join(what, ", ")
	case OpOpenCache, OpCloseCache, OpTuneCache:
		return string(a.Op) + " " + a.Cache.Name
	case OpOpenPortal, OpClosePortal:
		return string(a.Op) + " " + a.Name
	case OpAddVolume, OpRemoveVolume, OpTuneVolume:
		return string(a.Op) + " " + a.Volume.Name
	case OpVolumeMode:
		return fmt.Sprintf("volume %s mode %s", a.Volume.Name, a.Mode)
	case OpWriteCache:
		return fmt.Sprintf("volume %s write_cache %v", a.Volume.Name, a.On)
	case OpTCMUVolumes:
		if len(a.Names) == 0 {
			return "TCMU volumes (none)"
		}
		return "TCMU volumes " + strings.Join(a.Names, ",")
	case OpRemoveTarget, OpRestoreTarget, OpAddTarget, OpUpdateTarget:
		return string(a.Op) + " " + a.Target.IQN
	case OpMapLUN:
		return fmt.Sprintf("map %s LUN %d to %s", a.Target.IQN, a.LUN.LUN, a.LUN.Volume)
	case OpUnmapLUN:
		return fmt.Sprintf("unmap %s LUN %d", a.Target.IQN, a.LUN.LUN)
	}
	return string(a.Op)
}

// MakePlan works out the reload from running (the configuration the daemon
// loaded last) to desired (the file as loaded now, with the command line's
// overrides applied), with live the running values that differ from
// running. It does no I/O and changes nothing.
//
// A plan with a change that needs a restart is refused as a whole: the
// error wraps ErrNotLive and names every such change, and Steps is empty.
//
// The steps run in an order in which no host sees an inconsistent state
// (README, "Live reload"):
//
//  1. log level; the new files checked (backing devices exist or can be
//     created, new cache files fit) before any is created;
//  2. new caches open, changed caches are tuned;
//  3. new portals listen (before a target names them);
//  4. new volumes are added, changed volumes tuned (tunables, then the
//     mode, whose switch out of a write-caching mode writes back first,
//     then write_cache);
//  5. volumes leave the TCMU exported set;
//  6. removed targets go, then dropped or remapped LUNs are unmapped (hosts
//     lose them before their volumes are drained), then targets are
//     updated (alias, portals, ACL, CHAP: sessions that lose access are
//     logged out), then new LUNs are mapped (their volumes exist), then new
//     targets are added;
//  7. volumes join the TCMU exported set; discovery CHAP;
//  8. the new configuration becomes the running one (removed volumes leave
//     the status before they drain);
//  9. portals no target names any more stop listening;
//  10. removed volumes are drained and removed, then removed caches close.
func MakePlan(running, desired *conf.Config, live []LiveValue) (Plan, error) {
	cur := withLive(running, live)
	changes := diff(cur, desired)
	annotate(&changes, live)
	p := Plan{Changes: changes}
	if restart := changes.NeedsRestart(); len(restart) > 0 {
		reasons := make([]string, len(restart))
		for i, c := range restart {
			reasons[i] = c.String()
		}
		return p, fmt.Errorf("%w: %s", ErrNotLive, strings.Join(reasons, "; "))
	}
	if changes.Empty() {
		return p, nil
	}
	pl := planner{old: running, cur: cur, next: desired, changes: changes}
	pl.build()
	p.Steps = pl.steps
	return p, nil
}

// withLive is running with the live values in place of the loaded ones.
func withLive(running *conf.Config, live []LiveValue) *conf.Config {
	if len(live) == 0 {
		return running
	}
	c := *running
	c.Volumes = slices.Clone(running.Volumes)
	for _, l := range live {
		if l.Section != conf.SectionVolume || l.Field != "mode" {
			continue
		}
		if v := findVolume(&c, l.Name); v != nil {
			v.Mode = l.Value
		}
	}
	return &c
}

// diff is conf.Diff with the TCMU volume set handled as the daemon can:
// without the set when the TCMU front end stays off (it then derives from
// LUN mappings and means nothing), live when the front end stays on
// (volumes join and leave the handler's exported set; whether a leaving
// volume is still bound to a device is the daemon's check).
func diff(old, next *conf.Config) conf.Plan {
	plan := conf.Diff(old, next)
	isTCMUVolume := func(c conf.Change) bool { return c.Section == conf.SectionTCMU && c.Field == "volume" }
	switch {
	case old.TCMU.Enabled && next.TCMU.Enabled:
		for i, c := range plan.Changes {
			if isTCMUVolume(c) {
				plan.Changes[i].Live = true
			}
		}
	case !old.TCMU.Enabled && !next.TCMU.Enabled:
		plan.Changes = slices.DeleteFunc(plan.Changes, isTCMUVolume)
	}
	return plan
}

// annotate marks the changes whose old value is a live one, e.g.
// "mode modified writethrough (live, set by admin) -> writeback (file)".
func annotate(plan *conf.Plan, live []LiveValue) {
	for i, c := range plan.Changes {
		for _, n := range live {
			if c.Section == n.Section && c.Name == n.Name && c.Field == n.Field && c.Kind == conf.Modified {
				plan.Changes[i].Old = fmt.Sprintf("%s (%s)", c.Old, n.Source)
				plan.Changes[i].New = c.New + " (file)"
			}
		}
	}
}

// planner builds the steps. old is the running configuration as loaded,
// cur the same with the live values, next the desired one.
type planner struct {
	old, cur, next *conf.Config
	changes        conf.Plan
	steps          []Step
}

func (p *planner) add(do Action, undo *Action) { p.steps = append(p.steps, Step{Do: do, Undo: undo}) }

func (p *planner) changed(s conf.Section, name string) bool {
	for _, c := range p.changes.Changes {
		if c.Section == s && c.Name == name {
			return true
		}
	}
	return false
}

func (p *planner) build() {
	old, cur, next := p.old, p.cur, p.next
	if old.Global.LogLevel != next.Global.LogLevel {
		p.add(Action{Op: OpLogLevel, Name: next.Global.LogLevel}, &Action{Op: OpLogLevel, Name: old.Global.LogLevel})
	}

	// new files are checked before any cache file is created: a reload
	// that fails on a later step rolls back but would leave the file
	var freshCaches []conf.Cache
	var freshVolumes []conf.Volume
	for _, c := range next.Caches {
		if findCache(old, c.Name) == nil {
			freshCaches = append(freshCaches, c)
		}
	}
	for _, v := range next.Volumes {
		if findVolume(old, v.Name) == nil {
			freshVolumes = append(freshVolumes, v)
		}
	}
	if len(freshCaches)+len(freshVolumes) > 0 {
		p.add(Action{Op: OpCheckNewFiles, Caches: freshCaches, Volumes: freshVolumes}, nil)
	}
	for _, c := range freshCaches {
		p.add(Action{Op: OpOpenCache, Cache: c}, &Action{Op: OpCloseCache, Cache: c})
	}
	for _, c := range next.Caches {
		if o := findCache(old, c.Name); o != nil && p.changed(conf.SectionCache, c.Name) {
			p.add(Action{Op: OpTuneCache, Cache: c}, &Action{Op: OpTuneCache, Cache: *o})
		}
	}

	running := portals(old)
	opened := map[string]bool{}
	for _, t := range next.Targets {
		for _, pt := range t.Portals {
			if running[pt] || opened[pt] {
				continue
			}
			opened[pt] = true
			p.add(Action{Op: OpOpenPortal, Name: pt, Target: t}, &Action{Op: OpClosePortal, Name: pt})
		}
	}

	for _, v := range freshVolumes {
		p.add(Action{Op: OpAddVolume, Volume: v}, &Action{Op: OpRemoveVolume, Volume: v})
	}
	for _, v := range next.Volumes {
		o := findVolume(old, v.Name)
		if o == nil || !p.changed(conf.SectionVolume, v.Name) {
			continue
		}
		// tunables first, keeping the running mode
		runMode := findVolume(cur, v.Name).Mode
		p.add(Action{Op: OpTuneVolume, Volume: v, Mode: runMode}, &Action{Op: OpTuneVolume, Volume: *o, Mode: runMode})
		if !sameMode(v.Mode, runMode) {
			p.add(Action{Op: OpVolumeMode, Volume: v, Mode: v.Mode}, &Action{Op: OpVolumeMode, Volume: v, Mode: runMode})
		}
		if on := writeCache(v.WriteCache); on != writeCache(o.WriteCache) {
			p.add(Action{Op: OpWriteCache, Volume: v, On: on}, &Action{Op: OpWriteCache, Volume: v, On: !on})
		}
	}

	// the TCMU exported set (while the front end runs, before and after
	// the reload): the volumes that leave it go before LUNs change, the
	// ones that join it come after
	tcmu := old.TCMU.Enabled && next.TCMU.Enabled
	var was, keep, will []string
	if tcmu {
		was, will = old.TCMUVolumes(), next.TCMUVolumes()
		for _, n := range was {
			if slices.Contains(will, n) {
				keep = append(keep, n)
			}
		}
		if !sameSet(keep, was) {
			p.add(Action{Op: OpTCMUVolumes, Names: keep}, &Action{Op: OpTCMUVolumes, Names: was})
		}
	}

	for _, t := range old.Targets {
		if findTarget(next, t.IQN) == nil {
			p.add(Action{Op: OpRemoveTarget, Target: t}, &Action{Op: OpRestoreTarget, Target: t})
		}
	}
	for _, o := range old.Targets {
		n := findTarget(next, o.IQN)
		if n == nil {
			continue
		}
		gone, _ := lunDiff(o, *n)
		for _, l := range gone {
			p.add(Action{Op: OpUnmapLUN, Target: o, LUN: l},
				&Action{Op: OpMapLUN, Target: o, LUN: l, On: old.VolumeWriteCache(l.Volume)})
		}
	}
	for _, o := range old.Targets {
		n := findTarget(next, o.IQN)
		if n == nil || !p.changed(conf.SectionTarget, strings.ToLower(o.IQN)) {
			continue
		}
		if o.Alias == n.Alias && slices.Equal(o.Portals, n.Portals) && slices.Equal(o.Initiators, n.Initiators) &&
			chapEqual(o.CHAP, n.CHAP) {
			continue
		}
		p.add(Action{Op: OpUpdateTarget, Target: *n}, &Action{Op: OpUpdateTarget, Target: o})
	}
	for _, n := range next.Targets {
		o := findTarget(old, n.IQN)
		if o == nil {
			continue
		}
		_, added := lunDiff(*o, n)
		for _, l := range added {
			p.add(Action{Op: OpMapLUN, Target: n, LUN: l, On: next.VolumeWriteCache(l.Volume)},
				&Action{Op: OpUnmapLUN, Target: n, LUN: l})
		}
	}
	for _, t := range next.Targets {
		if findTarget(old, t.IQN) != nil {
			continue
		}
		wce := make([]bool, len(t.LUNs))
		for i, l := range t.LUNs {
			wce[i] = next.VolumeWriteCache(l.Volume)
		}
		p.add(Action{Op: OpAddTarget, Target: t, WriteCache: wce}, &Action{Op: OpRemoveTarget, Target: t})
	}

	if tcmu && !sameSet(keep, will) {
		p.add(Action{Op: OpTCMUVolumes, Names: will}, &Action{Op: OpTCMUVolumes, Names: keep})
	}
	if !chapEqual(old.Discovery.CHAP, next.Discovery.CHAP) {
		p.add(Action{Op: OpDiscoveryCHAP, CHAP: next.Discovery.CHAP}, &Action{Op: OpDiscoveryCHAP, CHAP: old.Discovery.CHAP})
	}

	p.add(Action{Op: OpSwapConfig, Config: next}, &Action{Op: OpSwapConfig, Config: old})

	used := portals(next)
	closed := map[string]bool{}
	for _, t := range old.Targets {
		for _, pt := range t.Portals {
			if used[pt] || closed[pt] {
				continue
			}
			closed[pt] = true
			p.add(Action{Op: OpClosePortal, Name: pt}, &Action{Op: OpOpenPortal, Name: pt})
		}
	}
	for _, v := range old.Volumes {
		if findVolume(next, v.Name) == nil {
			p.add(Action{Op: OpRemoveVolume, Volume: v}, &Action{Op: OpAddVolume, Volume: v})
		}
	}
	for _, c := range old.Caches {
		if findCache(next, c.Name) == nil {
			p.add(Action{Op: OpCloseCache, Cache: c}, &Action{Op: OpOpenCache, Cache: c})
		}
	}
}

// portals is the set of portals the configuration's targets name; a
// running daemon listens on exactly these.
func portals(c *conf.Config) map[string]bool {
	out := map[string]bool{}
	for _, t := range c.Targets {
		for _, p := range t.Portals {
			out[p] = true
		}
	}
	return out
}

// sameMode compares two cache mode names as the engine reads them.
func sameMode(a, b string) bool {
	ma, errA := cachecore.ParseMode(a)
	mb, errB := cachecore.ParseMode(b)
	if errA != nil || errB != nil {
		return a == b
	}
	return ma == mb
}

// writeCache is a volume's write_cache (unset means on).
func writeCache(b *bool) bool { return b == nil || *b }

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// lunDiff returns the LUNs of o that n drops or maps differently, and
// those of n that are new or mapped differently.
func lunDiff(o, n conf.Target) (gone, added []conf.LUN) {
	for _, l := range o.LUNs {
		if i := slices.IndexFunc(n.LUNs, func(x conf.LUN) bool { return x.LUN == l.LUN }); i < 0 || n.LUNs[i] != l {
			gone = append(gone, l)
		}
	}
	for _, l := range n.LUNs {
		if i := slices.IndexFunc(o.LUNs, func(x conf.LUN) bool { return x.LUN == l.LUN }); i < 0 || o.LUNs[i] != l {
			added = append(added, l)
		}
	}
	return gone, added
}

func chapEqual(a, b *conf.CHAP) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func findCache(c *conf.Config, name string) *conf.Cache {
	for i := range c.Caches {
		if c.Caches[i].Name == name {
			return &c.Caches[i]
		}
	}
	return nil
}

func findVolume(c *conf.Config, name string) *conf.Volume {
	for i := range c.Volumes {
		if c.Volumes[i].Name == name {
			return &c.Volumes[i]
		}
	}
	return nil
}

// findTarget finds a target by IQN; IQNs compare case-insensitively.
func findTarget(c *conf.Config, iqn string) *conf.Target {
	for i := range c.Targets {
		if strings.EqualFold(c.Targets[i].IQN, iqn) {
			return &c.Targets[i]
		}
	}
	return nil
}
