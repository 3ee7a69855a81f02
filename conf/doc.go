// Package conf loads, validates and compares cachelun's TOML configuration.
//
// A configuration file has seven parts:
//
//	[global]        data_dir, log_level, admin_socket, metrics_listen
//	[[cache]]       one per cache file: path, size, segment and block size, GC and writeback tunables
//	[[volume]]      one per cached volume: its cache, backing device, mode, block size, bypass tunables
//	[[target]]      one per iSCSI target: IQN, portals, [[target.lun]] mappings, initiator ACL, CHAP
//	[discovery]     CHAP for SendTargets discovery sessions
//	[iscsi]         iSCSI limits offered to initiators and NOP-In keepalive timing
//	[tcmu]          the TCMU front end: enabled, which volumes, D-Bus address
//
// See Example (example.toml in this directory) for every key with its default.
//
// Guarantees:
//
//   - Load and Parse either return a fully validated *Config with every default filled in, or an error
//     and no Config. Nothing is half applied: callers act on a configuration only after it loaded.
//   - Every validation problem is reported (not just the first) as a *Problem naming file:line and the
//     key path, e.g. "/etc/cachelun.toml:17: volume[1].mode: unknown cache mode "wrback"". Syntax and
//     type errors from the TOML decoder carry the decoder's line.
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
