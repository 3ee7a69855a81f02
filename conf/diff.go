package conf

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// ChangeKind says what happened to an object or field.
type ChangeKind string

// Change kinds.
const (
	Added    ChangeKind = "added"
	Removed  ChangeKind = "removed"
	Modified ChangeKind = "modified"
)

// Section names the part of the configuration a Change belongs to.
type Section string

// Sections.
const (
	SectionGlobal    Section = "global"
	SectionCache     Section = "cache"
	SectionVolume    Section = "volume"
	SectionTarget    Section = "target"
	SectionDiscovery Section = "discovery"
	SectionISCSI     Section = "iscsi"
	SectionTCMU      Section = "tcmu"
	SectionCluster   Section = "cluster"
)

// Change is one difference between two configurations.
type Change struct {
	Kind    ChangeKind
	Section Section
	// Name is the object's name (cache or volume name, target IQN); empty
	// for global, discovery and iscsi.
	Name string
	// Field is the changed key ("mode", "portals", "lun 3", "chap", ...);
	// empty when a whole object was added or removed.
	Field string
	// Old and New render the values (secrets are never rendered).
	Old, New string
	// Live is true when a running daemon can apply the change; false means
	// it takes effect only after a restart.
	Live bool
}

func (c Change) String() string {
	var b strings.Builder
	b.WriteString(string(c.Section))
	if c.Name != "" {
		b.WriteString(" " + c.Name)
	}
	if c.Field == "" {
		b.WriteString(" " + string(c.Kind))
	} else {
		fmt.Fprintf(&b, ": %s %s", c.Field, c.Kind)
		if c.Kind == Modified {
			fmt.Fprintf(&b, " %s -> %s", c.Old, c.New)
		} else if v := c.New + c.Old; v != "" {
			fmt.Fprintf(&b, " (%s)", v)
		}
	}
	if !c.Live {
		b.WriteString(" [needs restart]")
	}
	return b.String()
}

// Plan is the ordered list of changes from one configuration to another:
// global first, then caches, volumes, targets, discovery, iscsi, tcmu and cluster, in the
// order of the new file (removals first within each section).
type Plan struct {
	Changes []Change
}

// Empty reports whether the configurations are equivalent.
func (p Plan) Empty() bool { return len(p.Changes) == 0 }

// Live reports whether every change can be applied without a restart.
func (p Plan) Live() bool {
	for _, c := range p.Changes {
		if !c.Live {
			return false
		}
	}
	return true
}

// NeedsRestart returns the changes that cannot be applied live.
func (p Plan) NeedsRestart() []Change {
	var out []Change
	for _, c := range p.Changes {
		if !c.Live {
			out = append(out, c)
		}
	}
	return out
}

// Filter returns the changes of one section.
func (p Plan) Filter(s Section) []Change {
	var out []Change
	for _, c := range p.Changes {
		if c.Section == s {
			out = append(out, c)
		}
	}
	return out
}

func (p Plan) String() string {
	if p.Empty() {
		return "no changes"
	}
	lines := make([]string, len(p.Changes))
	for i, c := range p.Changes {
		lines[i] = c.String()
	}
	return strings.Join(lines, "\n")
}

// Diff returns what changed from old to new. Both must be validated
// configurations (from Load or Parse).
func Diff(old, new *Config) Plan {
	d := &differ{}
	d.global(old.Global, new.Global)
	diffNamed(d, SectionCache, old.Caches, new.Caches, func(c Cache) string { return c.Name }, d.cache)
	diffNamed(d, SectionVolume, old.Volumes, new.Volumes, func(v Volume) string { return v.Name }, d.volume)
	diffNamed(d, SectionTarget, old.Targets, new.Targets, func(t Target) string { return strings.ToLower(t.IQN) }, d.target)
	d.chap(SectionDiscovery, "", "chap", old.Discovery.CHAP, new.Discovery.CHAP)
	d.iscsi(old.ISCSI, new.ISCSI)
	d.field(SectionTCMU, "", "enabled", fmtBool(old.TCMU.Enabled), fmtBool(new.TCMU.Enabled), false)
	d.field(SectionTCMU, "", "dbus", old.TCMU.DBus, new.TCMU.DBus, false)
	// the handler's volume set is fixed when it starts
	d.set(SectionTCMU, "", "volume", old.TCMUVolumes(), new.TCMUVolumes(), false)
	d.cluster(old.Cluster, new.Cluster)
	return Plan{Changes: d.changes}
}

// cluster compares the [cluster] tables. The peer link is set up when the
// daemon starts: every change needs a restart.
func (d *differ) cluster(o, n *Cluster) {
	s := SectionCluster
	switch {
	case o == nil && n == nil:
		return
	case o == nil:
		d.add(Change{Kind: Added, Section: s, Name: n.Node, Live: false})
		return
	case n == nil:
		d.add(Change{Kind: Removed, Section: s, Name: o.Node, Live: false})
		return
	}
	d.field(s, "", "name", o.Name, n.Name, false)
	d.field(s, "", "node", o.Node, n.Node, false)
	d.field(s, "", "listen", o.Listen, n.Listen, false)
	d.set(s, "", "peer", o.Peers, n.Peers, false)
	d.field(s, "", "degraded", o.Degraded, n.Degraded, false)
	d.field(s, "", "heartbeat_interval", o.HeartbeatInterval.String(), n.HeartbeatInterval.String(), false)
	d.field(s, "", "peer_timeout", o.PeerTimeout.String(), n.PeerTimeout.String(), false)
	d.field(s, "", "connect_timeout", o.ConnectTimeout.String(), n.ConnectTimeout.String(), false)
	d.field(s, "", "reconnect_min", o.ReconnectMin.String(), n.ReconnectMin.String(), false)
	d.field(s, "", "reconnect_max", o.ReconnectMax.String(), n.ReconnectMax.String(), false)
	d.field(s, "", "sync_timeout", o.SyncTimeout.String(), n.SyncTimeout.String(), false)
	d.field(s, "", "max_lag", o.MaxLag.String(), n.MaxLag.String(), false)
}

type differ struct{ changes []Change }

func (d *differ) add(c Change) { d.changes = append(d.changes, c) }

func (d *differ) field(s Section, name, field, o, n string, live bool) {
	if o != n {
		d.add(Change{Kind: Modified, Section: s, Name: name, Field: field, Old: o, New: n, Live: live})
	}
}

func diffNamed[T any](d *differ, s Section, old, new []T, key func(T) string, modified func(name string, o, n T)) {
	oldBy := map[string]T{}
	for _, o := range old {
		oldBy[key(o)] = o
	}
	newBy := map[string]bool{}
	for _, n := range new {
		newBy[key(n)] = true
	}
	for _, o := range old {
		if !newBy[key(o)] {
			d.add(Change{Kind: Removed, Section: s, Name: key(o), Live: true})
		}
	}
	for _, n := range new {
		o, ok := oldBy[key(n)]
		if !ok {
			d.add(Change{Kind: Added, Section: s, Name: key(n), Live: true})
			continue
		}
		modified(key(n), o, n)
	}
}

func (d *differ) global(o, n Global) {
	d.field(SectionGlobal, "", "data_dir", o.DataDir, n.DataDir, false)
	d.field(SectionGlobal, "", "log_level", o.LogLevel, n.LogLevel, true)
	d.field(SectionGlobal, "", "admin_socket", o.AdminSocket, n.AdminSocket, false)
	d.field(SectionGlobal, "", "metrics_listen", o.MetricsListen, n.MetricsListen, false)
}

func (d *differ) cache(name string, o, n Cache) {
	s := SectionCache
	// format parameters and the file itself: only at open time
	d.field(s, name, "path", o.Path, n.Path, false)
	d.field(s, name, "size", o.Size.String(), n.Size.String(), false)
	d.field(s, name, "segment_size", o.SegmentSize.String(), n.SegmentSize.String(), false)
	d.field(s, name, "block_size", o.BlockSize.String(), n.BlockSize.String(), false)
	d.field(s, name, "data_crc", fmtBool(o.DataCRC), fmtBool(n.DataCRC), false)
	d.field(s, name, "zero_fill", fmtBoolPtr(o.ZeroFill), fmtBoolPtr(n.ZeroFill), false)
	// engine tunables: Cache.SetConfig
	d.field(s, name, "gc_percent", fmtIntPtr(o.GCPercent), fmtIntPtr(n.GCPercent), true)
	d.field(s, name, "journal_flush_interval", o.JournalFlushInterval.String(), n.JournalFlushInterval.String(), true)
	d.field(s, name, "on_cache_failure", o.OnCacheFailure, n.OnCacheFailure, true)
	ow, nw := o.Writeback, n.Writeback
	d.field(s, name, "writeback.target_dirty_percent", fmtIntPtr(ow.TargetDirtyPercent), fmtIntPtr(nw.TargetDirtyPercent), true)
	d.field(s, name, "writeback.high_watermark_percent", fmtIntPtr(ow.HighWatermarkPercent), fmtIntPtr(nw.HighWatermarkPercent), true)
	d.field(s, name, "writeback.idle_after", ow.IdleAfter.String(), nw.IdleAfter.String(), true)
	d.field(s, name, "writeback.max_bytes_per_sec", ow.MaxBytesPerSec.String(), nw.MaxBytesPerSec.String(), true)
}

func (d *differ) volume(name string, o, n Volume) {
	s := SectionVolume
	// moving a volume to another cache or device means draining and
	// re-adding it: not done behind the operator's back
	d.field(s, name, "cache", o.Cache, n.Cache, false)
	d.field(s, name, "backing", o.Backing, n.Backing, false)
	d.field(s, name, "backing_size", o.BackingSize.String(), n.BackingSize.String(), false)
	d.field(s, name, "direct", fmtBool(o.Direct), fmtBool(n.Direct), false)
	d.field(s, name, "slow", o.Slow, n.Slow, false)
	// an RBD image's connection is made once, when the device opens
	d.field(s, name, "ceph_conf", o.CephConf, n.CephConf, false)
	d.field(s, name, "ceph_user", o.CephUser, n.CephUser, false)
	d.field(s, name, "ceph_keyring", o.CephKeyring, n.CephKeyring, false)
	d.field(s, name, "ceph_connect_timeout", o.CephConnectTimeout.String(), n.CephConnectTimeout.String(), false)
	d.field(s, name, "ceph_op_timeout", o.CephOpTimeout.String(), n.CephOpTimeout.String(), false)
	d.field(s, name, "block_size", strconv.Itoa(o.BlockSize), strconv.Itoa(n.BlockSize), false)
	// Volume.SetMode / Volume.SetConfig / MODE SELECT equivalent
	d.field(s, name, "mode", o.Mode, n.Mode, true)
	d.field(s, name, "write_cache", fmtBoolPtr(o.WriteCache), fmtBoolPtr(n.WriteCache), true)
	d.field(s, name, "sequential_cutoff", o.SequentialCutoff.String(), n.SequentialCutoff.String(), true)
	d.field(s, name, "congested_read_threshold", o.CongestedReadThreshold.String(), n.CongestedReadThreshold.String(), true)
	d.field(s, name, "congested_write_threshold", o.CongestedWriteThreshold.String(), n.CongestedWriteThreshold.String(), true)
	d.field(s, name, "cache_policy", o.CachePolicy, n.CachePolicy, true)
	// taken by a LUN when it starts
	d.field(s, name, "sanitize_max_bytes_per_sec", o.SanitizeMaxBytesPerSec.String(), n.SanitizeMaxBytesPerSec.String(), false)
}

func (d *differ) target(name string, o, n Target) {
	s := SectionTarget
	d.field(s, name, "alias", o.Alias, n.Alias, true)
	d.set(s, name, "portal", o.Portals, n.Portals, true)
	d.set(s, name, "initiator", o.Initiators, n.Initiators, true)
	oldLUN := map[uint64]LUN{}
	for _, l := range o.LUNs {
		oldLUN[l.LUN] = l
	}
	newLUN := map[uint64]bool{}
	for _, l := range n.LUNs {
		newLUN[l.LUN] = true
	}
	for _, l := range o.LUNs {
		if !newLUN[l.LUN] {
			d.add(Change{Kind: Removed, Section: s, Name: name, Field: fmt.Sprintf("lun %d", l.LUN), Old: l.Volume, Live: true})
		}
	}
	for _, l := range n.LUNs {
		ol, ok := oldLUN[l.LUN]
		f := fmt.Sprintf("lun %d", l.LUN)
		switch {
		case !ok:
			d.add(Change{Kind: Added, Section: s, Name: name, Field: f, New: l.Volume, Live: true})
		case ol != l:
			d.add(Change{Kind: Modified, Section: s, Name: name, Field: f, Old: fmtLUN(ol), New: fmtLUN(l), Live: true})
		}
	}
	d.chap(s, name, "chap", o.CHAP, n.CHAP)
}

// set reports added and removed members of a string list.
func (d *differ) set(s Section, name, what string, o, n []string, live bool) {
	for _, x := range o {
		if !slices.Contains(n, x) {
			d.add(Change{Kind: Removed, Section: s, Name: name, Field: what, Old: x, Live: live})
		}
	}
	for _, x := range n {
		if !slices.Contains(o, x) {
			d.add(Change{Kind: Added, Section: s, Name: name, Field: what, New: x, Live: live})
		}
	}
}

func (d *differ) chap(s Section, name, field string, o, n *CHAP) {
	switch {
	case o == nil && n == nil:
	case o == nil:
		d.add(Change{Kind: Added, Section: s, Name: name, Field: field, New: "user " + n.User, Live: true})
	case n == nil:
		d.add(Change{Kind: Removed, Section: s, Name: name, Field: field, Old: "user " + o.User, Live: true})
	case *o != *n:
		// secrets are never rendered
		d.add(Change{Kind: Modified, Section: s, Name: name, Field: field, Old: chapSummary(o), New: chapSummary(n), Live: true})
	}
}

func chapSummary(c *CHAP) string {
	s := "user " + c.User
	if c.MutualUser != "" {
		s += ", mutual user " + c.MutualUser
	}
	return s + " (secret not shown)"
}

func (d *differ) iscsi(o, n ISCSI) {
	s := SectionISCSI
	// offered to sessions at login; the server's limits are fixed when it
	// starts
	d.field(s, "", "nop_interval", o.NOPInterval.String(), n.NOPInterval.String(), false)
	d.field(s, "", "nop_timeout", o.NOPTimeout.String(), n.NOPTimeout.String(), false)
	d.field(s, "", "max_sessions", strconv.Itoa(o.MaxSessions), strconv.Itoa(n.MaxSessions), false)
	d.field(s, "", "max_recv_data_segment_length", strconv.Itoa(o.MaxRecvDataSegmentLength), strconv.Itoa(n.MaxRecvDataSegmentLength), false)
	d.field(s, "", "max_burst_length", strconv.Itoa(o.MaxBurstLength), strconv.Itoa(n.MaxBurstLength), false)
	d.field(s, "", "first_burst_length", strconv.Itoa(o.FirstBurstLength), strconv.Itoa(n.FirstBurstLength), false)
	d.field(s, "", "max_outstanding_r2t", strconv.Itoa(o.MaxOutstandingR2T), strconv.Itoa(n.MaxOutstandingR2T), false)
	d.field(s, "", "queue_depth", strconv.Itoa(o.QueueDepth), strconv.Itoa(n.QueueDepth), false)
	d.field(s, "", "max_transfer_length", o.MaxTransferLength.String(), n.MaxTransferLength.String(), false)
	d.field(s, "", "initial_r2t", fmtBool(o.InitialR2T), fmtBool(n.InitialR2T), false)
}

func fmtBool(b bool) string { return strconv.FormatBool(b) }

func fmtBoolPtr(b *bool) string {
	if b == nil {
		return "unset"
	}
	return strconv.FormatBool(*b)
}

func fmtIntPtr(p *int) string {
	if p == nil {
		return "unset"
	}
	return strconv.Itoa(*p)
}

func fmtLUN(l LUN) string {
	s := "volume " + l.Volume
	if l.Thin {
		s += " thin"
	}
	return s
}
