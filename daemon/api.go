package daemon

import (
	"context"
	"log/slog"
	"time"

	"github.com/cachelun/cachelun/conf"
)

// Options are the command line's settings of a daemon.
type Options struct {
	// Logger receives the daemon's log; Level, when set, is its level,
	// which a reload changes to the file's log_level.
	Logger *slog.Logger
	Level  *slog.LevelVar
	// ListenOverride ("HOST:PORT", serve --listen) replaced every target's
	// portals in the configuration; a reload applies it to the new file.
	ListenOverride string
	// MetricsOverride (serve --metrics) replaced global.metrics_listen; a
	// reload keeps it.
	MetricsOverride string
	// BackingPollInterval is how often every backing device's size is
	// checked, so that a grown device grows its volume live (0: 2 s).
	BackingPollInterval time.Duration
	// Clock is the time source of the cluster's peer link and ownership
	// rules; nil is the wall clock.
	Clock interface{ Now() time.Time }
}

// Start starts a daemon on cfg (LoadConfig): it claims the data dir, opens
// backing devices and caches, adds volumes, maps LUNs, listens on the
// portals, starts the TCMU front end and the admin API, and serves. A
// failed start releases everything it took.
func Start(ctx context.Context, cfg *conf.Config, opts Options) (*Daemon, error) {
	d, err := start(ctx, cfg, opts)
	if err != nil {
		return nil, err
	}
	return d, nil
}

// Reload re-reads the configuration file and applies the difference as
// one transaction (package reconcile); a dry run changes nothing. The text
// is the plan, one change a line, in both cases.
func (d *Daemon) Reload(ctx context.Context, dryRun bool) (string, error) {
	return d.reload(ctx, dryRun)
}

// Failed delivers an error when a portal listener dies.
func (d *Daemon) Failed() <-chan error { return d.failed() }

// Shutdown stops in reverse start order: the admin API, iSCSI sessions
// (asked to log out within ctx), the TCMU handler, then the caches (not
// bounded by ctx: closing persists the open ksets).
func (d *Daemon) Shutdown(ctx context.Context) error { return d.shutdown(ctx) }

// LUN is one served LUN as the start log names it.
type LUN struct {
	URL, Volume, Mode string
}

// LUNs lists the iSCSI URL of every LUN on every portal, sorted.
func (d *Daemon) LUNs() []LUN {
	var out []LUN
	for _, u := range d.lunURLs() {
		out = append(out, LUN{URL: u.url, Volume: u.volume, Mode: u.mode})
	}
	return out
}
