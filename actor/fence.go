package actor

import (
	"encoding/binary"
	"fmt"

	"github.com/kelpie-go/kelpie/actor/placement"
	"github.com/kelpie-go/kelpie/kv"
)

// meta is what the store keeps with an actor's state: the epoch of the
// activation that last committed (or claimed) it, and how many state
// commits there have been. It is read inside every invocation's
// transaction, which puts it in the transaction's conflict set: that is the
// fence.
type meta struct {
	epoch uint64
	seq   uint64
}

// An actor's record is one KV value holding its meta and, once it has
// committed, its state: a format byte, the epoch and the sequence (big
// endian), then the state's bytes. One key for both means a commit writes
// one value and a load reads one, and a state can never be found without
// the meta that fences it, or the other way round. A record at sequence 0
// is a claim by an activation that never committed, and holds no state;
// from sequence 1 on the rest of the record is the committed state, which
// may be empty.
const (
	recordFormat      byte = 1
	recordHeaderBytes      = 1 + 8 + 8
)

// appendRecord appends the record of meta m and state to dst.
func appendRecord(dst []byte, m meta, state []byte) []byte {
	dst = append(dst, recordFormat)
	dst = binary.BigEndian.AppendUint64(dst, m.epoch)
	dst = binary.BigEndian.AppendUint64(dst, m.seq)
	return append(dst, state...)
}

// decodeRecord splits a stored record. state is nil for a claim (sequence
// 0) and a sub-slice of b otherwise.
func decodeRecord(id ID, b []byte) (m meta, state []byte, err error) {
	if len(b) < recordHeaderBytes {
		return meta{}, nil, fmt.Errorf("actor %s: record is %d bytes, shorter than its %d-byte header: %w", id, len(b), recordHeaderBytes, kv.ErrCorrupt)
	}
	if b[0] != recordFormat {
		return meta{}, nil, fmt.Errorf("actor %s: record has format %d, want %d: %w", id, b[0], recordFormat, kv.ErrCorrupt)
	}
	m = meta{epoch: binary.BigEndian.Uint64(b[1:9]), seq: binary.BigEndian.Uint64(b[9:17])}
	if m.seq == 0 {
		if len(b) > recordHeaderBytes {
			return meta{}, nil, fmt.Errorf("actor %s: record of a claim (commit 0) holds %d bytes of state: %w", id, len(b)-recordHeaderBytes, kv.ErrCorrupt)
		}
		return m, nil, nil
	}
	// Never nil (b holds at least the header): a committed empty state is
	// not the same as none.
	return m, b[recordHeaderBytes:], nil
}

// The fencing protocol. These functions do no I/O: the runtime reads the
// stored meta inside a transaction and asks them what to do.
//
// An activation with lease epoch E loads the state and the meta (epoch F,
// sequence S). It may run only if F <= E: a larger stored epoch means a newer
// activation exists and this lease is stale. Unless its lease is Sole, it
// then claims the actor in the same transaction: if F < E it writes (E, S)
// with the state it read,
// so the meta names the newest activation before that activation runs a
// turn. Each later commit reads the meta again, in the commit's transaction,
// and is allowed only if the stored epoch is still <= E and the stored
// sequence is still the one this activation last saw (no other activation
// committed in between: its in-memory state is current). A commit that
// changes anything writes (E, S+1). So once an activation with epoch E has
// claimed or committed, every activation with an older epoch is fenced off
// for good, and an activation that missed another's commit fails instead of
// overwriting it. A claimed actor that never committed has a record at
// sequence 0, with no state.

// checkLoad decides whether an activation with epoch may use the record
// it loaded (stored, if present).
func checkLoad(id ID, epoch uint64, stored meta, present bool) error {
	if present && stored.epoch > epoch {
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
// the stored meta. A never-committed, never-claimed actor has no record and
// seq 0.
func checkCommit(id ID, mine meta, stored meta, present bool) error {
	if !present {
		if mine.seq != 0 {
			return fmt.Errorf("actor %s: record vanished after commit %d: %w", id, mine.seq, kv.ErrCorrupt)
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
