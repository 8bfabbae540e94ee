// Package simkv is the simulated kv.DB: the in-memory multi-version store of
// memkv made durable by a simulated disk with crash semantics and faults.
//
// Every commit is validated (optimistic concurrency, as in memkv), then its
// mutations are encoded as one checksummed record, appended to the disk's
// log (written, not yet durable), synced, and only then applied in memory
// and acknowledged. The disk (Disk) belongs to the node, stored with
// sim.Node.Persistent so it survives restarts, and implements sim.Crasher:
// killing the node drops every written but unsynced byte, so exactly the
// acknowledged commits survive. Reopening replays the log; a torn last
// record (left by the kv.torn_write fault) is detected by its length and
// CRC-32C and discarded, which is safe because a torn record was never
// synced and so never acknowledged. Damage anywhere but the tail is
// reported as kv.ErrCorrupt. Faults (kv.read_error, kv.write_error,
// kv.commit_error, kv.fsync_error, kv.torn_write, kv.latency) are declared
// here and consulted at the I/O points their docs name; every failed
// commit is invisible, before and after a restart. Every I/O takes a
// latency drawn from the node's own random stream.
//
// The package uses only memory, sync and time, so it runs under the
// deterministic executor (wasip1).
package simkv

import (
	"context"
	"fmt"

	"github.com/kelpie-go/kelpie/kv"
	"github.com/kelpie-go/kelpie/kv/internal/occ"
	"github.com/kelpie-go/kelpie/sim"
)

// DB is a kv.DB on a simulated disk.
type DB struct {
	*occ.DB
	e *engine
}

var _ kv.DB = (*DB)(nil)

// Open opens a store on disk, replaying its log. Only one DB may be open on
// a disk at a time; a crash or Close ends it.
func Open(disk *Disk) (*DB, error) {
	mem := occ.NewMem()
	gen, rec, err := disk.openLog(mem.Replay)
	if err != nil {
		return nil, err
	}
	e := &engine{disk: disk, gen: gen, mem: mem, recovery: rec}
	return &DB{DB: occ.NewDB(e), e: e}, nil
}

// persistentKey is the node's persistent value that holds the disk.
const persistentKey = "simkv/disk"

// NodeDisk returns the node's disk, creating it on first use with the
// simulation's faults, the node's random stream and NodeLatencies.
func NodeDisk(n *sim.Node) *Disk {
	return n.Persistent(persistentKey, func() any {
		return NewDisk(DiskOptions{
			Faults: n.Sim().Faults(),
			Node:   n.Name(),
			Rand:   n.Rand("simkv"),
			Record: n.Record,
			Read:   NodeLatencies.Read,
			Write:  NodeLatencies.Write,
			Sync:   NodeLatencies.Sync,
		})
	}).(*Disk)
}

// OpenNode opens the node's store: call it from the node's boot function.
// The DB is closed when the node's incarnation stops; a kill also crashes
// the disk (see Disk.Crash).
func OpenNode(n *sim.Node) (*DB, error) {
	db, err := Open(NodeDisk(n))
	if err != nil {
		return nil, fmt.Errorf("node %s: open store: %w", n.Name(), err)
	}
	n.OnStop(func() { _ = db.Close() })
	return db, nil
}

// Recovery reports what opening the store found on its disk.
func (db *DB) Recovery() Recovery { return db.e.recovery }

// Version is the latest committed version.
func (db *DB) Version() kv.Version { return db.e.mem.Version() }

// Disk is the disk under the store.
func (db *DB) Disk() *Disk { return db.e.disk }

type engine struct {
	disk     *Disk
	gen      uint64
	mem      *occ.Mem
	recovery Recovery
}

func (e *engine) Snapshot(ctx context.Context) (occ.Snapshot, error) {
	e.disk.mu.Lock()
	alive := e.disk.alive(e.gen)
	e.disk.mu.Unlock()
	if !alive {
		return nil, errDead
	}
	s, err := e.mem.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	return &snapshot{Snapshot: s, e: e}, nil
}

func (e *engine) Commit(ctx context.Context, c *occ.Commit) (kv.Version, error) {
	v, err := e.mem.CommitWith(c, func(v kv.Version) error {
		return e.disk.commit(e.gen, v, c.Mutations)
	})
	if err == nil {
		e.disk.record("kv commit v=%d mutations=%d", v, len(c.Mutations))
	}
	return v, err
}

func (e *engine) Close() error {
	e.disk.close(e.gen)
	return e.mem.Close()
}

// snapshot reads the in-memory state, each read standing for one disk read
// that can be slow or fail.
type snapshot struct {
	occ.Snapshot
	e *engine
}

func (s *snapshot) Get(key []byte) ([]byte, bool, error) {
	if err := s.e.disk.read(s.e.gen); err != nil {
		return nil, false, err
	}
	return s.Snapshot.Get(key)
}

func (s *snapshot) Scan(r kv.KeyRange, reverse bool, fn func(k, v []byte) bool) error {
	if err := s.e.disk.read(s.e.gen); err != nil {
		return err
	}
	return s.Snapshot.Scan(r, reverse, fn)
}
