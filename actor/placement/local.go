package placement

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/kelpie-go/kelpie/kv"
)

// LocalEpochKey is the KV key where Local keeps the epoch of the latest
// process start.
var LocalEpochKey = []byte("kelpie/placement/local/epoch")

// Local is the single-node placement: its node may activate every actor.
// Its epoch is bumped in the KV once, when it is created, and shared by all
// the leases it grants; so every activation of a restarted process carries a
// larger epoch than any activation of the process before it, and a commit
// from a process that should be gone is fenced. Its leases are Sole: one
// process owns its store (bbolt locks its file), so no older holder can be
// running, and activation records nothing. Within the process it refuses a
// second lease on an actor it already holds.
type Local struct {
	node   string
	epoch  uint64
	closed atomic.Bool // set under mu

	mu   sync.Mutex
	held map[string]*localHold
	peak int // the most entries held has had since it was last rebuilt
}

// localHold is one lease Local granted. The lease carries it, so that
// Check, which the runtime calls before every turn, reads two atomics
// instead of taking the lock and looking the actor up.
type localHold struct {
	owner    *Local
	released atomic.Bool // set under owner.mu
}

// shrinkMinPeak is the map size below which Local does not rebuild it.
const shrinkMinPeak = 1024

// NewLocal creates the placement for node over db, bumping the stored epoch.
func NewLocal(ctx context.Context, db kv.DB, node string) (*Local, error) {
	if err := CheckNodeName(node); err != nil {
		return nil, err
	}
	if db == nil {
		return nil, errors.New("placement: NewLocal: db is nil")
	}
	var epoch uint64
	err := db.Transact(ctx, func(tx kv.Tx) error {
		v, ok, err := tx.Get(LocalEpochKey)
		if err != nil {
			return err
		}
		prev := uint64(0)
		if ok {
			if len(v) != 8 {
				return fmt.Errorf("placement: %q holds %d bytes, want an 8-byte epoch: %w", LocalEpochKey, len(v), kv.ErrCorrupt)
			}
			prev = binary.BigEndian.Uint64(v)
		}
		if prev == ^uint64(0) {
			return fmt.Errorf("placement: local epoch is exhausted at %d", prev)
		}
		epoch = prev + 1
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], epoch)
		return tx.Set(LocalEpochKey, b[:])
	})
	if err != nil {
		return nil, fmt.Errorf("placement: bump local epoch: %w", err)
	}
	return &Local{node: node, epoch: epoch, held: map[string]*localHold{}}, nil
}

// Epoch is the epoch of every lease this Local grants.
func (l *Local) Epoch() uint64 { return l.epoch }

// Node is the node the placement grants to.
func (l *Local) Node() string { return l.node }

// Acquire grants actor to this node.
func (l *Local) Acquire(ctx context.Context, actor string) (Lease, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed.Load() {
		return Lease{}, fmt.Errorf("acquire %s: %w: the placement is closed", actor, ErrLeaseLost)
	}
	if _, ok := l.held[actor]; ok {
		return Lease{}, fmt.Errorf("acquire %s: %w", actor, ErrHeld)
	}
	h := &localHold{owner: l}
	l.held[actor] = h
	if len(l.held) > l.peak {
		l.peak = len(l.held)
	}
	return Lease{Actor: actor, Node: l.node, Epoch: l.epoch, Sole: true, local: h}, nil
}

// Check reports whether the lease is one this Local granted and still holds.
func (l *Local) Check(ls Lease) error {
	if l.closed.Load() {
		return fmt.Errorf("%s: %w: the placement is closed", ls, ErrLeaseLost)
	}
	if ls.Epoch != l.epoch || ls.Node != l.node {
		return fmt.Errorf("%s: %w: this process grants epoch %d on %s", ls, ErrLeaseLost, l.epoch, l.node)
	}
	if h := ls.local; h != nil && h.owner == l {
		if h.released.Load() {
			return fmt.Errorf("%s: %w: it was released", ls, ErrLeaseLost)
		}
		return nil
	}
	// A lease rebuilt from its exported fields: the table decides.
	l.mu.Lock()
	defer l.mu.Unlock()
	if h, ok := l.held[ls.Actor]; !ok || h.released.Load() {
		return fmt.Errorf("%s: %w: it was released", ls, ErrLeaseLost)
	}
	return nil
}

// Release forgets the lease.
func (l *Local) Release(ctx context.Context, ls Lease) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ls.Epoch != l.epoch {
		return fmt.Errorf("release %s: %w: this process grants epoch %d", ls, ErrLeaseLost, l.epoch)
	}
	h, ok := l.held[ls.Actor]
	if !ok || ls.local != nil && ls.local != h {
		return fmt.Errorf("release %s: %w: not held", ls, ErrLeaseLost)
	}
	h.released.Store(true)
	delete(l.held, ls.Actor)
	// A Go map keeps the buckets of deleted entries; rebuild it once it is
	// down to a quarter of its peak.
	if l.peak >= shrinkMinPeak && len(l.held) <= l.peak/4 {
		m := make(map[string]*localHold, len(l.held))
		for k, h := range l.held {
			m[k] = h
		}
		l.held, l.peak = m, len(m)
	}
	return nil
}

// Held is how many leases the placement holds.
func (l *Local) Held() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.held)
}

// Close makes every lease invalid; Acquire fails afterwards.
func (l *Local) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed.Store(true)
	for _, h := range l.held {
		h.released.Store(true)
	}
	l.held = map[string]*localHold{}
}
