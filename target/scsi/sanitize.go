package scsi

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// SANITIZE, SBC-4 5.30 and 4.11. OVERWRITE writes the initialization
// pattern over every block (through the volume, so the cache's copy of the
// data is replaced too), at no more than the logical unit's rate limit
// (LUConfig.SanitizeMaxBytesPerSec, 16 MiB/s by default); BLOCK ERASE,
// offered on thin logical units only (it needs logical block
// provisioning), discards every block, which then
// reads as zeroes and is unmapped; CRYPTOGRAPHIC ERASE is not offered (the
// volumes are not encrypted) and ends, like any unsupported service
// action, in ILLEGAL REQUEST / INVALID FIELD IN CDB. The operation runs as
// a job of the logical unit, not of the task: aborting the task, a reset or
// a lost connection do not stop it (SBC-4 4.11.2). While it runs every
// command except INQUIRY, REPORT LUNS and REQUEST SENSE ends in NOT READY /
// SANITIZE IN PROGRESS with the progress indication, which REQUEST SENSE
// reports too. A job that fails leaves the logical unit in the sanitize
// failure mode: commands end in MEDIUM ERROR / SANITIZE COMMAND FAILED until
// a SANITIZE completes, or EXIT FAILURE MODE if the failed one had AUSE=1.

const (
	sanitizeOverwrite   = 0x01
	sanitizeBlockErase  = 0x02
	sanitizeExitFailure = 0x1f
	// sanitizeChunk is the bytes one volume call of the job covers, and
	// so the granularity of the progress indication.
	sanitizeChunk = 1 << 20
	// sanitizeEraseChunk is the same for BLOCK ERASE (discards are cheap).
	sanitizeEraseChunk = 64 << 20
	// sanitizeSteps is about how many progress steps a second a
	// rate-limited OVERWRITE makes (its chunks shrink below sanitizeChunk
	// under slow rates), so that the progress indication moves smoothly.
	sanitizeSteps = 32
)

// DefaultSanitizeMaxBytesPerSec is the rate SANITIZE OVERWRITE writes a
// volume at unless configured otherwise: about a tenth of what one disk
// streams, so that the hosts of other logical units on the same backing
// device keep the rest (md's dev.raid.speed_limit_max plays this part for
// a resync). A 1 TiB volume takes about 18 hours per pass; a 128 MiB one
// 8 s (libiscsi's SCSI.Sanitize.Reset expects one still running after
// about 4 s and a reconnect).
const DefaultSanitizeMaxBytesPerSec = 16 << 20

// sanitizeState is a logical unit's SANITIZE job and failure mode.
type sanitizeState struct {
	// job is the running job, nil when none runs; loaded by dispatch on
	// every command.
	job atomic.Pointer[sanitizeJob]
	// failed is set while the unit is in the sanitize failure mode;
	// ause says whether the failed SANITIZE allowed an unrestricted exit.
	failed atomic.Bool
	ause   atomic.Bool
	mu     sync.Mutex         // guards cancel
	cancel context.CancelFunc // of the running job, for RemoveLU
	// rate is OVERWRITE's limit in bytes/s, <= 0 for none; read before
	// every chunk, so a change applies to a running job.
	rate atomic.Int64
	// clock paces OVERWRITE (tests replace it before starting a job).
	clock sanitizeClock
}

// sanitizeClock is the time source of the OVERWRITE rate limit.
type sanitizeClock interface {
	Now() time.Time
	// Sleep waits d, or until ctx ends (then it returns ctx's error).
	Sleep(ctx context.Context, d time.Duration) error
}

type realSanitizeClock struct{}

func (realSanitizeClock) Now() time.Time { return time.Now() }

func (realSanitizeClock) Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// SetSanitizeMaxBytesPerSec sets the rate limit of SANITIZE OVERWRITE
// (LUConfig.SanitizeMaxBytesPerSec: 0 is the default, negative is no
// limit); a running job takes it from its next chunk on.
func (lu *LU) SetSanitizeMaxBytesPerSec(n int64) {
	if n == 0 {
		n = DefaultSanitizeMaxBytesPerSec
	}
	lu.sanitize.rate.Store(n)
}

// SanitizeMaxBytesPerSec returns the rate limit of SANITIZE OVERWRITE in
// bytes/s, or a negative number for none.
func (lu *LU) SanitizeMaxBytesPerSec() int64 { return lu.sanitize.rate.Load() }

// sanitizePacer holds a job's writes to the rate limit: a chunk may start
// only once the bytes before it, at the limit, would have taken until
// then. A job that fell behind (a slow device) does not catch up in a
// burst later.
type sanitizePacer struct {
	clock sanitizeClock
	rate  *atomic.Int64
	next  time.Time // when the next chunk may start
}

// wait returns when a chunk of n bytes may be written.
func (p *sanitizePacer) wait(ctx context.Context, n int64) error {
	r := p.rate.Load()
	if r <= 0 {
		return nil
	}
	now := p.clock.Now()
	if p.next.Before(now) {
		p.next = now
	}
	start := p.next
	p.next = p.next.Add(time.Duration(float64(n) / float64(r) * float64(time.Second)))
	if d := start.Sub(now); d > 0 {
		return p.clock.Sleep(ctx, d)
	}
	return nil
}

type sanitizeJob struct {
	progress atomic.Uint32 // of 65536
	done     chan struct{}
	err      error // set before done closes
}

// sanitizeRefusal is the sense a command gets while a SANITIZE runs or
// after one failed, or nil. Two atomic loads: dispatch calls it for every
// command.
func (lu *LU) sanitizeRefusal() *SenseError {
	if j := lu.sanitize.job.Load(); j != nil {
		return &SenseError{Key: SenseNotReady, ASC: ASCSanitizeInProgress,
			ProgressValid: true, Progress: uint16(min(j.progress.Load(), 0xffff))}
	}
	if lu.sanitize.failed.Load() {
		return newSense(SenseMediumError, ASCSanitizeFailed)
	}
	return nil
}

// stopSanitize cancels a running job (the logical unit is being removed).
func (lu *LU) stopSanitize() {
	lu.sanitize.mu.Lock()
	defer lu.sanitize.mu.Unlock()
	if lu.sanitize.cancel != nil {
		lu.sanitize.cancel()
	}
}

// cmdSanitize validates a SANITIZE command, starts its job and, without
// IMMED, waits for it.
func cmdSanitize(tk *task) error {
	lu := tk.lu
	cdb := tk.cdb
	immed, znr, ause, sa := cdb[1]&0x80 != 0, cdb[1]&0x40 != 0, cdb[1]&0x20 != 0, cdb[1]&0x1f
	if znr { // not a zoned device
		return errCDBField(1, 6)
	}
	for i := 2; i <= 6; i++ {
		if cdb[i] != 0 {
			return errCDBField(i, -1)
		}
	}
	plen := int(be16(cdb[7:9]))
	tk.xfer = uint32(plen)
	var pattern []byte
	passes, invert := 1, false
	switch sa {
	case sanitizeOverwrite:
		bs := int(lu.blockSize)
		if plen <= 4 || plen > bs+4 {
			return errCDBField(7, -1)
		}
		p, err := tk.dataOut(uint64(plen))
		if err != nil {
			return err
		}
		invert = p[0]&0x80 != 0
		if p[0]&0x60 != 0 { // TEST: vendor specific, none here
			return errParamField(0, 6)
		}
		passes = int(p[0] & 0x1f)
		if passes == 0 {
			return errParamField(0, 4)
		}
		ipl := int(be16(p[2:4]))
		if ipl == 0 || ipl > bs || ipl != plen-4 {
			return errParamField(2, -1)
		}
		pattern = p[4:plen]
	case sanitizeBlockErase:
		if !lu.thin {
			return errCDBField(1, 4)
		}
		if plen != 0 {
			return errCDBField(7, -1)
		}
	case sanitizeExitFailure:
		if plen != 0 {
			return errCDBField(7, -1)
		}
		if lu.sanitize.failed.Load() && !lu.sanitize.ause.Load() {
			// The failed SANITIZE did not allow an unrestricted
			// exit: only a successful SANITIZE ends the failure mode.
			return errCDBField(1, 4)
		}
		lu.sanitize.failed.Store(false)
		return nil
	default:
		return errCDBField(1, 4)
	}
	job, err := lu.startSanitize(tk, sa, pattern, passes, invert, ause)
	if err != nil {
		return err
	}
	if immed {
		return nil
	}
	select {
	case <-job.done:
	case <-tk.ctx.Done():
		// The task is aborted; the sanitize goes on (SBC-4 4.11.2).
		return errTaskAborted
	}
	if job.err != nil {
		return newSense(SenseMediumError, ASCSanitizeFailed)
	}
	return nil
}

// startSanitize starts the job unless one runs already (dispatch refuses
// SANITIZE then too, but two may pass it together).
func (lu *LU) startSanitize(tk *task, sa byte, pattern []byte, passes int, invert, ause bool) (*sanitizeJob, error) {
	job := &sanitizeJob{done: make(chan struct{})}
	if !lu.sanitize.job.CompareAndSwap(nil, job) {
		return nil, lu.sanitizeRefusal()
	}
	// The job outlives the task: its context is the nexus' stream
	// context, cancelled only when the logical unit is removed.
	ctx, cancel := context.WithCancel(tk.nx.streamCtx)
	lu.sanitize.mu.Lock()
	lu.sanitize.cancel = cancel
	lu.sanitize.mu.Unlock()
	pat := append([]byte(nil), pattern...) // DataOut belongs to the transport
	go func() {
		defer cancel()
		var err error
		if sa == sanitizeOverwrite {
			err = lu.sanitizeOverwrite(ctx, job, pat, passes, invert)
		} else {
			err = lu.sanitizeErase(ctx, job)
		}
		if err == nil {
			err = lu.vol.Flush(ctx)
		}
		if err != nil {
			lu.log.Error("scsi: SANITIZE failed; the logical unit is in the sanitize failure mode", "lun", lu.lun, "err", err)
		}
		lu.sanitize.ause.Store(ause)
		lu.sanitize.failed.Store(err != nil)
		lu.sanitize.mu.Lock()
		lu.sanitize.cancel = nil
		lu.sanitize.mu.Unlock()
		job.err = err
		lu.sanitize.job.Store(nil)
		close(job.done)
	}()
	return job, nil
}

// sanitizeOverwrite writes the pattern, repeated to fill each block, over
// the whole volume, passes times, inverting it between passes if asked.
// It writes at most lu.sanitize.rate bytes a second: every chunk waits its
// turn first.
func (lu *LU) sanitizeOverwrite(ctx context.Context, job *sanitizeJob, pattern []byte, passes int, invert bool) error {
	size := lu.vol.Size()
	pacer := &sanitizePacer{clock: lu.sanitize.clock, rate: &lu.sanitize.rate}
	chunk := int64(min(sanitizeChunk, size))
	if r := lu.sanitize.rate.Load(); r > 0 {
		chunk = min(chunk, r/sanitizeSteps)
	}
	chunk = max(chunk-chunk%int64(lu.blockSize), int64(lu.blockSize))
	buf := make([]byte, chunk)
	total := size * int64(passes)
	for pass := range passes {
		for i := range buf {
			b := pattern[(i%int(lu.blockSize))%len(pattern)]
			if invert && pass%2 == 1 {
				b = ^b
			}
			buf[i] = b
		}
		for off := int64(0); off < size; off += chunk {
			n := min(chunk, size-off)
			if err := pacer.wait(ctx, n); err != nil {
				return fmt.Errorf("sanitize overwrite pass %d at %d: %w", pass+1, off, err)
			}
			if err := lu.vol.WriteAt(ctx, buf[:n], off, false); err != nil {
				return fmt.Errorf("sanitize overwrite pass %d at %d: %w", pass+1, off, err)
			}
			job.progress.Store(uint32((int64(pass)*size + off + n) * 65536 / total))
		}
	}
	return nil
}

// sanitizeErase discards the whole volume.
func (lu *LU) sanitizeErase(ctx context.Context, job *sanitizeJob) error {
	size := lu.vol.Size()
	for off := int64(0); off < size; off += sanitizeEraseChunk {
		n := min(int64(sanitizeEraseChunk), size-off)
		if err := lu.vol.Discard(ctx, off, n); err != nil {
			return fmt.Errorf("sanitize block erase at %d: %w", off, err)
		}
		job.progress.Store(uint32((off + n) * 65536 / size))
	}
	return nil
}
