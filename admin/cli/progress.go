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
			line = fmt.Sprintf("%s [%s%s] %5.1f%%  %s dirty of %s  %s%s", p.label,
				strings.Repeat("#", n), strings.Repeat(".", width-n), f*100,
				humanBytes(pr.DirtyBytes), humanBytes(pr.StartDirtyBytes), humanDuration(elapsed), eta(*pr, elapsed))
		}
		fmt.Fprintf(p.w, "\r\x1b[K%s", line)
		p.drawn = true
		return
	}
	if j.Done() {
		return
	}
	if pr := j.Progress; pr != nil {
		step := int(pr.Fraction() * 10)
		if step != p.lastStep {
			p.lastStep = step
			fmt.Fprintf(p.w, "%s: %3.0f%% written back, %s dirty of %s%s\n", p.label, pr.Fraction()*100,
				humanBytes(pr.DirtyBytes), humanBytes(pr.StartDirtyBytes), eta(*pr, elapsed))
		}
	} else if j.State != p.lastSt {
		fmt.Fprintf(p.w, "%s: %s\n", p.label, j.State)
	}
	p.lastSt = j.State
}

// eta estimates the time left from the average rate so far; "" until
// there is a rate to go by.
func eta(p admin.Progress, elapsed time.Duration) string {
	done := p.StartDirtyBytes - p.DirtyBytes
	if done <= 0 || p.DirtyBytes <= 0 || elapsed <= 0 {
		return ""
	}
	left := time.Duration(float64(elapsed) * float64(p.DirtyBytes) / float64(done))
	return ", about " + humanDuration(left) + " left"
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
