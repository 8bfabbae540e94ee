package occ

import (
	"bytes"
	"fmt"
	"sort"
	"sync"

	"github.com/google/btree"
	"github.com/kelpie-go/kelpie/kv"
)

// write is one buffered point write; tombstone marks a Clear. end, when
// set, is key+"\x00" (the end of the write's conflict range) sharing key's
// bytes, as singleKey makes them.
type write struct {
	key       []byte
	value     []byte
	end       []byte
	tombstone bool
}

func writeLess(a, b write) bool { return bytes.Compare(a.key, b.key) < 0 }

// btreeDegree is the fan-out of the in-memory B-trees: 32 keeps nodes a few
// cache lines wide, the library's recommended range.
const btreeDegree = 32

// writeNodes is shared by the write buffers of all transactions: a finished
// transaction returns its nodes (at most btree.DefaultFreeListSize are
// kept), so that the next one does not allocate them and their item slices
// afresh. It is safe for concurrent use.
var writeNodes = btree.NewFreeListG[write](btree.DefaultFreeListSize)

// maxPooledSet bounds the entries of a read set or mutation list kept for
// reuse: a larger transaction's are left to the collector, so that one
// huge transaction does not pin its buffers in the pool.
const maxPooledSet = 1024

// setBufs are the backing arrays of one transaction's read set and
// mutation list. They are reused (through setPool) once the transaction's
// outcome is decided: an engine does not keep a Commit's slices of ranges
// and mutations after Commit returns, only the keys and values in them.
type setBufs struct {
	reads []kv.KeyRange
	muts  []Mutation
	hooks []func(kv.Version)
	// points is an emptied write buffer (its nodes went back to
	// writeNodes).
	points *btree.BTreeG[write]
}

var setPool = sync.Pool{New: func() any { return new(setBufs) }}

// Tx is a transaction over a Snapshot: reads see the snapshot overlaid with
// the transaction's own buffered writes, and every read adds its range to
// the read conflict set. It is safe for use by several goroutines, though
// one transaction is normally used by one.
type Tx struct {
	mu      sync.Mutex
	snap    Snapshot
	done    bool
	points  *btree.BTreeG[write] // nil until the first write
	cleared []kv.KeyRange        // sorted, disjoint, non-adjacent
	reads   []kv.KeyRange
	size    int // bytes counted against kv.TransactionLimit
	hooks   []func(kv.Version)
	bufs    *setBufs // reused arrays, nil once recycled
	commit  Commit   // what finish returns
	spare   *btree.BTreeG[write]
}

var _ kv.Tx = (*Tx)(nil)

func newTx(s Snapshot) *Tx {
	b := setPool.Get().(*setBufs)
	return &Tx{snap: s, bufs: b, reads: b.reads[:0], hooks: b.hooks[:0]}
}

// recycle hands the transaction's read set and the mutation list of c (its
// commit, or nil) back for reuse. The caller must be done with c: its
// engine has returned from Commit.
func (t *Tx) recycle(c *Commit) {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.bufs
	if b == nil {
		return
	}
	t.bufs = nil
	// Cleared so that the pool pins no keys or values.
	b.reads = nil
	if cap(t.reads) <= maxPooledSet {
		clear(t.reads)
		b.reads = t.reads[:0]
	}
	t.reads = nil
	if c != nil && c.Mutations != nil && cap(c.Mutations) <= maxPooledSet {
		clear(c.Mutations)
		b.muts = c.Mutations[:0]
	}
	if c != nil {
		c.Reads, c.Mutations = nil, nil
	}
	b.hooks = nil
	if cap(t.hooks) <= maxPooledSet {
		clear(t.hooks)
		b.hooks = t.hooks[:0]
	}
	t.hooks = nil
	if t.spare != nil {
		b.points, t.spare = t.spare, nil
	}
	setPool.Put(b)
}

// writes returns the buffer of point writes, creating it on first use: a
// transaction that only reads never needs one.
func (t *Tx) writes() *btree.BTreeG[write] {
	if t.points == nil {
		if t.bufs != nil && t.bufs.points != nil {
			t.points, t.bufs.points = t.bufs.points, nil
		} else {
			t.points = btree.NewWithFreeListG(btreeDegree, writeLess, writeNodes)
		}
	}
	return t.points
}

// end ends the transaction: later calls fail with kv.ErrTransactionDone.
func (t *Tx) end() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.done = true
}

// finish returns what the ended transaction would commit.
func (t *Tx) finish() (*Commit, []func(kv.Version)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.commit = Commit{ReadVersion: t.snap.Version(), Reads: t.reads}
	c := &t.commit
	n := len(t.cleared)
	ends := 0 // bytes of the point writes' range ends still to make, key + "\x00" each
	if t.points != nil {
		n += t.points.Len()
		t.points.Ascend(func(w write) bool {
			if w.end == nil {
				ends += len(w.key) + 1
			}
			return true
		})
	}
	if n == 0 {
		return c, t.hooks
	}
	if t.bufs != nil && cap(t.bufs.muts) >= n {
		c.Mutations = t.bufs.muts[:0]
		t.bufs.muts = nil
	} else {
		c.Mutations = make([]Mutation, 0, n)
	}
	c.Writes = make([]kv.KeyRange, 0, n)
	for _, r := range t.cleared {
		c.Mutations = append(c.Mutations, Mutation{Op: OpClearRange, Key: r.Begin, End: r.End})
		c.Writes = append(c.Writes, r)
	}
	if t.points != nil {
		// The write ranges [key, key+"\x00") begin at the buffered keys,
		// which nothing modifies, and end where the key's read made its end
		// already, or else in one shared allocation.
		var buf []byte
		if ends > 0 {
			buf = make([]byte, 0, ends)
		}
		t.points.Ascend(func(w write) bool {
			if w.tombstone {
				c.Mutations = append(c.Mutations, Mutation{Op: OpClear, Key: w.key})
			} else {
				c.Mutations = append(c.Mutations, Mutation{Op: OpSet, Key: w.key, Value: w.value})
			}
			end := w.end
			if end == nil {
				start := len(buf)
				buf = append(append(buf, w.key...), 0)
				end = buf[start:len(buf):len(buf)]
			}
			c.Writes = append(c.Writes, kv.KeyRange{Begin: w.key, End: end})
			return true
		})
		// Hand the nodes back for the next transaction; the keys and
		// values now belong to the commit.
		t.points.Clear(true)
		t.spare, t.points = t.points, nil
	}
	return c, t.hooks
}

func (t *Tx) check() error {
	if t.done {
		return kv.ErrTransactionDone
	}
	return nil
}

// grow counts n more bytes against kv.TransactionLimit.
func (t *Tx) grow(n int) error {
	if t.size+n > kv.TransactionLimit {
		return &kv.LimitError{What: "transaction", Size: t.size + n, Limit: kv.TransactionLimit, Err: kv.ErrTransactionTooLarge}
	}
	t.size += n
	return nil
}

func (t *Tx) addRead(r kv.KeyRange) error {
	if err := t.grow(len(r.Begin) + len(r.End)); err != nil {
		return err
	}
	t.reads = append(t.reads, r)
	return nil
}

// inCleared reports whether key lies in a range this transaction cleared.
func (t *Tx) inCleared(key []byte) bool {
	i := sort.Search(len(t.cleared), func(i int) bool { return bytes.Compare(t.cleared[i].End, key) > 0 })
	return i < len(t.cleared) && bytes.Compare(t.cleared[i].Begin, key) <= 0
}

// ReadVersion implements kv.ReadTx.
func (t *Tx) ReadVersion() kv.Version { return t.snap.Version() }

// Get implements kv.ReadTx.
func (t *Tx) Get(key []byte) ([]byte, bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.check(); err != nil {
		return nil, false, err
	}
	if err := kv.CheckKey(key); err != nil {
		return nil, false, fmt.Errorf("get: %w", err)
	}
	if t.points != nil {
		if w, ok := t.points.Get(write{key: key}); ok {
			if w.tombstone {
				return nil, false, nil
			}
			return cloneNonNil(w.value), true, nil
		}
	}
	if t.inCleared(key) {
		return nil, false, nil
	}
	if err := t.addRead(singleKey(key)); err != nil {
		return nil, false, fmt.Errorf("get: %w", err)
	}
	v, ok, err := t.snap.Get(key)
	if err != nil {
		return nil, false, fmt.Errorf("get %q: %w", key, err)
	}
	if !ok {
		return nil, false, nil
	}
	return cloneNonNil(v), true, nil
}

// GetRange implements kv.ReadTx.
func (t *Tx) GetRange(r kv.KeyRange, opts kv.RangeOptions) ([]kv.KeyValue, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.check(); err != nil {
		return nil, err
	}
	if err := kv.CheckRange(r); err != nil {
		return nil, fmt.Errorf("get range: %w", err)
	}
	if err := kv.CheckRangeOptions(opts); err != nil {
		return nil, fmt.Errorf("get range: %w", err)
	}
	if r.Empty() {
		return nil, nil
	}

	// The transaction's own point writes inside r, in scan order.
	var mine []write
	collect := func(w write) bool { mine = append(mine, w); return true }
	if t.points == nil {
		// No writes of our own to merge.
	} else if opts.Reverse {
		t.points.DescendLessOrEqual(write{key: r.End}, func(w write) bool {
			if bytes.Compare(w.key, r.Begin) < 0 {
				return false
			}
			if bytes.Equal(w.key, r.End) {
				return true
			}
			return collect(w)
		})
	} else {
		t.points.AscendRange(write{key: r.Begin}, write{key: r.End}, collect)
	}

	var (
		out      []kv.KeyValue
		bytesOut int
		tooLarge error
	)
	full := func() bool { return opts.Limit > 0 && len(out) >= opts.Limit }
	emit := func(k, v []byte) bool {
		bytesOut += len(k) + len(v)
		if bytesOut > kv.RangeResultLimit {
			tooLarge = &kv.LimitError{What: "range result", Size: bytesOut, Limit: kv.RangeResultLimit, Err: kv.ErrRangeTooLarge}
			return false
		}
		out = append(out, kv.KeyValue{Key: cloneNonNil(k), Value: cloneNonNil(v)})
		return !full()
	}
	// before reports whether a comes before b in scan order.
	before := func(a, b []byte) bool {
		if opts.Reverse {
			return bytes.Compare(a, b) > 0
		}
		return bytes.Compare(a, b) < 0
	}
	next := 0
	// flushMine emits this transaction's writes that come before key in
	// scan order (all of them when key is nil).
	flushMine := func(key []byte) bool {
		for next < len(mine) && (key == nil || before(mine[next].key, key)) {
			w := mine[next]
			next++
			if w.tombstone {
				continue
			}
			if !emit(w.key, w.value) {
				return false
			}
		}
		return true
	}
	more := true
	err := t.snap.Scan(r, opts.Reverse, func(k, v []byte) bool {
		if !flushMine(k) {
			more = false
			return false
		}
		if next < len(mine) && bytes.Equal(mine[next].key, k) {
			return true // shadowed by our own write, emitted by flushMine
		}
		if t.inCleared(k) {
			return true
		}
		if !emit(k, v) {
			more = false
			return false
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("get range %s: %w", r, err)
	}
	if more {
		flushMine(nil)
	}
	if tooLarge != nil {
		return nil, fmt.Errorf("get range %s: %w; read it in pages with RangeOptions.Limit", r, tooLarge)
	}

	// Only what was actually read joins the conflict set: a limited read
	// does not depend on keys past the last one it returned. The bounds
	// are copied: the caller may reuse its buffers.
	read := cloneRange(r)
	if full() {
		last := out[len(out)-1].Key
		if opts.Reverse {
			read.Begin = last
		} else {
			read.End = kv.KeyAfter(last)
		}
	}
	if err := t.addRead(read); err != nil {
		return nil, fmt.Errorf("get range: %w", err)
	}
	return out, nil
}

// Set implements kv.Tx.
func (t *Tx) Set(key, value []byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.check(); err != nil {
		return err
	}
	if err := kv.CheckKey(key); err != nil {
		return fmt.Errorf("set: %w", err)
	}
	if err := kv.CheckValue(value); err != nil {
		return fmt.Errorf("set %q: %w", truncKey(key), err)
	}
	if err := t.grow(len(key) + len(value)); err != nil {
		return fmt.Errorf("set %q: %w", truncKey(key), err)
	}
	k, end, v := ownWrite(key, value)
	t.writes().ReplaceOrInsert(write{key: k, value: v, end: end})
	return nil
}

// ownWrite copies a write into one allocation: the key, a zero byte (so
// that key+"\x00", the end of the write's conflict range, needs no copy of
// its own), then the value. The store keeps the key and the value it is
// handed, so they stay next to each other in memory: a lookup that
// compared the key finds the value in the same cache lines.
func ownWrite(key, value []byte) (k, end, v []byte) {
	n := len(key)
	buf := make([]byte, n+1+len(value))
	copy(buf, key)
	copy(buf[n+1:], value)
	return buf[:n:n], buf[: n+1 : n+1], buf[n+1:]
}

// Clear implements kv.Tx.
func (t *Tx) Clear(key []byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.check(); err != nil {
		return err
	}
	if err := kv.CheckKey(key); err != nil {
		return fmt.Errorf("clear: %w", err)
	}
	if err := t.grow(len(key)); err != nil {
		return fmt.Errorf("clear %q: %w", truncKey(key), err)
	}
	k, end, _ := ownWrite(key, nil)
	t.writes().ReplaceOrInsert(write{key: k, tombstone: true, end: end})
	return nil
}

// ClearRange implements kv.Tx.
func (t *Tx) ClearRange(r kv.KeyRange) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.check(); err != nil {
		return err
	}
	if err := kv.CheckRange(r); err != nil {
		return fmt.Errorf("clear range: %w", err)
	}
	if r.Empty() {
		return nil
	}
	if err := t.grow(len(r.Begin) + len(r.End)); err != nil {
		return fmt.Errorf("clear range %s: %w", r, err)
	}
	// Point writes inside r are superseded by the clear.
	if t.points != nil {
		var drop []write
		t.points.AscendRange(write{key: r.Begin}, write{key: r.End}, func(w write) bool {
			drop = append(drop, w)
			return true
		})
		for _, w := range drop {
			t.points.Delete(w)
		}
	}
	t.cleared = addRange(t.cleared, kv.KeyRange{Begin: clone(r.Begin), End: clone(r.End)})
	return nil
}

// OnCommit implements kv.Tx.
func (t *Tx) OnCommit(fn func(kv.Version)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if fn != nil && !t.done {
		t.hooks = append(t.hooks, fn)
	}
}

// addRange adds r to the sorted disjoint set rs, merging overlapping and
// adjacent ranges.
func addRange(rs []kv.KeyRange, r kv.KeyRange) []kv.KeyRange {
	out := make([]kv.KeyRange, 0, len(rs)+1)
	i := 0
	for i < len(rs) && bytes.Compare(rs[i].End, r.Begin) < 0 {
		out = append(out, rs[i])
		i++
	}
	for i < len(rs) && bytes.Compare(rs[i].Begin, r.End) <= 0 {
		if bytes.Compare(rs[i].Begin, r.Begin) < 0 {
			r.Begin = rs[i].Begin
		}
		if bytes.Compare(rs[i].End, r.End) > 0 {
			r.End = rs[i].End
		}
		i++
	}
	out = append(out, r)
	return append(out, rs[i:]...)
}

// singleKey is kv.SingleKey in one allocation: the range [key, key+"\x00")
// with both bounds in one buffer (Begin's capacity is cut, so nothing can
// append into End's last byte).
func singleKey(key []byte) kv.KeyRange {
	buf := make([]byte, len(key)+1)
	copy(buf, key)
	return kv.KeyRange{Begin: buf[:len(key):len(key)], End: buf}
}

// cloneRange copies r's bounds into one allocation.
func cloneRange(r kv.KeyRange) kv.KeyRange {
	buf := make([]byte, len(r.Begin)+len(r.End))
	n := copy(buf, r.Begin)
	copy(buf[n:], r.End)
	out := kv.KeyRange{Begin: buf[:n:n], End: buf[n:]}
	if r.Begin == nil {
		out.Begin = nil
	}
	if r.End == nil {
		out.End = nil
	}
	return out
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append(make([]byte, 0, len(b)), b...)
}

// cloneNonNil copies b into a non-nil slice, so a stored empty value is
// distinguishable from an absent one all the way through.
func cloneNonNil(b []byte) []byte { return append(make([]byte, 0, len(b)), b...) }

func truncKey(k []byte) []byte {
	const n = 64
	if len(k) > n {
		return k[:n]
	}
	return k
}
