// Package conf loads, validates and compares cachelun's TOML configuration.
//
// A configuration file has eight parts:
//
//	[global]        data_dir, log_level, admin_socket, metrics_listen
//	[[cache]]       one per cache file: path, size, segment and block size, GC and writeback tunables
//	[[volume]]      one per cached volume: its cache, backing device, mode, block size, bypass tunables
//	[[target]]      one per iSCSI target: IQN, portals, [[target.lun]] mappings, initiator ACL, CHAP
//	[discovery]     CHAP for SendTargets discovery sessions
//	[iscsi]         iSCSI limits offered to initiators and NOP-In keepalive timing
//	[tcmu]          the TCMU front end: enabled, which volumes, D-Bus address
//	[cluster]       this node of a cluster of gateways: cluster name, node name, peer link listen
//	                address, peers (NAME@HOST:PORT), degraded policy, link timeouts; absent = one node
//
// See Example (example.toml in this directory) for every key with its default.
//
// Guarantees:
//
//   - Load and Parse either return a fully validated *Config with every default filled in, or an error
//     and no Config. Nothing is half applied: callers act on a configuration only after it loaded.
//   - Every problem is reported at once (not just the first), in one form, as a *Problem naming
//     file:line and the key path with the index of its table, e.g. "/etc/cachelun.toml:17:
//     volume[1].mode: "wrback" is not one of writeback, ...". A value of the wrong type ("expected a
//     string, not the integer 5"), an unknown key (with the closest known key: `did you mean
//     "sequential_cutoff"?`), a key set twice in a table and a table given twice are problems like
//     the others and hide none of them: the file's generic decoding is checked against the schema,
//     and what fails is reported and left out before the rest is decoded and validated. Only a TOML
//     syntax error stops the reading; it is reported in the same form, with the decoder's message.
//   - Config.TOML prints a configuration that Parse reads back to an equivalent one (`cachelun config
//     show`); CHAP secrets are redacted to RedactedSecret, which validation refuses, unless asked for.
//   - Parse never panics, whatever the input (fuzzed).
//   - Relative paths (cache path, backing path, admin socket) are resolved against data_dir; a relative
//     data_dir is resolved against the process's working directory by the daemon, not by this package.
//
// Diff compares two loaded configurations and returns a Plan: one Change per added, removed or modified
// object or field, each marked Live (can be applied to a running daemon) or not (needs a restart, such as
// a cache file's path or block size).
//
// The package has no mutable package-level state and imports no engine package; values such as cache
// modes are validated here by name and converted by the daemon.
package conf
