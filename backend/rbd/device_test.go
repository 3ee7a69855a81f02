//go:build ceph

package rbd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachelun/cachelun/backend"
	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/internal/cephtest"
	"github.com/cachelun/cachelun/internal/devtest"
)

// cluster is the throwaway cluster of this test process, started in
// TestMain ($CEPHTEST_DIR attaches to one started by hand instead).
var cluster *cephtest.Cluster

const pool = "rbdtest"

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	var err error
	if dir := os.Getenv("CEPHTEST_DIR"); dir != "" {
		cluster, err = cephtest.Attach(dir)
	} else {
		cluster, err = cephtest.Start(context.Background(), 3*time.Minute)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() {
		if err := cluster.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}()
	ctx := context.Background()
	for _, args := range [][]string{
		{"ceph", "osd", "pool", "create", pool, "8"},
		{"rbd", "pool", "init", pool},
	} {
		if _, err := cluster.Run(ctx, args[0], args[1:]...); err != nil && !strings.Contains(err.Error(), "already exists") {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return m.Run()
}

// testOptions are short timeouts, so refusals and outages show in seconds.
func testOptions(t testing.TB) Options {
	return Options{
		CephConf:       cluster.Conf,
		ConnectTimeout: 3 * time.Second,
		OpTimeout:      5 * time.Second,
		Logger:         slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// newImage creates an image of size bytes named after the test and removes
// it when the test ends.
func newImage(t testing.TB, size int64) Spec {
	t.Helper()
	spec := newImageKept(t, size)
	name := spec.Image
	ctx := context.Background()
	t.Cleanup(func() {
		if _, err := cluster.Run(ctx, "rbd", "rm", "--no-progress", pool+"/"+name); err != nil {
			t.Log(err)
		}
	})
	return spec
}

// newImageKept creates an image that stays in the (throwaway) cluster: rbd
// rm would wait 30 s for the watch of a client closed during an outage to
// expire.
func newImageKept(t testing.TB, size int64) Spec {
	t.Helper()
	name := strings.NewReplacer("/", "-", " ", "_").Replace(t.Name()) + "-" + strconv.Itoa(rand.IntN(1e6))
	if _, err := cluster.Run(context.Background(), "rbd", "create", "--size", strconv.FormatInt(size>>10, 10)+"K", pool+"/"+name); err != nil {
		t.Fatal(err)
	}
	return Spec{Pool: pool, Image: name}
}

func openT(t testing.TB, spec Spec, opts Options) *Device {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := Open(ctx, spec, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// export returns the image's content as another client (rbd export) reads it.
func export(t testing.TB, spec Spec) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "export")
	if _, err := cluster.Run(context.Background(), "rbd", "export", "--no-progress", spec.Pool+"/"+spec.Image, path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestConformance(t *testing.T) {
	spec := newImage(t, 4<<20+512*3)
	devtest.CheckDevice(t, openT(t, spec, testOptions(t)), 512, backend.ErrClosed)
}

// TestManyInFlight: 64 writers at once, 4 KiB to 256 KiB at random aligned
// offsets, each on its own stripe; then everything reads back through the
// device and, after Flush, through another client (rbd export).
func TestManyInFlight(t *testing.T) {
	const size = 64 << 20
	spec := newImage(t, size)
	d := openT(t, spec, testOptions(t))
	ctx := context.Background()
	ref := make([]byte, size)
	const workers, stripe = 64, size / 64
	var wg sync.WaitGroup
	var maxInFlight, inFlight atomic.Int64
	errc := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 1))
			base := int64(w) * stripe
			for range 20 {
				n := int64(4096 << r.IntN(7))
				off := base + r.Int64N((stripe-n)/4096+1)*4096
				p := make([]byte, n)
				for i := range p {
					p[i] = byte(r.Uint32())
				}
				cur := inFlight.Add(1)
				for m := maxInFlight.Load(); cur > m && !maxInFlight.CompareAndSwap(m, cur); m = maxInFlight.Load() {
				}
				err := d.WriteAt(ctx, p, off)
				inFlight.Add(-1)
				if err != nil {
					errc <- err
					return
				}
				copy(ref[off:], p) // stripes are disjoint
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	t.Logf("at most %d requests in flight", maxInFlight.Load())
	if maxInFlight.Load() < workers/2 {
		t.Errorf("at most %d requests in flight of %d writers", maxInFlight.Load(), workers)
	}
	got := make([]byte, size)
	var rg sync.WaitGroup
	for i := range 16 {
		rg.Add(1)
		go func() {
			defer rg.Done()
			chunk := int64(size / 16)
			if err := d.ReadAt(ctx, got[int64(i)*chunk:int64(i+1)*chunk], int64(i)*chunk); err != nil {
				t.Error(err)
			}
		}()
	}
	rg.Wait()
	if !bytes.Equal(got, ref) {
		t.Fatal("read back differs from what was written")
	}
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(export(t, spec), ref) {
		t.Fatal("rbd export differs from what was written")
	}
}

// TestZeroes: Discard and WriteZeroes leave zeroes at any granularity, 4 KiB
// inside an object and across object boundaries; Deallocate promises
// nothing and is only logged.
func TestZeroes(t *testing.T) {
	const size = 12 << 20 // three 4 MiB objects
	spec := newImage(t, size)
	d := openT(t, spec, testOptions(t))
	ctx := context.Background()
	ref := bytes.Repeat([]byte{0xA5}, size)
	if err := d.WriteAt(ctx, ref, 0); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		op     string
		off, n int64
	}{
		{"discard", 8192, 4096},            // 4 KiB inside object 0
		{"zeroes", 1<<20 + 512, 1536},      // sub-4K, unaligned
		{"discard", 4<<20 - 4096, 8 << 10}, // across objects 0 and 1
		{"zeroes", 4 << 20, 4 << 20},       // all of object 1
		{"discard", 9 << 20, 3 << 20},      // to the end
	} {
		var err error
		if c.op == "discard" {
			err = d.Discard(ctx, c.off, c.n)
		} else {
			err = d.WriteZeroes(ctx, c.off, c.n)
		}
		if err != nil {
			t.Fatalf("%s [%d,+%d): %v", c.op, c.off, c.n, err)
		}
		clear(ref[c.off : c.off+c.n])
	}
	got := make([]byte, size)
	if err := d.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, ref) {
		t.Fatal("zeroed ranges do not read back as zeroes, or a neighbour changed")
	}
	if !bytes.Equal(export(t, spec), ref) {
		t.Fatal("rbd export differs after zeroing")
	}
	// rbd_discard of 4 KiB inside an object: what librbd does with it.
	if err := d.Deallocate(ctx, 2<<20, 4096); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 4096)
	if err := d.ReadAt(ctx, p, 2<<20); err != nil {
		t.Fatal(err)
	}
	t.Logf("4 KiB Deallocate inside an object reads back zeroes: %v (why Discard uses rbd_write_zeroes)", bytes.Equal(p, make([]byte, 4096)))
}

// TestFlushReachesCluster: with the librbd cache on, Flush is what puts the
// data on the OSDs; another client sees it afterwards.
func TestFlushReachesCluster(t *testing.T) {
	spec := newImage(t, 8<<20)
	opts := testOptions(t)
	opts.LibrbdCache = true
	d := openT(t, spec, opts)
	ctx := context.Background()
	p := bytes.Repeat([]byte("flushed!"), 8192)
	if err := d.WriteAt(ctx, p, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := export(t, spec); !bytes.Equal(got[1<<20:1<<20+len(p)], p) {
		t.Fatal("data written and flushed is not in the image")
	}
}

// TestResize: an image grown by another client shows through PollSize; a
// shrink too, and requests past the new end are refused.
func TestResize(t *testing.T) {
	spec := newImage(t, 8<<20)
	d := openT(t, spec, testOptions(t))
	ctx := context.Background()
	if sz, changed, err := d.PollSize(); err != nil || changed || sz != 8<<20 {
		t.Fatalf("PollSize before resize: %d %v %v", sz, changed, err)
	}
	if _, err := cluster.Run(ctx, "rbd", "resize", "--no-progress", "--size", "16M", spec.Pool+"/"+spec.Image); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		sz, changed, err := d.PollSize()
		if err != nil {
			t.Fatal(err)
		}
		if changed {
			if sz != 16<<20 || d.Size() != 16<<20 {
				t.Fatalf("PollSize after growth: %d, Size %d; want 16 MiB", sz, d.Size())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("growth not seen within 30 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	p := bytes.Repeat([]byte{7}, 4096)
	if err := d.WriteAt(ctx, p, 12<<20); err != nil {
		t.Fatalf("write in the grown part: %v", err)
	}
	got := make([]byte, 4096)
	if err := d.ReadAt(ctx, got, 12<<20); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("read in the grown part: %v", err)
	}
	if _, err := cluster.Run(ctx, "rbd", "resize", "--no-progress", "--allow-shrink", "--size", "4M", spec.Pool+"/"+spec.Image); err != nil {
		t.Fatal(err)
	}
	for deadline = time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		sz, changed, err := d.PollSize()
		if err != nil {
			t.Fatal(err)
		}
		if changed && sz == 4<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("shrink not seen within 30 s")
		}
	}
	if err := d.ReadAt(ctx, got, 12<<20); !errors.Is(err, blk.ErrOutOfRange) {
		t.Fatalf("read past the shrunk end: %v, want ErrOutOfRange", err)
	}
}

// TestOpenRefusals: every bad input is refused with its own reason, in
// bounded time, and the image is left as it was.
func TestOpenRefusals(t *testing.T) {
	ctx := context.Background()
	spec := newImage(t, 4<<20)
	holder := openT(t, spec, testOptions(t))
	if err := holder.WriteAt(ctx, bytes.Repeat([]byte{0x5A}, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	if err := holder.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	before := sha256.Sum256(export(t, spec))
	free := newImage(t, 4<<20)

	dir := t.TempDir()
	// A keyring with another key for client.admin.
	badKeyring := filepath.Join(dir, "bad.keyring")
	if _, err := cluster.Run(ctx, "ceph-authtool", "--create-keyring", badKeyring, "--gen-key", "-n", "client.admin"); err != nil {
		t.Fatal(err)
	}
	// A user that exists but may only use another pool.
	if _, err := cluster.Run(ctx, "ceph", "osd", "pool", "create", "otherpool", "8"); err != nil {
		t.Fatal(err)
	}
	otherKeyring := filepath.Join(dir, "other.keyring")
	if _, err := cluster.Run(ctx, "ceph", "auth", "get-or-create", "client.other", "mon", "profile rbd", "osd", "profile rbd pool=otherpool", "-o", otherKeyring); err != nil {
		t.Fatal(err)
	}
	// A ceph.conf whose monitor nobody listens on.
	conf, err := os.ReadFile(cluster.Conf)
	if err != nil {
		t.Fatal(err)
	}
	deadConf := filepath.Join(dir, "dead.conf")
	var lines []string
	for _, l := range strings.Split(string(conf), "\n") {
		if strings.HasPrefix(l, "mon host") {
			l = "mon host = [v2:127.0.0.1:9,v1:127.0.0.1:10]"
		}
		lines = append(lines, l)
	}
	if err := os.WriteFile(deadConf, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.Run(ctx, "rbd", "namespace", "create", pool+"/ns1"); err != nil && !strings.Contains(err.Error(), "exist") {
		t.Fatal(err)
	}

	base := testOptions(t)
	for _, c := range []struct {
		name string
		spec Spec
		mod  func(*Options)
		want error
		says string
	}{
		{"no such pool", Spec{Pool: "nopool", Image: free.Image}, nil, ErrNoPool, "nopool"},
		{"no such namespace", Spec{Pool: pool, Namespace: "nons", Image: free.Image}, nil, ErrNoNamespace, "nons"},
		{"no such image", Spec{Pool: pool, Image: "noimage"}, nil, ErrNoImage, "noimage"},
		{"no such image in namespace", Spec{Pool: pool, Namespace: "ns1", Image: free.Image}, nil, ErrNoImage, free.Image},
		{"unknown user", free, func(o *Options) { o.User = "nobody" }, ErrPermission, "client.nobody"},
		{"wrong key", free, func(o *Options) { o.Keyring = badKeyring }, ErrPermission, "authentication"},
		{"no caps on pool", free, func(o *Options) { o.User = "client.other"; o.Keyring = otherKeyring }, ErrPermission, pool},
		{"missing keyring", free, func(o *Options) { o.Keyring = filepath.Join(dir, "none") }, ErrConfig, "keyring"},
		{"missing ceph.conf", free, func(o *Options) { o.CephConf = filepath.Join(dir, "none.conf") }, ErrConfig, "none.conf"},
		{"unreachable", free, func(o *Options) { o.CephConf = deadConf }, ErrUnreachable, "no monitor answered"},
		{"too small", free, func(o *Options) { o.MinSize = 4<<20 + 1 }, ErrTooSmall, "4194305 required"},
		{"locked", spec, nil, ErrLocked, "held by"},
	} {
		t.Run(c.name, func(t *testing.T) {
			opts := base
			if c.mod != nil {
				c.mod(&opts)
			}
			start := time.Now()
			d, err := Open(ctx, c.spec, opts)
			took := time.Since(start)
			if err == nil {
				d.Close()
				t.Fatal("Open succeeded")
			}
			t.Logf("refused in %v: %v", took.Round(time.Millisecond), err)
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.says) {
				t.Errorf("Open: %v; want %v saying %q", err, c.want, c.says)
			}
			if limit := opts.ConnectTimeout + 2*opts.OpTimeout; took > limit {
				t.Errorf("refusal took %v, more than %v", took, limit)
			}
		})
	}
	// A deadline shorter than the connect timeout ends Open at the deadline.
	opts := base
	opts.CephConf = deadConf
	opts.ConnectTimeout = 20 * time.Second
	dctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := Open(dctx, free, opts); !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Errorf("Open with a 500 ms deadline: %v after %v", err, time.Since(start))
	}

	if after := sha256.Sum256(export(t, spec)); after != before {
		t.Error("the locked image changed during the refusals")
	}
	// The holder still holds the lock and writes.
	if ok, err := holder.HoldsLock(); err != nil || !ok {
		t.Errorf("holder HoldsLock = %v, %v", ok, err)
	}
	if err := holder.WriteAt(ctx, make([]byte, 4096), 0); err != nil {
		t.Errorf("holder write after the refusals: %v", err)
	}
}

// TestLockFencesOthers: while a Device holds the image, another client's
// write fails instead of taking the lock away.
func TestLockFencesOthers(t *testing.T) {
	spec := newImage(t, 4<<20)
	d := openT(t, spec, testOptions(t))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// rbd bench writing to the held image must fail.
	out, err := cluster.Run(ctx, "rbd", "bench", "--io-type", "write", "--io-total", "64K", "--io-size", "4K", spec.Pool+"/"+spec.Image)
	if err == nil {
		t.Fatalf("another client wrote the held image: %s", out)
	}
	t.Logf("other writer refused: %v", err)
	if ok, err := d.HoldsLock(); err != nil || !ok {
		t.Fatalf("HoldsLock after the other writer: %v, %v", ok, err)
	}
	if err := d.WriteAt(ctx, make([]byte, 4096), 0); err != nil {
		t.Fatalf("write after the other writer: %v", err)
	}
}

// TestOutage: the OSD stops while 32 requests are in flight. Every request
// fails within the op timeout with ErrTimeout (none hangs), a request whose
// context ends returns at once without touching the caller's buffer
// afterwards, and once the OSD is back the same Device works again.
func TestOutage(t *testing.T) {
	const size = 32 << 20
	spec := newImage(t, size)
	opts := testOptions(t)
	d := openT(t, spec, opts)
	// d2 is closed during the outage, with an abandoned read in flight.
	opts2 := opts
	opts2.Logger = nil // its teardown may log after the test ended
	d2, err := Open(context.Background(), newImageKept(t, 4<<20), opts2)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := d2.WriteAt(ctx, make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	ref := make([]byte, size)
	for i := range ref {
		ref[i] = byte(i * 7 / 4096)
	}
	if err := d.WriteAt(ctx, ref, 0); err != nil {
		t.Fatal(err)
	}
	osdStopped := false
	t.Cleanup(func() {
		if osdStopped {
			if err := cluster.StartOSD(context.Background()); err != nil {
				t.Error(err)
			}
		}
	})

	const workers = 32
	var (
		stop                       atomic.Bool
		wg                         sync.WaitGroup
		mu                         sync.Mutex
		okBefore, timeouts, others int
		longest                    time.Duration
		firstOther                 error
	)
	var outage atomic.Bool
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 3))
			p := make([]byte, 4096)
			for !stop.Load() {
				// Each worker writes only its own blocks with the data
				// ref already has, so any completion leaves ref valid.
				b := r.Int64N(size/4096/workers)*workers + int64(w)
				off := b * 4096
				start := time.Now()
				var err error
				if r.IntN(2) == 0 {
					err = d.ReadAt(ctx, p, off)
				} else {
					copy(p, ref[off:off+4096])
					err = d.WriteAt(ctx, p, off)
				}
				took := time.Since(start)
				mu.Lock()
				longest = max(longest, took)
				switch {
				case err == nil:
					if !outage.Load() {
						okBefore++
					}
				case errors.Is(err, ErrTimeout) && errors.Is(err, blk.ErrNotReady):
					timeouts++
				default:
					others++
					if firstOther == nil {
						firstOther = err
					}
				}
				mu.Unlock()
			}
		}()
	}
	time.Sleep(time.Second)
	outage.Store(true)
	if err := cluster.StopOSD(ctx); err != nil {
		t.Fatal(err)
	}
	osdStopped = true
	t.Log("osd.0 stopped")

	// A request whose context ends during the outage returns at once;
	// librbd's late completion must not write into the caller's buffer.
	abandoned := bytes.Repeat([]byte{0xCC}, 4096)
	actx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	start := time.Now()
	err = d.ReadAt(actx, abandoned, 0)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Errorf("ReadAt with a 300 ms deadline during the outage: %v after %v", err, time.Since(start))
	}
	// Close during the outage returns within the op timeout, while its
	// abandoned request and librbd's lock release still wait.
	actx, cancel = context.WithTimeout(ctx, 100*time.Millisecond)
	err = d2.ReadAt(actx, make([]byte, 4096), 0)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("d2 ReadAt with a 100 ms deadline during the outage: %v", err)
	}
	start = time.Now()
	err = d2.Close()
	t.Logf("Close during the outage took %v: %v", time.Since(start).Round(time.Millisecond), err)
	if took := time.Since(start); took > opts.OpTimeout+time.Second || (err != nil && !errors.Is(err, ErrTimeout)) {
		t.Errorf("Close during the outage: %v after %v, want nil or ErrTimeout within the op timeout", err, took)
	}

	time.Sleep(2*opts.OpTimeout + time.Second)
	stop.Store(true)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(opts.OpTimeout + 10*time.Second):
		t.Fatal("requests still hang after the op timeout")
	}
	t.Logf("before the outage %d requests succeeded; during it %d timed out, %d failed otherwise (first: %v); longest request %v",
		okBefore, timeouts, others, firstOther, longest)
	if timeouts == 0 {
		t.Error("no request failed with ErrTimeout during the outage")
	}
	if others > 0 {
		t.Errorf("%d requests failed with other errors, first: %v", others, firstOther)
	}
	if limit := opts.OpTimeout + time.Second; longest > limit {
		t.Errorf("a request took %v, more than the op timeout %v plus slack", longest, opts.OpTimeout)
	}

	// The outage shows in Stats: the last failure, newer than the last
	// success, says why.
	st := d.Stats()
	t.Logf("stats during the outage: %+v", st)
	if st.Timeouts < uint64(timeouts) || !errors.Is(st.LastError, ErrTimeout) || !st.LastErrorAt.After(st.LastOK) {
		t.Errorf("Stats during the outage: %+v", st)
	}
	if err := cluster.StartOSD(ctx); err != nil {
		t.Fatal(err)
	}
	osdStopped = false
	t.Log("osd.0 restarted")
	// The same Device works again, without reopening; bounded wait for
	// the client to see the OSD back.
	deadline := time.Now().Add(90 * time.Second)
	p := bytes.Repeat([]byte{0x77}, 4096)
	for {
		err := d.WriteAt(ctx, p, size-4096)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("writes still fail 90 s after the OSD restarted: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("writes work again %v after the restart", time.Since(deadline.Add(-90*time.Second)).Round(time.Millisecond))
	copy(ref[size-4096:], p)
	got := make([]byte, size)
	if err := d.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, ref) {
		t.Error("image content differs after the outage")
	}
	if !bytes.Equal(abandoned, bytes.Repeat([]byte{0xCC}, 4096)) {
		t.Error("an abandoned read wrote into the caller's buffer")
	}
	if ok, err := d.HoldsLock(); err != nil || !ok {
		t.Errorf("after the outage HoldsLock = %v, %v", ok, err)
	}
	if st := d.Stats(); !st.LastOK.After(st.LastErrorAt) || st.InFlight != 0 {
		t.Errorf("Stats after the outage: %+v; want a success after the last failure, nothing in flight", st)
	}
}

// TestLockBroken: another client breaks the lock (rbd lock rm, which
// blocklists this client): this Device's writes then fail with ErrFenced and
// HoldsLock turns false; it never writes the image again.
func TestLockBroken(t *testing.T) {
	spec := newImage(t, 4<<20)
	d := openT(t, spec, testOptions(t))
	ctx := context.Background()
	if err := d.WriteAt(ctx, bytes.Repeat([]byte{1}, 4096), 0); err != nil {
		t.Fatal(err)
	}
	out, err := cluster.Run(ctx, "rbd", "lock", "ls", "--format", "json", spec.Pool+"/"+spec.Image)
	if err != nil {
		t.Fatal(err)
	}
	var locks []struct{ ID, Locker string }
	if err := json.Unmarshal([]byte(out), &locks); err != nil || len(locks) != 1 {
		t.Fatalf("rbd lock ls: %q, %v; want one lock", out, err)
	}
	if _, err := cluster.Run(ctx, "rbd", "lock", "rm", spec.Pool+"/"+spec.Image, locks[0].ID, locks[0].Locker); err != nil {
		t.Fatal(err)
	}
	before := export(t, spec)
	err = d.WriteAt(ctx, bytes.Repeat([]byte{2}, 4096), 0)
	t.Logf("write after the lock was broken: %v", err)
	if !errors.Is(err, ErrFenced) || !errors.Is(err, blk.ErrNotReady) {
		t.Errorf("write after the lock was broken: %v, want ErrFenced", err)
	}
	if ok, err := d.HoldsLock(); err != nil || ok {
		t.Errorf("HoldsLock after the lock was broken: %v, %v", ok, err)
	}
	if !bytes.Equal(export(t, spec), before) {
		t.Error("the fenced client changed the image")
	}
}

// TestCancelStorm: requests whose contexts end at random moments, before,
// during and after librbd's work. A caller reuses its buffer as soon as a
// request returns: abandoned writes still write what they were given (never
// the caller's later bytes), abandoned reads never write into the caller's
// buffer, and Close waits for every abandoned request.
func TestCancelStorm(t *testing.T) {
	const size, workers, blocks = 16 << 20, 16, 16 << 20 / 4096
	spec := newImage(t, size)
	opts := testOptions(t)
	d, err := Open(context.Background(), spec, opts)
	if err != nil {
		t.Fatal(err)
	}
	var abandonedReads, abandonedWrites, completed atomic.Int64
	written := make([]map[int64]map[byte]bool, workers) // per worker: block -> values written
	staleReads := make([][][]byte, workers)             // buffers of abandoned reads, must stay 0xEE
	var wg sync.WaitGroup
	for w := range workers {
		written[w] = map[int64]map[byte]bool{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 11))
			for i := range 150 {
				b := r.Int64N(blocks/workers)*workers + int64(w)
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(r.IntN(4000))*time.Microsecond)
				if r.IntN(2) == 0 {
					v := byte(i%200) + 1
					p := bytes.Repeat([]byte{v}, 4096)
					if written[w][b] == nil {
						written[w][b] = map[byte]bool{}
					}
					written[w][b][v] = true
					err := d.WriteAt(ctx, p, b*4096)
					for j := range p { // the caller reuses its buffer at once
						p[j] = 0xFF
					}
					switch {
					case err == nil:
						completed.Add(1)
					case errors.Is(err, context.DeadlineExceeded):
						abandonedWrites.Add(1)
					default:
						t.Error(err)
					}
				} else {
					p := bytes.Repeat([]byte{0xEE}, 4096)
					err := d.ReadAt(ctx, p, b*4096)
					switch {
					case err == nil:
						completed.Add(1)
					case errors.Is(err, context.DeadlineExceeded):
						abandonedReads.Add(1)
						staleReads[w] = append(staleReads[w], p)
					default:
						t.Error(err)
					}
				}
				cancel()
			}
		}()
	}
	wg.Wait()
	start := time.Now()
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	t.Logf("%d completed, %d writes and %d reads abandoned; Close waited %v", completed.Load(),
		abandonedWrites.Load(), abandonedReads.Load(), time.Since(start).Round(time.Millisecond))
	if abandonedReads.Load() == 0 || abandonedWrites.Load() == 0 || completed.Load() == 0 {
		t.Error("the storm did not mix completed and abandoned requests; adjust the deadlines")
	}
	for w := range workers {
		for _, p := range staleReads[w] {
			if !bytes.Equal(p, bytes.Repeat([]byte{0xEE}, 4096)) {
				t.Fatal("an abandoned read wrote into its caller's buffer")
			}
		}
	}
	img := export(t, spec)
	for w := range workers {
		for b, vals := range written[w] {
			blk := img[b*4096 : (b+1)*4096]
			v := blk[0]
			if !bytes.Equal(blk, bytes.Repeat([]byte{v}, 4096)) || (v != 0 && !vals[v]) {
				t.Fatalf("block %d holds bytes nobody wrote there (first %#x)", b, v)
			}
		}
	}
}

// TestDeadOwner: a client that holds the lock and is alive makes Open
// refuse; once it was SIGKILLed and its watch expired, Open breaks its lock
// (blocklisting it) and takes the image, the restart after a crash.
func TestDeadOwner(t *testing.T) {
	spec := newImage(t, 64<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// rbd bench writing holds the lock for as long as it runs.
	bench := cluster.Command(ctx, "rbd", "bench", "--io-type", "write", "--io-size", "4K", "--io-threads", "1",
		"--io-total", "10G", spec.Pool+"/"+spec.Image)
	if err := bench.Start(); err != nil {
		t.Fatal(err)
	}
	defer bench.Wait()
	defer bench.Process.Kill()
	var owner string
	for deadline := time.Now().Add(30 * time.Second); owner == ""; time.Sleep(200 * time.Millisecond) {
		out, err := cluster.Run(ctx, "rbd", "lock", "ls", "--format", "json", spec.Pool+"/"+spec.Image)
		var locks []struct{ Address string }
		if err == nil && json.Unmarshal([]byte(out), &locks) == nil && len(locks) == 1 {
			owner = locks[0].Address
		}
		if owner == "" && time.Now().After(deadline) {
			t.Fatalf("rbd bench holds no lock after 30 s: %q %v", out, err)
		}
	}
	opts := testOptions(t)
	if _, err := Open(ctx, spec, opts); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "alive") {
		t.Fatalf("Open while a live client holds the lock: %v, want ErrLocked naming it alive", err)
	}
	// SIGKILL by the pid of the process this test started.
	if err := bench.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	var d *Device
	for {
		var err error
		d, err = Open(ctx, spec, opts)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrLocked) || time.Since(killed) > 90*time.Second {
			t.Fatalf("Open %v after the owner was killed: %v", time.Since(killed), err)
		}
		time.Sleep(2 * time.Second)
	}
	defer d.Close()
	t.Logf("image taken over %v after its owner was killed", time.Since(killed).Round(time.Second))
	if ok, err := d.HoldsLock(); err != nil || !ok {
		t.Errorf("HoldsLock after the takeover: %v, %v", ok, err)
	}
	if err := d.WriteAt(ctx, make([]byte, 4096), 0); err != nil {
		t.Errorf("write after the takeover: %v", err)
	}
	out, err := cluster.Run(ctx, "ceph", "osd", "blocklist", "ls")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, owner) {
		t.Errorf("the dead owner %s is not blocklisted: %s", owner, out)
	}
}

// TestNamespace: an image in an RBD namespace is opened by
// rbd:POOL/NAMESPACE/IMAGE, and its data lands in that image, not in the
// image of the same name in the default namespace.
func TestNamespace(t *testing.T) {
	ctx := context.Background()
	if _, err := cluster.Run(ctx, "rbd", "namespace", "create", pool+"/ns2"); err != nil && !strings.Contains(err.Error(), "exist") {
		t.Fatal(err)
	}
	plain := newImage(t, 4<<20)
	spec := Spec{Pool: pool, Namespace: "ns2", Image: plain.Image}
	if _, err := cluster.Run(ctx, "rbd", "create", "--size", "4M", spec.Pool+"/"+spec.Namespace+"/"+spec.Image); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cluster.Run(ctx, "rbd", "rm", "--no-progress", spec.Pool+"/"+spec.Namespace+"/"+spec.Image) })
	parsed, err := ParseSpec(spec.String())
	if err != nil || parsed != spec {
		t.Fatalf("ParseSpec(%q) = %+v, %v", spec.String(), parsed, err)
	}
	d := openT(t, parsed, testOptions(t))
	p := bytes.Repeat([]byte("namespace"), 1000)
	if err := d.WriteAt(ctx, p, 4096); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ns.img")
	if _, err := cluster.Run(ctx, "rbd", "export", "--no-progress", spec.Pool+"/"+spec.Namespace+"/"+spec.Image, path); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[4096:4096+len(p)], p) {
		t.Error("the data is not in the namespace's image")
	}
	if !bytes.Equal(export(t, plain), make([]byte, 4<<20)) {
		t.Error("the image of the same name in the default namespace changed")
	}
}

// TestDeadOwnersKnown: a gateway that restarts after a crash names its
// predecessor (LockOwner, recorded) in DeadOwners and takes the image over
// at once, though the predecessor's watch lingers for 30 s. The
// predecessor here is alive, which shows what the break does: it is
// blocklisted, and its writes fail fenced.
func TestDeadOwnersKnown(t *testing.T) {
	spec := newImage(t, 64<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	opts := testOptions(t)
	old, err := Open(ctx, spec, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if old.LockOwner() == "" {
		t.Fatal("LockOwner is empty after taking the lock")
	}
	if _, err := Open(ctx, spec, opts); !errors.Is(err, ErrLocked) {
		t.Fatalf("Open without DeadOwners: %v, want ErrLocked", err)
	}
	opts.DeadOwners = []string{"127.0.0.1:0/1", old.LockOwner()}
	start := time.Now()
	d, err := Open(ctx, spec, opts)
	if err != nil {
		t.Fatalf("Open naming the owner dead: %v", err)
	}
	defer d.Close()
	if took := time.Since(start); took > 15*time.Second {
		t.Errorf("the takeover took %v; it must not wait for the watch to expire", took)
	}
	if err := d.WriteAt(ctx, make([]byte, 4096), 0); err != nil {
		t.Errorf("write after the takeover: %v", err)
	}
	if err := old.WriteAt(ctx, make([]byte, 4096), 4096); !errors.Is(err, ErrFenced) {
		t.Errorf("the broken owner's write: %v, want ErrFenced", err)
	}
}
