package actor_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"

	"github.com/kelpie-go/kelpie/actor"
	"github.com/kelpie-go/kelpie/kv"
	"github.com/kelpie-go/kelpie/kv/memkv"
)

// heldDB holds read-write transactions while hold is set, until release is
// closed, and fails the first failFirst of them with kv.ErrCommitFailed
// (without running them). Within a synctest bubble that makes the turns of
// an actor pile up behind one commit, as they do behind a slow store.
type heldDB struct {
	kv.DB
	hold      atomic.Bool
	release   chan struct{}
	mu        sync.Mutex
	failFirst int
}

func (h *heldDB) Transact(ctx context.Context, fn func(kv.Tx) error) error {
	if h.hold.Load() {
		<-h.release
		h.mu.Lock()
		fail := h.failFirst > 0
		h.failFirst--
		h.mu.Unlock()
		if fail {
			return fmt.Errorf("injected by the test: %w", kv.ErrCommitFailed)
		}
	}
	return h.DB.Transact(ctx, fn)
}

// ledgerActor keeps a count in its state and the same count in its key
// "n"; "incr" reads the key (Get and Scan must agree), adds one to both, and
// returns the new count.
type ledgerActor struct{ n int64 }

func (l *ledgerActor) Load(state []byte) error {
	l.n = 0
	if state == nil {
		return nil
	}
	n, err := strconv.ParseInt(string(state), 10, 64)
	l.n = n
	return err
}

func (l *ledgerActor) Save() ([]byte, error) { return strconv.AppendInt(nil, l.n, 10), nil }

func (l *ledgerActor) Receive(c *actor.Call) ([]byte, error) {
	v, ok, err := c.Get([]byte("n"))
	if err != nil {
		return nil, err
	}
	stored := int64(0)
	if ok {
		if stored, err = strconv.ParseInt(string(v), 10, 64); err != nil {
			return nil, err
		}
	}
	kvs, err := c.Scan([]byte("n"), 0)
	if err != nil {
		return nil, err
	}
	if ok != (len(kvs) == 1) || ok && string(kvs[0].Value) != string(v) {
		return nil, fmt.Errorf("Get says %q (present %v) but Scan says %v", v, ok, kvs)
	}
	if stored != l.n {
		return nil, fmt.Errorf("key n is %d but the state is %d: the turn read a view that is not its actor's", stored, l.n)
	}
	l.n++
	next := strconv.AppendInt(nil, l.n, 10)
	if err := c.Set([]byte("n"), next); err != nil {
		return nil, err
	}
	return next, nil
}

func newHeldRuntime(t *testing.T, failFirst int) (*actor.Runtime, *heldDB, *recorder) {
	t.Helper()
	db := &heldDB{DB: memkv.New(), release: make(chan struct{}), failFirst: failFirst}
	rt, _, obs := newRuntime(t, db, nil, nil)
	if err := rt.Register("ledger", func(actor.ID) actor.Actor { return &ledgerActor{} }); err != nil {
		t.Fatal(err)
	}
	return rt, db, obs
}

type reply struct {
	out string
	err error
}

// pile runs one invocation of id and waits until its commit is held, then
// n more, concurrently, and waits until every one has run (their turns are
// in flight behind the first), and returns where their replies arrive.
func pile(t *testing.T, rt *actor.Runtime, db *heldDB, id actor.ID, n int) chan reply {
	t.Helper()
	replies := make(chan reply, n+1)
	call := func() {
		out, err := rt.Invoke(context.Background(), id, "incr", nil)
		replies <- reply{string(out), err}
	}
	db.hold.Store(true)
	go call()
	synctest.Wait()
	for range n {
		go call()
	}
	synctest.Wait()
	if len(replies) != 0 {
		close(db.release) // so that the runtime can close
		r := <-replies
		t.Fatalf("%d invocations returned while the first commit was held, one with %q, %v", len(replies)+1, r.out, r.err)
	}
	return replies
}

// Turns of one actor run while the commits of the turns before them are in
// flight, and they read those turns' writes: the pipeline is invisible to
// the handler, and no caller hears of success before the commit.
func TestPipelinedTurnsReadTheWritesOfTurnsInFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt, db, obs := newHeldRuntime(t, 0)
		id := actor.MustID("ledger", "a")
		replies := pile(t, rt, db, id, 10)
		close(db.release)
		var got []int
		for range 11 {
			r := <-replies
			if r.err != nil {
				t.Fatalf("invocation: %v", r.err)
			}
			n, _ := strconv.Atoi(r.out)
			got = append(got, n)
		}
		slices.Sort(got)
		for i, n := range got {
			if n != i+1 {
				t.Fatalf("replies %v, want 1 to 11 once each", got)
			}
		}
		if out := invoke(t, rt, id, "incr", ""); out != "12" {
			t.Fatalf("after the pipeline drained: incr = %s, want 12", out)
		}
		commits := 0
		for _, e := range obs.list() {
			if strings.HasPrefix(e, "committed ledger:a ") {
				commits++
				if want := fmt.Sprintf("committed ledger:a 1 %d", commits); e != want {
					t.Fatalf("event %q, want %q (commits in order)", e, want)
				}
			}
		}
		if commits != 12 {
			t.Fatalf("%d commits observed, want 12", commits)
		}
		_ = rt.Close()
	})
}

// A commit that fails takes with it every turn that ran on its effects, and
// the actor goes back to its last committed state before its next turn.
func TestFailedCommitRollsBackTheTurnsThatRanOnIt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt, db, obs := newHeldRuntime(t, 1)
		id := actor.MustID("ledger", "b")
		replies := pile(t, rt, db, id, 5)
		close(db.release)
		first, rolledBack := 0, 0
		for range 6 {
			r := <-replies
			switch {
			case r.err == nil:
				t.Fatalf("an invocation succeeded (%s) though the commit under it failed", r.out)
			case errors.Is(r.err, actor.ErrOutcomeUnknown):
				t.Fatalf("the outcome is certain, but: %v", r.err)
			case !errors.Is(r.err, kv.ErrCommitFailed):
				t.Fatalf("invocation: %v, want one that wraps kv.ErrCommitFailed", r.err)
			case errors.Is(r.err, actor.ErrRolledBack):
				rolledBack++
			default:
				first++
			}
		}
		if first != 1 || rolledBack != 5 {
			t.Fatalf("%d failed commits and %d rollbacks, want 1 and 5", first, rolledBack)
		}
		// Nothing of the six is visible: the count and the key start over.
		if out := invoke(t, rt, id, "incr", ""); out != "1" {
			t.Fatalf("after the rollback: incr = %s, want 1", out)
		}
		for _, e := range obs.list() {
			if strings.HasPrefix(e, "committed ledger:b ") && e != "committed ledger:b 1 1" {
				t.Fatalf("event %q: only the invocation after the rollback commits", e)
			}
		}
		if n := rt.NumActive(); n != 1 {
			t.Fatalf("%d activations, want the one that rolled back and stayed", n)
		}
		_ = rt.Close()
	})
}
