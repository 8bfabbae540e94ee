// Package actorsim holds the simulations of the actor runtime: the real
// runtime (package actor), over the simulated store (kv/simkv) and the
// simulated lease service (placement.SimService), driven by clients while
// the store fails and nodes are killed and restarted.
//
// Every scenario uses one actor kind, the ledger: each "add" invocation
// carries a unique operation id, writes the key "op/<id>" and increments the
// actor's count, in one turn. Clients file every invocation as acknowledged,
// failed (any error but ErrOutcomeUnknown: the runtime promises it had no
// effect) or unknown. The invariants are checked on the production state:
// the runtime's own list of activations and its observer events (commit
// sequence numbers and epochs), and, after a final restart, the counts and
// keys read back through the runtime and straight from the store. No
// acknowledged operation may be missing, no failed one present, each
// actor's count must equal its keys (state and writes commit together), and
// commits of one actor must form a single chain (no two commits with the
// same sequence number, epochs never going back).
package actorsim

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kelpie-go/kelpie/actor"
	"github.com/kelpie-go/kelpie/kv"
	"github.com/kelpie-go/kelpie/sim"
)

// Namespace is the ledger actors' namespace.
const Namespace = "ledger"

// opPrefix is the prefix of the keys a ledger writes, one per operation.
const opPrefix = "op/"

// ledgerActor counts operations; its state is the count in decimal.
type ledgerActor struct {
	n     int64
	check *checker
}

func (l *ledgerActor) Load(state []byte) error {
	if state == nil {
		l.n = 0
		return nil
	}
	n, err := strconv.ParseInt(string(state), 10, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("ledger state %q is not a count", state)
	}
	l.n = n
	return nil
}

func (l *ledgerActor) Save() ([]byte, error) { return []byte(strconv.FormatInt(l.n, 10)), nil }

// slowAdd is how long a "slow-add" turn takes.
const slowAdd = 5 * time.Millisecond

func (l *ledgerActor) Receive(c *actor.Call) ([]byte, error) {
	switch c.Method() {
	case "add", "slow-add":
		if c.Method() == "slow-add" {
			select {
			case <-time.After(slowAdd):
			case <-c.Context().Done():
				return nil, c.Context().Err()
			}
		}
		key := []byte(opPrefix + string(c.Payload()))
		if _, ok, err := c.Get(key); err != nil {
			return nil, err
		} else if ok {
			l.check.violation("op-applied-once", fmt.Errorf("%s: operation %s is already applied", c.ID(), c.Payload()))
			return nil, fmt.Errorf("operation %s already applied", c.Payload())
		}
		if err := c.Set(key, []byte{1}); err != nil {
			return nil, err
		}
		// Reads inside an invocation see its own writes.
		if _, ok, err := c.Get(key); err != nil {
			return nil, err
		} else if !ok {
			l.check.violation("read-own-writes", fmt.Errorf("%s: operation %s written but not read back", c.ID(), c.Payload()))
			return nil, errors.New("own write not visible")
		}
		l.n++
		return []byte(strconv.FormatInt(l.n, 10)), nil
	case "count":
		kvs, err := c.Scan([]byte(opPrefix), 0)
		if err != nil {
			return nil, err
		}
		ops := make([]string, len(kvs))
		for i, e := range kvs {
			ops[i] = strings.TrimPrefix(string(e.Key), opPrefix)
		}
		return []byte(strconv.FormatInt(l.n, 10) + " " + strings.Join(ops, ",")), nil
	}
	return nil, fmt.Errorf("ledger: unknown method %q", c.Method())
}

// outcome of one invocation as its client saw it.
type outcome int

const (
	acked outcome = iota
	failed
	unknown
)

// checker keeps the clients' ledger and the runtime's events, and checks
// the invariants over them.
type checker struct {
	s *sim.Simulation

	mu       sync.Mutex
	ops      map[string]map[string]outcome // actor key -> op -> outcome
	errKinds map[string]int
	// otherExample is the first error that fit no known class, for the
	// summary.
	otherExample string
	commits      map[string][]commitEvent  // actor key -> commits seen
	activations  map[string][]commitEvent  // actor key -> activations seen (v: the version read or claimed at)
	lastSeq      map[string]uint64         // actor key -> seq of its last commit
	active       map[string]map[string]int // actor key -> node#incarnation -> live activations
	dead         map[string]bool           // node#incarnation stopped
	events       map[string]int            // "activated", "deactivated idle", ...
	nextOp       int
	// strictActivation: only one node can own an actor at a time (no
	// stolen leases), so every activation must load the latest commit.
	strictActivation bool
}

type commitEvent struct {
	node       string
	epoch, seq uint64
	v          kv.Version // the commit's KV version; for an activation, the version it read or claimed at
}

func newChecker(s *sim.Simulation) *checker {
	return &checker{s: s, ops: map[string]map[string]outcome{}, errKinds: map[string]int{},
		commits: map[string][]commitEvent{}, activations: map[string][]commitEvent{}, lastSeq: map[string]uint64{}, events: map[string]int{},
		active: map[string]map[string]int{}, dead: map[string]bool{}}
}

func (c *checker) violation(name string, err error) { c.s.Violation(name, err) }

// newOp returns a fresh operation id.
func (c *checker) newOp(client int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nextOp++
	return fmt.Sprintf("c%d-%d", client, c.nextOp)
}

// file records an invocation's outcome from its error.
func (c *checker) file(id actor.ID, op string, err error) outcome {
	o := acked
	kind := "ok"
	switch {
	case err == nil:
	case errors.Is(err, actor.ErrOutcomeUnknown):
		o, kind = unknown, "outcome-unknown"
	default:
		o = failed
		kind = errKind(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.ops[id.Key]
	if m == nil {
		m = map[string]outcome{}
		c.ops[id.Key] = m
	}
	m[op] = o
	c.errKinds[kind]++
	if kind == "other" && c.otherExample == "" {
		c.otherExample = err.Error()
	}
	return o
}

// errKind names an error's class for the summary.
func errKind(err error) string {
	for _, k := range []struct {
		err  error
		name string
	}{
		{actor.ErrRolledBack, "rolled-back"},
		{actor.ErrMailboxFull, "mailbox-full"},
		{actor.ErrTooManyActive, "too-many-active"},
		{actor.ErrFenced, "fenced"},
		{actor.ErrLeaseLost, "lease-lost"},
		{actor.ErrActivation, "activation"},
		{actor.ErrTimeout, "timeout"},
		{actor.ErrClosed, "closed"},
		{actor.ErrHandler, "handler"},
		{kv.ErrCommitFailed, "commit-failed"},
		{kv.ErrRetryLimit, "retry-limit"},
		{kv.ErrIO, "io"},
		{kv.ErrClosed, "store-closed"},
	} {
		if errors.Is(err, k.err) {
			return k.name
		}
	}
	return "other"
}

func (c *checker) count(kind string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.errKinds[kind]
}

func (c *checker) event(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.events[name]
}

// observer is one node's actor.Observer; it reports into the checker.
type observer struct {
	c    *checker
	node string
	inc  int // the node's incarnation
}

func (o observer) key() string { return fmt.Sprintf("%s#%d", o.node, o.inc) }

// died forgets the activations of a node incarnation that was stopped: a
// killed process runs nothing, whatever its goroutines report afterwards.
func (c *checker) died(node string, inc int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := observer{node: node, inc: inc}.key()
	c.dead[k] = true
	for _, per := range c.active {
		delete(per, k)
	}
}

func (o observer) Activated(id actor.ID, epoch, seq uint64, v kv.Version) {
	c := o.c
	c.mu.Lock()
	defer c.mu.Unlock()
	c.events["activated"]++
	if c.dead[o.key()] {
		return
	}
	c.activations[id.Key] = append(c.activations[id.Key], commitEvent{node: o.node, epoch: epoch, seq: seq, v: v})
	// The per-actor activation counter: one node never runs two
	// activations of an actor, and where leases cannot be stolen no two
	// nodes do either.
	per := c.active[id.Key]
	if per == nil {
		per = map[string]int{}
		c.active[id.Key] = per
	}
	per[o.key()]++
	total := 0
	for _, n := range per {
		total += n
	}
	if per[o.key()] > 1 {
		c.s.Violation("single-activation", fmt.Errorf("%s has %d activations on %s", id, per[o.key()], o.key()))
	}
	if c.strictActivation && total > 1 {
		c.s.Violation("single-activation", fmt.Errorf("%s has %d activations across nodes (activated on %s at epoch %d)", id, total, o.node, epoch))
	}
	// With one owner at a time, an activation starts from the last commit
	// anyone made: state survives deactivation, crashes and moves. (Where
	// leases are stolen a stale owner may commit concurrently, and the
	// chain check below is what holds.)
	if c.strictActivation {
		if last := c.lastSeq[id.Key]; seq != last {
			c.s.Violation("activation-loads-last-commit", fmt.Errorf("%s activated on %s at seq %d, but the last commit was seq %d", id, o.node, seq, last))
		}
	}
}

func (o observer) Committed(id actor.ID, epoch, seq uint64, v kv.Version) {
	c := o.c
	c.mu.Lock()
	defer c.mu.Unlock()
	c.commits[id.Key] = append(c.commits[id.Key], commitEvent{node: o.node, epoch: epoch, seq: seq, v: v})
	if seq > c.lastSeq[id.Key] {
		c.lastSeq[id.Key] = seq
	}
}

// checkChains checks that the commits of each actor form one chain: their
// sequence numbers are exactly 1..n, each once (two commits with one
// number would be two owners writing over the same state), and epochs never
// go back along the chain (a stale owner never commits after its
// successor). And no commit lands after a newer epoch's activation read or
// claimed the actor: once the successor is active, the old owner is fenced
// at once, not only after the successor's first commit.
func (c *checker) checkChains() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	keys := make([]string, 0, len(c.commits))
	for k := range c.commits {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		cs := append([]commitEvent(nil), c.commits[k]...)
		sort.Slice(cs, func(i, j int) bool { return cs[i].seq < cs[j].seq })
		for i, e := range cs {
			if e.seq != uint64(i+1) {
				return fmt.Errorf("%s:%s: commit #%d has seq %d (node %s epoch %d): the chain forks or has a gap", Namespace, k, i+1, e.seq, e.node, e.epoch)
			}
			if i > 0 && e.epoch < cs[i-1].epoch {
				return fmt.Errorf("%s:%s: commit seq %d at epoch %d on %s follows seq %d at epoch %d on %s: a stale owner committed", Namespace, k, e.seq, e.epoch, e.node, cs[i-1].seq, cs[i-1].epoch, cs[i-1].node)
			}
			for _, a := range c.activations[k] {
				if a.epoch > e.epoch && a.v < e.v {
					return fmt.Errorf("%s:%s: commit seq %d at epoch %d on %s (version %d) came after epoch %d activated on %s at version %d: the old owner was not fenced", Namespace, k, e.seq, e.epoch, e.node, e.v, a.epoch, a.node, a.v)
				}
			}
		}
	}
	return nil
}

func (o observer) Deactivated(id actor.ID, epoch uint64, reason string) {
	c := o.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if strings.HasPrefix(reason, "actor ") {
		reason = "dropped"
	}
	c.events["deactivated "+reason]++
	if per := c.active[id.Key]; per != nil && !c.dead[o.key()] {
		per[o.key()]--
		if per[o.key()] < 0 {
			c.s.Violation("single-activation", fmt.Errorf("%s deactivated on %s more often than activated", id, o.key()))
		}
	}
}

// verifyActor reads one actor back through rt and from db and checks it
// against the ledger.
func (c *checker) verifyActor(ctx context.Context, rt *actor.Runtime, db kv.DB, id actor.ID) error {
	out, err := invokeRetrying(ctx, rt, id, "count", nil)
	if err != nil {
		return fmt.Errorf("%s: read back: %w", id, err)
	}
	countStr, opsStr, _ := strings.Cut(string(out), " ")
	count, _ := strconv.Atoi(countStr)
	present := map[string]bool{}
	if opsStr != "" {
		for _, op := range strings.Split(opsStr, ",") {
			present[op] = true
		}
	}
	if count != len(present) {
		return fmt.Errorf("%s: count %d but %d operation keys: state and writes did not commit together", id, count, len(present))
	}
	// The same, straight from the store.
	var stored int
	err = kvRetry(ctx, func() error {
		return db.ReadTransact(ctx, func(tx kv.ReadTx) error {
			r, err := kv.PrefixRange([]byte("actor/" + id.Namespace + "/" + id.Key + "/d/" + opPrefix))
			if err != nil {
				return err
			}
			kvs, err := tx.GetRange(r, kv.RangeOptions{})
			stored = len(kvs)
			return err
		})
	})
	if err != nil {
		return fmt.Errorf("%s: read the store: %w", id, err)
	}
	if stored != len(present) {
		return fmt.Errorf("%s: the runtime reads %d operations, the store holds %d", id, len(present), stored)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	ops := c.ops[id.Key]
	names := make([]string, 0, len(ops))
	for op := range ops {
		names = append(names, op)
	}
	sort.Strings(names)
	for _, op := range names {
		switch ops[op] {
		case acked:
			if !present[op] {
				return fmt.Errorf("%s: acknowledged operation %s is lost", id, op)
			}
		case failed:
			if present[op] {
				return fmt.Errorf("%s: failed operation %s is visible", id, op)
			}
		}
	}
	for op := range present {
		if _, ok := ops[op]; !ok {
			return fmt.Errorf("%s: operation %s is present but no client sent it", id, op)
		}
	}
	if last := c.lastSeq[id.Key]; uint64(count) != last {
		return fmt.Errorf("%s: %d operations stored but %d commits were observed", id, count, last)
	}
	return nil
}

func (c *checker) summary() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	kinds := make([]string, 0, len(c.errKinds))
	for k, n := range c.errKinds {
		kinds = append(kinds, fmt.Sprintf("%s=%d", k, n))
	}
	sort.Strings(kinds)
	evs := make([]string, 0, len(c.events))
	for k, n := range c.events {
		evs = append(evs, fmt.Sprintf("%s=%d", k, n))
	}
	sort.Strings(evs)
	out := "outcomes: " + strings.Join(kinds, " ") + "; events: " + strings.Join(evs, " ")
	if c.otherExample != "" {
		out += "; first other error: " + c.otherExample
	}
	return out
}

// Retry bounds of the verification reads, which may meet injected faults.
const (
	verifyAttempts = 100
	verifyBackoff  = 10 * time.Millisecond
)

// invokeRetrying invokes until the invocation succeeds or fails for a
// reason a retry cannot fix.
func invokeRetrying(ctx context.Context, rt *actor.Runtime, id actor.ID, method string, payload []byte) ([]byte, error) {
	var err error
	for i := 0; i < verifyAttempts; i++ {
		var out []byte
		if out, err = rt.Invoke(ctx, id, method, payload); err == nil {
			return out, nil
		}
		time.Sleep(verifyBackoff)
	}
	return nil, fmt.Errorf("after %d attempts: %w", verifyAttempts, err)
}

func kvRetry(ctx context.Context, fn func() error) error {
	var err error
	for i := 0; i < verifyAttempts; i++ {
		if err = fn(); err == nil || !errors.Is(err, kv.ErrIO) {
			return err
		}
		time.Sleep(verifyBackoff)
	}
	return err
}
