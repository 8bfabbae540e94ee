package actor

import (
	"encoding/binary"
	"fmt"

	"github.com/kelpie-go/kelpie/actor/placement"
	"github.com/kelpie-go/kelpie/kv"
)

// meta is what the store keeps next to an actor's state: the epoch of the
// activation that last committed, and how many state commits there have
// been. It is read inside every invocation's transaction, which puts it in
// the transaction's conflict set: that is the fence.
type meta struct {
	epoch uint64
	seq   uint64
}

const metaBytes = 16

func (m meta) encode() []byte {
	b := make([]byte, metaBytes)
	binary.BigEndian.PutUint64(b[0:8], m.epoch)
	binary.BigEndian.PutUint64(b[8:16], m.seq)
	return b
}

func decodeMeta(id ID, b []byte) (meta, error) {
	if len(b) != metaBytes {
		return meta{}, fmt.Errorf("actor %s: meta is %d bytes, want %d: %w", id, len(b), metaBytes, kv.ErrCorrupt)
	}
	return meta{epoch: binary.BigEndian.Uint64(b[0:8]), seq: binary.BigEndian.Uint64(b[8:16])}, nil
}

// The fencing protocol. These functions do no I/O: the runtime reads the
// stored meta inside a transaction and asks them what to do.
//
// An activation with lease epoch E loads the state and the meta (epoch F,
// sequence S). It may run only if F <= E: a larger stored epoch means a newer
// activation exists and this lease is stale. Unless its lease is Sole, it
// then claims the actor in the same transaction: if F < E it writes (E, S),
// so the meta names the newest activation before that activation runs a
// turn. Each later commit reads the meta again, in the commit's transaction,
// and is allowed only if the stored epoch is still <= E and the stored
// sequence is still the one this activation last saw (no other activation
// committed in between: its in-memory state is current). A commit that
// changes anything writes (E, S+1). So once an activation with epoch E has
// claimed or committed, every activation with an older epoch is fenced off
// for good, and an activation that missed another's commit fails instead of
// overwriting it. A claimed actor that never committed has a meta with
// sequence 0 and no state.

// checkLoad decides whether an activation with epoch may use the state it
// loaded. statePresent and metaPresent say which of the two keys exist.
func checkLoad(id ID, epoch uint64, stored meta, metaPresent, statePresent bool) error {
	// Only a claim without a commit leaves meta without state.
	if statePresent && !metaPresent || metaPresent && !statePresent && stored.seq != 0 {
		return fmt.Errorf("actor %s: state present=%v but meta present=%v (commit %d): %w", id, statePresent, metaPresent, stored.seq, kv.ErrCorrupt)
	}
	if metaPresent && stored.epoch > epoch {
		return &FencedError{ID: id, Epoch: epoch, StoredEpoch: stored.epoch, Seq: stored.seq}
	}
	return nil
}

// claims says whether an activation with lease l must record its epoch over
// the stored meta before it runs.
func claims(l placement.Lease, stored meta, metaPresent bool) bool {
	return !l.Sole && (!metaPresent || stored.epoch < l.Epoch)
}

// checkCommit decides whether the activation at (epoch, seq) may commit over
// the stored meta. A never-committed actor has no meta and seq 0.
func checkCommit(id ID, mine meta, stored meta, present bool) error {
	if !present {
		if mine.seq != 0 {
			return fmt.Errorf("actor %s: meta vanished after commit %d: %w", id, mine.seq, kv.ErrCorrupt)
		}
		return nil
	}
	if stored.epoch > mine.epoch {
		return &FencedError{ID: id, Epoch: mine.epoch, StoredEpoch: stored.epoch, Seq: stored.seq}
	}
	if stored.seq != mine.seq {
		return &FencedError{ID: id, Epoch: mine.epoch, StoredEpoch: stored.epoch, Seq: stored.seq, MySeq: mine.seq, Stale: true}
	}
	return nil
}

// next is the meta a state-changing commit by mine writes.
func (m meta) next() meta { return meta{epoch: m.epoch, seq: m.seq + 1} }
