package daemon

import (
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"

	"github.com/cachelun/cachelun/conf"
)

// LoadConfig loads the file at path (or, with path "", the embedded
// default) and applies the command-line overrides: dataDir replaces
// global.data_dir, listen ("HOST:PORT", port 0 picks a free port) replaces
// every target's portals. The data directory becomes absolute.
func LoadConfig(path, dataDir, listen string) (*conf.Config, error) {
	var cfg *conf.Config
	if path == "" {
		cfg = conf.Default()
	} else {
		c, err := conf.Load(path)
		if err != nil {
			return nil, err
		}
		cfg = c
	}
	if dataDir != "" {
		cfg.Global.DataDir = dataDir
	}
	abs, err := filepath.Abs(cfg.Global.DataDir)
	if err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	cfg.Global.DataDir = abs
	if listen != "" {
		if err := checkListen(listen); err != nil {
			return nil, fmt.Errorf("--listen: %w", err)
		}
		for i := range cfg.Targets {
			cfg.Targets[i].Portals = []string{listen}
		}
	}
	return cfg, nil
}

// checkListen accepts HOST:PORT with an IP literal and a port 0..65535 (0
// lets the kernel pick one; the ready lines show which).
func checkListen(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return err
	}
	if net.ParseIP(host) == nil {
		return fmt.Errorf("%q: host must be an IP address", s)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("%q: bad port", s)
	}
	return nil
}

// ParseLevel maps a validated log_level to its slog level.
func ParseLevel(level string) slog.Level {
	switch level {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}
