package main

import (
	"context"
	"io"

	"github.com/cachelun/cachelun/admin/cli"
)

// The admin verbs talk to a running daemon over its admin socket; their
// logic lives in package admin/cli. Exit codes: 0 ok, 1 operation failed,
// 2 usage, 3 daemon unreachable.

const (
	statusUsage  = "status [--socket PATH] [--json]"
	volumeUsage  = "volume list|show NAME|mode NAME MODE|flush NAME|drain NAME|move NAME NODE [--no-wait] [--json]"
	cacheUsage   = "cache list|detach NAME [--json]"
	sessionUsage = "session list [--json]"
	jobUsage     = "job list|show ID|cancel ID [--json]"
	reloadUsage  = "reload [--dry-run] [--no-wait] [--json]"
	explainUsage = "explain VOLUME LBA [--json]"
	configUsage  = "config show [--secrets] [--json]"
	statsUsage   = "stats reset [--json]"
	clusterUsage = "cluster status [--json]"
)

func runCluster(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return cli.Cluster(ctx, args, stdout, stderr)
}

func runConfig(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return cli.Config(ctx, args, stdout, stderr)
}

func runStats(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return cli.Stats(ctx, args, stdout, stderr)
}

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return cli.Status(ctx, args, stdout, stderr)
}

func runVolume(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return cli.Volume(ctx, args, stdout, stderr)
}

func runCache(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return cli.Cache(ctx, args, stdout, stderr)
}

func runSession(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return cli.Session(ctx, args, stdout, stderr)
}

func runJob(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return cli.Job(ctx, args, stdout, stderr)
}

func runReload(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return cli.Reload(ctx, args, stdout, stderr)
}

func runExplain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return cli.Explain(ctx, args, stdout, stderr)
}

func runAdvise(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return cli.Advise(ctx, args, stdout, stderr)
}
