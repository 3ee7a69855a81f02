package cli

import (
	"context"
	"fmt"
	"io"
	"time"
)

// Config runs `cachelun config show [--secrets] [--json]`: the running
// configuration as TOML (targetcli saveconfig, tgt-admin --dump), loadable
// with --config. CHAP secrets are redacted unless --secrets.
func Config(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	sub, rest := subcommand(args)
	if sub != "show" {
		return groupUsage(sub, rest, "config show [--secrets] [--json]", stdout, stderr)
	}
	var c common
	var secrets bool
	fs := newFlags("config show", "config show [--secrets] [--json]", stdout, stderr)
	c.register(fs)
	fs.BoolVar(&secrets, "secrets", false, "print the CHAP secrets instead of a placeholder")
	pos, code, ok := parseArgs(fs, rest)
	if !ok {
		return code
	}
	if len(pos) != 0 {
		return usageError(fs, stderr, "unexpected argument %q", pos[0])
	}
	r, err := c.client().Config(ctx, secrets)
	if err != nil {
		return failure(stderr, &c, "config show", err)
	}
	if c.json {
		printJSON(stdout, r)
		return ExitOK
	}
	fmt.Fprint(stdout, r.TOML)
	return ExitOK
}

// Stats runs `cachelun stats reset [--json]` (casadm --reset-counters):
// the counters that status, volume show, cache list and the status page
// show count from now on. /metrics is not reset (Prometheus counters stay
// monotonic).
func Stats(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	sub, rest := subcommand(args)
	if sub != "reset" {
		return groupUsage(sub, rest, "stats reset [--json]", stdout, stderr)
	}
	var c common
	fs := newFlags("stats reset", "stats reset [--json]", stdout, stderr)
	c.register(fs)
	pos, code, ok := parseArgs(fs, rest)
	if !ok {
		return code
	}
	if len(pos) != 0 {
		return usageError(fs, stderr, "unexpected argument %q", pos[0])
	}
	r, err := c.client().StatsReset(ctx)
	if err != nil {
		return failure(stderr, &c, "stats reset", err)
	}
	if c.json {
		printJSON(stdout, r)
		return ExitOK
	}
	fmt.Fprintf(stdout, "counters of %d volumes and %d caches reset at %s (status and volume show count from here; /metrics is not reset)\n",
		r.Volumes, r.Caches, r.ResetAt.Local().Format(time.DateTime))
	return ExitOK
}
