package boltkv

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/kelpie-go/kelpie/kv"
	"github.com/kelpie-go/kelpie/kv/internal/occ"
)

// TestConflictInsideOneBatch drives the committer's batch step directly:
// of two commits from the same snapshot that read and write one key, the
// first in the batch commits and the second conflicts, though neither is
// in the conflict log yet when the batch starts.
func TestConflictInsideOneBatch(t *testing.T) {
	db, err := Open(filepath.Join(t.TempDir(), "kelpie.db"), Options{NoBatch: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	e := db.e
	k := []byte("k")
	mk := func(v string) *commitReq {
		return &commitReq{
			c: &occ.Commit{
				ReadVersion: 0,
				Reads:       []kv.KeyRange{kv.SingleKey(k)},
				Writes:      []kv.KeyRange{kv.SingleKey(k)},
				Mutations:   []occ.Mutation{{Op: occ.OpSet, Key: k, Value: []byte(v)}},
			},
			reply: make(chan commitResult, 1),
		}
	}
	blind := &commitReq{
		c: &occ.Commit{
			Writes:    []kv.KeyRange{kv.SingleKey([]byte("other"))},
			Mutations: []occ.Mutation{{Op: occ.OpSet, Key: []byte("other"), Value: []byte("x")}},
		},
		reply: make(chan commitResult, 1),
	}
	a, b := mk("a"), mk("b")
	e.commitBatch([]*commitReq{a, b, blind})
	ra, rb, rc := <-a.reply, <-b.reply, <-blind.reply
	if ra.err != nil || ra.v != 1 {
		t.Fatalf("first commit = %+v, want version 1", ra)
	}
	if !errors.Is(rb.err, kv.ErrConflict) {
		t.Fatalf("second commit = %+v, want a conflict with the first", rb)
	}
	if rc.err != nil || rc.v != 2 {
		t.Fatalf("blind commit = %+v, want version 2", rc)
	}
	st := db.Stats()
	if st.Batches != 1 || st.Commits != 2 || st.Conflicts != 1 {
		t.Fatalf("stats %+v: want 2 commits and 1 conflict in 1 batch", st)
	}
	snap, err := e.Snapshot(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	v, ok, err := snap.Get(k)
	if err != nil || !ok || string(v) != "a" || snap.Version() != 2 {
		t.Fatalf("after the batch k = %q, %v, %v at version %d", v, ok, err, snap.Version())
	}
}
