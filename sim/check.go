package sim

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// Eventually polls cond every poll until it returns nil, and returns the last
// error if that does not happen within limit (measured on the clock the
// program runs on: virtual under the executor). It is the liveness check:
// "the cluster converges", "the actor comes back".
func Eventually(ctx context.Context, limit, poll time.Duration, cond func() error) error {
	deadline := time.Now().Add(limit)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("not within %s: %w", limit, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-time.After(poll):
		}
	}
}

// MaxHistoryOps bounds a recorded history; linearizability checking is
// exponential in the worst case, and histories past this are a test design
// error.
const MaxHistoryOps = 100_000

// History records concurrent operations against a system under test for a
// linearizability check. Call and return are stamped with a logical clock,
// which preserves real-time order without depending on clock resolution.
type History struct {
	mu    sync.Mutex
	clock int64
	ops   []porcupine.Operation
	err   error
}

// Op is one operation in flight.
type Op struct {
	h      *History
	client int
	input  any
	call   int64
}

// Call records the start of an operation by client with input.
func (h *History) Call(client int, input any) *Op {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.clock++
	return &Op{h: h, client: client, input: input, call: h.clock}
}

// Return records the operation's result. An operation whose outcome is
// unknown (a timeout: it may or may not have taken effect) should be
// recorded with an output the model treats as "anything", or not recorded.
func (o *Op) Return(output any) {
	h := o.h
	h.mu.Lock()
	defer h.mu.Unlock()
	h.clock++
	if len(h.ops) >= MaxHistoryOps {
		h.err = fmt.Errorf("history is longer than %d operations", MaxHistoryOps)
		return
	}
	h.ops = append(h.ops, porcupine.Operation{
		ClientId: o.client, Input: o.input, Call: o.call, Output: output, Return: h.clock,
	})
}

// Len is the number of completed operations recorded.
func (h *History) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.ops)
}

// linearizabilityTimeout bounds one porcupine check.
const linearizabilityTimeout = time.Minute

// CheckLinearizable checks the recorded history against model. It returns
// an error if the history is not linearizable, or if the check could not
// decide within its time bound.
func (h *History) CheckLinearizable(model porcupine.Model) error {
	h.mu.Lock()
	ops := append([]porcupine.Operation(nil), h.ops...)
	err := h.err
	h.mu.Unlock()
	if err != nil {
		return err
	}
	res, _ := porcupine.CheckOperationsVerbose(model, ops, linearizabilityTimeout)
	switch res {
	case porcupine.Ok:
		return nil
	case porcupine.Illegal:
		return fmt.Errorf("history of %d operations is not linearizable", len(ops))
	default:
		return fmt.Errorf("linearizability of %d operations undecided within %s", len(ops), linearizabilityTimeout)
	}
}
