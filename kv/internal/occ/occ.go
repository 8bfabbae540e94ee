// Package occ is the optimistic concurrency control shared by Kelpie's KV
// backends. A backend supplies an Engine: consistent snapshots, and an
// atomic validate-and-apply commit. This package supplies the rest of the
// kv.DB contract on top of it: transactions that read one snapshot and see
// their own buffered writes (Tx), the read and write conflict sets they
// collect, the commit history that decides conflicts (ConflictLog), the
// retry loop, and an in-memory multi-version store (Mem) that the memory and
// simulated backends build on.
//
// Serializability argument: a transaction reads only the snapshot at its
// read version rv plus its own writes. At commit the engine, holding its
// commit lock, checks that no transaction that committed after rv wrote a
// key inside any range this transaction read. If none did, the transaction
// would have read the same values at the commit point, so it is equivalent
// to running it there, atomically; commits are ordered by version.
package occ

import (
	"context"
	"fmt"
	"sync"

	"github.com/kelpie-go/kelpie/kv"
)

// Op is the kind of a mutation.
type Op uint8

// Mutation kinds.
const (
	OpSet Op = iota + 1
	OpClear
	OpClearRange
)

func (o Op) String() string {
	switch o {
	case OpSet:
		return "set"
	case OpClear:
		return "clear"
	case OpClearRange:
		return "clear-range"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Mutation is one change a commit applies. For OpClearRange, Key and End
// bound the range; for OpSet, Value is the new value.
type Mutation struct {
	Op    Op
	Key   []byte
	Value []byte
	End   []byte
}

// Commit is what a transaction hands its engine to commit.
type Commit struct {
	// ReadVersion is the version of the snapshot the transaction read.
	ReadVersion kv.Version
	// Reads are the ranges the transaction read (its read conflict set).
	Reads []kv.KeyRange
	// Writes are the ranges its mutations touch (its write conflict set).
	Writes []kv.KeyRange
	// Mutations apply in order: every clear-range first, then point
	// writes, which is equivalent to the transaction's own order because
	// point writes inside a cleared range were made after the clear.
	// Their key and value slices are handed over with the commit: the
	// transaction never modifies them afterwards, so an engine may keep
	// them as they are. The Reads, Writes and Mutations slices themselves
	// are not the engine's: it must not keep Reads or Mutations after
	// Commit returns (they are reused); Writes it may keep.
	Mutations []Mutation
}

// Snapshot is a consistent, read-only view of the committed data at one
// version.
type Snapshot interface {
	// Version is the snapshot's version.
	Version() kv.Version
	// Get returns the committed value of key. The slice must not be
	// modified; Tx copies it before handing it out.
	Get(key []byte) ([]byte, bool, error)
	// Scan calls fn with every entry in r, ascending or, with reverse,
	// descending, until fn returns false. Slices passed to fn are only
	// valid during the call.
	Scan(r kv.KeyRange, reverse bool, fn func(key, value []byte) bool) error
	// Release ends the snapshot.
	Release()
}

// Engine is what a backend implements.
type Engine interface {
	// Snapshot returns a snapshot of the latest committed state.
	Snapshot(ctx context.Context) (Snapshot, error)
	// Commit validates c against the commits after c.ReadVersion and, if
	// none conflicts, applies it atomically and durably, returning its
	// version. A conflict is an error wrapping kv.ErrConflict and applies
	// nothing.
	Commit(ctx context.Context, c *Commit) (kv.Version, error)
	// Close releases the engine.
	Close() error
}

// DB implements kv.DB over an Engine.
type DB struct {
	engine Engine

	mu     sync.Mutex
	closed bool
}

var _ kv.DB = (*DB)(nil)

// NewDB returns a kv.DB over e.
func NewDB(e Engine) *DB { return &DB{engine: e} }

// Engine returns the engine under db.
func (db *DB) Engine() Engine { return db.engine }

func (db *DB) isClosed() bool {
	db.mu.Lock()
	defer db.mu.Unlock()
	return db.closed
}

// Transact implements kv.DB.
func (db *DB) Transact(ctx context.Context, fn func(tx kv.Tx) error) error {
	return kv.Retry(ctx, func(int) error { return db.attempt(ctx, fn) })
}

func (db *DB) attempt(ctx context.Context, fn func(tx kv.Tx) error) error {
	if db.isClosed() {
		return kv.ErrClosed
	}
	snap, err := db.engine.Snapshot(ctx)
	if err != nil {
		return err
	}
	tx := newTx(snap)
	err = runReleasing(snap, tx, func() error { return fn(tx) })
	c, hooks := tx.finish()
	defer tx.recycle(c)
	if err != nil {
		return err
	}
	v := c.ReadVersion
	if len(c.Mutations) > 0 {
		// A transaction that wrote nothing needs no commit: it read one
		// consistent snapshot, so it serializes at its read version.
		if db.isClosed() {
			return kv.ErrClosed
		}
		v, err = db.engine.Commit(ctx, c)
		if err != nil {
			return err
		}
	}
	for _, h := range hooks {
		h(v)
	}
	return nil
}

// ReadTransact implements kv.DB.
func (db *DB) ReadTransact(ctx context.Context, fn func(tx kv.ReadTx) error) error {
	if db.isClosed() {
		return kv.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	snap, err := db.engine.Snapshot(ctx)
	if err != nil {
		return err
	}
	tx := newTx(snap)
	defer tx.recycle(nil)
	return runReleasing(snap, tx, func() error { return fn(readOnly{tx}) })
}

// runReleasing runs fn, then ends tx and releases snap, even if fn panics:
// a leaked bbolt read transaction would block Close and file growth. The
// snapshot is released before any commit, so a commit never waits on it.
func runReleasing(snap Snapshot, tx *Tx, fn func() error) error {
	defer snap.Release()
	defer tx.end()
	return fn()
}

// Close implements kv.DB.
func (db *DB) Close() error {
	db.mu.Lock()
	if db.closed {
		db.mu.Unlock()
		return nil
	}
	db.closed = true
	db.mu.Unlock()
	return db.engine.Close()
}

// readOnly hides a Tx's write methods, so that a ReadTransact function
// cannot type-assert its way to them.
type readOnly struct{ tx *Tx }

func (r readOnly) Get(key []byte) ([]byte, bool, error) { return r.tx.Get(key) }
func (r readOnly) GetRange(kr kv.KeyRange, o kv.RangeOptions) ([]kv.KeyValue, error) {
	return r.tx.GetRange(kr, o)
}
func (r readOnly) ReadVersion() kv.Version { return r.tx.ReadVersion() }
