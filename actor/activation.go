package actor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kelpie-go/kelpie/actor/placement"
	"github.com/kelpie-go/kelpie/kv"
)

// A request's life: queued in a mailbox, then started by the actor's
// goroutine, then handed to the group commit. Its caller may abandon it
// (its context ended, or the invocation's deadline passed) while it is
// queued or started, but not once it is committing: each step is a
// compare-and-swap, so the caller and the actor agree on whether the
// invocation can still have an effect. An abandoned request never commits.
const (
	reqQueued int32 = iota
	reqStarted
	reqCommitting
	reqAbandoned
)

type request struct {
	ctx      context.Context
	method   string
	payload  []byte
	deadline time.Time
	state    atomic.Int32
	reply    chan result // buffered: the actor never blocks on a caller
	// timer fires at deadline for a caller whose context ends later; it is
	// kept with the pooled request, so an invocation does not allocate one.
	timer *time.Timer
}

type result struct {
	out []byte
	err error
}

// activation is one active actor. Its goroutine (run) owns the fields below
// the line; the others are guarded by mu, which callers of Invoke take to
// enqueue, so that an activation that decided to close never receives
// another request.
type activation struct {
	rt      *Runtime
	id      ID
	factory Factory
	keys    keys
	mailbox chan *request
	stop    chan struct{} // closed by whoever sets closing from outside the goroutine
	done    chan struct{} // closed when the goroutine has left the runtime's map

	mu       sync.Mutex
	closing  bool
	reason   string
	pending  int   // requests enqueued and not yet finished
	ready    bool  // loaded
	lastUsed int64 // unix nanoseconds of the last finished turn
	epoch    uint64
	seq      uint64

	// owned by the goroutine
	lease placement.Lease
	actor Actor
	state []byte // last committed state
	m     meta   // this activation's epoch and the last commit sequence it saw
	pc    pendingCommit
	// loaded is the KV version the activation read its state at, or
	// wrote its claim at.
	loaded kv.Version
}

// start loads the activation and, if that succeeds, starts its goroutine.
// It runs on the goroutine of the Invoke that created the activation: the
// load's deep calls into the store then grow that goroutine's stack, not the
// stack of the actor's goroutine, which stays small for as long as the
// actor lives.
func (a *activation) start() error {
	r := a.rt
	if err := a.load(); err != nil {
		r.record("activate %s failed: %v", a.id, err)
		a.closeSelf("activation failed")
		a.drain(err)
		a.exit(false)
		r.wg.Done()
		return err
	}
	now := time.Now().UnixNano()
	a.mu.Lock()
	a.ready, a.epoch, a.seq, a.lastUsed = true, a.m.epoch, a.m.seq, now
	a.mu.Unlock()
	r.record("activate %s epoch %d seq %d", a.id, a.m.epoch, a.m.seq)
	if r.cfg.Observer != nil {
		r.cfg.Observer.Activated(a.id, a.m.epoch, a.m.seq, a.loaded)
	}
	go a.run()
	return nil
}

// run is the actor's goroutine: it runs turns one at a time until the
// activation closes.
func (a *activation) run() {
	r := a.rt
	defer r.wg.Done()
	idle := time.NewTimer(r.cfg.IdleTimeout)
	defer idle.Stop()
	for {
		// A stop takes precedence over queued requests: once the activation
		// is closing they must fail (they have not started), not run.
		select {
		case <-a.stop:
			a.drain(fmt.Errorf("actor %s: %w: the activation is shutting down; the invocation did not run", a.id, ErrClosed))
			a.exit(true)
			return
		default:
		}
		select {
		case req := <-a.mailbox:
			if drop := a.turn(req); drop != nil {
				a.closeSelf(drop.Error())
				a.drain(fmt.Errorf("actor %s: the activation was dropped before this invocation ran (%w); it did not run", a.id, drop))
				a.exit(true)
				return
			}
		case <-a.stop:
			a.drain(fmt.Errorf("actor %s: %w: the activation is shutting down; the invocation did not run", a.id, ErrClosed))
			a.exit(true)
			return
		case <-idle.C:
			left, closed := a.idleClose()
			if closed {
				a.drain(fmt.Errorf("actor %s: %w: the activation is shutting down; the invocation did not run", a.id, ErrClosed))
				a.exit(true)
				return
			}
			idle.Reset(left)
		}
	}
}

// load acquires the lease and loads the committed state.
func (a *activation) load() error {
	r := a.rt
	ctx, cancel := context.WithTimeout(r.ctx, ActivationTimeout)
	defer cancel()
	lease, err := r.cfg.Placement.Acquire(ctx, a.id.String())
	if err != nil {
		return fmt.Errorf("actor %s: %w: lease: %w", a.id, ErrActivation, err)
	}
	var state []byte
	var stored meta
	read := func(tx kv.ReadTx) (claim bool, err error) {
		a.loaded = tx.ReadVersion()
		mv, mok, err := tx.Get(a.keys.meta)
		if err != nil {
			return false, fmt.Errorf("read meta: %w", err)
		}
		sv, sok, err := tx.Get(a.keys.state)
		if err != nil {
			return false, fmt.Errorf("read state: %w", err)
		}
		stored = meta{}
		if mok {
			if stored, err = decodeMeta(a.id, mv); err != nil {
				return false, err
			}
		}
		if err := checkLoad(a.id, lease.Epoch, stored, mok, sok); err != nil {
			return false, err
		}
		state = nil
		if sok {
			state = sv
			if state == nil {
				state = []byte{} // committed, and empty: not the same as never committed
			}
		}
		return claims(lease, stored, mok), nil
	}
	if lease.Sole {
		err = r.cfg.DB.ReadTransact(ctx, func(tx kv.ReadTx) error {
			_, err := read(tx)
			return err
		})
	} else {
		// The claim is read and written in one transaction: two activations
		// racing to claim conflict, and the older epoch then finds itself
		// fenced.
		claimed := false
		err = r.cfg.DB.Transact(ctx, func(tx kv.Tx) error {
			var err error
			if claimed, err = read(tx); err != nil || !claimed {
				return err
			}
			tx.OnCommit(func(v kv.Version) { a.loaded = v })
			return tx.Set(a.keys.meta, meta{epoch: lease.Epoch, seq: stored.seq}.encode())
		})
		if err == nil && claimed {
			r.record("claim %s epoch %d seq %d", a.id, lease.Epoch, stored.seq)
		}
	}
	if err == nil {
		act := a.factory(a.id)
		if act == nil {
			err = fmt.Errorf("the factory of %q returned nil", a.id.Namespace)
		} else if lerr := act.Load(state); lerr != nil {
			err = fmt.Errorf("state (%d bytes) failed to load: %w", len(state), lerr)
		} else {
			a.actor = act
		}
	}
	if err != nil {
		a.release(lease)
		return fmt.Errorf("actor %s: %w: %w", a.id, ErrActivation, err)
	}
	a.lease, a.state, a.m = lease, state, meta{epoch: lease.Epoch, seq: stored.seq}
	return nil
}

// turn runs one request. It returns an error when the activation must end
// (its lease is lost, it was fenced, or its state is no longer known).
func (a *activation) turn(req *request) (drop error) {
	defer func() {
		now := time.Now().UnixNano()
		a.mu.Lock()
		a.pending--
		a.lastUsed = now
		a.seq = a.m.seq
		a.mu.Unlock()
	}()
	if !req.state.CompareAndSwap(reqQueued, reqStarted) {
		return nil // the caller gave up before it started
	}
	if !time.Now().Before(req.deadline) {
		req.reply <- result{err: fmt.Errorf("actor %s: %w: the deadline passed while the invocation waited in the mailbox; it did not run", a.id, ErrTimeout)}
		return nil
	}
	if err := a.rt.cfg.Placement.Check(a.lease); err != nil {
		err = fmt.Errorf("actor %s: %w: %w; the invocation did not run", a.id, ErrLeaseLost, err)
		a.closeSelf(err.Error())
		req.reply <- result{err: err}
		return err
	}
	out, err, drop := a.execute(req)
	if drop != nil {
		// Closed before the caller hears of it, so that the caller's next
		// invocation reaches a fresh activation.
		a.closeSelf(drop.Error())
	}
	req.reply <- result{out: out, err: err}
	return drop
}

// execute runs the handler, then hands the turn to the group committer and
// waits for its outcome.
func (a *activation) execute(req *request) (out []byte, err error, drop error) {
	r := a.rt
	hctx := &turnContext{parent: req.ctx, deadline: req.deadline}
	defer hctx.release()
	// Turns of one actor are serial, so one pendingCommit per activation
	// serves them all.
	if a.pc.done == nil {
		a.pc.done = make(chan struct{}, 1)
	}
	p := &a.pc
	*p = pendingCommit{a: a, mine: a.m, done: p.done}
	err = func() error {
		call := Call{ctx: hctx, id: a.id, method: req.method, payload: req.payload, db: r.cfg.DB, keys: &a.keys}
		o, herr := a.actor.Receive(&call)
		call.db = nil
		if cerr := hctx.Err(); cerr != nil {
			if errors.Is(cerr, context.DeadlineExceeded) {
				return fmt.Errorf("actor %s: %w: the deadline passed during the handler; rolled back", a.id, ErrTimeout)
			}
			return fmt.Errorf("actor %s: %w during the handler; rolled back", a.id, cerr)
		}
		if herr != nil {
			return fmt.Errorf("actor %s: %w: %w", a.id, ErrHandler, herr)
		}
		s, serr := a.actor.Save()
		if serr != nil {
			return fmt.Errorf("actor %s: %w: save state: %w", a.id, ErrHandler, serr)
		}
		if err := kv.CheckValue(s); err != nil {
			return fmt.Errorf("actor %s: state: %w", a.id, err)
		}
		if s == nil {
			s = []byte{}
		}
		// An actor that never committed and is still empty stores nothing.
		p.changed = len(call.writes) > 0 || !bytes.Equal(s, a.state)
		p.state, p.writes, p.bytes = s, call.writes, call.bytes
		out = o
		return nil
	}()
	if err == nil {
		if n := p.mutationBytes(); n > kv.TransactionLimit {
			err = &kv.LimitError{What: "transaction", Size: n, Limit: kv.TransactionLimit, Err: kv.ErrTransactionTooLarge}
			err = fmt.Errorf("actor %s: %w", a.id, err)
		}
	}
	if err == nil && !req.state.CompareAndSwap(reqStarted, reqCommitting) {
		// The caller gave up while the handler ran (a handler that does
		// not watch its context can outlive the deadline) and was told
		// the invocation will not commit.
		err = fmt.Errorf("actor %s: %w: the caller stopped waiting during the handler; rolled back", a.id, ErrTimeout)
	}
	if err != nil {
		// The handler failed: nothing was submitted.
		if rerr := a.rebuild(); rerr != nil {
			drop = fmt.Errorf("actor %s: rebuild after a failed invocation: %w", a.id, rerr)
		}
		return nil, err, drop
	}
	r.submit(p)
	if p.err == nil {
		if p.changed {
			a.state = p.state
			a.m = a.m.next()
			if r.cfg.Observer != nil {
				r.cfg.Observer.Committed(a.id, a.m.epoch, a.m.seq, p.version)
			}
		}
		return out, nil, nil
	}
	err = p.err
	switch {
	case errors.Is(err, ErrFenced), errors.Is(err, ErrOutcomeUnknown), errors.Is(err, kv.ErrCorrupt):
		// Fenced, or the state in the store is no longer known: this
		// activation is done; the next one reloads.
		return nil, err, err
	}
	if rerr := a.rebuild(); rerr != nil {
		drop = fmt.Errorf("actor %s: rebuild after a failed invocation: %w", a.id, rerr)
	}
	return nil, err, drop
}

// rebuild replaces the in-memory actor with a fresh one loaded from the last
// committed state.
func (a *activation) rebuild() error {
	act := a.factory(a.id)
	if act == nil {
		return fmt.Errorf("the factory of %q returned nil", a.id.Namespace)
	}
	if err := act.Load(a.state); err != nil {
		return fmt.Errorf("reload committed state (%d bytes): %w", len(a.state), err)
	}
	a.actor = act
	return nil
}

// closeSelf marks the activation closing from its own goroutine.
func (a *activation) closeSelf(reason string) {
	r := a.rt
	r.mu.Lock()
	a.mu.Lock()
	if !a.closing {
		a.closing = true
		a.reason = reason
		r.live--
	}
	a.mu.Unlock()
	r.mu.Unlock()
}

// idleClose closes the activation if it has been idle for IdleTimeout, or
// returns how long until it might be.
func (a *activation) idleClose() (time.Duration, bool) {
	r := a.rt
	r.mu.Lock()
	defer r.mu.Unlock()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closing {
		return 0, true
	}
	idleFor := time.Duration(time.Now().UnixNano() - a.lastUsed)
	if a.pending > 0 || idleFor < r.cfg.IdleTimeout {
		left := r.cfg.IdleTimeout - idleFor
		if left <= 0 {
			left = r.cfg.IdleTimeout
		}
		return left, false
	}
	a.closing = true
	a.reason = "idle"
	r.live--
	return 0, true
}

// drain fails every request still in the mailbox with err. The activation
// is closing, so no more arrive.
func (a *activation) drain(err error) {
	for {
		select {
		case req := <-a.mailbox:
			if req.state.CompareAndSwap(reqQueued, reqStarted) {
				req.reply <- result{err: err}
			}
			a.mu.Lock()
			a.pending--
			a.mu.Unlock()
		default:
			return
		}
	}
}

func (a *activation) release(l placement.Lease) {
	ctx, cancel := context.WithTimeout(context.Background(), ReleaseTimeout)
	defer cancel()
	if err := a.rt.cfg.Placement.Release(ctx, l); err != nil {
		// The lease lapses on its own; fencing covers the time until then.
		a.rt.record("release %s: %v", l, err)
	}
}

// exit ends the activation: it gives the lease back and leaves the map, after
// which Invoke may start a successor.
func (a *activation) exit(loaded bool) {
	r := a.rt
	a.mu.Lock()
	reason := a.reason
	a.mu.Unlock()
	if loaded {
		a.release(a.lease)
		r.record("deactivate %s epoch %d: %s", a.id, a.m.epoch, reason)
		if r.cfg.Observer != nil {
			r.cfg.Observer.Deactivated(a.id, a.m.epoch, reason)
		}
	}
	r.mu.Lock()
	if r.acts[a.id] == a {
		delete(r.acts, a.id)
		r.shrinkLocked()
	}
	r.mu.Unlock()
	close(a.done)
}
