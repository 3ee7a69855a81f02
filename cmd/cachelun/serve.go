package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/cachelun/cachelun/conf"
	"github.com/cachelun/cachelun/daemon"
)

const serveUsage = "serve [--config FILE] [--data-dir DIR] [--listen HOST:PORT] [--metrics HOST:PORT|off]"

// shutdownTimeout bounds the graceful part of a shutdown: asking iSCSI
// sessions to log out and draining their commands. Closing the caches
// afterwards is not bounded (it only persists open ksets).
const shutdownTimeout = 10 * time.Second

// runServe runs the daemon until ctx ends (SIGTERM, SIGINT), then shuts
// down gracefully and returns 0. SIGHUP reloads the configuration file
// (see daemon.Daemon.Reload); it never kills the daemon.
func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	// catch SIGHUP first: its default action would end the process
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	configPath := fs.String("config", "", "configuration file (default: the embedded demo configuration)")
	dataDir := fs.String("data-dir", "", "data directory; overrides global.data_dir (default ./cachelun-data)")
	listen := fs.String("listen", "", "HOST:PORT every target listens on instead of its portals (port 0 picks a free port)")
	metrics := fs.String("metrics", "", "HOST:PORT of /metrics and the status page instead of global.metrics_listen (port 0 picks a free port), or off")
	pos, code, ok := parseCommand(fs, args, stdout, stderr)
	if !ok {
		return code
	}
	if len(pos) > 0 {
		fmt.Fprintf(stderr, "cachelun serve: unexpected argument %q\n", pos[0])
		printUsage(fs, stderr)
		return 2
	}
	if *metrics != "" {
		if err := checkMetricsListen(*metrics); err != nil {
			fmt.Fprintf(stderr, "cachelun serve: --metrics: %v\n", err)
			printUsage(fs, stderr)
			return 2
		}
	}
	cfg, err := daemon.LoadConfig(*configPath, *dataDir, *listen)
	if err != nil {
		fmt.Fprintf(stderr, "cachelun serve: %v\n", err)
		return 1
	}
	if *metrics != "" {
		cfg.Global.MetricsListen = *metrics
	}
	level := new(slog.LevelVar)
	level.Set(daemon.ParseLevel(cfg.Global.LogLevel))
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	d, err := daemon.Start(ctx, cfg, daemon.Options{Logger: log, Level: level, ListenOverride: *listen, MetricsOverride: *metrics})
	if err != nil {
		log.Error("start failed", "err", err)
		return 1
	}
	for _, u := range d.LUNs() {
		log.Info("LUN ready", "url", u.URL, "volume", u.Volume, "mode", u.Mode)
	}
	log.Info("cachelun ready", "config", cfg.Source, "data_dir", cfg.Global.DataDir, "pid", os.Getpid())

	for {
		select {
		case <-hup:
			// reloads are serialized by the daemon; running it here keeps
			// SIGHUPs in order and a shutdown waits for the reload
			plan, err := d.Reload(ctx, false)
			if err != nil {
				log.Error("SIGHUP: configuration not reloaded", "err", err, "plan", plan)
			} else {
				log.Info("SIGHUP: configuration reloaded", "plan", plan)
			}
			continue
		case err := <-d.Failed():
			log.Error("daemon failed", "err", err)
			sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
			d.Shutdown(sctx)
			cancel()
			return 1
		case <-ctx.Done():
		}
		break
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := d.Shutdown(sctx); err != nil {
		log.Error("shutdown", "err", err)
		return 1
	}
	log.Info("stopped")
	return 0
}

// checkMetricsListen accepts the --metrics value: "off", or HOST:PORT with
// a port 0..65535 (0 lets the kernel pick one; the start log shows which).
func checkMetricsListen(s string) error {
	if s == conf.Off {
		return nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not HOST:PORT or off", s)
	}
	if host == "" {
		return fmt.Errorf("%q: host missing (127.0.0.1 keeps it on this machine)", s)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("%q: bad port", s)
	}
	return nil
}
