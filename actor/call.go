package actor

import (
	"bytes"
	"context"
	"fmt"
	"sort"

	"github.com/kelpie-go/kelpie/kv"
)

// Call is one invocation as its handler sees it: the message, a context that
// ends at the invocation's deadline, and the actor's own keys. Writes are
// buffered and commit with the actor's new state, atomically, after the
// handler returns; reads see the store overlaid with the writes of this
// actor's earlier turns still being committed and then with the turn's own
// writes, so a handler reads what it, and every turn before it, wrote.
// Each read runs in its own read-only transaction, taken when it is made,
// so a turn that reads nothing costs the store nothing. The reads of one turn are still consistent with each other:
// only this actor's activation writes its keys, and the commit of the turn
// checks (in the commit's transaction) that no other activation has
// committed since this one loaded, so a turn whose reads could have seen
// someone else's write does not commit. A Call is valid only during
// Receive.
type Call struct {
	ctx      context.Context
	id       ID
	method   string
	payload  []byte
	db       kv.DB
	keys     *keys
	inflight *overlay                // writes of earlier turns not yet committed
	writes   map[string]pendingWrite // full key -> write
	bytes    int                     // bytes of the buffered writes, as kv counts them
}

type pendingWrite struct {
	value []byte
	clear bool
}

// Context ends when the invocation's deadline passes or its caller gives up.
func (c *Call) Context() context.Context { return c.ctx }

// ID is the actor's ID.
func (c *Call) ID() ID { return c.id }

// Method is the invocation's method name.
func (c *Call) Method() string { return c.method }

// Payload is the invocation's payload; the handler must not keep it.
func (c *Call) Payload() []byte { return c.payload }

// MaxUserKeyBytes bounds a key an actor reads or writes through Call; the
// runtime prefixes it with the actor's own space, and the result must fit
// kv.KeyLimit.
const MaxUserKeyBytes = kv.KeyLimit - len(keyPrefix) - MaxNamespaceBytes - MaxKeyBytes - 4

// MaxTurnBytes bounds the bytes one invocation writes (keys and values,
// state included): half a KV transaction, so that a turn always fits the
// group commit that carries it.
const MaxTurnBytes = kv.TransactionLimit / 2

func (c *Call) key(k []byte) ([]byte, error) {
	if c.db == nil {
		return nil, fmt.Errorf("actor %s: Call used after its invocation ended", c.id)
	}
	if len(k) > MaxUserKeyBytes {
		return nil, fmt.Errorf("actor %s: key is %d bytes, the limit is %d (actor.MaxUserKeyBytes): %w", c.id, len(k), MaxUserKeyBytes, kv.ErrKeyTooLarge)
	}
	full := make([]byte, 0, len(c.keys.data)+len(k))
	return append(append(full, c.keys.data...), k...), nil
}

// Get reads one of the actor's keys, seeing this invocation's own writes.
func (c *Call) Get(key []byte) ([]byte, bool, error) {
	k, err := c.key(key)
	if err != nil {
		return nil, false, err
	}
	if w, ok := c.lookup(string(k)); ok {
		if w.clear {
			return nil, false, nil
		}
		return append([]byte(nil), w.value...), true, nil
	}
	var v []byte
	var ok bool
	err = c.db.ReadTransact(c.ctx, func(tx kv.ReadTx) error {
		var err error
		v, ok, err = tx.Get(k)
		return err
	})
	return v, ok, err
}

func (c *Call) buffer(k []byte, w pendingWrite) error {
	n := len(k) + len(w.value)
	if c.bytes+n > MaxTurnBytes {
		return &kv.LimitError{What: "transaction", Size: c.bytes + n, Limit: MaxTurnBytes, Err: kv.ErrTransactionTooLarge}
	}
	if c.writes == nil {
		c.writes = map[string]pendingWrite{}
	}
	c.writes[string(k)] = w
	c.bytes += n
	return nil
}

// Set writes one of the actor's keys; it commits with the invocation.
func (c *Call) Set(key, value []byte) error {
	k, err := c.key(key)
	if err != nil {
		return err
	}
	if err := kv.CheckValue(value); err != nil {
		return fmt.Errorf("actor %s: %w", c.id, err)
	}
	return c.buffer(k, pendingWrite{value: append([]byte(nil), value...)})
}

// Clear removes one of the actor's keys; it commits with the invocation.
func (c *Call) Clear(key []byte) error {
	k, err := c.key(key)
	if err != nil {
		return err
	}
	return c.buffer(k, pendingWrite{clear: true})
}

// Scan returns the actor's keys that start with prefix, in order, at most
// limit of them (0: no limit, still bounded by kv.RangeResultLimit bytes),
// including this invocation's own writes. Returned keys are the actor's
// own, without the runtime's prefix.
func (c *Call) Scan(prefix []byte, limit int) ([]kv.KeyValue, error) {
	if limit < 0 {
		return nil, fmt.Errorf("actor %s: Scan limit is %d, want 0 (no limit) or more", c.id, limit)
	}
	k, err := c.key(prefix)
	if err != nil {
		return nil, err
	}
	r, err := kv.PrefixRange(k)
	if err != nil {
		return nil, err
	}
	var mine []string
	for wk := range c.writes {
		if r.Contains([]byte(wk)) {
			mine = append(mine, wk)
		}
	}
	if c.inflight != nil {
		for wk := range c.inflight.latest {
			if _, own := c.writes[wk]; !own && r.Contains([]byte(wk)) {
				mine = append(mine, wk)
			}
		}
	}
	opts := kv.RangeOptions{Limit: limit}
	if len(mine) > 0 && limit > 0 {
		// Own clears may hide stored keys: read enough to fill the limit.
		opts.Limit = limit + len(mine)
	}
	var stored []kv.KeyValue
	err = c.db.ReadTransact(c.ctx, func(tx kv.ReadTx) error {
		var err error
		stored, err = tx.GetRange(r, opts)
		return err
	})
	if err != nil {
		return nil, err
	}
	out := stored
	if len(mine) > 0 {
		sort.Strings(mine)
		out = make([]kv.KeyValue, 0, len(stored)+len(mine))
		i, j := 0, 0
		for i < len(stored) || j < len(mine) {
			var cmp int
			switch {
			case i == len(stored):
				cmp = 1
			case j == len(mine):
				cmp = -1
			default:
				cmp = bytes.Compare(stored[i].Key, []byte(mine[j]))
			}
			if cmp < 0 {
				out = append(out, stored[i])
				i++
				continue
			}
			w, _ := c.lookup(mine[j])
			if !w.clear {
				out = append(out, kv.KeyValue{Key: []byte(mine[j]), Value: append([]byte(nil), w.value...)})
			}
			if cmp == 0 {
				i++
			}
			j++
		}
		if limit > 0 && len(out) > limit {
			out = out[:limit]
		}
	}
	for i := range out {
		out[i].Key = out[i].Key[len(c.keys.data):]
	}
	return out, nil
}

// lookup finds the newest write of the full key k not yet in the store: the
// turn's own, else one of an earlier turn still being committed.
func (c *Call) lookup(k string) (pendingWrite, bool) {
	if w, ok := c.writes[k]; ok {
		return w, true
	}
	if c.inflight != nil {
		if w, ok := c.inflight.latest[k]; ok {
			return w.w, true
		}
	}
	return pendingWrite{}, false
}

// overlay holds the writes of an activation's turns that were handed to the
// commit and are not yet known to have committed, so that the turns after
// them read them (see activation). It belongs to the activation's
// goroutine.
type overlay struct {
	latest map[string]overlayWrite // full key -> its newest write in flight
	turns  []overlayTurn           // the turns in flight that wrote, oldest first
}

type overlayWrite struct {
	w   pendingWrite
	seq uint64 // the commit sequence of the turn that wrote it
}

type overlayTurn struct {
	seq  uint64
	keys []string
}

// add records the writes of the turn that commits as seq.
func (o *overlay) add(seq uint64, writes map[string]pendingWrite) {
	if len(writes) == 0 {
		return
	}
	if o.latest == nil {
		o.latest = make(map[string]overlayWrite, len(writes))
	}
	keys := make([]string, 0, len(writes))
	for k, w := range writes {
		o.latest[k] = overlayWrite{w: w, seq: seq}
		keys = append(keys, k)
	}
	o.turns = append(o.turns, overlayTurn{seq: seq, keys: keys})
}

// prune forgets the writes of the turns up to commit sequence committed,
// which the store now holds.
func (o *overlay) prune(committed uint64) {
	n := 0
	for n < len(o.turns) && o.turns[n].seq <= committed {
		t := o.turns[n]
		for _, k := range t.keys {
			if o.latest[k].seq == t.seq {
				delete(o.latest, k)
			}
		}
		n++
	}
	if n == len(o.turns) {
		o.reset()
		return
	}
	rest := copy(o.turns, o.turns[n:])
	clear(o.turns[rest:])
	o.turns = o.turns[:rest]
}

// reset forgets every write, after a rollback.
func (o *overlay) reset() { o.latest, o.turns = nil, nil }
