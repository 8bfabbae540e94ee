package actor

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"sort"

	"github.com/kelpie-go/kelpie/kv"
)

// Group commit. Finished turns of every actor on the node go to one
// committer goroutine, which commits whatever has queued up in one KV
// transaction: for each turn it reads the actor's meta, checks the fence
// (checkCommit) and, only if that turn passes, adds its writes, its state
// and its new meta. A turn that fails its check is left out and fails on
// its own; the others commit. So each turn's effects are still atomic and
// fenced, while the store's per-transaction cost is paid once per batch
// instead of once per invocation: that cost, not the runtime, is what
// bounds invocations per second.
const (
	// maxBatchTurns bounds the turns one group commit carries.
	maxBatchTurns = 512
	// maxBatchYields bounds how often the committer yields the processor
	// to let more turns join a batch.
	maxBatchYields = 4
	// commitQueue bounds the turns waiting for the committer; an actor whose
	// turn finds it full waits, which is the backpressure of the store.
	commitQueue = 4096
)

// pendingCommit is one finished turn waiting to commit.
type pendingCommit struct {
	a       *activation
	mine    meta   // the activation's epoch and the seq it expects
	changed bool   // whether to write state, meta and writes
	state   []byte // new state, when changed
	writes  map[string]pendingWrite
	bytes   int // mutation bytes of this turn, as kv counts them

	done    chan struct{} // buffered (1): the committer sends once per submit
	err     error         // set by the committer before it signals done
	version kv.Version
}

// mutationBytes counts what the turn adds to a transaction.
func (p *pendingCommit) mutationBytes() int {
	if !p.changed {
		return 0
	}
	return p.bytes + len(p.a.keys.state) + len(p.state) + len(p.a.keys.meta) + metaBytes
}

// submit hands p to the committer and waits for its outcome. Once the
// committer has it, the outcome is decided by the store, not by deadlines.
func (r *Runtime) submit(p *pendingCommit) {
	select {
	case r.commits <- p:
	case <-r.ctx.Done():
		p.err = fmt.Errorf("actor %s: %w: the runtime stopped before the commit started; rolled back", p.a.id, ErrClosed)
		return
	}
	<-p.done
}

// committer runs group commits until stop is closed. It is stopped only once
// no activation is left to submit.
func (r *Runtime) committer() {
	defer close(r.committerDone)
	batch := make([]*pendingCommit, 0, maxBatchTurns)
	for {
		var first *pendingCommit
		select {
		case first = <-r.commits:
		case <-r.stopCommitter:
			return
		}
		batch = append(batch[:0], first)
		size := first.mutationBytes()
		// Let the turns that are running finish and queue before
		// committing: a few yields of the processor cost far less than a
		// store transaction per turn. It stops as soon as a yield brings
		// nothing new, so a lone turn is not delayed.
		for round := 0; round < maxBatchYields && len(batch) < maxBatchTurns; round++ {
			got := false
		fill:
			for len(batch) < maxBatchTurns {
				select {
				case p := <-r.commits:
					got = true
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
			if !got && round > 0 {
				break
			}
			runtime.Gosched()
		}
		r.commitBatch(batch)
	}
}

// batchError marks an error from the batch's transaction function: the
// transaction was abandoned before its commit, so no turn in it applied.
type batchError struct{ err error }

func (e *batchError) Error() string { return e.err.Error() }
func (e *batchError) Unwrap() error { return e.err }

// commitBatch commits batch and tells each turn its outcome.
func (r *Runtime) commitBatch(batch []*pendingCommit) {
	defer func() {
		for _, p := range batch {
			p.done <- struct{}{}
		}
	}()
	if err := r.ctx.Err(); err != nil {
		for _, p := range batch {
			p.err = fmt.Errorf("actor %s: %w: the runtime stopped before the commit started; rolled back", p.a.id, ErrClosed)
		}
		return
	}
	// Sorted by key so that the transaction's work does not depend on the
	// order turns happened to arrive in.
	sort.Slice(batch, func(i, j int) bool {
		return bytes.Compare(batch[i].a.keys.meta, batch[j].a.keys.meta) < 0
	})
	var version kv.Version
	err := r.cfg.DB.Transact(r.ctx, func(tx kv.Tx) error {
		for _, p := range batch {
			p.err = nil
			mv, ok, err := tx.Get(p.a.keys.meta)
			if err != nil {
				return &batchError{fmt.Errorf("read meta of %s: %w", p.a.id, err)}
			}
			var stored meta
			if ok {
				if stored, err = decodeMeta(p.a.id, mv); err != nil {
					p.err = err
					continue
				}
			}
			if err := checkCommit(p.a.id, p.mine, stored, ok); err != nil {
				p.err = err
				continue
			}
			if !p.changed {
				continue
			}
			if err := applyTurn(tx, p); err != nil {
				// A turn's size was checked before it was queued, so this
				// is the store refusing; the transaction cannot be
				// trusted to hold part of a turn.
				return &batchError{err}
			}
		}
		tx.OnCommit(func(v kv.Version) { version = v })
		return nil
	})
	r.stats.batches.Add(1)
	r.stats.turns.Add(uint64(len(batch)))
	var be *batchError
	for _, p := range batch {
		switch {
		case p.err != nil:
			// Left out of the transaction: it failed on its own.
		case err == nil:
			p.version = version
		case errors.As(err, &be):
			p.err = fmt.Errorf("actor %s: the group commit carrying the turn failed before committing: %w; rolled back", p.a.id, be.err)
		case errors.Is(err, kv.ErrCommitFailed), errors.Is(err, kv.ErrRetryLimit):
			p.err = fmt.Errorf("actor %s: commit: %w; rolled back", p.a.id, err)
		default:
			p.err = fmt.Errorf("actor %s: %w: commit: %w", p.a.id, ErrOutcomeUnknown, err)
		}
	}
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
	if err := tx.Set(p.a.keys.state, p.state); err != nil {
		return fmt.Errorf("actor %s: write state: %w", p.a.id, err)
	}
	if err := tx.Set(p.a.keys.meta, p.mine.next().encode()); err != nil {
		return fmt.Errorf("actor %s: write meta: %w", p.a.id, err)
	}
	return nil
}
