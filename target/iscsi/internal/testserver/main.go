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
	"github.com/cachelun/cachelun/target/scsi"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:3260", "portal address")
	iqn := flag.String("iqn", "iqn.2026-11.test.cachelun:disk", "target name")
	size := flag.Int64("size", 256<<20, "LUN size in bytes")
	luns := flag.Int("luns", 1, "number of LUNs")
	thin := flag.Bool("thin", false, "advertise thin provisioning")
	blockSize := flag.Int("bs", 512, "logical block size")
	chapUser := flag.String("chap-user", "", "require CHAP with this user")
	chapSecret := flag.String("chap-secret", "", "CHAP secret")
	verbose := flag.Bool("v", false, "debug logging")
	flag.Parse()
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	dev, err := newDevice(*iqn, *size, *blockSize, *luns, *thin, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	srv := iscsi.NewServer(iscsi.Config{Logger: log})
	tc := iscsi.TargetConfig{Name: *iqn, SCSI: dev, TPGT: 1}
	if *chapUser != "" {
		tc.CHAP = &iscsi.CHAP{User: *chapUser, Secret: *chapSecret}
	}
	if err := srv.AddTarget(tc); err != nil {
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

func newDevice(iqn string, size int64, blockSize, luns int, thin bool, log *slog.Logger) (iscsi.SCSITarget, error) {
	t := scsi.NewTarget(scsi.TargetConfig{Name: iqn, Logger: log})
	for i := range luns {
		v, err := memvol.New(size, blockSize)
		if err != nil {
			return nil, err
		}
		cfg := scsi.LUConfig{Volume: v, Thin: thin, WriteCache: true, SerialNumber: fmt.Sprintf("testlun%d", i)}
		cfg.DeviceID[15] = byte(i + 1)
		if _, err := t.AddLU(uint64(i), cfg); err != nil {
			return nil, err
		}
	}
	return t, nil
}
