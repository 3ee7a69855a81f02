package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/cachelun/cachelun/admin"
)

// pollInterval is how often a waiting verb polls its job.
const pollInterval = 200 * time.Millisecond

// progressView shows a job's progress on w: a bar redrawn in place on a
// terminal, otherwise a plain line per 10% step and per state change.
type progressView struct {
	w        io.Writer
	tty      bool
	label    string
	drawn    bool // a bar is on screen (tty)
	lastStep int  // last 10% step printed (plain)
	lastSt   admin.JobState
}

func newProgressView(w io.Writer, label string) *progressView {
	return &progressView{w: w, tty: isTerminal(w), label: label, lastStep: -1}
}

func (p *progressView) update(j admin.Job) {
	elapsed := time.Since(j.Started)
	if !j.Finished.IsZero() {
		elapsed = j.Finished.Sub(j.Started)
	}
	if p.tty {
		if j.Done() {
			p.finish()
			return
		}
		line := fmt.Sprintf("%s: running %s", p.label, humanDuration(elapsed))
		if pr := j.Progress; pr != nil {
			f := pr.Fraction()
			const width = 30
			n := int(f * width)
			line = fmt.Sprintf("%s [%s%s] %5.1f%%  %s  %s%s", p.label,
				strings.Repeat("#", n), strings.Repeat(".", width-n), f*100,
				amounts(*pr), humanDuration(elapsed), eta(*pr))
		}
		fmt.Fprintf(p.w, "\r\x1b[K%s", line)
		p.drawn = true
		return
	}
	if pr := j.Progress; pr != nil {
		// A line each time the progress enters another 10 % step, also
		// for the last report of a job that ended between two polls.
		step := int(pr.Fraction() * 10)
		if step > p.lastStep && (!j.Done() || pr.Done) {
			p.lastStep = step
			fmt.Fprintf(p.w, "%s: %3.0f%% written back, %s%s\n", p.label, pr.Fraction()*100, amounts(*pr), eta(*pr))
		}
	} else if j.Done() {
		return
	} else if j.State != p.lastSt {
		fmt.Fprintf(p.w, "%s: %s\n", p.label, j.State)
	}
	p.lastSt = j.State
}

// amounts says how much was written back and how much is left, and at
// what rate lately.
func amounts(p admin.Progress) string {
	s := humanBytes(p.WrittenBytes) + " written, " + humanBytes(p.DirtyBytes) + " left"
	if p.WrittenBytes == 0 && p.StartDirtyBytes > p.DirtyBytes {
		// An older daemon reports no written bytes.
		s = humanBytes(p.DirtyBytes) + " dirty of " + humanBytes(p.StartDirtyBytes)
	}
	if p.RateBytesPerSec > 0 && !p.Done {
		s += ", " + humanBytes(p.RateBytesPerSec) + "/s"
	}
	return s
}

// eta is the daemon's estimate of the time left, from the writeback rate
// of the last few seconds (an average since the start misleads after a
// slow start); "" until it has one.
func eta(p admin.Progress) string {
	if p.Done || p.DirtyBytes <= 0 || p.Remaining <= 0 {
		return ""
	}
	return ", about " + humanDuration(p.Remaining) + " left"
}

// finish ends the bar's line.
func (p *progressView) finish() {
	if p.tty && p.drawn {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.drawn = false
	}
}

// runJob starts a job with start and, unless noWait, waits for it showing
// progress. It prints the outcome and returns the exit code.
func runJob(ctx context.Context, c *common, verb, label string, noWait bool, stdout, stderr io.Writer,
	start func(ctx context.Context, cl *admin.Client) (admin.Job, error), printResult func(admin.Job)) int {
	cl := c.client()
	j, err := start(ctx, cl)
	if err != nil {
		return failure(stderr, c, verb, err)
	}
	if noWait {
		if c.json {
			printJSON(stdout, admin.JobResponse{Job: j})
		} else {
			fmt.Fprintf(stdout, "%s: started job %s\n", label, j.ID)
		}
		return ExitOK
	}
	view := newProgressView(stderr, label)
	j, err = cl.WaitJob(ctx, j.ID, pollInterval, view.update)
	view.finish()
	if err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			fmt.Fprintf(stderr, "cachelun %s: stopped waiting; job %s continues in the daemon (cancel it with: cachelun job cancel %s)\n", verb, j.ID, j.ID)
			return ExitFailed
		}
		return failure(stderr, c, verb, err)
	}
	if c.json {
		printJSON(stdout, admin.JobResponse{Job: j})
	} else {
		took := humanDuration(j.Finished.Sub(j.Started))
		switch j.State {
		case admin.JobSucceeded:
			fmt.Fprintf(stdout, "%s: done in %s\n", label, took)
			if printResult != nil {
				printResult(j)
			}
		default:
			fmt.Fprintf(stderr, "%s: %s after %s: %s\n", label, j.State, took, j.Error)
		}
	}
	if j.State != admin.JobSucceeded {
		return ExitFailed
	}
	return ExitOK
}
