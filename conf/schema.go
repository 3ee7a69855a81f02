package conf

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Config is a complete, validated configuration. After Load or Parse every
// optional field holds its effective value (defaults filled in) and every
// pointer field is non-nil.
type Config struct {
	Global    Global    `toml:"global"`
	Caches    []Cache   `toml:"cache"`
	Volumes   []Volume  `toml:"volume"`
	Targets   []Target  `toml:"target"`
	Discovery Discovery `toml:"discovery"`
	ISCSI     ISCSI     `toml:"iscsi"`
	TCMU      TCMU      `toml:"tcmu"`
	// Cluster makes this daemon one node of a cluster of gateways; nil
	// (no [cluster] table) is a single node.
	Cluster *Cluster `toml:"cluster"`

	// Source is the file the configuration was loaded from ("" when parsed
	// from memory under another name, see Parse).
	Source string `toml:"-"`
}

// Global holds daemon-wide settings.
type Global struct {
	// DataDir is where relative paths point. Default "./cachelun-data".
	DataDir string `toml:"data_dir"`
	// LogLevel is one of debug, info, warn, error. Default info.
	LogLevel string `toml:"log_level"`
	// AdminSocket is the admin API's unix socket; "off" disables it.
	// Default /run/cachelun/admin.sock. Relative paths are under DataDir.
	AdminSocket string `toml:"admin_socket"`
	// MetricsListen is the HOST:PORT of the Prometheus /metrics endpoint;
	// "off" disables it. Default 127.0.0.1:9420.
	MetricsListen string `toml:"metrics_listen"`
}

// Off is the value that disables an optional listener (admin_socket,
// metrics_listen).
const Off = "off"

// Cache describes one cache file.
type Cache struct {
	Name string `toml:"name"`
	// Path of the cache file, relative to DataDir unless absolute.
	Path string `toml:"path"`
	// Size creates and formats the file with this size when it does not
	// exist. Zero means the file must already exist and be formatted.
	Size Size `toml:"size"`
	// SegmentSize and BlockSize are format parameters (used only when
	// formatting). Defaults 16 MiB and 4 KiB.
	SegmentSize Size `toml:"segment_size"`
	BlockSize   Size `toml:"block_size"`
	// DataCRC makes keys carry a CRC32C of their data (format parameter).
	DataCRC bool `toml:"data_crc"`
	// ZeroFill writes zeros over a cache file when it is created, so that
	// no flush of the first pass through the cache also writes the file
	// system's block map. Default true; false only reserves the blocks,
	// which creates a large file at once (used only when creating).
	ZeroFill *bool `toml:"zero_fill"`
	// GCPercent: GC runs when used segments exceed this share. 1..90,
	// default 70.
	GCPercent *int `toml:"gc_percent"`
	// JournalFlushInterval bounds how long an acknowledged write's key
	// waits in an open kset. Default 1s.
	JournalFlushInterval Duration `toml:"journal_flush_interval"`
	// OnCacheFailure: auto (default), fail or passthrough.
	OnCacheFailure string    `toml:"on_cache_failure"`
	Writeback      Writeback `toml:"writeback"`
}

// Writeback holds the writeback controller's tunables.
type Writeback struct {
	TargetDirtyPercent   *int     `toml:"target_dirty_percent"`   // default 10
	HighWatermarkPercent *int     `toml:"high_watermark_percent"` // default 50
	IdleAfter            Duration `toml:"idle_after"`             // default 1s
	MaxBytesPerSec       Size     `toml:"max_bytes_per_sec"`      // 0 = unlimited
}

// Volume describes one cached volume.
type Volume struct {
	Name  string `toml:"name"`
	Cache string `toml:"cache"`
	// Backing is the backing device or file, relative to DataDir unless
	// absolute, or a Ceph RBD image: "rbd:POOL/IMAGE" or
	// "rbd:POOL/NAMESPACE/IMAGE" (a binary built with -tags ceph).
	Backing string `toml:"backing"`
	// BackingSize creates a file of this size when Backing does not exist.
	// Not for RBD: the volume's size is the image's.
	BackingSize Size `toml:"backing_size"`
	// Direct opens the backing device with O_DIRECT. Not for RBD.
	Direct bool `toml:"direct"`
	// CephConf is the ceph.conf of an RBD backing's cluster (default
	// /etc/ceph/ceph.conf), CephUser the client id (default admin, for
	// client.admin), CephKeyring a keyring that overrides the one
	// ceph.conf names. RBD backings only.
	CephConf    string `toml:"ceph_conf"`
	CephUser    string `toml:"ceph_user"`
	CephKeyring string `toml:"ceph_keyring"`
	// CephConnectTimeout bounds connecting to the monitors (default 10s);
	// CephOpTimeout bounds every request to the cluster (default 30s):
	// a read miss during an outage fails after it. RBD backings only.
	CephConnectTimeout Duration `toml:"ceph_connect_timeout"`
	CephOpTimeout      Duration `toml:"ceph_op_timeout"`
	// Slow wraps the backing device in a throttle, e.g.
	// "latency=5ms,iops=200" (tests and benchmarks).
	Slow string `toml:"slow"`
	// Mode: writeback (default), writethrough, writearound, writeonly,
	// passthrough.
	Mode string `toml:"mode"`
	// BlockSize is the logical block size reported to hosts: 512
	// (default) or 4096.
	BlockSize int `toml:"block_size"`
	// WriteCache is the initial WCE bit; false makes every write FUA.
	// Default true.
	WriteCache *bool `toml:"write_cache"`
	// SequentialCutoff: sequential streams beyond this bypass the cache.
	// "0" disables. Default 4 MiB.
	SequentialCutoff Size `toml:"sequential_cutoff"`
	// Congestion bypass thresholds; "0s" disables. Defaults 2ms and 20ms.
	CongestedReadThreshold  Duration `toml:"congested_read_threshold"`
	CongestedWriteThreshold Duration `toml:"congested_write_threshold"`
	// CachePolicy: which read misses are cached and which clean data GC
	// keeps: "2q" (default: a ghost set admits what is read again, hit
	// data gets a second chance) or "fifo" (every miss cached, evicted in
	// log order). Changes live.
	CachePolicy string `toml:"cache_policy"`
	// SanitizeMaxBytesPerSec bounds the rate at which a SANITIZE
	// OVERWRITE of a LUN (iSCSI or TCMU) on the volume writes it, so that
	// a background sanitize leaves the backing device to the other
	// volumes on it (like md's speed_limit_max for a resync). "0" is no
	// limit; otherwise at least 1 MiB. Default 16 MiB. Taken when a LUN
	// or device starts.
	SanitizeMaxBytesPerSec Size `toml:"sanitize_max_bytes_per_sec"`
}

// Target describes one iSCSI target.
type Target struct {
	IQN     string   `toml:"iqn"`
	Alias   string   `toml:"alias"`
	Portals []string `toml:"portals"`
	LUNs    []LUN    `toml:"lun"`
	// Initiators is the ACL of initiator names; empty allows all.
	Initiators []string `toml:"initiators"`
	CHAP       *CHAP    `toml:"chap"`
}

// LUN maps a logical unit number of a target to a volume.
type LUN struct {
	LUN    uint64 `toml:"lun"`
	Volume string `toml:"volume"`
	// Thin advertises thin provisioning (UNMAP, LBPME).
	Thin bool `toml:"thin"`
}

// CHAP holds one-way (User, Secret) and optional mutual (MutualUser,
// MutualSecret) CHAP credentials.
type CHAP struct {
	User         string `toml:"user"`
	Secret       string `toml:"secret"`
	MutualUser   string `toml:"mutual_user"`
	MutualSecret string `toml:"mutual_secret"`
}

// Discovery configures discovery sessions.
type Discovery struct {
	CHAP *CHAP `toml:"chap"`
}

// TCMU configures the TCMU front end: kernel LIO backstores
// user:cachelun whose cfgstring names a volume
// (`targetcli /backstores/user:cachelun create name=db1 size=100G cfgstring=db1`).
type TCMU struct {
	// Enabled starts the TCMU handler (needs the target_core_user module
	// and root). Default false.
	Enabled bool `toml:"enabled"`
	// Volumes may be exported over TCMU; empty means every volume no
	// iSCSI target maps. A volume is served by one front end only.
	Volumes []string `toml:"volumes"`
	// DBus is the D-Bus address for org.kernel.TCMUService1 (what
	// targetcli queries): "" means the system bus, "none" disables it.
	DBus string `toml:"dbus"`
}

// Cluster configures the peer link of a node of a cluster of gateways
// (package cluster): who this node is, where it listens, who its peers
// are, and how long it waits for them. Every key except Node, Listen and
// Peers has a default; see example.toml.
type Cluster struct {
	// Name is the cluster's identity, carried in every handshake: nodes of
	// two clusters never talk, whatever their addresses. Object-name
	// syntax; default "cachelun" (set it when two clusters share a
	// network).
	Name string `toml:"name"`
	// Node is this node's name, unique in the cluster (object-name
	// syntax). Required.
	Node string `toml:"node"`
	// Listen is the HOST:PORT (an IP address) of this node's peer link.
	// Required.
	Listen string `toml:"listen"`
	// Peers are the other nodes, NAME@HOST:PORT (ParsePeer); HOST may be a
	// host name. Empty: a cluster of one node.
	Peers []string `toml:"peers"`
	// Degraded is what the owner of a volume does while a peer is not in
	// sync: "serve" (default) acknowledges FUA writes and SYNCHRONIZE
	// CACHE once they are durable locally and on the peers that are in
	// sync; "refuse-sync" fails them until every peer is in sync again.
	Degraded string `toml:"degraded"`
	// HeartbeatInterval is how often an idle link says it is alive.
	// Default 1s.
	HeartbeatInterval Duration `toml:"heartbeat_interval"`
	// PeerTimeout: a link that hears nothing from its peer for this long
	// is closed and dialed again. Default 5s; longer than
	// heartbeat_interval.
	PeerTimeout Duration `toml:"peer_timeout"`
	// ConnectTimeout bounds a dial and its handshake. Default 3s.
	ConnectTimeout Duration `toml:"connect_timeout"`
	// ReconnectMin and ReconnectMax bound the backoff between dials (it
	// doubles from min to max). Defaults 100ms and 5s.
	ReconnectMin Duration `toml:"reconnect_min"`
	ReconnectMax Duration `toml:"reconnect_max"`
	// SyncTimeout: a peer that has not acknowledged a shipment within this
	// long (down, or too slow) is out of sync; it is the longest a flush
	// waits for a peer. Default 5s.
	SyncTimeout Duration `toml:"sync_timeout"`
	// MaxLag: a peer whose unacknowledged shipments exceed this many
	// bytes is out of sync. Default 64MiB.
	MaxLag Size `toml:"max_lag"`
}

// Degraded policies ([cluster] degraded).
const (
	DegradedServe      = "serve"
	DegradedRefuseSync = "refuse-sync"
)

// ISCSI holds the iSCSI limits offered to initiators.
type ISCSI struct {
	NOPInterval              Duration `toml:"nop_interval"`                 // default 5s
	NOPTimeout               Duration `toml:"nop_timeout"`                  // default 15s
	MaxSessions              int      `toml:"max_sessions"`                 // all targets together, default 1024
	MaxRecvDataSegmentLength int      `toml:"max_recv_data_segment_length"` // default 262144, at least 8192
	MaxBurstLength           int      `toml:"max_burst_length"`             // default 1048576, at least 262144
	FirstBurstLength         int      `toml:"first_burst_length"`           // default 262144, at least 65536
	MaxOutstandingR2T        int      `toml:"max_outstanding_r2t"`          // default 8
	QueueDepth               int      `toml:"queue_depth"`                  // CmdSN window, default 128
	MaxTransferLength        Size     `toml:"max_transfer_length"`          // one command's data, default 16MiB
	InitialR2T               bool     `toml:"initial_r2t"`                  // refuse unsolicited Data-Out
}

// Size is a byte count written as an integer or a string with a unit:
// "4096", "4KiB", "16MiB", "1.5GiB", "2TiB". Units: KiB MiB GiB TiB PiB
// (powers of 1024), KB MB GB TB PB (powers of 1000), K M G T P (powers of
// 1024), B (bytes); a fraction must come to a whole number of bytes.
// ParseSize is the one parser of this grammar (the configuration and the
// command line's --size flags); size_test.go ties this comment to it. Set
// tells an explicit "0" apart from an absent key.
type Size struct {
	Bytes    int64
	Set      bool
	text     string
	fromFile bool
}

// UnmarshalText records the text; Parse converts it during validation so
// that a bad value is reported with its file:line like every other problem.
func (s *Size) UnmarshalText(b []byte) error {
	s.text, s.Set, s.fromFile = string(b), true, true
	return nil
}

// MarshalText renders the size with the largest exact binary unit
// ("256MiB"), as an operator writes it; ParseSize reads it back.
func (s Size) MarshalText() ([]byte, error) { return []byte(FormatSize(s.Bytes)), nil }

// String renders the size with the largest exact binary unit.
func (s Size) String() string { return FormatSize(s.Bytes) }

// Bytes returns a Size of n bytes (marked Set).
func Bytes(n int64) Size { return Size{Bytes: n, Set: true} }

// Duration is a Go duration string such as "500ms", "5s", "1m30s".
type Duration struct {
	D        time.Duration
	Set      bool
	text     string
	fromFile bool
}

// UnmarshalText records the text for validation (see Size.UnmarshalText).
func (d *Duration) UnmarshalText(b []byte) error {
	d.text, d.Set, d.fromFile = string(b), true, true
	return nil
}

// MarshalText renders the duration.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.D.String()), nil }

// String renders the duration.
func (d Duration) String() string { return d.D.String() }

// Dur returns a Duration of d (marked Set).
func Dur(d time.Duration) Duration { return Duration{D: d, Set: true} }

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"PiB", 1 << 50},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"PB", 1e15},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"P", 1 << 50},
	{"B", 1},
}

// ParseSize parses a byte count such as "4096", "64KiB" or "1.5GiB".
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("empty size")
	}
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	if n, err := strconv.ParseInt(t, 10, 64); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("negative size %q", s)
		}
		if n > 0 && n > (1<<62)/mult {
			return 0, fmt.Errorf("size %q too large", s)
		}
		return n * mult, nil
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f != f {
		return 0, fmt.Errorf("bad size %q (want e.g. 4096, 64KiB, 16MiB, 1GiB)", s)
	}
	if f < 0 {
		return 0, fmt.Errorf("negative size %q", s)
	}
	v := f * float64(mult)
	if v > float64(int64(1)<<62) {
		return 0, fmt.Errorf("size %q too large", s)
	}
	if v != float64(int64(v)) {
		return 0, fmt.Errorf("size %q is not a whole number of bytes", s)
	}
	return int64(v), nil
}

// FormatSize renders n with the largest binary unit that divides it.
func FormatSize(n int64) string {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"PiB", 1 << 50}, {"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n != 0 && n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}
