// Package memkv is the in-memory kv.DB: a multi-version B-tree with
// optimistic concurrency control. Transactions read an O(1) snapshot of the
// tree and buffer their writes; a commit is checked against the write sets
// of the commits made since its snapshot and fails with kv.ErrConflict if
// any of them wrote a key it read, which makes concurrent transactions
// serializable. Nothing is durable: the data lives as long as the DB value.
// It is the backend for unit tests and the model the other backends are
// measured against.
package memkv

import (
	"github.com/kelpie-go/kelpie/kv"
	"github.com/kelpie-go/kelpie/kv/internal/occ"
)

// DB is an in-memory kv.DB.
type DB struct {
	*occ.DB
	mem *occ.Mem
}

var _ kv.DB = (*DB)(nil)

// New returns an empty in-memory database.
func New() *DB {
	m := occ.NewMem()
	return &DB{DB: occ.NewDB(m), mem: m}
}

// Version is the latest committed version.
func (db *DB) Version() kv.Version { return db.mem.Version() }

// Len is the number of keys stored.
func (db *DB) Len() int { return db.mem.Len() }
