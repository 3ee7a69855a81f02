// Command cachelun is the cachelun daemon and its command-line tools.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// command is one subcommand. It returns the process exit code.
type command struct {
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) int
	summary string
}

// commands is the subcommand table; adding a command is one line.
func commands() map[string]command {
	return map[string]command{
		"format":  {runFormat, "format --size SIZE [--segment-size SIZE] [--block-size N] [--data-crc] [--force] FILE"},
		"inspect": {runInspect, "inspect [--json] FILE"},
		"check":   {runCheck, "check [--repair [--yes]] FILE"},
		"serve":   {runServe, serveUsage},
		"status":  {runStatus, statusUsage},
		"volume":  {runVolume, volumeUsage},
		"cache":   {runCache, cacheUsage},
		"session": {runSession, sessionUsage},
		"job":     {runJob, jobUsage},
		"reload":  {runReload, reloadUsage},
		"explain": {runExplain, explainUsage},
		"advise":  {runAdvise, "advise [VOLUME] [--target RATIO] [--json]"},
		"version": {runVersion, "version (also --version)"},
		"config":  {runConfig, configUsage},
		"stats":   {runStats, statsUsage},
		"cluster": {runCluster, clusterUsage},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := dispatch(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmds := commands()
	if len(args) == 0 {
		usage(stderr, cmds)
		return 2
	}
	switch args[0] {
	case "help", "-h", "--help":
		// asked for: the usage is the answer, on stdout
		usage(stdout, cmds)
		return 0
	case "--version", "-version":
		return runVersion(ctx, args[1:], stdout, stderr)
	}
	c, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "cachelun: unknown command %q\n", args[0])
		usage(stderr, cmds)
		return 2
	}
	return c.run(ctx, args[1:], stdout, stderr)
}

func usage(w io.Writer, cmds map[string]command) {
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintln(w, "usage: cachelun COMMAND [options]")
	for _, n := range names {
		fmt.Fprintf(w, "  cachelun %s\n", cmds[n].summary)
	}
}
