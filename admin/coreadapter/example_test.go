package coreadapter_test

import (
	"context"
	"log/slog"

	"github.com/cachelun/cachelun/admin"
	"github.com/cachelun/cachelun/admin/coreadapter"
	"github.com/cachelun/cachelun/cachecore"
	"github.com/cachelun/cachelun/target/iscsi"
	"github.com/cachelun/cachelun/target/scsi"
	"github.com/prometheus/client_golang/prometheus"
)

// Example shows how the daemon wires the admin server: the engine's
// objects adapted to admin's interfaces, the latency histograms wrapped
// around each volume handed to the SCSI server, and one registry for both.
func Example() {
	var (
		ctx    = context.Background()
		cache  *cachecore.Cache // opened by the daemon
		vol    *cachecore.Volume
		server *iscsi.Server
		target *scsi.Target
		reload func(ctx context.Context, dryRun bool) (string, error)
	)
	reg := prometheus.NewRegistry()
	latency, err := admin.NewLatency(reg)
	if err != nil {
		return
	}
	_, _ = target.AddLU(0, scsi.LUConfig{Volume: latency.InstrumentVolume(vol.Name(), vol)})

	srv, err := admin.NewServer(admin.Config{
		Backend: admin.BackendFuncs{
			VolumesFunc: func() []admin.VolumeAPI { return []admin.VolumeAPI{coreadapter.Volume(vol, "nvme0")} },
			CachesFunc: func() []admin.CacheAPI {
				return []admin.CacheAPI{coreadapter.Cache("nvme0", "/var/lib/cachelun/nvme0.cache", cache, nil)}
			},
			SessionsFunc: func() []admin.Session { return coreadapter.ISCSISessions(server.Sessions()) },
			ReloadFunc:   reload,
		},
		Registry:      reg,
		Logger:        slog.Default(),
		SocketPath:    admin.DefaultSocketPath,
		MetricsListen: admin.DefaultMetricsListen,
	})
	if err != nil {
		return
	}
	_ = srv.Serve(ctx) // in its own goroutine, with the daemon's context
}
