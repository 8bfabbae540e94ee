package actor

import (
	"context"
	"sync"
	"time"
)

// newRequest returns a request from the runtime's pool. The pool recycles
// requests (and their reply channels) whose reply was received; abandoned
// ones are left to the garbage collector, since the actor may still hold
// them. The pool is per runtime so that channels never cross from one
// runtime's world to another's (a testing/synctest bubble forbids it).
func (r *Runtime) newRequest() *request {
	if q, ok := r.requests.Get().(*request); ok {
		return q
	}
	return &request{reply: make(chan result, 2)}
}

func (r *Runtime) recycle(q *request) {
	q.ctx, q.method, q.payload, q.commit = nil, "", nil, pendingCommit{}
	r.requests.Put(q)
}

// turnContext is the context a handler runs under: its caller's context with
// the invocation's deadline. It is context.WithDeadline made lazy: the timer
// and the channel exist only if the handler asks for Done, which most
// handlers never do, so a turn does not pay for a timer it does not use.
type turnContext struct {
	parent   context.Context
	deadline time.Time

	mu     sync.Mutex
	inner  context.Context
	cancel context.CancelFunc
}

var _ context.Context = (*turnContext)(nil)

func (c *turnContext) Deadline() (time.Time, bool) { return c.deadline, true }

func (c *turnContext) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inner == nil {
		c.inner, c.cancel = context.WithDeadline(c.parent, c.deadline)
	}
	return c.inner.Done()
}

func (c *turnContext) Err() error {
	c.mu.Lock()
	inner := c.inner
	c.mu.Unlock()
	if inner != nil {
		return inner.Err()
	}
	if err := c.parent.Err(); err != nil {
		return err
	}
	if !time.Now().Before(c.deadline) {
		return context.DeadlineExceeded
	}
	return nil
}

func (c *turnContext) Value(key any) any { return c.parent.Value(key) }

// release stops the timer, if Done made one.
func (c *turnContext) release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cancel != nil {
		c.cancel()
	}
}
