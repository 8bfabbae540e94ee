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
	// reply receives the one reply, and the timer's mark; buffered for
	// both, so that neither the actor, nor the committer, nor the timer
	// blocks on a caller.
	reply chan result
	// timer fires at deadline for a caller whose context ends later, and
	// puts errExpired in reply (expire); it is kept with the pooled
	// request, so an invocation does not allocate one.
	timer *time.Timer
	// commit is the turn, once the actor has run it and handed it to the
	// group commit; it lives in the pooled request so that a turn
	// allocates none.
	commit pendingCommit
}

type result struct {
	out []byte
	err error
}

// errExpired is the mark the deadline timer puts in a request's reply
// channel; Invoke never returns it.
var errExpired = errors.New("actor: invocation deadline (internal mark)")

func (q *request) expire() { q.reply <- result{err: errExpired} }

// maxInflightTurns bounds the turns of one activation that have run and
// wait for their commit. It bounds what one failed commit rolls back, and
// the memory a hot actor's pipeline holds (each turn holds its state).
const maxInflightTurns = 32

// activation is one active actor. Its goroutine (run) owns the fields in
// the group "owned by the goroutine"; mu guards the fields below it, which
// callers of Invoke take to enqueue, so that an activation that decided to
// close never receives another request.
//
// Turns are pipelined: the goroutine hands a finished turn to the group
// commit and runs the next one at once, on the state the first one left
// (speculatively), instead of waiting for the store. The committer replies
// to the turn's caller when the commit is decided, so no caller hears of
// success before its effects are durable. A turn that fails to commit
// breaks its chain: every later turn of the chain, which ran on its
// effects, fails too without committing, and before its next turn the
// goroutine waits for the pipeline to empty and rebuilds the actor from the
// last committed state (rollback). Reads during a turn see the writes of
// the turns still in flight (overlay), so the pipeline is invisible to the
// handler.
type activation struct {
	rt      *Runtime
	id      ID
	factory Factory
	keys    keys
	// mailbox holds the requests; a nil one is a poke, which wakes the
	// goroutine to look at shut.
	mailbox chan *request
	done    chan struct{} // closed when the goroutine has left the runtime's map
	// shut is set (under mu, with closing) by whoever closes the activation
	// from outside its goroutine, which then pokes the mailbox. The
	// goroutine reads it without the lock before each request.
	shut atomic.Bool
	// idle fires after IdleTimeout and closes the activation if it was not
	// used meanwhile, or sets itself again (idleCheck). It is not touched
	// by turns, so a turn costs no timer operation.
	idle *time.Timer

	mu      sync.Mutex
	closing bool
	reason  string
	dropped error // why the committer ended the activation, if it did
	ready   bool  // loaded
	epoch   uint64
	// pending counts the requests enqueued and not yet run. It goes up
	// only under mu, where closing is decided, and down without it (the
	// goroutine, after a turn), so "nothing pending" seen under mu stays
	// true until mu is released.
	pending atomic.Int32
	// lastUsed is when the last turn started, in unix nanoseconds.
	lastUsed atomic.Int64

	// Shared by the goroutine and the committer.
	inflight  atomic.Int32  // turns handed to the committer and not yet decided
	committed atomic.Uint64 // sequence of the last commit that committed
	broken    atomic.Uint64 // the chain one of whose turns failed to commit (0: none)
	waiting   atomic.Bool   // the goroutine waits in awaitInflight
	settled   chan struct{} // buffered (1): the committer wakes a waiting goroutine
	// base is the last committed state. The committer writes it; the
	// goroutine reads it only once no turn is in flight.
	base []byte
	// brokenBy is the error that broke the chain broken names; the
	// committer's own.
	brokenBy error

	// owned by the goroutine
	lease placement.Lease
	actor Actor
	chain uint64  // the turns since the last rollback; starts at 1
	state []byte  // the state after the last turn handed to the commit
	m     meta    // this activation's epoch and the sequence its next turn expects
	ov    overlay // writes of the turns in flight
	call  Call    // the Call of the turn running
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
		a.drain(nil, err)
		a.exit(false)
		r.wg.Done()
		return err
	}
	a.lastUsed.Store(time.Now().UnixNano())
	a.mu.Lock()
	a.ready, a.epoch = true, a.m.epoch
	a.mu.Unlock()
	r.record("activate %s epoch %d seq %d", a.id, a.m.epoch, a.m.seq)
	if r.cfg.Observer != nil {
		r.cfg.Observer.Activated(a.id, a.m.epoch, a.m.seq, a.loaded)
	}
	a.idle = time.AfterFunc(r.cfg.IdleTimeout, a.idleCheck)
	go a.run()
	return nil
}

// run is the actor's goroutine: it runs turns one at a time until the
// activation closes. Waiting is one plain receive from the mailbox.
func (a *activation) run() {
	defer a.rt.wg.Done()
	for {
		req := <-a.mailbox
		// A stop takes precedence over queued requests: once the activation
		// is closing they must fail (they have not started), not run.
		if a.shut.Load() {
			a.stopped(req)
			return
		}
		if req == nil {
			continue // a poke whose reason was already handled
		}
		if drop := a.turn(req); drop != nil {
			a.closeSelf(drop.Error())
			a.drain(nil, droppedError(a.id, drop))
			a.exit(true)
			return
		}
	}
}

// poke wakes the goroutine. A full mailbox needs no poke: the goroutine is
// not waiting, and looks at shut before its next request.
func (a *activation) poke() {
	select {
	case a.mailbox <- nil:
	default:
	}
}

// shutLocked closes the activation from outside its goroutine, for reason.
// r.mu and a.mu are held.
func (a *activation) shutLocked(reason string) {
	if a.closing {
		return
	}
	a.closing = true
	a.reason = reason
	a.shut.Store(true)
	a.rt.live--
	a.poke()
}

// idleCheck runs when the idle timer fires: it closes an activation unused
// for IdleTimeout, or sets the timer for when it might be.
func (a *activation) idleCheck() {
	r := a.rt
	r.mu.Lock()
	defer r.mu.Unlock()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closing {
		return // the timer is not set again once closing is
	}
	idleFor := time.Duration(time.Now().UnixNano() - a.lastUsed.Load())
	if a.pending.Load() > 0 || idleFor < r.cfg.IdleTimeout {
		left := r.cfg.IdleTimeout - idleFor
		if left <= 0 {
			left = r.cfg.IdleTimeout
		}
		a.idle.Reset(left)
		return
	}
	a.shutLocked("idle")
}

// stopped ends an activation that was closed from outside its goroutine:
// by eviction, idleness, the runtime's Close, or the committer dropping it.
// first is the request just received, if any.
func (a *activation) stopped(first *request) {
	a.mu.Lock()
	dropped := a.dropped
	a.mu.Unlock()
	if dropped != nil {
		a.drain(first, droppedError(a.id, dropped))
	} else {
		a.drain(first, fmt.Errorf("actor %s: %w: the activation is shutting down; the invocation did not run", a.id, ErrClosed))
	}
	a.exit(true)
}

// droppedError fails a request that never ran because its activation was
// dropped for why.
func droppedError(id ID, why error) error {
	return fmt.Errorf("actor %s: the activation was dropped before this invocation ran (%w); it did not run", id, noEffect(why))
}

// noEffect is why for an invocation that certainly had no effect because
// of it: an ErrOutcomeUnknown in why says that some other invocation may
// have committed, which this one did not, so it is kept out of the chain
// errors.Is follows (the text stays).
func noEffect(why error) error {
	if errors.Is(why, ErrOutcomeUnknown) {
		return errors.New(why.Error())
	}
	return why
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
		rec, ok, err := tx.Get(a.keys.record)
		if err != nil {
			return false, fmt.Errorf("read record: %w", err)
		}
		stored, state = meta{}, nil
		if ok {
			if stored, state, err = decodeRecord(a.id, rec); err != nil {
				return false, err
			}
		}
		if err := checkLoad(a.id, lease.Epoch, stored, ok); err != nil {
			return false, err
		}
		return claims(lease, stored, ok), nil
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
			return tx.Set(a.keys.record, appendRecord(nil, meta{epoch: lease.Epoch, seq: stored.seq}, state))
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
	a.base, a.chain, a.settled = state, 1, make(chan struct{}, 1)
	a.committed.Store(stored.seq)
	return nil
}

// turn runs one request. It returns an error when the activation must end
// (its lease is lost, it was fenced, or its state is no longer known).
func (a *activation) turn(req *request) (drop error) {
	now := time.Now()
	a.lastUsed.Store(now.UnixNano())
	defer a.pending.Add(-1)
	if !req.state.CompareAndSwap(reqQueued, reqStarted) {
		return nil // the caller gave up before it started
	}
	if !now.Before(req.deadline) {
		req.reply <- result{err: fmt.Errorf("actor %s: %w: the deadline passed while the invocation waited in the mailbox; it did not run", a.id, ErrTimeout)}
		return nil
	}
	if a.broken.Load() == a.chain {
		if err := a.rollback(); err != nil {
			req.reply <- result{err: droppedError(a.id, err)}
			return err
		}
	}
	if err := a.rt.cfg.Placement.Check(a.lease); err != nil {
		err = fmt.Errorf("actor %s: %w: %w; the invocation did not run", a.id, ErrLeaseLost, err)
		a.closeSelf(err.Error())
		req.reply <- result{err: err}
		return err
	}
	err, drop := a.execute(req)
	if err == nil {
		return nil // the committer replies
	}
	if drop != nil {
		// Closed before the caller hears of it, so that the caller's next
		// invocation reaches a fresh activation.
		a.closeSelf(drop.Error())
	}
	req.reply <- result{err: err}
	return drop
}

// execute runs the handler and hands the turn to the group committer,
// which replies to the caller. An error means the turn never reached the
// committer, and the caller is still to be told.
func (a *activation) execute(req *request) (err error, drop error) {
	r := a.rt
	hctx := &turnContext{parent: req.ctx, deadline: req.deadline}
	defer hctx.release()
	if len(a.ov.turns) > 0 {
		a.ov.prune(a.committed.Load())
	}
	p := &req.commit
	*p = pendingCommit{a: a, req: req, chain: a.chain, mine: a.m}
	err = func() error {
		// Turns are serial, so one Call serves them all; a Call is valid
		// only during Receive, and one kept past it fails on use.
		a.call = Call{ctx: hctx, id: a.id, method: req.method, payload: req.payload, db: r.cfg.DB, keys: &a.keys, inflight: &a.ov}
		call := &a.call
		o, herr := a.actor.Receive(call)
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
		if len(s) > MaxStateBytes {
			return fmt.Errorf("actor %s: state: %w", a.id, &kv.LimitError{What: "state", Size: len(s), Limit: MaxStateBytes, Err: kv.ErrValueTooLarge})
		}
		// An actor that never committed and is still empty stores nothing.
		if len(call.writes) > 0 || !bytes.Equal(s, a.state) {
			p.changed = true
			p.record = appendRecord(make([]byte, 0, recordHeaderBytes+len(s)), a.m.next(), s)
			p.state = p.record[recordHeaderBytes:]
		}
		p.writes, p.bytes, p.out = call.writes, call.bytes, o
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
		// Nothing was submitted: the actor goes back to the state the
		// turns before this one left.
		*p = pendingCommit{}
		if rerr := a.rebuild(); rerr != nil {
			drop = fmt.Errorf("actor %s: rebuild after a failed invocation: %w", a.id, rerr)
		}
		return err, drop
	}
	// The next turn runs on this one's effects.
	if p.changed {
		a.state = p.state
		a.m = a.m.next()
		a.ov.add(a.m.seq, p.writes)
	}
	a.awaitInflight(maxInflightTurns - 1)
	a.inflight.Add(1)
	select {
	case r.commits <- p: // the common case: room in the queue
		return nil, nil
	default:
	}
	select {
	case r.commits <- p:
		return nil, nil
	case <-r.ctx.Done():
	}
	// The runtime stopped. Later turns must not build on this one.
	a.inflight.Add(-1)
	a.broken.Store(a.chain)
	*p = pendingCommit{}
	return fmt.Errorf("actor %s: %w: the runtime stopped before the commit started; rolled back", a.id, ErrClosed), nil
}

// awaitInflight waits until at most n of the activation's turns are in
// flight. The committer settles every turn it is handed (commits or fails
// it), so this waits at most for the commits already queued.
func (a *activation) awaitInflight(n int32) {
	for a.inflight.Load() > n {
		a.waiting.Store(true)
		// Checked again after waiting is published: the committer, which
		// decrements and then looks at waiting, cannot slip in between
		// unseen.
		if a.inflight.Load() > n {
			<-a.settled
		}
		a.waiting.Store(false)
	}
}

// rollback waits for the turns in flight to be decided and rebuilds the
// actor from the last committed state, starting a new chain. It returns an
// error when the activation must end instead.
func (a *activation) rollback() error {
	a.awaitInflight(0)
	a.mu.Lock()
	dropped := a.dropped
	a.mu.Unlock()
	if dropped != nil {
		return dropped
	}
	a.state = a.base
	a.m = meta{epoch: a.m.epoch, seq: a.committed.Load()}
	a.ov.reset()
	a.chain++
	if err := a.rebuild(); err != nil {
		return fmt.Errorf("actor %s: rebuild after a failed commit: %w", a.id, err)
	}
	return nil
}

// rebuild replaces the in-memory actor with a fresh one loaded from a.state:
// the state after the last turn handed to the commit.
func (a *activation) rebuild() error {
	act := a.factory(a.id)
	if act == nil {
		return fmt.Errorf("the factory of %q returned nil", a.id.Namespace)
	}
	if err := act.Load(a.state); err != nil {
		return fmt.Errorf("reload state (%d bytes): %w", len(a.state), err)
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

// drain fails first (if not nil) and every request still in the mailbox
// with err. The activation is closing, so no more arrive.
func (a *activation) drain(first *request, err error) {
	fail := func(req *request) {
		if req == nil {
			return // a poke
		}
		if req.state.CompareAndSwap(reqQueued, reqStarted) {
			req.reply <- result{err: err}
		}
		a.pending.Add(-1)
	}
	fail(first)
	for {
		select {
		case req := <-a.mailbox:
			fail(req)
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
		// closing is set, so the idle timer is not set again.
		a.idle.Stop()
		// The lease is given back only once every commit carrying its
		// epoch has been decided.
		a.awaitInflight(0)
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
