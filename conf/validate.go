package conf

import (
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/backend/rbd"
)

// Defaults applied to keys that are absent.
const (
	DefaultDataDir              = "./cachelun-data"
	DefaultLogLevel             = "info"
	DefaultAdminSocket          = "/run/cachelun/admin.sock"
	DefaultMetricsListen        = "127.0.0.1:9420"
	DefaultSegmentSize          = 16 << 20
	DefaultCacheBlockSize       = 4096
	DefaultGCPercent            = 70
	DefaultJournalFlushInterval = time.Second
	DefaultOnCacheFailure       = "auto"
	DefaultTargetDirtyPercent   = 10
	DefaultHighWatermarkPercent = 50
	DefaultIdleAfter            = time.Second
	DefaultMode                 = "writeback"
	DefaultCachePolicy          = "2q"
	DefaultVolumeBlockSize      = 512
	DefaultSequentialCutoff     = 4 << 20
	DefaultCongestedRead        = 2 * time.Millisecond
	DefaultCongestedWrite       = 20 * time.Millisecond
	// DefaultSanitizeMaxBytesPerSec restates
	// scsi.DefaultSanitizeMaxBytesPerSec (conf imports no target
	// package; a daemon test holds them equal).
	DefaultSanitizeMaxBytesPerSec = 16 << 20
	// MinSanitizeMaxBytesPerSec: a slower sanitize would take days on a
	// large volume.
	MinSanitizeMaxBytesPerSec = 1 << 20
	DefaultNOPInterval        = 5 * time.Second
	DefaultNOPTimeout         = 15 * time.Second
	DefaultMaxRecvDataSegLen  = 262144
	DefaultMaxBurstLength     = 1 << 20
	DefaultFirstBurstLength   = 262144
	DefaultMaxOutstandingR2T  = 8
	DefaultMaxTransferLength  = 16 << 20
	DefaultMaxSessions        = 1024
	DefaultQueueDepth         = 128
	DefaultClusterName        = "cachelun"
	DefaultDegraded           = DegradedServe
	DefaultHeartbeatInterval  = time.Second
	DefaultPeerTimeout        = 5 * time.Second
	DefaultConnectTimeout     = 3 * time.Second
	DefaultReconnectMin       = 100 * time.Millisecond
	DefaultReconnectMax       = 5 * time.Second
	DefaultSyncTimeout        = 5 * time.Second
	DefaultMaxLag             = 64 << 20
)

// Accepted enumerations.
var (
	LogLevels = []string{"debug", "info", "warn", "error"}
	// Modes and FailurePolicies restate cachecore.Modes() and
	// cachecore.FailurePolicies() (conf may not import the engine); a test in
	// admin/coreadapter ties them.
	Modes            = []string{"writeback", "writethrough", "writearound", "writeonly", "passthrough"}
	FailurePolicies  = []string{"auto", "fail", "passthrough"}
	DegradedPolicies = []string{DegradedServe, DegradedRefuseSync}
	// CachePolicies restates cachecore.Policies() (tied by the same test).
	CachePolicies = []string{"2q", "fifo"}
)

const (
	minSegmentSize = 128 << 10
	maxSegmentSize = 1 << 30
	// a cache needs room for its metadata area and a few segments; the
	// engine refuses smaller files, catch it at load time
	minCacheSegments = 8
	maxLUN           = 16383 // SAM flat addressing
	maxISCSINameLen  = 223   // RFC 3720 3.2.6.1
	maxObjectNameLen = 63    // persist volume table entry
	minCHAPSecretLen = 12    // RFC 7143 12.1.3: 96 bits
	maxCHAPSecretLen = 255
	maxDataSegLen    = 1<<24 - 1
)

var objectName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

type validator struct {
	file     string
	ix       *lineIndex
	problems []*Problem
}

func (v *validator) problemAt(line int, key, format string, args ...any) {
	v.problems = append(v.problems, &Problem{File: v.file, Line: line, Key: key, Msg: fmt.Sprintf(format, args...)})
}

// bad reports a problem at the line where key (a path with indices) is.
func (v *validator) bad(key, format string, args ...any) {
	v.problemAt(v.ix.line(key), key, format, args...)
}

func (v *validator) config(c *Config) {
	v.global(&c.Global)
	caches := map[string]*Cache{}
	paths := map[string]string{}
	for i := range c.Caches {
		ca := &c.Caches[i]
		k := fmt.Sprintf("cache[%d]", i)
		v.cache(k, ca)
		if ca.Name != "" {
			if _, dup := caches[ca.Name]; dup {
				v.bad(k+".name", "duplicate cache name %q", ca.Name)
			}
			caches[ca.Name] = ca
		}
		if ca.Path != "" {
			if other, dup := paths[ca.Path]; dup {
				v.bad(k+".path", "path %q already used by %s", ca.Path, other)
			}
			paths[ca.Path] = "cache " + ca.Name
		}
	}
	volumes := map[string]bool{}
	for i := range c.Volumes {
		vo := &c.Volumes[i]
		k := fmt.Sprintf("volume[%d]", i)
		v.volume(k, vo)
		if vo.Name != "" {
			if volumes[vo.Name] {
				v.bad(k+".name", "duplicate volume name %q", vo.Name)
			}
			volumes[vo.Name] = true
		}
		if vo.Cache != "" {
			if _, ok := caches[vo.Cache]; !ok {
				v.bad(k+".cache", "no cache named %q", vo.Cache)
			}
		}
		if vo.Backing != "" {
			key := vo.Backing
			if sp, err := rbd.ParseSpec(vo.Backing); err == nil {
				key = sp.String() // one image, however it is spelt
			}
			if other, dup := paths[key]; dup {
				v.bad(k+".backing", "%q already used by %s", vo.Backing, other)
			}
			paths[key] = "volume " + vo.Name
		}
	}
	iqns := map[string]bool{}
	for i := range c.Targets {
		t := &c.Targets[i]
		k := fmt.Sprintf("target[%d]", i)
		v.target(k, t, volumes)
		if t.IQN != "" {
			if iqns[strings.ToLower(t.IQN)] {
				v.bad(k+".iqn", "duplicate target %q", t.IQN)
			}
			iqns[strings.ToLower(t.IQN)] = true
		}
	}
	if c.Discovery.CHAP != nil {
		v.chap("discovery.chap", c.Discovery.CHAP)
	}
	v.iscsi("iscsi", &c.ISCSI)
	v.tcmu(c, volumes)
	if c.Cluster != nil {
		v.cluster("cluster", c.Cluster)
		v.clusterVolumes(c)
	}
}

// tcmu checks the TCMU volume list: known volumes, not also exported over
// iSCSI (two logical units with their own WCE and reservation state must
// not share one volume).
func (v *validator) tcmu(c *Config, volumes map[string]bool) {
	iscsiLUN := map[string]string{}
	for i, t := range c.Targets {
		for j, l := range t.LUNs {
			if _, ok := iscsiLUN[l.Volume]; !ok {
				iscsiLUN[l.Volume] = fmt.Sprintf("target[%d].lun[%d]", i, j)
			}
		}
	}
	seen := map[string]bool{}
	for _, name := range c.TCMU.Volumes {
		switch {
		case !volumes[name]:
			v.bad("tcmu.volumes", "no volume named %q", name)
		case iscsiLUN[name] != "":
			v.bad("tcmu.volumes", "volume %q is exported over iSCSI (%s); a volume is served by one front end", name, iscsiLUN[name])
		case seen[name]:
			v.bad("tcmu.volumes", "volume %q listed twice", name)
		}
		seen[name] = true
	}
}

// VolumeWriteCache is the configured write_cache of volume (on when unset
// or when there is no such volume): the WCE its LUNs start with.
func (c *Config) VolumeWriteCache(volume string) bool {
	for _, v := range c.Volumes {
		if v.Name == volume && v.WriteCache != nil {
			return *v.WriteCache
		}
	}
	return true
}

// TCMUVolumes returns the volumes the TCMU front end may export: the
// configured list, or every volume no iSCSI target maps.
func (c *Config) TCMUVolumes() []string {
	if len(c.TCMU.Volumes) > 0 {
		return append([]string(nil), c.TCMU.Volumes...)
	}
	mapped := map[string]bool{}
	for _, t := range c.Targets {
		for _, l := range t.LUNs {
			mapped[l.Volume] = true
		}
	}
	var out []string
	for _, vo := range c.Volumes {
		if !mapped[vo.Name] {
			out = append(out, vo.Name)
		}
	}
	return out
}

func (v *validator) global(g *Global) {
	if g.DataDir == "" {
		g.DataDir = DefaultDataDir
	}
	if g.LogLevel == "" {
		g.LogLevel = DefaultLogLevel
	}
	v.oneOf("global.log_level", g.LogLevel, LogLevels)
	if g.AdminSocket == "" {
		g.AdminSocket = DefaultAdminSocket
	}
	if g.MetricsListen == "" {
		g.MetricsListen = DefaultMetricsListen
	}
	if g.MetricsListen != Off {
		if err := checkHostPort(g.MetricsListen, false); err != nil {
			v.bad("global.metrics_listen", "%v", err)
		}
	}
}

func (v *validator) cache(k string, c *Cache) {
	v.name(k+".name", "cache", c.Name)
	if c.Path == "" {
		v.bad(k+".path", "missing (the cache file)")
	}
	v.size(k+".size", &c.Size, 0)
	v.size(k+".segment_size", &c.SegmentSize, DefaultSegmentSize)
	v.size(k+".block_size", &c.BlockSize, DefaultCacheBlockSize)
	seg, blk := c.SegmentSize.Bytes, c.BlockSize.Bytes
	if !isPow2(seg) || seg < minSegmentSize || seg > maxSegmentSize {
		v.bad(k+".segment_size", "must be a power of two from %s to %s, not %s",
			FormatSize(minSegmentSize), FormatSize(maxSegmentSize), FormatSize(seg))
	}
	if !isPow2(blk) || blk < 512 || blk > 4096 {
		v.bad(k+".block_size", "must be a power of two from 512 to 4096 bytes, not %s", FormatSize(blk))
	}
	if c.Size.Set && c.Size.Bytes != 0 && isPow2(seg) && c.Size.Bytes < minCacheSegments*seg {
		v.bad(k+".size", "%s is too small: at least %d segments (%s) are needed", FormatSize(c.Size.Bytes),
			minCacheSegments, FormatSize(minCacheSegments*seg))
	}
	if c.ZeroFill == nil {
		zeroFill := true
		c.ZeroFill = &zeroFill
	}
	// 0 is refused rather than passed on: the engine reads a zero
	// GCPercent as "keep the value stored in the cache file".
	v.percent(k+".gc_percent", &c.GCPercent, DefaultGCPercent, 1, 90)
	v.duration(k+".journal_flush_interval", &c.JournalFlushInterval, DefaultJournalFlushInterval)
	if d := c.JournalFlushInterval.D; d <= 0 || d > time.Minute {
		v.bad(k+".journal_flush_interval", "must be more than 0 and at most 1m, not %s", d)
	}
	if c.OnCacheFailure == "" {
		c.OnCacheFailure = DefaultOnCacheFailure
	}
	v.oneOf(k+".on_cache_failure", c.OnCacheFailure, FailurePolicies)
	w := &c.Writeback
	v.percent(k+".writeback.target_dirty_percent", &w.TargetDirtyPercent, DefaultTargetDirtyPercent, 0, 100)
	v.percent(k+".writeback.high_watermark_percent", &w.HighWatermarkPercent, DefaultHighWatermarkPercent, 1, 100)
	if *w.TargetDirtyPercent > *w.HighWatermarkPercent {
		v.bad(k+".writeback.target_dirty_percent", "%d is above high_watermark_percent %d",
			*w.TargetDirtyPercent, *w.HighWatermarkPercent)
	}
	v.duration(k+".writeback.idle_after", &w.IdleAfter, DefaultIdleAfter)
	if w.IdleAfter.D < 0 {
		v.bad(k+".writeback.idle_after", "must not be negative")
	}
	v.size(k+".writeback.max_bytes_per_sec", &w.MaxBytesPerSec, 0)
}

func (v *validator) volume(k string, vo *Volume) {
	v.name(k+".name", "volume", vo.Name)
	if vo.Cache == "" {
		v.bad(k+".cache", "missing (the name of a [[cache]])")
	}
	if vo.Backing == "" {
		v.bad(k+".backing", "missing (the backing device or file)")
	}
	v.size(k+".backing_size", &vo.BackingSize, 0)
	v.duration(k+".ceph_connect_timeout", &vo.CephConnectTimeout, 0)
	v.duration(k+".ceph_op_timeout", &vo.CephOpTimeout, 0)
	if rbd.IsSpec(vo.Backing) {
		v.rbdVolume(k, vo)
	} else {
		v.notRBD(k, vo)
	}
	if vo.Slow != "" {
		if err := CheckSlowSpec(vo.Slow); err != nil {
			v.bad(k+".slow", "%v", err)
		}
	}
	if vo.Mode == "" {
		vo.Mode = DefaultMode
	}
	v.oneOf(k+".mode", vo.Mode, Modes)
	if vo.CachePolicy == "" {
		vo.CachePolicy = DefaultCachePolicy
	}
	v.oneOf(k+".cache_policy", vo.CachePolicy, CachePolicies)
	if vo.BlockSize == 0 {
		vo.BlockSize = DefaultVolumeBlockSize
	}
	if vo.BlockSize != 512 && vo.BlockSize != 4096 {
		v.bad(k+".block_size", "must be 512 or 4096, not %d", vo.BlockSize)
	} else if vo.BackingSize.Bytes%int64(vo.BlockSize) != 0 {
		v.bad(k+".backing_size", "%d bytes is not a multiple of block_size %d", vo.BackingSize.Bytes, vo.BlockSize)
	}
	if vo.WriteCache == nil {
		t := true
		vo.WriteCache = &t
	}
	v.size(k+".sequential_cutoff", &vo.SequentialCutoff, DefaultSequentialCutoff)
	v.duration(k+".congested_read_threshold", &vo.CongestedReadThreshold, DefaultCongestedRead)
	v.duration(k+".congested_write_threshold", &vo.CongestedWriteThreshold, DefaultCongestedWrite)
	if vo.CongestedReadThreshold.D < 0 {
		v.bad(k+".congested_read_threshold", "must not be negative")
	}
	if vo.CongestedWriteThreshold.D < 0 {
		v.bad(k+".congested_write_threshold", "must not be negative")
	}
	v.size(k+".sanitize_max_bytes_per_sec", &vo.SanitizeMaxBytesPerSec, DefaultSanitizeMaxBytesPerSec)
	if r := vo.SanitizeMaxBytesPerSec.Bytes; r != 0 && r < MinSanitizeMaxBytesPerSec {
		v.bad(k+".sanitize_max_bytes_per_sec", "%d bytes/s is below 1MiB (\"0\" is no limit)", r)
	}
}

// VolumeSanitizeRate is the SANITIZE OVERWRITE rate limit of volume's LUNs
// in bytes/s, 0 for none (the default when the volume is unknown).
func (c *Config) VolumeSanitizeRate(volume string) int64 {
	for _, v := range c.Volumes {
		if v.Name == volume {
			return v.SanitizeMaxBytesPerSec.Bytes
		}
	}
	return DefaultSanitizeMaxBytesPerSec
}

// rbdVolume checks a volume whose backing is an RBD image. What only the
// cluster can tell (reachable, pool, image, permission, lock) is checked
// when the daemon opens the image, before it creates anything.
func (v *validator) rbdVolume(k string, vo *Volume) {
	if _, err := rbd.ParseSpec(vo.Backing); err != nil {
		v.bad(k+".backing", "%v", err)
	} else if !rbd.Built {
		v.bad(k+".backing", "%q is a Ceph RBD image: %v", vo.Backing, rbd.ErrNotBuilt)
	}
	if vo.BackingSize.Bytes != 0 {
		v.bad(k+".backing_size", "not for an RBD image: the volume's size is the image's "+
			"(create or grow it with `rbd create --size` / `rbd resize`)")
	}
	if vo.Direct {
		v.bad(k+".direct", "not for an RBD image: O_DIRECT applies to files and block devices; "+
			"an RBD image is reached through librbd, whose cache cachelun turns off")
	}
	if vo.Slow != "" {
		v.bad(k+".slow", "not for an RBD image: throttle files and block devices only")
	}
	if vo.CephConf == "" {
		vo.CephConf = rbd.DefaultCephConf
	}
	// the daemon's data directory is no place for a cluster's
	// configuration; relative paths would depend on where it was started
	for _, f := range []struct{ key, path string }{{"ceph_conf", vo.CephConf}, {"ceph_keyring", vo.CephKeyring}} {
		if f.path != "" && !filepath.IsAbs(f.path) {
			v.bad(k+"."+f.key, "%q must be an absolute path", f.path)
		}
	}
	if vo.CephUser == "" {
		vo.CephUser = rbd.DefaultUser
	} else if err := checkCephUser(vo.CephUser); err != nil {
		v.bad(k+".ceph_user", "%v", err)
	}
	if vo.CephConnectTimeout.D == 0 {
		vo.CephConnectTimeout.D = rbd.DefaultConnectTimeout
	}
	if vo.CephOpTimeout.D == 0 {
		vo.CephOpTimeout.D = rbd.DefaultOpTimeout
	}
	for _, d := range []struct {
		key string
		d   time.Duration
	}{{"ceph_connect_timeout", vo.CephConnectTimeout.D}, {"ceph_op_timeout", vo.CephOpTimeout.D}} {
		// below a second a busy cluster fails healthy requests; above
		// ten minutes a host has long given up on the command
		if d.d < time.Second || d.d > 10*time.Minute {
			v.bad(k+"."+d.key, "must be from 1s to 10m, not %s", d.d)
		}
	}
}

// notRBD refuses the Ceph keys on a volume whose backing is a file or
// block device: they would be ignored, and probably mean a mistyped
// backing.
func (v *validator) notRBD(k string, vo *Volume) {
	for _, f := range []struct {
		key string
		set bool
	}{
		{"ceph_conf", vo.CephConf != ""},
		{"ceph_user", vo.CephUser != ""},
		{"ceph_keyring", vo.CephKeyring != ""},
		{"ceph_connect_timeout", vo.CephConnectTimeout.D != 0},
		{"ceph_op_timeout", vo.CephOpTimeout.D != 0},
	} {
		if f.set {
			v.bad(k+"."+f.key, "only for an RBD backing (backing = \"rbd:POOL/IMAGE\"); backing %q is a file or device", vo.Backing)
		}
	}
}

// checkCephUser accepts a client id ("admin", "gw1", or "client.gw1").
func checkCephUser(s string) error {
	id := strings.TrimPrefix(s, "client.")
	if id == "" || strings.ContainsFunc(id, func(r rune) bool { return r <= ' ' || r == 0x7f || r == '/' }) {
		return fmt.Errorf("%q is not a Ceph client id (e.g. \"admin\" for client.admin)", s)
	}
	return nil
}

func (v *validator) target(k string, t *Target, volumes map[string]bool) {
	if t.IQN == "" {
		v.bad(k+".iqn", "missing (the target name, e.g. iqn.2026-11.com.example:disk1)")
	} else if err := CheckISCSIName(t.IQN); err != nil {
		v.bad(k+".iqn", "%v", err)
	}
	if len(t.Portals) == 0 {
		v.bad(k+".portals", "at least one portal (HOST:PORT) is needed")
	}
	seen := map[string]bool{}
	for _, p := range t.Portals {
		if err := checkHostPort(p, true); err != nil {
			v.bad(k+".portals", "%v", err)
		} else if seen[p] {
			v.bad(k+".portals", "portal %q listed twice", p)
		}
		seen[p] = true
	}
	luns := map[uint64]bool{}
	for i := range t.LUNs {
		l := &t.LUNs[i]
		lk := fmt.Sprintf("%s.lun[%d]", k, i)
		if l.LUN > maxLUN {
			v.bad(lk+".lun", "LUN %d is above %d", l.LUN, maxLUN)
		}
		if luns[l.LUN] {
			v.bad(lk+".lun", "LUN %d mapped twice", l.LUN)
		}
		luns[l.LUN] = true
		if l.Volume == "" {
			v.bad(lk+".volume", "missing (the name of a [[volume]])")
		} else if !volumes[l.Volume] {
			v.bad(lk+".volume", "no volume named %q", l.Volume)
		}
	}
	inits := map[string]bool{}
	for _, n := range t.Initiators {
		if err := CheckISCSIName(n); err != nil {
			v.bad(k+".initiators", "%v", err)
		} else if inits[strings.ToLower(n)] {
			v.bad(k+".initiators", "initiator %q listed twice", n)
		}
		inits[strings.ToLower(n)] = true
	}
	if t.CHAP != nil {
		v.chap(k+".chap", t.CHAP)
	}
}

func (v *validator) chap(k string, c *CHAP) {
	if c.User == "" && c.Secret == "" && c.MutualUser == "" && c.MutualSecret == "" {
		v.bad(k, "empty chap table (remove it to disable CHAP)")
		return
	}
	if c.User == "" {
		v.bad(k+".user", "missing")
	}
	v.secret(k+".secret", c.Secret)
	if c.MutualUser != "" || c.MutualSecret != "" {
		if c.MutualUser == "" {
			v.bad(k+".mutual_user", "missing (mutual_secret is set)")
		}
		v.secret(k+".mutual_secret", c.MutualSecret)
		if c.MutualSecret != "" && c.MutualSecret == c.Secret {
			v.bad(k+".mutual_secret", "must differ from secret (RFC 7143)")
		}
	}
}

func (v *validator) secret(k, s string) {
	if s == RedactedSecret {
		v.bad(k, "is the placeholder of a redacted secret (from cachelun config show): write the secret")
		return
	}
	if len(s) < minCHAPSecretLen || len(s) > maxCHAPSecretLen {
		v.bad(k, "must be %d to %d bytes long (RFC 7143 requires at least 96 bits), not %d",
			minCHAPSecretLen, maxCHAPSecretLen, len(s))
	}
}

func (v *validator) iscsi(k string, c *ISCSI) {
	v.duration(k+".nop_interval", &c.NOPInterval, DefaultNOPInterval)
	v.duration(k+".nop_timeout", &c.NOPTimeout, DefaultNOPTimeout)
	if c.NOPInterval.D <= 0 {
		v.bad(k+".nop_interval", "must be more than 0")
	}
	if c.NOPTimeout.D < c.NOPInterval.D {
		v.bad(k+".nop_timeout", "%s is shorter than nop_interval %s", c.NOPTimeout.D, c.NOPInterval.D)
	}
	v.intRange(k+".max_sessions", &c.MaxSessions, DefaultMaxSessions, 1, 65535)
	v.intRange(k+".max_recv_data_segment_length", &c.MaxRecvDataSegmentLength, DefaultMaxRecvDataSegLen, 8192, maxDataSegLen)
	v.intRange(k+".max_burst_length", &c.MaxBurstLength, DefaultMaxBurstLength, 262144, maxDataSegLen)
	v.intRange(k+".first_burst_length", &c.FirstBurstLength, DefaultFirstBurstLength, 65536, maxDataSegLen)
	if c.FirstBurstLength > c.MaxBurstLength {
		v.bad(k+".first_burst_length", "%d is above max_burst_length %d", c.FirstBurstLength, c.MaxBurstLength)
	}
	v.intRange(k+".max_outstanding_r2t", &c.MaxOutstandingR2T, DefaultMaxOutstandingR2T, 1, 65535)
	v.intRange(k+".queue_depth", &c.QueueDepth, DefaultQueueDepth, 1, 65535)
	v.size(k+".max_transfer_length", &c.MaxTransferLength, DefaultMaxTransferLength)
	if n := c.MaxTransferLength.Bytes; n < 65536 || n > 1<<30 {
		v.bad(k+".max_transfer_length", "must be from 64KiB to 1GiB, not %s", FormatSize(n))
	}
}

// ---- helpers ----

func (v *validator) name(k, what, s string) {
	switch {
	case s == "":
		v.bad(k, "missing (every %s needs a name)", what)
	case len(s) > maxObjectNameLen:
		v.bad(k, "%q is longer than %d bytes", s, maxObjectNameLen)
	case !objectName.MatchString(s):
		v.bad(k, "%q: use letters, digits, '.', '_' and '-' (not first)", s)
	}
}

func (v *validator) oneOf(k, s string, allowed []string) {
	for _, a := range allowed {
		if s == a {
			return
		}
	}
	v.bad(k, "%q is not one of %s", s, strings.Join(allowed, ", "))
}

func (v *validator) size(k string, s *Size, def int64) {
	if !s.Set {
		s.Bytes = def
		return
	}
	if !s.fromFile {
		return // set in code, not parsed
	}
	n, err := ParseSize(s.text)
	if err != nil {
		v.bad(k, "%v", err)
		return
	}
	s.Bytes = n
}

func (v *validator) duration(k string, d *Duration, def time.Duration) {
	if !d.Set {
		d.D = def
		return
	}
	if !d.fromFile {
		return // set in code
	}
	x, err := time.ParseDuration(strings.TrimSpace(d.text))
	if err != nil {
		if _, nerr := strconv.ParseInt(d.text, 10, 64); nerr == nil && d.text != "0" {
			v.bad(k, "%q needs a unit, e.g. \"%sms\" or \"%ss\"", d.text, d.text, d.text)
			return
		}
		v.bad(k, "bad duration %q (want e.g. 500ms, 5s, 1m)", d.text)
		return
	}
	d.D = x
}

func (v *validator) percent(k string, p **int, def, lo, hi int) {
	if *p == nil {
		x := def
		*p = &x
		return
	}
	if **p < lo || **p > hi {
		v.bad(k, "must be from %d to %d, not %d", lo, hi, **p)
	}
}

func (v *validator) intRange(k string, p *int, def, lo, hi int) {
	if *p == 0 {
		*p = def
		return
	}
	if *p < lo || *p > hi {
		v.bad(k, "must be from %d to %d, not %d", lo, hi, *p)
	}
}

func isPow2(n int64) bool { return n > 0 && n&(n-1) == 0 }

// checkHostPort accepts HOST:PORT with an IP literal host ([::1]:3260 for
// IPv6). wantIP=false also accepts a host name ("localhost:9420").
func checkHostPort(s string, wantIP bool) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not HOST:PORT (IPv6 as [::1]:3260)", s)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("%q: port must be 1 to 65535", s)
	}
	if host == "" {
		return fmt.Errorf("%q: host missing (use 0.0.0.0 or [::] for all addresses)", s)
	}
	if net.ParseIP(host) == nil && (wantIP || strings.ContainsAny(host, " /")) {
		return fmt.Errorf("%q: host must be an IP address", s)
	}
	return nil
}

// CheckISCSIName reports whether s is a valid iSCSI name (RFC 3720 3.2.6):
// iqn.YYYY-MM.reversed.domain[:anything], eui.<16 hex> or naa.<16|32 hex>,
// lower case.
func CheckISCSIName(s string) error {
	if len(s) > maxISCSINameLen {
		return fmt.Errorf("iSCSI name %q is longer than %d bytes", s, maxISCSINameLen)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == ':') {
			return fmt.Errorf("iSCSI name %q: only lower-case letters, digits, '.', '-' and ':' are allowed", s)
		}
	}
	switch {
	case strings.HasPrefix(s, "iqn."):
		if !iqnPattern.MatchString(s) {
			return fmt.Errorf("iSCSI name %q: want iqn.YYYY-MM.reversed.domain[:name]", s)
		}
	case strings.HasPrefix(s, "eui."):
		if !euiPattern.MatchString(s) {
			return fmt.Errorf("iSCSI name %q: want eui. and 16 hex digits", s)
		}
	case strings.HasPrefix(s, "naa."):
		if !naaPattern.MatchString(s) {
			return fmt.Errorf("iSCSI name %q: want naa. and 16 or 32 hex digits", s)
		}
	default:
		return fmt.Errorf("iSCSI name %q must start with \"iqn.\", \"eui.\" or \"naa.\"", s)
	}
	return nil
}

var (
	iqnPattern = regexp.MustCompile(`^iqn\.[0-9]{4}-(0[1-9]|1[0-2])\.[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:.*)?$`)
	euiPattern = regexp.MustCompile(`^eui\.[0-9a-f]{16}$`)
	naaPattern = regexp.MustCompile(`^naa\.([0-9a-f]{16}|[0-9a-f]{32})$`)
)

// CheckSlowSpec checks a slow-device spec ("latency=5ms,iops=200,bw=100MiB")
// with the same parser the daemon uses to build the throttle.
func CheckSlowSpec(s string) error {
	_, err := backend.ParseSlowSpec(s)
	return err
}
