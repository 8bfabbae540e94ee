package actor

import (
	"errors"
	"fmt"
	"sort"

	"github.com/kelpie-go/kelpie/kv"
)

// Group commit. Finished turns of every actor on the node go to one
// committer goroutine, which commits whatever has queued up in one KV
// transaction: for each turn it reads the actor's record, checks the fence
// (checkCommit) and, only if that turn passes, adds its writes and its new
// record. A turn that fails its check is left out and fails on its own; the
// others commit. So each turn's effects are still atomic and fenced, while
// the store's per-transaction cost is paid once per batch instead of once
// per invocation. The committer never waits for a batch to fill: it takes
// every turn that queued while its last commit ran, so a slow store (an
// fsync per commit) gathers large batches and a fast one small ones, and
// no turn waits for company. (Yielding the processor to let turns gather
// cost more than it saved: a yielding goroutine goes to the back of the
// scheduler's global queue, and every turn behind the committer waited
// with it.)
//
// The committer decides each turn's outcome and replies to its caller
// (settle). Turns of one actor arrive in the order the actor ran them and
// are checked in that order; a turn whose chain is broken (an earlier turn
// of it failed) fails without being looked at, since it ran on effects that
// never committed.
const (
	// maxBatchTurns bounds the turns one group commit carries.
	maxBatchTurns = 512
	// commitQueue bounds the turns waiting for the committer; an actor whose
	// turn finds it full waits, which is the backpressure of the store.
	commitQueue = 4096
)

// pendingCommit is one finished turn waiting to commit. It lives in its
// request; once the committer has replied, the caller may reuse both.
type pendingCommit struct {
	a       *activation
	req     *request
	chain   uint64 // the activation's chain the turn ran in
	mine    meta   // the activation's epoch and the seq it expects
	changed bool   // whether to write the record and the writes
	record  []byte // the new record, when changed
	state   []byte // record's state part
	writes  map[string]pendingWrite
	bytes   int    // mutation bytes of the writes, as kv counts them
	out     []byte // the handler's reply

	err     error // set by the committer
	version kv.Version
}

// mutationBytes counts what the turn adds to a transaction.
func (p *pendingCommit) mutationBytes() int {
	if !p.changed {
		return 0
	}
	return p.bytes + len(p.a.keys.record) + len(p.record)
}

// committer runs group commits until it receives nil, which Close sends
// once no activation is left to submit.
func (r *Runtime) committer() {
	defer close(r.committerDone)
	batch := make([]*pendingCommit, 0, maxBatchTurns)
	for {
		first := <-r.commits
		if first == nil {
			return
		}
		batch = append(batch[:0], first)
		size := first.mutationBytes()
	fill:
		for len(batch) < maxBatchTurns {
			select {
			case p := <-r.commits:
				if size+p.mutationBytes() > kv.TransactionLimit {
					r.commitBatch(batch)
					batch, size = append(batch[:0], p), 0
				} else {
					batch = append(batch, p)
				}
				size += p.mutationBytes()
			default:
				break fill
			}
		}
		r.commitBatch(batch)
	}
}

// batchError marks an error from the batch's transaction function: the
// transaction was abandoned before its commit, so no turn in it applied.
type batchError struct{ err error }

func (e *batchError) Error() string { return e.err.Error() }
func (e *batchError) Unwrap() error { return e.err }

// commitBatch commits batch and settles each turn.
func (r *Runtime) commitBatch(batch []*pendingCommit) {
	defer func() {
		for _, p := range batch {
			r.settle(p)
		}
	}()
	if err := r.ctx.Err(); err != nil {
		for _, p := range batch {
			p.err = fmt.Errorf("actor %s: %w: the runtime stopped before the commit started; rolled back", p.a.id, ErrClosed)
		}
		return
	}
	g := &r.group
	g.batch, g.version = batch, 0
	err := r.cfg.DB.Transact(r.ctx, g.fn)
	version := g.version
	g.batch = nil
	clear(g.failed) // holds no activation past its batch
	r.stats.batches.Add(1)
	r.stats.turns.Add(uint64(len(batch)))
	for _, p := range batch {
		switch {
		case p.err != nil:
			// Left out of the transaction: it failed on its own.
		case err == nil:
			p.version = version
		default:
			p.err = batchFailure(p.a.id, err)
		}
	}
}

// batchFailure is the error of a turn whose group commit failed with err.
func batchFailure(id ID, err error) error {
	var be *batchError
	switch {
	case errors.As(err, &be):
		return fmt.Errorf("actor %s: the group commit carrying the turn failed before committing: %w; rolled back", id, be.err)
	case errors.Is(err, kv.ErrCommitFailed), errors.Is(err, kv.ErrRetryLimit):
		return fmt.Errorf("actor %s: commit: %w; rolled back", id, err)
	}
	return fmt.Errorf("actor %s: %w: commit: %w", id, ErrOutcomeUnknown, err)
}

// groupTx is the committer's transaction function and what it works on,
// made once per runtime so that a group commit allocates no closures.
type groupTx struct {
	batch   []*pendingCommit
	version kv.Version
	// failed holds, per attempt, the chain a turn of this batch broke, per
	// activation.
	failed   map[*activation]uint64
	fn       func(kv.Tx) error
	onCommit func(kv.Version)
}

func (g *groupTx) init() {
	g.failed = map[*activation]uint64{}
	g.fn = g.run
	g.onCommit = func(v kv.Version) { g.version = v }
}

func (g *groupTx) fail(p *pendingCommit, err error) {
	p.err = err
	g.failed[p.a] = p.chain
}

// run checks each turn of the batch against its stored record and adds
// the turns that pass to tx.
func (g *groupTx) run(tx kv.Tx) error {
	clear(g.failed)
	for _, p := range g.batch {
		p.err = nil
		if c, ok := g.failed[p.a]; ok && c == p.chain || p.a.broken.Load() == p.chain {
			p.err = errBrokenChain
			continue
		}
		rec, ok, err := tx.Get(p.a.keys.record)
		if err != nil {
			return &batchError{fmt.Errorf("read record of %s: %w", p.a.id, err)}
		}
		var stored meta
		if ok {
			if stored, _, err = decodeRecord(p.a.id, rec); err != nil {
				g.fail(p, err)
				continue
			}
		}
		if err := checkCommit(p.a.id, p.mine, stored, ok); err != nil {
			g.fail(p, err)
			continue
		}
		if !p.changed {
			continue
		}
		if err := applyTurn(tx, p); err != nil {
			// A turn's size was checked before it was queued, so this is
			// the store refusing; the transaction cannot be trusted to
			// hold part of a turn.
			return &batchError{err}
		}
	}
	tx.OnCommit(g.onCommit)
	return nil
}

// errBrokenChain marks, inside commitBatch, a turn whose chain broke
// earlier; settle words its error.
var errBrokenChain = errors.New("broken chain")

// settle tells the activation and the caller the outcome of p. The turn's
// effects on the activation are recorded before the caller is told, so
// that the caller's next invocation finds them.
func (r *Runtime) settle(p *pendingCommit) {
	a := p.a
	switch {
	case p.err == nil:
		if p.changed {
			a.base = p.state
			a.committed.Store(p.mine.seq + 1)
			if r.cfg.Observer != nil {
				r.cfg.Observer.Committed(a.id, p.mine.epoch, p.mine.seq+1, p.version)
			}
		}
	case p.err == errBrokenChain:
		why := a.brokenBy
		if why == nil {
			why = fmt.Errorf("%w: the runtime stopped before its commit started", ErrClosed)
		}
		p.err = fmt.Errorf("actor %s: %w: an earlier invocation of this actor, whose effects this one saw, did not commit (%w)", a.id, ErrRolledBack, noEffect(why))
	default:
		if a.broken.Load() != p.chain {
			a.brokenBy = p.err
			a.broken.Store(p.chain)
		}
		switch {
		case errors.Is(p.err, ErrFenced), errors.Is(p.err, ErrOutcomeUnknown), errors.Is(p.err, kv.ErrCorrupt):
			// Fenced, or the state in the store is no longer known: this
			// activation is done; the next one reloads.
			a.drop(p.err)
		}
	}
	req, out, err := p.req, p.out, p.err
	if err != nil {
		out = nil
	}
	// From here on the caller may reuse req, and p within it.
	req.reply <- result{out: out, err: err}
	a.inflight.Add(-1)
	if a.waiting.Load() {
		select {
		case a.settled <- struct{}{}:
		default:
		}
	}
}

// drop ends the activation from the committer: it closes before the
// failed turn's caller is told, so that the caller's next invocation
// reaches a fresh activation.
func (a *activation) drop(why error) {
	r := a.rt
	r.mu.Lock()
	a.mu.Lock()
	if a.dropped == nil {
		a.dropped = why
	}
	a.shutLocked(why.Error())
	a.mu.Unlock()
	r.mu.Unlock()
}

// applyTurn adds one turn's mutations to tx, in key order.
func applyTurn(tx kv.Tx, p *pendingCommit) error {
	keys := make([]string, 0, len(p.writes))
	for k := range p.writes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		w := p.writes[k]
		var err error
		if w.clear {
			err = tx.Clear([]byte(k))
		} else {
			err = tx.Set([]byte(k), w.value)
		}
		if err != nil {
			return fmt.Errorf("actor %s: write: %w", p.a.id, err)
		}
	}
	if err := tx.Set(p.a.keys.record, p.record); err != nil {
		return fmt.Errorf("actor %s: write record: %w", p.a.id, err)
	}
	return nil
}
