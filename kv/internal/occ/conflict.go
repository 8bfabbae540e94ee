package occ

import (
	"bytes"
	"fmt"
	"slices"
	"sort"

	"github.com/kelpie-go/kelpie/kv"
)

// Bounds of the commit history kept for conflict checks. A transaction
// whose read version is older than everything kept cannot be validated and
// fails with a conflict (FoundationDB's "transaction too old"); Transact
// then retries it on a fresh snapshot.
const (
	// ConflictLogCommits is the most commits remembered.
	ConflictLogCommits = 10_000
	// ConflictLogBytes bounds the bytes of write ranges remembered.
	ConflictLogBytes = 64 << 20
)

type logEntry struct {
	version kv.Version
	writes  []kv.KeyRange
	bytes   int
}

// ConflictLog remembers the write sets of recent commits so that a commit
// can be checked against everything that committed after its read version.
// It is not safe for concurrent use: engines call it under their commit
// lock.
type ConflictLog struct {
	// ring holds the entries, oldest at head, ascending by version. It is
	// circular so that remembering a commit and forgetting the oldest
	// allocates nothing; it grows by doubling up to ConflictLogCommits+1
	// (one over, for the commit added just before the oldest is dropped).
	ring  []logEntry
	head  int
	n     int // entries held
	bytes int
	// floor is the newest version forgotten: a read version below it
	// cannot be checked.
	floor kv.Version
}

// NewConflictLog returns a log for a store whose current version is v:
// transactions that read before v cannot be checked.
func NewConflictLog(v kv.Version) *ConflictLog { return &ConflictLog{floor: v} }

// Check returns an error wrapping kv.ErrConflict if a commit after
// readVersion wrote inside one of reads.
func (l *ConflictLog) Check(readVersion kv.Version, reads []kv.KeyRange) error {
	if readVersion < l.floor {
		return fmt.Errorf("%w: read version %d is older than the oldest commit remembered (%d; occ.ConflictLogCommits)", kv.ErrConflict, readVersion, l.floor)
	}
	if l.n == 0 || l.at(l.n-1).version <= readVersion || len(reads) == 0 {
		return nil // nothing committed since the read (the common case)
	}
	i := sort.Search(l.n, func(i int) bool { return l.at(i).version > readVersion })
	rs := normalize(reads)
	for ; i < l.n; i++ {
		e := l.at(i)
		for _, w := range e.writes {
			j := sort.Search(len(rs), func(j int) bool { return bytes.Compare(rs[j].End, w.Begin) > 0 })
			if j < len(rs) && bytes.Compare(rs[j].Begin, w.End) < 0 {
				return fmt.Errorf("%w: read %s was written by the commit at version %d, after this transaction's read version %d", kv.ErrConflict, rs[j], e.version, readVersion)
			}
		}
	}
	return nil
}

// Add records that the commit at version v wrote writes. Versions must be
// added in increasing order.
func (l *ConflictLog) Add(v kv.Version, writes []kv.KeyRange) {
	n := 0
	for _, w := range writes {
		n += len(w.Begin) + len(w.End)
	}
	if l.n == len(l.ring) {
		l.grow()
	}
	*l.at(l.n) = logEntry{version: v, writes: writes, bytes: n}
	l.n++
	l.bytes += n
	for l.n > ConflictLogCommits || (l.bytes > ConflictLogBytes && l.n > 1) {
		old := l.at(0)
		l.bytes -= old.bytes
		l.floor = old.version
		*old = logEntry{} // let the ranges be collected
		l.head = (l.head + 1) % len(l.ring)
		l.n--
	}
}

// conflictLogInitial is the ring's first capacity, in commits.
const conflictLogInitial = 16

// grow doubles the ring (up to ConflictLogCommits+1), unrolling it so that
// the oldest entry is at index 0.
func (l *ConflictLog) grow() {
	c := min(max(2*len(l.ring), conflictLogInitial), ConflictLogCommits+1)
	ring := make([]logEntry, c)
	for i := 0; i < l.n; i++ {
		ring[i] = *l.at(i)
	}
	l.ring, l.head = ring, 0
}

// at is the i-th oldest entry held.
func (l *ConflictLog) at(i int) *logEntry { return &l.ring[(l.head+i)%len(l.ring)] }

// normalize sorts ranges and merges overlapping ones. rs is not modified;
// when it is already sorted, disjoint and free of empty ranges (as the read
// sets of transactions that read in key order are) it is returned as is,
// without a copy.
func normalize(rs []kv.KeyRange) []kv.KeyRange {
	if isNormal(rs) {
		return rs
	}
	s := append([]kv.KeyRange(nil), rs...)
	slices.SortFunc(s, func(a, b kv.KeyRange) int { return bytes.Compare(a.Begin, b.Begin) })
	out := s[:0]
	for _, r := range s {
		if r.Empty() {
			continue
		}
		if n := len(out); n > 0 && bytes.Compare(r.Begin, out[n-1].End) <= 0 {
			if bytes.Compare(r.End, out[n-1].End) > 0 {
				out[n-1].End = r.End
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

// isNormal reports whether rs is what normalize would make of it: ranges
// that are non-empty, ascending and neither overlapping nor adjacent.
func isNormal(rs []kv.KeyRange) bool {
	for i, r := range rs {
		if r.Empty() {
			return false
		}
		if i > 0 && bytes.Compare(rs[i-1].End, r.Begin) >= 0 {
			return false
		}
	}
	return true
}
