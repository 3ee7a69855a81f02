package scsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"github.com/cachelun/cachelun/internal/testkit"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachelun/cachelun/internal/blk"
	"github.com/cachelun/cachelun/internal/memvol"
)

func sanitizeCDB(flags byte, plen uint16) []byte {
	c := make([]byte, 10)
	c[0], c[1] = 0x48, flags
	binary.BigEndian.PutUint16(c[7:], plen)
	return c
}

func overwriteParams(count byte, pattern []byte) []byte {
	p := []byte{count, 0, 0, 0}
	binary.BigEndian.PutUint16(p[2:], uint16(len(pattern)))
	return append(p, pattern...)
}

func TestSanitizeOverwrite(t *testing.T) {
	f := newFixture(t, nil)
	f.write(0, pattern(testBlocks*testBS, 1))
	p := overwriteParams(1, []byte{1, 2, 3, 4, 5, 6})
	flushes, _, _, _ := f.vol.Counters()
	f.good(f.exec(nexusA, sanitizeCDB(sanitizeOverwrite, uint16(len(p))), p, 0))
	want := make([]byte, testBS)
	for i := range want {
		want[i] = byte(i%6 + 1) // the pattern restarts in every block
	}
	got := f.readBack(0, testBlocks)
	for b := range testBlocks {
		if !bytes.Equal(got[b*testBS:(b+1)*testBS], want) {
			t.Fatalf("block %d not overwritten: % x", b, head(got[b*testBS:]))
		}
	}
	if now, _, _, _ := f.vol.Counters(); now == flushes {
		t.Fatal("SANITIZE completed without flushing the volume")
	}
	f.good(f.exec(nexusA, []byte{0, 0, 0, 0, 0, 0}, nil, 0))
}

func TestSanitizeBlockErase(t *testing.T) {
	f := newFixture(t, func(c *LUConfig) { c.Thin = true })
	f.write(0, pattern(testBlocks*testBS, 1))
	f.good(f.exec(nexusA, sanitizeCDB(sanitizeBlockErase, 0), nil, 0))
	f.mustEqual(f.readBack(0, testBlocks), make([]byte, testBlocks*testBS))
	// Thick: BLOCK ERASE needs logical block provisioning.
	g := newFixture(t, nil)
	r := g.exec(nexusA, sanitizeCDB(sanitizeBlockErase, 0), nil, 0)
	g.sense(r, SenseIllegalRequest, ASCInvalidFieldInCDB)
	for _, c := range []struct {
		f    *fixture
		want byte
	}{{f, 0x40}, {g, 0}} {
		r := c.f.exec(nexusA, []byte{0x12, 1, 0xb1, 0, 64, 0}, nil, 64)
		c.f.good(r)
		if r.Data[7] != c.want {
			t.Fatalf("thin=%v: VPD B1 byte 7 (WABEREQ, WACEREQ) %#x, want %#x", c.f.lu.thin, r.Data[7], c.want)
		}
	}
	rsoc := func(f *fixture, sa byte) byte {
		r := f.exec(nexusA, []byte{0xa3, 0x0c, 0x02, 0x48, 0, sa, 0, 0, 2, 0, 0, 0}, nil, 512)
		f.good(r)
		return r.Data[1] & 0x07
	}
	for _, c := range []struct {
		f    *fixture
		sa   byte
		want byte
	}{{f, 1, 3}, {f, 2, 3}, {f, 3, 1}, {f, 0x1f, 3}, {g, 1, 3}, {g, 2, 1}, {g, 3, 1}} {
		if got := rsoc(c.f, c.sa); got != c.want {
			t.Fatalf("thin=%v SANITIZE SA %#x: RSOC support %d, want %d", c.f.lu.thin, c.sa, got, c.want)
		}
	}
}

func TestSanitizeBadInput(t *testing.T) {
	f := newFixture(t, func(c *LUConfig) { c.Thin = true })
	f.write(0, pattern(8*testBS, 9))
	before := f.readBack(0, 8)
	full := overwriteParams(1, bytes.Repeat([]byte{0xaa}, testBS))
	cases := []struct {
		name  string
		cdb   []byte
		out   []byte
		asc   ASC
		inCDB bool
		field int
	}{
		{"crypto erase", sanitizeCDB(0x03, 0), nil, ASCInvalidFieldInCDB, true, 1},
		{"service action 0", sanitizeCDB(0x00, 0), nil, ASCInvalidFieldInCDB, true, 1},
		{"service action 4", sanitizeCDB(0x04, 0), nil, ASCInvalidFieldInCDB, true, 1},
		{"znr", sanitizeCDB(0x40|sanitizeOverwrite, uint16(len(full))), full, ASCInvalidFieldInCDB, true, 1},
		{"reserved byte 4", func() []byte { c := sanitizeCDB(sanitizeOverwrite, uint16(len(full))); c[4] = 1; return c }(), full, ASCInvalidFieldInCDB, true, 4},
		{"overwrite plen 4", sanitizeCDB(sanitizeOverwrite, 4), full, ASCInvalidFieldInCDB, true, 7},
		{"overwrite plen 0", sanitizeCDB(sanitizeOverwrite, 0), nil, ASCInvalidFieldInCDB, true, 7},
		{"overwrite plen bs+5", sanitizeCDB(sanitizeOverwrite, testBS+5), append(full, 0), ASCInvalidFieldInCDB, true, 7},
		{"overwrite count 0", sanitizeCDB(sanitizeOverwrite, uint16(len(full))), overwriteParams(0, full[4:]), ASCInvalidFieldInParameterList, false, 0},
		{"overwrite test bits", sanitizeCDB(sanitizeOverwrite, uint16(len(full))), overwriteParams(0x21, full[4:]), ASCInvalidFieldInParameterList, false, 0},
		{"pattern length 0", sanitizeCDB(sanitizeOverwrite, 8), []byte{1, 0, 0, 0, 1, 2, 3, 4}, ASCInvalidFieldInParameterList, false, 2},
		{"pattern length > block", sanitizeCDB(sanitizeOverwrite, uint16(len(full))), func() []byte { p := bytes.Clone(full); binary.BigEndian.PutUint16(p[2:], testBS+4); return p }(), ASCInvalidFieldInParameterList, false, 2},
		{"pattern length != plen-4", sanitizeCDB(sanitizeOverwrite, 12), []byte{1, 0, 0, 4, 1, 2, 3, 4, 5, 6, 7, 8}, ASCInvalidFieldInParameterList, false, 2},
		{"block erase with parameters", sanitizeCDB(sanitizeBlockErase, 8), make([]byte, 8), ASCInvalidFieldInCDB, true, 7},
		{"exit failure mode with parameters", sanitizeCDB(sanitizeExitFailure, 8), make([]byte, 8), ASCInvalidFieldInCDB, true, 7},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := f.exec(nexusA, c.cdb, c.out, 0)
			checkSense(t, r, SenseIllegalRequest, c.asc)
			if r.Sense[15]&0x80 == 0 || (r.Sense[15]&0x40 != 0) != c.inCDB || int(binary.BigEndian.Uint16(r.Sense[16:])) != c.field {
				t.Fatalf("field pointer % x, want inCDB=%v field %d", r.Sense[15:18], c.inCDB, c.field)
			}
			f.mustEqual(f.readBack(0, 8), before)
		})
	}
	// Short Data-Out: nothing starts.
	f.sense(f.exec(nexusA, sanitizeCDB(sanitizeOverwrite, uint16(len(full))), full[:100], 0), SenseIllegalRequest, ASCInvalidFieldInCmdIU)
	f.mustEqual(f.readBack(0, 8), before)
}

// gatedVol blocks writes and discards until its gate opens, and can fail
// them.
type gatedVol struct {
	*memvol.Volume
	gate    chan struct{}
	entered chan struct{}
	fail    atomic.Bool
}

func (v *gatedVol) wait(ctx context.Context) error {
	select {
	case v.entered <- struct{}{}:
	default:
	}
	select {
	case <-v.gate:
	case <-ctx.Done():
		return ctx.Err()
	}
	if v.fail.Load() {
		return fmt.Errorf("test: %w", blk.ErrMedium)
	}
	return nil
}

func (v *gatedVol) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := v.wait(ctx); err != nil {
		return err
	}
	return v.Volume.WriteAt(ctx, p, off, fua)
}

func TestSanitizeInProgress(t *testing.T) {
	var gv *gatedVol
	f := newFixture(t, func(c *LUConfig) {
		gv = &gatedVol{Volume: c.Volume.(*memvol.Volume), gate: make(chan struct{}), entered: make(chan struct{}, 1)}
		c.Volume = gv
	})
	p := overwriteParams(1, []byte{0x5a})
	// Without IMMED, an aborted task leaves the sanitize running.
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan Response, 1)
	go func() {
		res <- f.tgt.Execute(ctx, &Command{Nexus: nexusA, CDB: sanitizeCDB(sanitizeOverwrite, uint16(len(p))), DataOut: p})
	}()
	<-gv.entered
	tur := f.exec(nexusA, []byte{0, 0, 0, 0, 0, 0}, nil, 0)
	f.sense(tur, SenseNotReady, ASCSanitizeInProgress)
	if tur.Sense[15]&0x80 == 0 {
		t.Fatalf("no progress indication: % x", tur.Sense)
	}
	f.sense(f.exec(nexusB, testkit.CDB10(0x28, 0, 0, 1), nil, testBS), SenseNotReady, ASCSanitizeInProgress)
	f.sense(f.exec(nexusA, sanitizeCDB(sanitizeOverwrite, uint16(len(p))), p, 0), SenseNotReady, ASCSanitizeInProgress)
	f.good(f.exec(nexusA, []byte{0x12, 0, 0, 0, 96, 0}, nil, 96))
	rs := f.exec(nexusA, []byte{0x03, 0, 0, 0, 18, 0}, nil, 18)
	f.good(rs)
	if rs.Data[2]&0x0f != byte(SenseNotReady) || rs.Data[12] != 0x04 || rs.Data[13] != 0x1b || rs.Data[15]&0x80 == 0 {
		t.Fatalf("REQUEST SENSE during sanitize: % x", rs.Data)
	}
	cancel()
	if r := <-res; r.Status != StatusTaskAborted {
		t.Fatalf("aborted SANITIZE: status %#x", r.Status)
	}
	f.tgt.ResetLU(nexusA, 0)
	f.tgt.NexusLost(nexusA)
	// The new nexus' unit attentions come first, then the sanitize.
	for range 8 {
		r := f.exec(nexusA, []byte{0x03, 0, 0, 0, 18, 0}, nil, 18)
		if r.Data[2]&0x0f != byte(SenseUnitAttention) {
			break
		}
	}
	f.sense(f.exec(nexusA, []byte{0, 0, 0, 0, 0, 0}, nil, 0), SenseNotReady, ASCSanitizeInProgress)
	close(gv.gate)
	deadline := time.Now().Add(10 * time.Second)
	for f.lu.sanitize.job.Load() != nil {
		if time.Now().After(deadline) {
			t.Fatal("sanitize job did not finish")
		}
		time.Sleep(time.Millisecond)
	}
	f.clearUA(nexusB)
	f.good(f.exec(nexusB, []byte{0, 0, 0, 0, 0, 0}, nil, 0))
	f.mustEqual(f.readBack(0, 4), bytes.Repeat([]byte{0x5a}, 4*testBS))
}

func TestSanitizeImmedAndFailureMode(t *testing.T) {
	for _, ause := range []bool{false, true} {
		var gv *gatedVol
		f := newFixture(t, func(c *LUConfig) {
			gv = &gatedVol{Volume: c.Volume.(*memvol.Volume), gate: make(chan struct{}), entered: make(chan struct{}, 1)}
			c.Volume = gv
		})
		gv.fail.Store(true)
		p := overwriteParams(1, []byte{0x77})
		flags := byte(0x80 | sanitizeOverwrite) // IMMED
		if ause {
			flags |= 0x20
		}
		f.good(f.exec(nexusA, sanitizeCDB(flags, uint16(len(p))), p, 0)) // returns at once
		f.sense(f.exec(nexusA, []byte{0, 0, 0, 0, 0, 0}, nil, 0), SenseNotReady, ASCSanitizeInProgress)
		close(gv.gate)
		deadline := time.Now().Add(10 * time.Second)
		for f.lu.sanitize.job.Load() != nil {
			if time.Now().After(deadline) {
				t.Fatal("sanitize job did not finish")
			}
			time.Sleep(time.Millisecond)
		}
		f.sense(f.exec(nexusA, testkit.CDB10(0x28, 0, 0, 1), nil, testBS), SenseMediumError, ASCSanitizeFailed)
		exit := f.exec(nexusA, sanitizeCDB(sanitizeExitFailure, 0), nil, 0)
		if ause {
			f.good(exit)
		} else {
			f.sense(exit, SenseIllegalRequest, ASCInvalidFieldInCDB)
			// Only a SANITIZE that completes ends the failure mode.
			gv.fail.Store(false)
			f.good(f.exec(nexusA, sanitizeCDB(sanitizeOverwrite, uint16(len(p))), p, 0))
		}
		f.good(f.exec(nexusA, testkit.CDB10(0x28, 0, 0, 1), nil, testBS))
	}
}

func TestSanitizeReservationConflict(t *testing.T) {
	f := newFixture(t, nil)
	f.good(f.exec(nexusB, []byte{0x16, 0, 0, 0, 0, 0}, nil, 0))
	p := overwriteParams(1, []byte{1})
	if r := f.exec(nexusA, sanitizeCDB(sanitizeOverwrite, uint16(len(p))), p, 0); r.Status != StatusReservationConflict {
		t.Fatalf("status %#x", r.Status)
	}
	if f.lu.sanitize.job.Load() != nil {
		t.Fatal("a conflicting SANITIZE started")
	}
}

// fakeSanitizeClock is a virtual clock: Sleep moves it on at once.
type fakeSanitizeClock struct {
	mu      sync.Mutex
	now     time.Time
	slept   time.Duration
	onSleep func(elapsed time.Duration) // called after each Sleep
}

func (c *fakeSanitizeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeSanitizeClock) Sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.slept += d
	e := c.slept
	c.mu.Unlock()
	if c.onSleep != nil {
		c.onSleep(e)
	}
	return ctx.Err()
}

// countingVol counts the bytes written and calls onWrite after each write.
type countingVol struct {
	*memvol.Volume
	written atomic.Int64
	onWrite func(written int64)
}

func (v *countingVol) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	err := v.Volume.WriteAt(ctx, p, off, fua)
	n := v.written.Add(int64(len(p)))
	if v.onWrite != nil {
		v.onWrite(n)
	}
	return err
}

// TestSanitizeOverwriteRateLimit: OVERWRITE never writes ahead of its rate
// limit (so it runs for size/rate seconds), its progress indication moves
// in small steps, a changed limit applies to the running job, and the
// default limit applies when none is configured.
func TestSanitizeOverwriteRateLimit(t *testing.T) {
	const rate = 64 << 10 // bytes/s: the 1 MiB fixture volume takes 16 s
	const size = testBlocks * testBS
	var cv *countingVol
	f := newFixture(t, func(c *LUConfig) {
		cv = &countingVol{Volume: c.Volume.(*memvol.Volume)}
		c.Volume = cv
		c.SanitizeMaxBytesPerSec = rate
	})
	clock := &fakeSanitizeClock{now: time.Unix(1e9, 0)}
	f.lu.sanitize.clock = clock
	var (
		mu        sync.Mutex
		bad       string
		progress  []uint32
		running3s bool
	)
	cv.onWrite = func(written int64) {
		mu.Lock()
		defer mu.Unlock()
		elapsed := clock.Now().Sub(time.Unix(1e9, 0))
		// A chunk is rate/sanitizeSteps bytes; one may start at once.
		if limit := int64(elapsed.Seconds()*rate) + rate/sanitizeSteps; written > limit && bad == "" {
			bad = fmt.Sprintf("%d bytes written after %v, more than the limit allows (%d)", written, elapsed, limit)
		}
	}
	clock.onSleep = func(elapsed time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		if j := f.lu.sanitize.job.Load(); j != nil {
			progress = append(progress, j.progress.Load())
			if elapsed >= 3*time.Second && elapsed < 4*time.Second {
				running3s = true
			}
		}
	}
	start := time.Now()
	p := overwriteParams(1, []byte{0x3c})
	f.good(f.exec(nexusA, sanitizeCDB(sanitizeOverwrite, uint16(len(p))), p, 0))
	if wall := time.Since(start); wall > 5*time.Second {
		t.Fatalf("the virtual clock was not used: %v", wall)
	}
	mu.Lock()
	defer mu.Unlock()
	if bad != "" {
		t.Fatal(bad)
	}
	if want := time.Duration(float64(size-rate/sanitizeSteps) / rate * float64(time.Second)); clock.slept < want {
		t.Fatalf("overwrite of %d bytes at %d bytes/s took %v, want at least %v", size, rate, clock.slept, want)
	}
	if !running3s {
		t.Fatal("the job was not running 3 s after it started")
	}
	// Smooth: many steps, never backwards, none larger than a chunk.
	maxStep := uint32(65536*(rate/sanitizeSteps)/size) + 1
	for i := 1; i < len(progress); i++ {
		if progress[i] < progress[i-1] || progress[i]-progress[i-1] > maxStep {
			t.Fatalf("progress step %d: %d → %d (at most %d)", i, progress[i-1], progress[i], maxStep)
		}
	}
	if len(progress) < 256 {
		t.Fatalf("only %d progress samples", len(progress))
	}
	f.mustEqual(f.readBack(0, testBlocks), bytes.Repeat([]byte{0x3c}, size))

	// No limit from the middle of the job on: the second half sleeps
	// no more.
	clock.slept = 0
	clock.onSleep = func(elapsed time.Duration) {
		if elapsed >= 8*time.Second {
			f.lu.SetSanitizeMaxBytesPerSec(-1)
		}
	}
	cv.onWrite = nil
	mu.Unlock()
	f.good(f.exec(nexusA, sanitizeCDB(sanitizeOverwrite, uint16(len(p))), p, 0))
	mu.Lock()
	if clock.slept < 8*time.Second || clock.slept > 9*time.Second {
		t.Fatalf("the job slept %v in all, want 8 s until the limit was lifted", clock.slept)
	}
	if got := f.lu.SanitizeMaxBytesPerSec(); got >= 0 {
		t.Fatalf("limit %d after lifting it", got)
	}

	g := newFixture(t, nil)
	if got := g.lu.SanitizeMaxBytesPerSec(); got != DefaultSanitizeMaxBytesPerSec {
		t.Fatalf("default limit %d, want %d", got, DefaultSanitizeMaxBytesPerSec)
	}
}
