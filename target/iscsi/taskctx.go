package iscsi

import (
	"context"
	"sync"
	"time"
)

// taskCtx is the context a command runs under. It is cancelled when the
// task is aborted and when its connection ends (teardown aborts every
// task). It is not derived from the connection's context: a child of
// context.WithCancel registers with its parent and unregisters when it
// ends, twice a command taking a mutex every command of the connection
// shares, plus an allocation, for a cancellation teardown delivers anyway.
type taskCtx struct {
	mu   sync.Mutex
	done chan struct{} // made on first use, closed once err is set
	err  error
}

var _ context.Context = (*taskCtx)(nil)

func (x *taskCtx) Deadline() (time.Time, bool) { return time.Time{}, false }
func (x *taskCtx) Value(any) any               { return nil }

func (x *taskCtx) Done() <-chan struct{} {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.done == nil {
		x.done = make(chan struct{})
		if x.err != nil {
			close(x.done)
		}
	}
	return x.done
}

func (x *taskCtx) Err() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.err
}

// cancel cancels the context; later calls do nothing.
func (x *taskCtx) cancel() {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.err != nil {
		return
	}
	x.err = context.Canceled
	if x.done != nil {
		close(x.done)
	}
}
