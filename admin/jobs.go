package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"sync"
	"time"
)

// JobState is where a job is in its life.
type JobState string

// Job states. A job ends in exactly one of the last three.
const (
	JobRunning   JobState = "running"
	JobSucceeded JobState = "succeeded"
	JobFailed    JobState = "failed"
	JobCancelled JobState = "cancelled"
)

// Job kinds.
const (
	JobFlush  = "flush"
	JobDrain  = "drain"
	JobMode   = "mode"
	JobDetach = "detach"
	JobReload = "reload"
)

// ErrJobConflict means another job is already running on the same object.
var ErrJobConflict = errors.New("admin: another job is running on this object")

// Job is an operation that may take long (flush, drain, mode switch, cache
// detach, reload), run by the server on its own goroutine so that no API
// call waits for it.
type Job struct {
	ID       string    `json:"id"`
	Kind     string    `json:"kind"`
	Target   string    `json:"target"` // "volume/NAME", "cache/NAME" or "config"
	Args     string    `json:"args,omitempty"`
	State    JobState  `json:"state"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished,omitzero"`
	// Progress is set for jobs that write back dirty data.
	Progress *Progress `json:"progress,omitempty"`
	Error    string    `json:"error,omitempty"`
	// Result is the job's output; for reload, the plan.
	Result string `json:"result,omitempty"`
}

// Done reports whether the job has ended.
func (j Job) Done() bool { return j.State != JobRunning }

// jobRecord is the server's mutable record of one job.
type jobRecord struct {
	cancel context.CancelFunc
	job    Job // guarded by jobManager.mu
}

// jobManager runs jobs and keeps the most recent finished ones for polling.
//
// Locking: mu guards every field below it and every jobRecord.job; it is
// held only to copy or update records, never across a job's work.
type jobManager struct {
	clock   Clock
	logger  *slog.Logger
	keep    int                    // finished jobs remembered
	spawn   func(func()) bool      // tracked goroutine start
	baseCtx func() context.Context // parent of every job's context

	mu       sync.Mutex
	nextID   uint64
	jobs     map[string]*jobRecord
	byTarget map[string]*jobRecord // running jobs by target
	finished []string              // ids of finished jobs, oldest first
}

func newJobManager(clock Clock, logger *slog.Logger, spawn func(func()) bool, baseCtx func() context.Context) *jobManager {
	return &jobManager{
		clock:    clock,
		logger:   logger,
		keep:     64,
		spawn:    spawn,
		baseCtx:  baseCtx,
		jobs:     make(map[string]*jobRecord),
		byTarget: make(map[string]*jobRecord),
	}
}

// jobFunc does a job's work. report publishes progress; the returned string
// becomes Job.Result.
type jobFunc func(ctx context.Context, report func(Progress)) (string, error)

// start registers a job and runs work on a new goroutine. It returns at
// once. If a job already runs on target, it returns that job and
// ErrJobConflict.
func (m *jobManager) start(kind, target, args string, withProgress bool, work jobFunc) (Job, error) {
	m.mu.Lock()
	if running, ok := m.byTarget[target]; ok {
		j := running.job
		m.mu.Unlock()
		return j, fmt.Errorf("%w: job %s (%s) on %s", ErrJobConflict, j.ID, j.Kind, target)
	}
	m.nextID++
	ctx, cancel := context.WithCancel(m.baseCtx())
	rec := &jobRecord{cancel: cancel, job: Job{
		ID:      strconv.FormatUint(m.nextID, 10),
		Kind:    kind,
		Target:  target,
		Args:    args,
		State:   JobRunning,
		Started: m.clock.Now(),
	}}
	if withProgress {
		rec.job.Progress = &Progress{}
	}
	m.jobs[rec.job.ID] = rec
	m.byTarget[target] = rec
	snapshot := copyJob(rec.job)
	m.mu.Unlock()

	run := func() { m.run(ctx, rec, work) }
	if !m.spawn(run) {
		cancel()
		m.finish(rec, "", context.Canceled)
		m.mu.Lock()
		snapshot = copyJob(rec.job)
		m.mu.Unlock()
	}
	return snapshot, nil
}

func (m *jobManager) run(ctx context.Context, rec *jobRecord, work jobFunc) {
	var (
		result string
		err    error
	)
	func() {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("admin: job panicked: %v", r)
			}
		}()
		report := func(p Progress) {
			m.mu.Lock()
			if rec.job.Progress != nil {
				*rec.job.Progress = p
			}
			m.mu.Unlock()
		}
		result, err = work(ctx, report)
	}()
	rec.cancel()
	m.finish(rec, result, err)
}

func (m *jobManager) finish(rec *jobRecord, result string, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	j := &rec.job
	j.Finished = m.clock.Now()
	j.Result = result
	switch {
	case err == nil:
		j.State = JobSucceeded
	case errors.Is(err, context.Canceled):
		j.State = JobCancelled
		j.Error = err.Error()
	default:
		j.State = JobFailed
		j.Error = err.Error()
	}
	if m.byTarget[j.Target] == rec {
		delete(m.byTarget, j.Target)
	}
	m.finished = append(m.finished, j.ID)
	for len(m.finished) > m.keep {
		delete(m.jobs, m.finished[0])
		m.finished = m.finished[1:]
	}
	m.logger.Info("admin: job ended", "id", j.ID, "kind", j.Kind, "target", j.Target,
		"state", j.State, "error", j.Error, "took", j.Finished.Sub(j.Started))
}

func (m *jobManager) get(id string) (Job, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, ok := m.jobs[id]
	if !ok {
		return Job{}, false
	}
	return copyJob(rec.job), true
}

// cancel asks a running job to stop; the job ends when its work returns.
func (m *jobManager) cancel(id string) (Job, bool) {
	m.mu.Lock()
	rec, ok := m.jobs[id]
	var j Job
	if ok {
		j = copyJob(rec.job)
	}
	m.mu.Unlock()
	if ok {
		rec.cancel()
	}
	return j, ok
}

// running returns the job running on target, if any.
func (m *jobManager) running(target string) (Job, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, ok := m.byTarget[target]
	if !ok {
		return Job{}, false
	}
	return copyJob(rec.job), true
}

// list returns every remembered job, newest first.
func (m *jobManager) list() []Job {
	m.mu.Lock()
	out := make([]Job, 0, len(m.jobs))
	for _, rec := range m.jobs {
		out = append(out, copyJob(rec.job))
	}
	m.mu.Unlock()
	sort.Slice(out, func(a, b int) bool {
		na, _ := strconv.ParseUint(out[a].ID, 10, 64)
		nb, _ := strconv.ParseUint(out[b].ID, 10, 64)
		return na > nb
	})
	return out
}

func copyJob(j Job) Job {
	if j.Progress != nil {
		p := *j.Progress
		j.Progress = &p
	}
	return j
}
