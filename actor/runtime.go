package actor

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kelpie-go/kelpie/actor/placement"
	"github.com/kelpie-go/kelpie/kv"
)

// Defaults and bounds of Config.
const (
	// DefaultMailboxSize is how many invocations may wait for one actor.
	DefaultMailboxSize = 64
	// MaxMailboxSize bounds Config.MailboxSize.
	MaxMailboxSize = 1 << 16
	// DefaultIdleTimeout is how long an activation may sit unused before it
	// is deactivated.
	DefaultIdleTimeout = 10 * time.Minute
	// MinIdleTimeout and MaxIdleTimeout bound Config.IdleTimeout.
	MinIdleTimeout = time.Millisecond
	MaxIdleTimeout = 24 * time.Hour
	// DefaultMaxActive is how many activations a node keeps at most.
	DefaultMaxActive = 100_000
	// MaxMaxActive bounds Config.MaxActive.
	MaxMaxActive = 10_000_000
	// DefaultInvocationTimeout bounds one invocation, from Invoke to commit,
	// unless the caller's context has an earlier deadline.
	DefaultInvocationTimeout = 30 * time.Second
	// MinInvocationTimeout and MaxInvocationTimeout bound
	// Config.InvocationTimeout.
	MinInvocationTimeout = time.Millisecond
	MaxInvocationTimeout = time.Hour
	// ActivationTimeout bounds acquiring an actor's lease and loading its
	// state.
	ActivationTimeout = 10 * time.Second
	// ReleaseTimeout bounds giving a lease back on deactivation.
	ReleaseTimeout = 5 * time.Second
	// evictionSample is how many activations are looked at to find the
	// least recently used idle one; sampling (as Redis does) keeps eviction
	// O(1) instead of keeping an LRU list every invocation must lock.
	evictionSample = 16
	// evictionScanLimit bounds the further search when the sample holds no
	// idle activation, before Invoke gives up with ErrTooManyActive.
	evictionScanLimit = 4096
	// maxEnqueueAttempts bounds how often Invoke follows an activation that
	// is shutting down to its successor.
	maxEnqueueAttempts = 16
)

// Config configures a Runtime. DB and Placement are required; zero values
// elsewhere mean the defaults.
type Config struct {
	// DB stores actors' state, meta and keys.
	DB kv.DB
	// Placement grants leases (placement.NewLocal on a single node).
	Placement placement.Placement
	// MailboxSize is how many invocations may wait for one actor before
	// Invoke refuses more (DefaultMailboxSize; at most MaxMailboxSize).
	MailboxSize int
	// IdleTimeout deactivates an actor unused for this long
	// (DefaultIdleTimeout; in [MinIdleTimeout, MaxIdleTimeout]).
	IdleTimeout time.Duration
	// MaxActive caps the node's activations; past it the least recently
	// used idle one is evicted (DefaultMaxActive; at most MaxMaxActive).
	MaxActive int
	// InvocationTimeout bounds each invocation (DefaultInvocationTimeout;
	// in [MinInvocationTimeout, MaxInvocationTimeout]).
	InvocationTimeout time.Duration
	// Observer, if set, hears about activations and commits.
	Observer Observer
	// Record, if set, receives one line per activation event (the
	// simulation's trace).
	Record func(format string, args ...any)
}

func (c *Config) fill() error {
	if c.DB == nil {
		return errors.New("actor: Config.DB is nil")
	}
	if c.Placement == nil {
		return errors.New("actor: Config.Placement is nil")
	}
	if c.MailboxSize == 0 {
		c.MailboxSize = DefaultMailboxSize
	}
	if c.MailboxSize < 1 || c.MailboxSize > MaxMailboxSize {
		return fmt.Errorf("actor: Config.MailboxSize is %d, want 1 to %d (MaxMailboxSize)", c.MailboxSize, MaxMailboxSize)
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.IdleTimeout < MinIdleTimeout || c.IdleTimeout > MaxIdleTimeout {
		return fmt.Errorf("actor: Config.IdleTimeout is %s, want %s to %s", c.IdleTimeout, MinIdleTimeout, MaxIdleTimeout)
	}
	if c.MaxActive == 0 {
		c.MaxActive = DefaultMaxActive
	}
	if c.MaxActive < 1 || c.MaxActive > MaxMaxActive {
		return fmt.Errorf("actor: Config.MaxActive is %d, want 1 to %d (MaxMaxActive)", c.MaxActive, MaxMaxActive)
	}
	if c.InvocationTimeout == 0 {
		c.InvocationTimeout = DefaultInvocationTimeout
	}
	if c.InvocationTimeout < MinInvocationTimeout || c.InvocationTimeout > MaxInvocationTimeout {
		return fmt.Errorf("actor: Config.InvocationTimeout is %s, want %s to %s", c.InvocationTimeout, MinInvocationTimeout, MaxInvocationTimeout)
	}
	return nil
}

// Runtime runs the actors of one node.
type Runtime struct {
	cfg Config
	// ctx ends when the runtime is closed; commits run under it rather than
	// under a caller's context, so a caller giving up never leaves a commit
	// half-decided.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// commits feed the group committer (commit.go), which runs until it
	// receives nil and then closes committerDone.
	commits       chan *pendingCommit
	committerDone chan struct{}
	group         groupTx // the committer's

	requests sync.Pool // of *request

	stats struct {
		batches, turns atomic.Uint64
	}

	mu        sync.RWMutex
	factories map[string]Factory
	acts      map[ID]*activation
	live      int // activations not yet closing
	peak      int // the most entries acts has held since it was last rebuilt
	closed    bool
}

// New returns a runtime; Register the namespaces, then Invoke.
func New(cfg Config) (*Runtime, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Runtime{
		cfg:           cfg,
		ctx:           ctx,
		cancel:        cancel,
		commits:       make(chan *pendingCommit, commitQueue),
		committerDone: make(chan struct{}),
		factories:     map[string]Factory{},
		acts:          map[ID]*activation{},
	}
	r.group.init()
	go r.committer()
	return r, nil
}

// Config returns the runtime's configuration, defaults filled in.
func (r *Runtime) Config() Config { return r.cfg }

// Register makes f the factory of namespace's actors.
func (r *Runtime) Register(namespace string, f Factory) error {
	if err := (ID{Namespace: namespace, Key: "x"}).Validate(); err != nil {
		return fmt.Errorf("actor: register: %w", err)
	}
	if f == nil {
		return fmt.Errorf("actor: register %s: factory is nil", namespace)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.factories[namespace]; dup {
		return fmt.Errorf("actor: register %s: namespace already registered", namespace)
	}
	r.factories[namespace] = f
	return nil
}

func (r *Runtime) record(format string, args ...any) {
	if r.cfg.Record != nil {
		r.cfg.Record(format, args...)
	}
}

// Invoke sends method and payload to the actor id, activating it if needed,
// and waits for its reply, at most until the earlier of ctx's deadline and
// Config.InvocationTimeout. An invocation not yet handed to the commit by
// then never commits: Invoke returns ErrTimeout (or ctx's error) at once,
// even if the handler is still running. One whose commit is in flight
// returns ErrOutcomeUnknown. Errors are described in the package doc: all
// mean "no effect" except ErrOutcomeUnknown.
func (r *Runtime) Invoke(ctx context.Context, id ID, method string, payload []byte) ([]byte, error) {
	if err := id.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if len(method) > MaxMethodBytes {
		return nil, fmt.Errorf("%w: actor %s: method is %d bytes, the limit is %d (actor.MaxMethodBytes)", ErrInvalid, id, len(method), MaxMethodBytes)
	}
	if len(payload) > MaxPayloadBytes {
		return nil, fmt.Errorf("%w: actor %s: payload is %d bytes, the limit is %d (actor.MaxPayloadBytes)", ErrInvalid, id, len(payload), MaxPayloadBytes)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("actor %s: %w", id, err)
	}
	deadline := time.Now().Add(r.cfg.InvocationTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	req := r.newRequest()
	req.ctx, req.method, req.payload, req.deadline = ctx, method, payload, deadline
	req.state.Store(reqQueued)
	if err := r.enqueue(ctx, id, req); err != nil {
		r.recycle(req)
		return nil, err
	}
	// ctx.Done covers a caller deadline that is the invocation's; an
	// earlier InvocationTimeout needs a timer of its own, which puts a mark
	// in the reply channel when it fires, so that the wait is one receive.
	armed := false
	if d, ok := ctx.Deadline(); !ok || deadline.Before(d) {
		if req.timer == nil {
			req.timer = time.AfterFunc(time.Until(deadline), req.expire)
		} else {
			req.timer.Reset(time.Until(deadline))
		}
		armed = true
	}
	var res result
	var why error
	if done := ctx.Done(); done == nil {
		res = <-req.reply
	} else {
		select {
		case res = <-req.reply:
		case <-done:
			why = ctx.Err()
		}
	}
	marked := why == nil && res.err == errExpired
	if marked {
		why = ErrTimeout
	}
	// markDue: the timer fired and its mark is still to be taken out of
	// the channel, which must be empty before req is reused.
	markDue := armed && !marked && !req.timer.Stop()
	if why == nil {
		if markDue {
			<-req.reply
		}
		// The actor is done with req once it has replied.
		r.recycle(req)
		return res.out, res.err
	}
	// A reply that raced the deadline is the outcome.
	for {
		select {
		case res := <-req.reply:
			if res.err == errExpired {
				markDue = false
				continue
			}
			if markDue {
				<-req.reply
			}
			r.recycle(req)
			return res.out, res.err
		default:
		}
		break
	}
	// req is not recycled: the actor may still hold it.
	switch {
	case req.state.CompareAndSwap(reqQueued, reqAbandoned):
		return nil, fmt.Errorf("actor %s: %w before the invocation started; it will not run", id, why)
	case req.state.CompareAndSwap(reqStarted, reqAbandoned):
		return nil, fmt.Errorf("actor %s: %w while the handler ran; it is rolled back and will not commit", id, why)
	}
	return nil, fmt.Errorf("actor %s: %w: %w while the invocation was committing", id, ErrOutcomeUnknown, why)
}

// enqueue puts req in id's mailbox, activating id when it is not active.
func (r *Runtime) enqueue(ctx context.Context, id ID, req *request) error {
	for attempt := 0; attempt < maxEnqueueAttempts; attempt++ {
		r.mu.RLock()
		a, closed := r.acts[id], r.closed
		r.mu.RUnlock()
		if closed {
			return fmt.Errorf("actor %s: %w", id, ErrClosed)
		}
		reserved := false
		if a == nil {
			var err error
			if a, reserved, err = r.activate(id); err != nil {
				return err
			}
			if reserved {
				if err := a.start(); err != nil {
					return err
				}
			}
		}
		a.mu.Lock()
		if reserved {
			// The activation was made with one pending slot held for its
			// creator, so that it could not be evicted as idle before the
			// request that caused it arrived.
			a.pending.Add(-1)
		}
		if a.closing {
			a.mu.Unlock()
			// The activation is ending; its successor may start only once
			// it is gone, or two would run at once on this node.
			select {
			case <-a.done:
			case <-ctx.Done():
				return fmt.Errorf("actor %s: %w while its previous activation was ending; it will not run", id, ctx.Err())
			}
			continue
		}
		// Counted before the send, so that the goroutine, which counts a
		// turn down as soon as it ran, never takes pending below zero.
		a.pending.Add(1)
		select {
		case a.mailbox <- req:
			a.mu.Unlock()
			return nil
		default:
			a.pending.Add(-1)
			a.mu.Unlock()
			return &MailboxFullError{ID: id, Capacity: r.cfg.MailboxSize}
		}
	}
	return fmt.Errorf("actor %s: its activation ended %d times while Invoke tried to reach it (maxEnqueueAttempts)", id, maxEnqueueAttempts)
}

// activate returns id's activation, creating one if there is none; created
// says the caller made it and must start it, and holds one pending slot
// that the caller's enqueue gives back.
func (r *Runtime) activate(id ID) (a *activation, created bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, false, fmt.Errorf("actor %s: %w", id, ErrClosed)
	}
	if a := r.acts[id]; a != nil {
		return a, false, nil
	}
	f := r.factories[id.Namespace]
	if f == nil {
		return nil, false, fmt.Errorf("actor %s: %w: no factory registered for %q", id, ErrUnknownNamespace, id.Namespace)
	}
	if r.live >= r.cfg.MaxActive && !r.evictLocked() {
		return nil, false, fmt.Errorf("actor %s: %w: the node holds %d activations (Config.MaxActive) and none is idle", id, ErrTooManyActive, r.live)
	}
	a = &activation{
		rt:      r,
		id:      id,
		factory: f,
		keys:    keysFor(id),
		mailbox: make(chan *request, r.cfg.MailboxSize),
		done:    make(chan struct{}),
	}
	r.acts[id] = a
	if len(r.acts) > r.peak {
		r.peak = len(r.acts)
	}
	a.pending.Store(1) // held for the creator's request (see enqueue)
	r.live++
	r.wg.Add(1) // done when its goroutine exits, or when start fails
	return a, true, nil
}

// evictLocked closes the least recently used idle activation among a sample
// and reports whether it found one. r.mu is held.
func (r *Runtime) evictLocked() bool {
	var victim *activation
	var oldest int64
	seen, sampled := 0, 0
	// Map order is random, which is what makes the first evictionSample
	// entries a sample; under the simulation it follows the seed.
	for _, a := range r.acts {
		if seen >= evictionSample+evictionScanLimit || (victim != nil && sampled >= evictionSample) {
			break
		}
		seen++
		a.mu.Lock()
		idle := !a.closing && a.pending.Load() == 0 && a.ready
		used := a.lastUsed.Load()
		a.mu.Unlock()
		if !idle {
			continue
		}
		sampled++
		if victim == nil || used < oldest {
			victim, oldest = a, used
		}
	}
	if victim == nil {
		return false
	}
	victim.mu.Lock()
	ok := !victim.closing && victim.pending.Load() == 0
	if ok {
		victim.shutLocked("evicted")
	}
	victim.mu.Unlock()
	return ok
}

// shrinkMinPeak is the map size below which shrinkLocked does not bother.
const shrinkMinPeak = 1024

// shrinkLocked rebuilds the activation map once it holds a quarter of its
// peak: a Go map never gives back the buckets of deleted entries, so without
// this a node that once held a million activations would keep their slots
// for good. r.mu is held.
func (r *Runtime) shrinkLocked() {
	if r.peak < shrinkMinPeak || len(r.acts) > r.peak/4 {
		return
	}
	m := make(map[ID]*activation, len(r.acts))
	for id, a := range r.acts {
		m[id] = a
	}
	r.acts, r.peak = m, len(m)
}

// Active lists the node's activations (those not shutting down), sorted by
// ID.
func (r *Runtime) Active() []Activation {
	r.mu.RLock()
	out := make([]Activation, 0, len(r.acts))
	for _, a := range r.acts {
		a.mu.Lock()
		if a.ready && !a.closing {
			out = append(out, Activation{ID: a.id, Epoch: a.epoch, Seq: a.committed.Load(), LastUsed: time.Unix(0, a.lastUsed.Load())})
		}
		a.mu.Unlock()
	}
	r.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].ID.Namespace != out[j].ID.Namespace {
			return out[i].ID.Namespace < out[j].ID.Namespace
		}
		return out[i].ID.Key < out[j].ID.Key
	})
	return out
}

// NumActive is how many activations the node holds, including those still
// loading and not those shutting down.
func (r *Runtime) NumActive() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.live
}

// Close stops the runtime: new invocations fail with ErrClosed, queued ones
// that have not started fail with ErrClosed, turns in progress finish (each
// is bounded by its deadline), leases are released, and Close returns when
// every activation goroutine has exited.
func (r *Runtime) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		r.wg.Wait()
		<-r.committerDone
		return nil
	}
	r.closed = true
	for _, a := range r.acts {
		a.mu.Lock()
		a.shutLocked("runtime closed")
		a.mu.Unlock()
	}
	r.mu.Unlock()
	r.wg.Wait()
	// No activation is left to submit a turn.
	r.commits <- nil
	<-r.committerDone
	r.cancel()
	return nil
}

// Abort stops the runtime as a crash would: like Close, but commits in
// flight are cancelled rather than awaited, so their outcome is unknown to
// their callers.
func (r *Runtime) Abort() {
	r.cancel()
	_ = r.Close()
}

// Stats counts the runtime's group commits.
type Stats struct {
	// Batches is how many KV transactions the group committer ran.
	Batches uint64
	// Turns is how many turns they carried (read-only turns included: they
	// are checked against the fence too).
	Turns uint64
}

// Stats returns the runtime's counters.
func (r *Runtime) Stats() Stats {
	return Stats{Batches: r.stats.batches.Load(), Turns: r.stats.turns.Load()}
}
