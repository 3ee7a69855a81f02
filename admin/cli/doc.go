// Package cli implements the cachelun CLI verbs that talk to a running
// daemon through its admin API: status, volume list|show|mode|flush|drain,
// cache list|detach, session list, job list|show|cancel, reload, explain,
// advise, config show and stats reset.
//
// Every verb has the signature
//
//	func(ctx context.Context, args []string, stdout, stderr io.Writer) int
//
// and returns an exit code scripts can rely on: ExitOK (0), ExitFailed (1:
// the daemon refused the operation, or its job failed or was cancelled),
// ExitUsage (2: bad verb, flag or argument) or ExitUnreachable (3: no
// daemon answering on the socket). Output is a human table by default and
// JSON with --json (the API's own answer, or the final job). Long
// operations (flush, drain, mode switch, detach, reload) wait for their job
// and show its progress on stderr: a bar redrawn in place on a terminal,
// plain lines otherwise; --no-wait prints the started job and returns.
// -h/--help prints the usage to stdout and exits 0.
//
// Common flags: --socket PATH (default $CACHELUN_ADMIN_SOCKET if set, else
// the first that answers of ./cachelun-data/admin.sock, where the quick
// start's daemon has it, and /run/cachelun/admin.sock; when none answers
// the error lists each with its reason), --data-dir DIR (the daemon
// serving DIR: DIR/admin.sock), --addr HOST:PORT to use the TCP listener
// instead (the token is read from $CACHELUN_ADMIN_TOKEN, never from the
// command line), --timeout (per call, default 10s), --json. Flags may
// come before or after the arguments.
//
// The package holds no state; each call builds its own client.
package cli
