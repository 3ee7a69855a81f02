// Command fuabench measures the commit cost of a block device inside a
// guest (tier 3): 4 KiB writes at queue depth 1, first with O_DIRECT|O_DSYNC
// (the 6.1 kernel sends each as a FUA write and then, from the O_DSYNC
// fsync path, a SYNCHRONIZE CACHE too), then plain O_DIRECT writes each
// followed by an fdatasync of the device (a write, then SYNCHRONIZE CACHE:
// a commit). It prints one line of key=value figures for the test to
// compare between devices.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	dev := flag.String("dev", "", "block device")
	off := flag.Int64("offset", 0, "first byte of the region written")
	span := flag.Int64("span", 4<<20, "bytes of the region written (cycled through)")
	secs := flag.Float64("seconds", 3, "duration of each of the two runs")
	flag.Parse()
	if err := run(*dev, *off, *span, time.Duration(*secs*float64(time.Second))); err != nil {
		fmt.Fprintln(os.Stderr, "fuabench:", err)
		os.Exit(1)
	}
}

func run(dev string, off, span int64, d time.Duration) error {
	const bs = 4096
	// O_DIRECT needs an aligned buffer; an anonymous mapping is.
	buf, err := unix.Mmap(-1, 0, bs, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		return err
	}
	for i := range buf {
		buf[i] = byte(i * 13)
	}
	fua, err := unix.Open(dev, unix.O_WRONLY|unix.O_DIRECT|unix.O_DSYNC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fua)
	plain, err := unix.Open(dev, unix.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return err
	}
	defer unix.Close(plain)
	blocks := span / bs
	loop := func(write func(at int64) error) (n int64, el time.Duration, err error) {
		start := time.Now()
		for ; time.Since(start) < d; n++ {
			if err := write(off + (n%blocks)*bs); err != nil {
				return n, 0, err
			}
		}
		return n, time.Since(start), nil
	}
	nf, ef, err := loop(func(at int64) error {
		_, err := unix.Pwrite(fua, buf, at)
		return err
	})
	if err != nil {
		return fmt.Errorf("FUA write: %w", err)
	}
	nc, ec, err := loop(func(at int64) error {
		if _, err := unix.Pwrite(plain, buf, at); err != nil {
			return err
		}
		return unix.Fdatasync(plain)
	})
	if err != nil {
		return fmt.Errorf("write+flush: %w", err)
	}
	// The totals let the test add rounds up exactly.
	fmt.Printf("fua_writes=%d fua_us=%d fua_per_sec=%.1f fua_mean_us=%d commits=%d commit_us=%d commit_mean_us=%d\n",
		nf, ef.Microseconds(), float64(nf)/ef.Seconds(), ef.Microseconds()/max(nf, 1), nc, ec.Microseconds(), ec.Microseconds()/max(nc, 1))
	return nil
}
