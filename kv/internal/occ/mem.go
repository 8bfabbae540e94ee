package occ

import (
	"bytes"
	"context"
	"sync"
	"sync/atomic"

	"github.com/google/btree"
	"github.com/kelpie-go/kelpie/kv"
)

type item struct {
	key, value []byte
}

func itemLess(a, b item) bool { return bytes.Compare(a.key, b.key) < 0 }

// Mem is an in-memory multi-version store: the latest committed state is a
// copy-on-write B-tree, and snapshots are O(1) and never block commits.
// Stored slices are never modified after they are inserted, so snapshots can
// hand them out without copying.
//
// Copy-on-write is paid only when a reader needs it. Every snapshot of one
// version shares one frozen view of the tree (a generation: a copy of the
// tree's header, so the same root), counted while in use. A commit that
// finds a live snapshot of the version it replaces first clones the tree,
// so its writes copy the nodes they touch and the snapshot keeps the old
// ones; a commit that finds every snapshot of that version released (the
// common case for a single writer: read, release, commit) writes the nodes
// in place, because no one can see them. Cloning the tree for every
// snapshot instead made every commit copy each node it touched, which was
// most of the cost of a small transaction.
type Mem struct {
	mu      sync.Mutex
	tree    *btree.BTreeG[item]
	version kv.Version
	log     *ConflictLog
	closed  bool
	// cur is the generation that snapshots of version share, or nil when
	// none was taken since the last commit.
	cur *memGen
	// spare is an ended generation no snapshot holds, for reuse.
	spare *memGen
	// commitMu serialises commits, held across the durability hook (which
	// may sleep) so that validation and apply see no commit in between.
	// Snapshots take only mu, so they are not held up by a slow commit.
	commitMu sync.Mutex
}

// NewMem returns an empty store at version 0.
func NewMem() *Mem {
	return &Mem{tree: btree.NewG(btreeDegree, itemLess), log: NewConflictLog(0)}
}

// Version is the latest committed version.
func (m *Mem) Version() kv.Version {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.version
}

// Snapshot implements Engine.
func (m *Mem) Snapshot(ctx context.Context) (Snapshot, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, kv.ErrClosed
	}
	if m.cur == nil {
		// A copy of the header, not a Clone: it shares the root and the
		// copy-on-write context, and it is never written through. The
		// commit that replaces this version clones the tree if the
		// generation is still in use (see prepareWriteLocked).
		g := m.spare
		if g != nil {
			m.spare = nil
		} else {
			g = new(memGen)
		}
		g.version = m.version
		g.header = *m.tree
		g.tree = &g.header
		m.cur = g
	}
	m.cur.refs.Add(1)
	return &memSnap{gen: m.cur, tree: m.cur.tree, version: m.version}, nil
}

// memGen is the frozen view shared by the snapshots of one version.
type memGen struct {
	tree    *btree.BTreeG[item] // &header
	header  btree.BTreeG[item]
	version kv.Version
	// refs counts the snapshots not yet released. It goes up only under
	// Mem.mu and is read under Mem.mu by the commit that ends the
	// generation; Release brings it down without the lock. A release racing
	// that read at worst makes the commit clone needlessly, and the atomic
	// orders the released snapshot's reads before any in-place write.
	refs atomic.Int64
}

// prepareWriteLocked makes m.tree safe to write: if a snapshot of the
// current version is still in use, the tree is cloned so that writes copy
// the nodes they touch instead of changing what the snapshot reads. Nodes
// of older versions are never written in place: the writes that followed
// them were made after a clone. The current generation ends either way,
// since the version is about to change.
func (m *Mem) prepareWriteLocked() {
	if m.cur != nil {
		if m.cur.refs.Load() > 0 {
			m.tree = m.tree.Clone()
		} else {
			// No snapshot holds it (a released one drops its pointer), so
			// the next generation may reuse it.
			m.spare = m.cur
		}
	}
	m.cur = nil
}

// Commit implements Engine, with no durability step.
func (m *Mem) Commit(ctx context.Context, c *Commit) (kv.Version, error) {
	return m.CommitWith(c, nil)
}

// CommitWith validates c, then calls persist (if not nil) with the version
// the commit will get, and applies c only if persist succeeds. persist is
// where a durable backend writes and syncs; an error from it leaves the
// store as it was.
func (m *Mem) CommitWith(c *Commit, persist func(v kv.Version) error) (kv.Version, error) {
	m.commitMu.Lock()
	defer m.commitMu.Unlock()
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return 0, kv.ErrClosed
	}
	if err := m.log.Check(c.ReadVersion, c.Reads); err != nil {
		m.mu.Unlock()
		return 0, err
	}
	v := m.version + 1
	m.mu.Unlock()
	if persist != nil {
		if err := persist(v); err != nil {
			return 0, err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		// Closed while persisting: the commit may be durable, but this
		// handle can no longer apply it; a reopen replays it.
		return 0, kv.ErrClosed
	}
	m.applyLocked(c.Mutations, true)
	m.version = v
	m.log.Add(v, c.Writes)
	return v, nil
}

// Replay applies mutations as the commit at version v without validation,
// for rebuilding a store from its log. v must be greater than Version.
func (m *Mem) Replay(v kv.Version, muts []Mutation) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.applyLocked(muts, false)
	m.version = v
	m.log = NewConflictLog(v)
}

// applyLocked applies muts to the latest state. With own, the mutations'
// slices are handed over (a Tx's buffers, never modified after the commit)
// and stored as they are; otherwise they are copied.
func (m *Mem) applyLocked(muts []Mutation, own bool) {
	m.prepareWriteLocked()
	for _, mu := range muts {
		switch mu.Op {
		case OpSet:
			it := item{key: mu.Key, value: mu.Value}
			if !own || it.value == nil {
				it = item{key: clone(mu.Key), value: cloneNonNil(mu.Value)}
			}
			m.tree.ReplaceOrInsert(it)
		case OpClear:
			m.tree.Delete(item{key: mu.Key})
		case OpClearRange:
			var drop []item
			m.tree.AscendRange(item{key: mu.Key}, item{key: mu.End}, func(it item) bool {
				drop = append(drop, it)
				return true
			})
			for _, it := range drop {
				m.tree.Delete(it)
			}
		}
	}
}

// Close implements Engine.
func (m *Mem) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}

// Len is the number of keys in the latest state.
func (m *Mem) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.tree.Len()
}

type memSnap struct {
	gen     *memGen // nil once released
	tree    *btree.BTreeG[item]
	version kv.Version
}

func (s *memSnap) Version() kv.Version { return s.version }

func (s *memSnap) Get(key []byte) ([]byte, bool, error) {
	it, ok := s.tree.Get(item{key: key})
	return it.value, ok, nil
}

func (s *memSnap) Scan(r kv.KeyRange, reverse bool, fn func(k, v []byte) bool) error {
	if !reverse {
		s.tree.AscendRange(item{key: r.Begin}, item{key: r.End}, func(it item) bool { return fn(it.key, it.value) })
		return nil
	}
	s.tree.DescendLessOrEqual(item{key: r.End}, func(it item) bool {
		if bytes.Compare(it.key, r.Begin) < 0 {
			return false
		}
		if bytes.Equal(it.key, r.End) {
			return true
		}
		return fn(it.key, it.value)
	})
	return nil
}

// Release ends the snapshot. It is idempotent; the snapshot's owner calls
// it once its reads are done (occ.DB does so before it commits), from one
// goroutine.
func (s *memSnap) Release() {
	if s.gen == nil {
		return
	}
	s.gen.refs.Add(-1)
	s.gen = nil
	s.tree = nil
}
