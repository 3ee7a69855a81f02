// Command testserver runs the iSCSI target over in-memory volumes for
// conformance runs with real initiators (libiscsi's iscsi-test-cu,
// iscsi-perf, qemu-io). It prints "URL iscsi://ADDR/IQN/0" once listening
// and stops on SIGINT/SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cachelun/cachelun/internal/memvol"
	"github.com/cachelun/cachelun/target/iscsi"
	"github.com/cachelun/cachelun/target/iscsi/internal/fakescsi"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:3260", "portal address")
	iqn := flag.String("iqn", "iqn.2026-11.test.cachelun:disk", "target name")
	size := flag.Int64("size", 256<<20, "LUN size in bytes")
	luns := flag.Int("luns", 1, "number of LUNs")
	verbose := flag.Bool("v", false, "debug logging")
	flag.Parse()
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	dev, err := newDevice(*size, *luns, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	srv := iscsi.NewServer(iscsi.Config{Logger: log})
	if err := srv.AddTarget(iscsi.TargetConfig{Name: *iqn, SCSI: dev, TPGT: 1}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Printf("URL iscsi://%s/%s/0\n", l.Addr(), *iqn)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	<-done
}

func newDevice(size int64, luns int, _ *slog.Logger) (iscsi.SCSITarget, error) {
	t := fakescsi.New()
	for i := range luns {
		v, err := memvol.New(size, 512)
		if err != nil {
			return nil, err
		}
		t.AddLU(uint64(i), v)
	}
	return t, nil
}
