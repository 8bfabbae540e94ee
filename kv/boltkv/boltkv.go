// Package boltkv is the embedded, single-node kv.DB on bbolt: one file,
// durable on commit (bbolt fsyncs every write transaction).
//
// bbolt itself runs one writer at a time and holds it for the whole of a
// write transaction, so running callers' functions inside bbolt write
// transactions would serialise every caller, including their reads. boltkv
// instead runs each kv transaction optimistically, as memkv does: the
// function reads a bbolt read-only transaction (a consistent snapshot, which
// never blocks writers) and buffers its writes; at commit the read and write
// sets are checked against the commits made since the snapshot and, if none
// conflicts, the mutations are applied in a bbolt write transaction. Callers
// see exactly the kv contract: snapshot reads, read-your-writes,
// kv.ErrConflict and retry.
//
// Group commit. An fsync dominates the cost of a commit, so by default
// concurrent commits are batched: one committer goroutine takes every commit
// that is queued (up to MaxBatchCommits and MaxBatchBytes), validates each
// against the conflict history and against the commits ahead of it in the
// batch, applies all that pass in one bbolt transaction, fsyncs once, and
// then answers each. A commit that arrives while an fsync runs waits for
// the next batch; there is no timer, so a lone commit is never delayed.
// Options.NoBatch commits each transaction on its own, for comparison.
//
// On disk: bucket "kv" holds user keys prefixed with 'k' (bbolt does not
// store empty keys, and kv allows one), and bucket "meta" holds the commit
// version, so snapshots read the version and the data from one bbolt
// transaction.
package boltkv

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/kelpie-go/kelpie/kv"
	"github.com/kelpie-go/kelpie/kv/internal/occ"
	bolt "go.etcd.io/bbolt"
)

// Bounds of group commit and of the commit queue.
const (
	// MaxBatchCommits is the most transactions one group commit applies.
	MaxBatchCommits = 128
	// MaxBatchBytes bounds the mutation bytes of one group commit; a batch
	// always takes at least one commit, which kv.TransactionLimit bounds.
	MaxBatchBytes = 32 << 20
	// MaxQueuedCommits bounds the commits waiting for the committer; a
	// commit that finds the queue full waits (under its context) for room.
	MaxQueuedCommits = 1024
	// lockTimeout bounds the wait for bbolt's file lock, held by another
	// process that has the same file open.
	lockTimeout = 2 * time.Second
	// initialMmapBytes is bbolt's initial memory map. bbolt must remap to
	// grow past it, and a remap waits for every open read transaction, so
	// a generous map keeps long-running transactions from holding up a
	// commit that grows the file.
	initialMmapBytes = 256 << 20
)

var (
	bucketData = []byte("kv")
	bucketMeta = []byte("meta")
	keyVersion = []byte("version")
)

// dataPrefix is put before every user key in bucket "kv".
const dataPrefix = 'k'

// Options tune a DB. The zero value is the default: group commit on.
type Options struct {
	// NoBatch commits every transaction in its own bbolt transaction and
	// fsync, instead of grouping concurrent commits.
	NoBatch bool
	// NoSync skips fsync (bbolt's NoSync). Commits are then not durable
	// across a machine crash; for benchmarks and throwaway data only.
	NoSync bool
}

// DB is a kv.DB stored in one bbolt file.
type DB struct {
	*occ.DB
	e *engine
}

var _ kv.DB = (*DB)(nil)

// Open opens (creating if needed) the database file at path.
func Open(path string, opts Options) (*DB, error) {
	bdb, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:         lockTimeout,
		InitialMmapSize: initialMmapBytes,
		NoSync:          opts.NoSync,
		FreelistType:    bolt.FreelistMapType,
	})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("boltkv: open %s: the file is locked by another process (waited %s): %w", path, lockTimeout, err)
		}
		return nil, fmt.Errorf("boltkv: open %s: %w", path, err)
	}
	var v kv.Version
	err = bdb.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(bucketData); err != nil {
			return err
		}
		m, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if raw := m.Get(keyVersion); raw != nil {
			if len(raw) != 8 {
				return fmt.Errorf("%w: meta/version is %d bytes, want 8", kv.ErrCorrupt, len(raw))
			}
			v = kv.Version(binary.BigEndian.Uint64(raw))
		}
		return nil
	})
	if err != nil {
		bdb.Close()
		return nil, fmt.Errorf("boltkv: open %s: %w", path, err)
	}
	e := &engine{
		bdb:     bdb,
		path:    path,
		log:     occ.NewConflictLog(v),
		version: v,
		batch:   !opts.NoBatch,
	}
	if e.batch {
		e.queue = make(chan *commitReq, MaxQueuedCommits)
		e.stop = make(chan struct{})
		e.exited = make(chan struct{})
		go e.committer()
	}
	return &DB{DB: occ.NewDB(e), e: e}, nil
}

// Path is the database file.
func (db *DB) Path() string { return db.e.path }

// Stats reports what the committer has done.
func (db *DB) Stats() Stats {
	db.e.statsMu.Lock()
	defer db.e.statsMu.Unlock()
	return db.e.stats
}

// Stats counts commits and the bbolt transactions (one fsync each) that
// carried them: Commits/Batches is the mean group size.
type Stats struct {
	Commits   uint64 // transactions committed
	Conflicts uint64 // commits refused with kv.ErrConflict
	Batches   uint64 // bbolt write transactions run for commits
}

type engine struct {
	bdb   *bolt.DB
	path  string
	batch bool

	// commitMu is held while validating and applying; with batching only
	// the committer goroutine takes it.
	commitMu sync.Mutex
	log      *occ.ConflictLog
	version  kv.Version

	queue  chan *commitReq
	stop   chan struct{}
	exited chan struct{}
	once   sync.Once

	statsMu sync.Mutex
	stats   Stats
}

type commitReq struct {
	c     *occ.Commit
	bytes int
	reply chan commitResult // buffered, 1
}

type commitResult struct {
	v   kv.Version
	err error
}

func (e *engine) Snapshot(ctx context.Context) (occ.Snapshot, error) {
	tx, err := e.bdb.Begin(false)
	if err != nil {
		if errors.Is(err, bolt.ErrDatabaseNotOpen) {
			return nil, kv.ErrClosed
		}
		return nil, fmt.Errorf("boltkv: begin read: %w: %w", kv.ErrIO, err)
	}
	var v kv.Version
	if raw := tx.Bucket(bucketMeta).Get(keyVersion); len(raw) == 8 {
		v = kv.Version(binary.BigEndian.Uint64(raw))
	}
	return &snapshot{tx: tx, data: tx.Bucket(bucketData), version: v}, nil
}

func (e *engine) Commit(ctx context.Context, c *occ.Commit) (kv.Version, error) {
	if !e.batch {
		return e.commitOne(c)
	}
	req := &commitReq{c: c, bytes: mutationBytes(c), reply: make(chan commitResult, 1)}
	select {
	case e.queue <- req:
	case <-e.stop:
		return 0, kv.ErrClosed
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	// Once queued, the commit will be decided; wait for the answer even if
	// ctx ends, so the caller never mistakes a commit for a failure.
	select {
	case r := <-req.reply:
		return r.v, r.err
	case <-e.exited:
		select {
		case r := <-req.reply:
			return r.v, r.err
		default:
			return 0, kv.ErrClosed
		}
	}
}

func mutationBytes(c *occ.Commit) int {
	n := 0
	for _, m := range c.Mutations {
		n += len(m.Key) + len(m.Value) + len(m.End)
	}
	return n
}

// commitOne validates and applies one commit in its own bbolt transaction.
func (e *engine) commitOne(c *occ.Commit) (kv.Version, error) {
	e.commitMu.Lock()
	defer e.commitMu.Unlock()
	if err := e.log.Check(c.ReadVersion, c.Reads); err != nil {
		e.count(0, 1, 0)
		return 0, err
	}
	v := e.version + 1
	if err := e.apply([]*occ.Commit{c}, v); err != nil {
		return 0, err
	}
	e.version = v
	e.log.Add(v, c.Writes)
	e.count(1, 0, 1)
	return v, nil
}

// apply writes commits, in order, in one bbolt transaction and records
// last as the version.
func (e *engine) apply(cs []*occ.Commit, last kv.Version) error {
	err := e.bdb.Update(func(tx *bolt.Tx) error {
		data := tx.Bucket(bucketData)
		for _, c := range cs {
			if err := applyMutations(data, c.Mutations); err != nil {
				return err
			}
		}
		var raw [8]byte
		binary.BigEndian.PutUint64(raw[:], uint64(last))
		return tx.Bucket(bucketMeta).Put(keyVersion, raw[:])
	})
	if err != nil {
		if errors.Is(err, bolt.ErrDatabaseNotOpen) {
			return kv.ErrClosed
		}
		return fmt.Errorf("boltkv: %w: %w: %w", kv.ErrCommitFailed, kv.ErrIO, err)
	}
	return nil
}

func applyMutations(b *bolt.Bucket, muts []occ.Mutation) error {
	for _, m := range muts {
		switch m.Op {
		case occ.OpSet:
			if err := b.Put(dataKey(m.Key), m.Value); err != nil {
				return err
			}
		case occ.OpClear:
			if err := b.Delete(dataKey(m.Key)); err != nil {
				return err
			}
		case occ.OpClearRange:
			begin, end := dataKey(m.Key), dataKey(m.End)
			c := b.Cursor()
			// Deleting through the cursor moves it to the next key.
			for k, _ := c.Seek(begin); k != nil && bytes.Compare(k, end) < 0; k, _ = c.Seek(begin) {
				if err := c.Delete(); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func dataKey(k []byte) []byte {
	out := make([]byte, 1+len(k))
	out[0] = dataPrefix
	copy(out[1:], k)
	return out
}

func (e *engine) count(commits, conflicts, batches uint64) {
	e.statsMu.Lock()
	defer e.statsMu.Unlock()
	e.stats.Commits += commits
	e.stats.Conflicts += conflicts
	e.stats.Batches += batches
}

// committer is the group-commit loop.
func (e *engine) committer() {
	defer close(e.exited)
	for {
		var first *commitReq
		select {
		case first = <-e.queue:
		case <-e.stop:
			e.drainClosed()
			return
		}
		batch := []*commitReq{first}
		size := first.bytes
	gather:
		for len(batch) < MaxBatchCommits {
			select {
			case r := <-e.queue:
				batch = append(batch, r)
				size += r.bytes
				if size >= MaxBatchBytes {
					break gather
				}
			default:
				break gather
			}
		}
		e.commitBatch(batch)
	}
}

// drainClosed answers every queued commit with ErrClosed.
func (e *engine) drainClosed() {
	for {
		select {
		case r := <-e.queue:
			r.reply <- commitResult{err: kv.ErrClosed}
		default:
			return
		}
	}
}

func (e *engine) commitBatch(batch []*commitReq) {
	e.commitMu.Lock()
	defer e.commitMu.Unlock()
	var (
		accepted []*commitReq
		commits  []*occ.Commit
		refused  []*commitReq
		results  []commitResult
	)
	for _, r := range batch {
		err := e.log.Check(r.c.ReadVersion, r.c.Reads)
		if err == nil {
			// Commits ahead in this batch are after every read version.
			for i, a := range accepted {
				if intersectsAny(a.c.Writes, r.c.Reads) {
					err = fmt.Errorf("%w: a read was written by the commit at version %d, in the same group commit", kv.ErrConflict, e.version+kv.Version(i)+1)
					break
				}
			}
		}
		if err != nil {
			refused = append(refused, r)
			results = append(results, commitResult{err: err})
			continue
		}
		accepted = append(accepted, r)
		commits = append(commits, r.c)
	}
	// Stats are counted before anyone is answered, so a caller that has its
	// answer also sees its commit in Stats.
	conflicts := uint64(len(refused))
	switch {
	case len(accepted) == 0:
		e.count(0, conflicts, 0)
	default:
		last := e.version + kv.Version(len(accepted))
		if err := e.apply(commits, last); err != nil {
			e.count(0, conflicts, 1)
			for _, r := range accepted {
				refused = append(refused, r)
				results = append(results, commitResult{err: err})
			}
			break
		}
		first := e.version + 1
		for i, r := range accepted {
			e.log.Add(first+kv.Version(i), r.c.Writes)
		}
		e.version = last
		e.count(uint64(len(accepted)), conflicts, 1)
		for i, r := range accepted {
			r.reply <- commitResult{v: first + kv.Version(i)}
		}
	}
	for i, r := range refused {
		r.reply <- results[i]
	}
}

// intersectsAny reports whether any range of a meets any range of b.
func intersectsAny(a, b []kv.KeyRange) bool {
	for _, x := range a {
		for _, y := range b {
			if x.Intersects(y) {
				return true
			}
		}
	}
	return false
}

func (e *engine) Close() error {
	var err error
	e.once.Do(func() {
		if e.batch {
			close(e.stop)
			<-e.exited
		}
		err = e.bdb.Close()
	})
	return err
}

// snapshot is a bbolt read-only transaction.
type snapshot struct {
	tx      *bolt.Tx
	data    *bolt.Bucket
	version kv.Version
}

func (s *snapshot) Version() kv.Version { return s.version }

func (s *snapshot) Get(key []byte) ([]byte, bool, error) {
	dk := dataKey(key)
	k, v := s.data.Cursor().Seek(dk)
	if !bytes.Equal(k, dk) {
		return nil, false, nil
	}
	return v, true, nil
}

func (s *snapshot) Scan(r kv.KeyRange, reverse bool, fn func(k, v []byte) bool) error {
	begin, end := dataKey(r.Begin), dataKey(r.End)
	c := s.data.Cursor()
	if !reverse {
		for k, v := c.Seek(begin); k != nil && bytes.Compare(k, end) < 0; k, v = c.Next() {
			if !fn(k[1:], v) {
				return nil
			}
		}
		return nil
	}
	k, v := c.Seek(end)
	if k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	for ; k != nil && bytes.Compare(k, begin) >= 0; k, v = c.Prev() {
		if bytes.Compare(k, end) >= 0 {
			continue
		}
		if !fn(k[1:], v) {
			return nil
		}
	}
	return nil
}

func (s *snapshot) Release() { _ = s.tx.Rollback() }
