package actor_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/kelpie-go/kelpie/actor"
	"github.com/kelpie-go/kelpie/actor/placement"
	"github.com/kelpie-go/kelpie/kv"
	"github.com/kelpie-go/kelpie/kv/memkv"
)

// counter is the test actor: its state is a decimal count. Methods:
// "add" adds the payload (a decimal) and records it under key "log/<n>";
// "get" returns the count; "fail" adds and then fails; "sleep" blocks until
// its context ends or the gate opens; "rw" writes a key and reads it back.
type counter struct {
	n    int64
	gate chan struct{}
}

func (c *counter) Load(state []byte) error {
	if state == nil {
		c.n = 0
		return nil
	}
	n, err := strconv.ParseInt(string(state), 10, 64)
	if err != nil {
		return fmt.Errorf("counter state %q: %w", state, err)
	}
	c.n = n
	return nil
}

func (c *counter) Save() ([]byte, error) { return []byte(strconv.FormatInt(c.n, 10)), nil }

func (c *counter) Receive(call *actor.Call) ([]byte, error) {
	switch call.Method() {
	case "add", "fail":
		d, err := strconv.ParseInt(string(call.Payload()), 10, 64)
		if err != nil {
			return nil, err
		}
		c.n += d
		if err := call.Set([]byte(fmt.Sprintf("log/%d", c.n)), call.Payload()); err != nil {
			return nil, err
		}
		if call.Method() == "fail" {
			return nil, errors.New("asked to fail")
		}
		return []byte(strconv.FormatInt(c.n, 10)), nil
	case "get":
		return []byte(strconv.FormatInt(c.n, 10)), nil
	case "sleep":
		select {
		case <-call.Context().Done():
		case <-c.gate:
		}
		c.n++
		return nil, nil
	case "stubborn":
		// Ignores its context: it runs for the payload's duration whatever
		// the deadline says.
		d, err := time.ParseDuration(string(call.Payload()))
		if err != nil {
			return nil, err
		}
		time.Sleep(d)
		c.n += 100
		return nil, nil
	case "rw":
		if err := call.Set([]byte("k"), call.Payload()); err != nil {
			return nil, err
		}
		v, ok, err := call.Get([]byte("k"))
		if err != nil || !ok {
			return nil, fmt.Errorf("read own write: ok=%v err=%v", ok, err)
		}
		return v, nil
	}
	return nil, fmt.Errorf("unknown method %q", call.Method())
}

type env struct {
	db  *memkv.DB
	pl  *placement.Local
	rt  *actor.Runtime
	obs *recorder
}

// recorder is an Observer that keeps every event.
type recorder struct {
	mu     sync.Mutex
	events []string
}

func (r *recorder) add(s string) { r.mu.Lock(); r.events = append(r.events, s); r.mu.Unlock() }
func (r *recorder) Activated(id actor.ID, epoch, seq uint64, _ kv.Version) {
	r.add(fmt.Sprintf("activated %s %d %d", id, epoch, seq))
}
func (r *recorder) Committed(id actor.ID, epoch, seq uint64, v kv.Version) {
	r.add(fmt.Sprintf("committed %s %d %d", id, epoch, seq))
}
func (r *recorder) Deactivated(id actor.ID, epoch uint64, reason string) {
	r.add(fmt.Sprintf("deactivated %s %d %s", id, epoch, reason))
}
func (r *recorder) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.events...)
}

func newRuntime(t *testing.T, db kv.DB, gate chan struct{}, mod func(*actor.Config)) (*actor.Runtime, *placement.Local, *recorder) {
	t.Helper()
	pl, err := placement.NewLocal(context.Background(), db, "n1")
	if err != nil {
		t.Fatal(err)
	}
	obs := &recorder{}
	cfg := actor.Config{DB: db, Placement: pl, Observer: obs}
	if mod != nil {
		mod(&cfg)
	}
	rt, err := actor.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Register("counter", func(actor.ID) actor.Actor { return &counter{gate: gate} }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Close() })
	return rt, pl, obs
}

func newEnv(t *testing.T, mod func(*actor.Config)) *env {
	db := memkv.New()
	rt, pl, obs := newRuntime(t, db, nil, mod)
	return &env{db: db, pl: pl, rt: rt, obs: obs}
}

func invoke(t *testing.T, rt *actor.Runtime, id actor.ID, method, payload string) string {
	t.Helper()
	out, err := rt.Invoke(context.Background(), id, method, []byte(payload))
	if err != nil {
		t.Fatalf("%s %s(%s): %v", id, method, payload, err)
	}
	return string(out)
}

func TestInvokeCountsAndPersistsAcrossRuntimes(t *testing.T) {
	db := memkv.New()
	rt, _, _ := newRuntime(t, db, nil, nil)
	id := actor.MustID("counter", "a")
	for i := 1; i <= 10; i++ {
		if got := invoke(t, rt, id, "add", "1"); got != strconv.Itoa(i) {
			t.Fatalf("add #%d returned %s", i, got)
		}
	}
	if err := rt.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Invoke(context.Background(), id, "get", nil); !errors.Is(err, actor.ErrClosed) {
		t.Fatalf("invoke after Close: %v, want ErrClosed", err)
	}
	rt2, pl2, _ := newRuntime(t, db, nil, nil)
	if pl2.Epoch() != 2 {
		t.Fatalf("second process epoch %d, want 2", pl2.Epoch())
	}
	if got := invoke(t, rt2, id, "get", ""); got != "10" {
		t.Fatalf("after restart get = %s, want 10", got)
	}
	acts := rt2.Active()
	if len(acts) != 1 || acts[0].ID != id || acts[0].Epoch != 2 || acts[0].Seq != 10 {
		t.Fatalf("Active() = %+v, want %s at epoch 2 seq 10", acts, id)
	}
}

func TestReadsSeeOwnWrites(t *testing.T) {
	e := newEnv(t, nil)
	if got := invoke(t, e.rt, actor.MustID("counter", "rw"), "rw", "hello"); got != "hello" {
		t.Fatalf("rw returned %q", got)
	}
}

func TestHandlerErrorRollsBackStateAndWrites(t *testing.T) {
	e := newEnv(t, nil)
	id := actor.MustID("counter", "rb")
	invoke(t, e.rt, id, "add", "5")
	_, err := e.rt.Invoke(context.Background(), id, "fail", []byte("100"))
	if !errors.Is(err, actor.ErrHandler) || !strings.Contains(err.Error(), "asked to fail") {
		t.Fatalf("fail: %v, want ErrHandler with the handler's message", err)
	}
	if got := invoke(t, e.rt, id, "get", ""); got != "5" {
		t.Fatalf("after failed add, get = %s, want 5 (in-memory state rolled back)", got)
	}
	err = e.db.ReadTransact(context.Background(), func(tx kv.ReadTx) error {
		if _, ok, err := tx.Get([]byte("actor/counter/rb/d/log/105")); err != nil || ok {
			return fmt.Errorf("the failed invocation's write is visible (ok=%v err=%v)", ok, err)
		}
		if _, ok, err := tx.Get([]byte("actor/counter/rb/d/log/5")); err != nil || !ok {
			return fmt.Errorf("the successful invocation's write is missing (ok=%v err=%v)", ok, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestStateThatFailsToLoadIsAnError(t *testing.T) {
	db := memkv.New()
	// A committed state the counter cannot parse, in a valid record
	// (format 1, epoch 0, commit 1).
	err := db.Transact(context.Background(), func(tx kv.Tx) error {
		rec := append([]byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, "not a number"...)
		return tx.Set([]byte("actor/counter/bad/r"), rec)
	})
	if err != nil {
		t.Fatal(err)
	}
	rt, pl, _ := newRuntime(t, db, nil, nil)
	_, err = rt.Invoke(context.Background(), actor.MustID("counter", "bad"), "get", nil)
	if !errors.Is(err, actor.ErrActivation) || !strings.Contains(err.Error(), "not a number") {
		t.Fatalf("invoke on bad state: %v, want ErrActivation naming the bad state", err)
	}
	if rt.NumActive() != 0 || pl.Held() != 0 {
		t.Fatalf("after a failed activation: %d active, %d leases held; want 0 and 0", rt.NumActive(), pl.Held())
	}
	// A record that is not one (too short for its header), and a claim
	// (commit 0) that holds state, are corruption, not a fresh actor.
	for key, rec := range map[string][]byte{
		"short": {1, 0, 0},
		"claim": append([]byte{1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0}, "41"...),
	} {
		err = db.Transact(context.Background(), func(tx kv.Tx) error {
			return tx.Set([]byte("actor/counter/"+key+"/r"), rec)
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rt.Invoke(context.Background(), actor.MustID("counter", key), "get", nil); !errors.Is(err, kv.ErrCorrupt) {
			t.Fatalf("invoke on the %s record: %v, want kv.ErrCorrupt", key, err)
		}
	}
}

func TestMailboxFullIsBackpressure(t *testing.T) {
	gate := make(chan struct{})
	rt, _, _ := newRuntime(t, memkv.New(), gate, func(c *actor.Config) { c.MailboxSize = 4 })
	id := actor.MustID("counter", "busy")
	// One invocation occupies the actor until the gate opens.
	sleeper := make(chan error, 1)
	go func() {
		_, err := rt.Invoke(context.Background(), id, "sleep", nil)
		sleeper <- err
	}()
	waitFor(t, func() bool { return len(rt.Active()) == 1 })
	time.Sleep(10 * time.Millisecond) // let the actor take the sleeper out of its mailbox
	// Four more are queued; their callers give up, so they never run, but
	// they hold their places in the mailbox until the actor reaches them.
	for i := 0; i < 4; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
		_, err := rt.Invoke(ctx, id, "add", []byte("100"))
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, actor.ErrOutcomeUnknown) {
			t.Fatalf("queued invocation %d: %v, want a deadline error before it started", i, err)
		}
	}
	_, full := rt.Invoke(context.Background(), id, "add", []byte("100"))
	var mf *actor.MailboxFullError
	if !errors.As(full, &mf) || mf.Capacity != 4 || !strings.Contains(full.Error(), "Config.MailboxSize") {
		t.Fatalf("fifth queued invocation: %v, want a *MailboxFullError with capacity 4 naming Config.MailboxSize", full)
	}
	close(gate)
	if err := <-sleeper; err != nil {
		t.Fatalf("the accepted invocation failed: %v", err)
	}
	var got []byte
	waitFor(t, func() bool {
		var err error
		got, err = rt.Invoke(context.Background(), id, "get", nil)
		if err != nil && !errors.Is(err, actor.ErrMailboxFull) {
			t.Fatal(err)
		}
		return err == nil // full until the actor skips the abandoned ones
	})
	if string(got) != "1" {
		t.Fatalf("count %s, want 1: only the sleeper ran (refused and abandoned invocations must not)", got)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestTimeoutRollsBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt, _, _ := newRuntime(t, memkv.New(), make(chan struct{}), func(c *actor.Config) { c.InvocationTimeout = time.Second })
		id := actor.MustID("counter", "slow")
		invoke(t, rt, id, "add", "3")
		_, err := rt.Invoke(context.Background(), id, "sleep", nil)
		if !errors.Is(err, actor.ErrTimeout) {
			t.Fatalf("sleep past the deadline: %v, want ErrTimeout", err)
		}
		if got := invoke(t, rt, id, "get", ""); got != "3" {
			t.Fatalf("after a timed-out invocation get = %s, want 3", got)
		}
		// A caller deadline shorter than the configured one wins.
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err = rt.Invoke(ctx, id, "sleep", nil)
		if err == nil || time.Since(start) != 100*time.Millisecond {
			t.Fatalf("caller deadline: err %v after %s, want an error after 100ms", err, time.Since(start))
		}
		_ = rt.Close()
	})
}

// TestTimeoutReleasesTheCaller: a handler that ignores its context cannot
// hold its caller, or the callers queued behind it, past their deadlines,
// and what it did after its caller gave up never commits.
func TestTimeoutReleasesTheCaller(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt, _, _ := newRuntime(t, memkv.New(), nil, func(c *actor.Config) { c.InvocationTimeout = 20 * time.Millisecond })
		id := actor.MustID("counter", "stubborn")
		invoke(t, rt, id, "add", "3")
		errs := make(chan error, 2)
		start := time.Now()
		go func() { _, err := rt.Invoke(context.Background(), id, "stubborn", []byte("500ms")); errs <- err }()
		time.Sleep(5 * time.Millisecond)
		go func() { _, err := rt.Invoke(context.Background(), id, "add", []byte("1")); errs <- err }()
		for i, want := range []time.Duration{20 * time.Millisecond, 25 * time.Millisecond} {
			err := <-errs
			if !errors.Is(err, actor.ErrTimeout) || errors.Is(err, actor.ErrOutcomeUnknown) {
				t.Fatalf("invocation %d: %v, want ErrTimeout (no effect)", i, err)
			}
			if got := time.Since(start); got != want {
				t.Fatalf("invocation %d returned after %s, want %s (its deadline)", i, got, want)
			}
		}
		time.Sleep(time.Second) // the stubborn handler finishes, and is rolled back
		if got := invoke(t, rt, id, "get", ""); got != "3" {
			t.Fatalf("get = %s, want 3: an invocation whose caller timed out committed", got)
		}
		_ = rt.Close()
	})
}

func TestIdleDeactivationPreservesState(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt, _, obs := newRuntime(t, memkv.New(), nil, func(c *actor.Config) { c.IdleTimeout = time.Minute })
		id := actor.MustID("counter", "idle")
		invoke(t, rt, id, "add", "7")
		time.Sleep(30 * time.Second)
		invoke(t, rt, id, "add", "1") // resets the idle clock
		time.Sleep(50 * time.Second)
		synctest.Wait()
		if rt.NumActive() != 1 {
			t.Fatalf("deactivated after 50s idle with a 1m timeout")
		}
		time.Sleep(20 * time.Second)
		synctest.Wait()
		if rt.NumActive() != 0 || len(rt.Active()) != 0 {
			t.Fatalf("still active after 70s idle with a 1m timeout")
		}
		if got := invoke(t, rt, id, "get", ""); got != "8" {
			t.Fatalf("after reactivation get = %s, want 8", got)
		}
		want := []string{"activated counter:idle 1 0", "committed counter:idle 1 1", "committed counter:idle 1 2",
			"deactivated counter:idle 1 idle", "activated counter:idle 1 2"}
		if got := obs.list(); strings.Join(got, "|") != strings.Join(want, "|") {
			t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		_ = rt.Close()
	})
}

func TestMaxActiveEvictsLeastRecentlyUsedIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		gate := make(chan struct{})
		rt, _, _ := newRuntime(t, memkv.New(), gate, func(c *actor.Config) { c.MaxActive = 2 })
		a, b, c := actor.MustID("counter", "a"), actor.MustID("counter", "b"), actor.MustID("counter", "c")
		invoke(t, rt, a, "add", "1")
		time.Sleep(time.Second)
		invoke(t, rt, b, "add", "2")
		time.Sleep(time.Second)
		invoke(t, rt, c, "add", "3") // evicts a, the least recently used
		synctest.Wait()
		var ids []string
		for _, act := range rt.Active() {
			ids = append(ids, act.ID.String())
		}
		if strings.Join(ids, ",") != "counter:b,counter:c" {
			t.Fatalf("active after eviction: %v, want b and c", ids)
		}
		// Make both busy: a third actor then has nothing to evict.
		done := make(chan error, 2)
		go func() { _, err := rt.Invoke(context.Background(), b, "sleep", nil); done <- err }()
		go func() { _, err := rt.Invoke(context.Background(), c, "sleep", nil); done <- err }()
		synctest.Wait()
		_, err := rt.Invoke(context.Background(), a, "get", nil)
		if !errors.Is(err, actor.ErrTooManyActive) || !strings.Contains(err.Error(), "Config.MaxActive") {
			t.Fatalf("third actor while two are busy: %v, want ErrTooManyActive naming Config.MaxActive", err)
		}
		close(gate)
		for i := 0; i < 2; i++ {
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		}
		if got := invoke(t, rt, a, "get", ""); got != "1" {
			t.Fatalf("evicted actor reactivated with %s, want 1", got)
		}
		_ = rt.Close()
	})
}

func TestStaleOwnerIsFenced(t *testing.T) {
	db := memkv.New()
	old, _, _ := newRuntime(t, db, nil, nil)
	id := actor.MustID("counter", "f")
	invoke(t, old, id, "add", "1") // old activation: epoch 1, seq 1
	// A second process takes over (epoch 2) while the first still has the
	// actor in memory, as after a pause or a partition.
	cur, _, _ := newRuntime(t, db, nil, nil)
	invoke(t, cur, id, "add", "10") // commits epoch 2, seq 2
	_, err := old.Invoke(context.Background(), id, "add", []byte("100"))
	var fe *actor.FencedError
	if !errors.As(err, &fe) || fe.Epoch != 1 || fe.StoredEpoch != 2 || fe.Stale {
		t.Fatalf("stale owner's commit: %v, want a FencedError epoch 1 < stored 2", err)
	}
	if old.NumActive() != 0 {
		t.Fatalf("the fenced activation is still active")
	}
	if got := invoke(t, cur, id, "get", ""); got != "11" {
		t.Fatalf("the new owner sees %s, want 11 (the stale commit must not apply)", got)
	}
	// The old process tries again: a fresh activation with epoch 1 may not
	// even load.
	_, err = old.Invoke(context.Background(), id, "get", nil)
	if !errors.Is(err, actor.ErrFenced) || !errors.Is(err, actor.ErrActivation) {
		t.Fatalf("reactivation with a stale epoch: %v, want ErrActivation and ErrFenced", err)
	}
}

// TestStaleViewIsRefusedBeforeTheNewOwnerCommits: two Locals on one store
// break Local's contract (its leases are Sole, so activation claims
// nothing); the commit check still keeps the chain of commits whole.
func TestStaleViewIsRefusedBeforeTheNewOwnerCommits(t *testing.T) {
	db := memkv.New()
	old, _, _ := newRuntime(t, db, nil, nil)
	cur, _, _ := newRuntime(t, db, nil, nil)
	id := actor.MustID("counter", "s")
	invoke(t, old, id, "add", "1") // the old owner commits: epoch 1, seq 1
	invoke(t, cur, id, "get", "")  // the new owner loads seq 1 and commits nothing
	invoke(t, old, id, "add", "1") // the old owner still commits: epoch 1, seq 2
	_, err := cur.Invoke(context.Background(), id, "add", []byte("5"))
	var fe *actor.FencedError
	if !errors.As(err, &fe) || !fe.Stale {
		t.Fatalf("commit on a stale view: %v, want a stale FencedError", err)
	}
	// Reactivated, the new owner sees the old owner's commit and fences it.
	if got := invoke(t, cur, id, "add", "5"); got != "7" {
		t.Fatalf("after reload add = %s, want 7", got)
	}
	if _, err := old.Invoke(context.Background(), id, "add", []byte("1")); !errors.Is(err, actor.ErrFenced) {
		t.Fatalf("old owner after the new one committed: %v, want ErrFenced", err)
	}
}

// shared grants Local's leases as a cluster's placement would: not Sole,
// so activations claim the actor in the store.
type shared struct{ *placement.Local }

func (s shared) Acquire(ctx context.Context, actor string) (placement.Lease, error) {
	l, err := s.Local.Acquire(ctx, actor)
	l.Sole = false
	return l, err
}

// TestActivationClaimFencesTheOldOwnerAtOnce: with leases that are not
// Sole, a new activation records its epoch before its first turn, so the old
// owner's next commit is refused even though the new owner has committed
// nothing, and the new owner never sees a stale view.
func TestActivationClaimFencesTheOldOwnerAtOnce(t *testing.T) {
	db := memkv.New()
	var rts []*actor.Runtime
	for i := 0; i < 2; i++ {
		rt, pl, _ := newRuntime(t, db, nil, nil)
		if err := rt.Close(); err != nil {
			t.Fatal(err)
		}
		rt, err := actor.New(actor.Config{DB: db, Placement: shared{pl}})
		if err != nil {
			t.Fatal(err)
		}
		if err := rt.Register("counter", func(actor.ID) actor.Actor { return &counter{} }); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = rt.Close() })
		rts = append(rts, rt)
	}
	old, cur := rts[0], rts[1]
	id := actor.MustID("counter", "c")
	invoke(t, old, id, "add", "1") // epoch 1 claims and commits seq 1
	invoke(t, cur, id, "get", "")  // epoch 2 claims at seq 1 and commits nothing
	_, err := old.Invoke(context.Background(), id, "add", []byte("1"))
	var fe *actor.FencedError
	if !errors.As(err, &fe) || fe.Stale || fe.StoredEpoch != 2 {
		t.Fatalf("old owner after the new one activated: %v, want a FencedError naming stored epoch 2", err)
	}
	if got := invoke(t, cur, id, "add", "5"); got != "6" {
		t.Fatalf("new owner add = %s, want 6 (no stale view, the old owner's refused add not applied)", got)
	}
	// A claim that never committed is an empty actor, not corruption.
	fresh := actor.MustID("counter", "fresh")
	invoke(t, cur, fresh, "get", "")
	if _, err := old.Invoke(context.Background(), fresh, "add", []byte("1")); !errors.Is(err, actor.ErrFenced) && !errors.Is(err, actor.ErrActivation) {
		t.Fatalf("old owner on an actor the new one claimed: %v, want it fenced", err)
	}
	if got := invoke(t, cur, fresh, "add", "2"); got != "2" {
		t.Fatalf("claimed, never committed actor: add = %s, want 2", got)
	}
}

func TestInvalidInput(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	cases := []struct {
		id      actor.ID
		method  string
		payload []byte
		want    string
	}{
		{actor.ID{Namespace: "", Key: "x"}, "get", nil, "namespace is empty"},
		{actor.ID{Namespace: "Counter", Key: "x"}, "get", nil, "namespace has byte 'C'"},
		{actor.ID{Namespace: "counter", Key: "a/b"}, "get", nil, "key has byte '/'"},
		{actor.ID{Namespace: "counter", Key: strings.Repeat("k", 300)}, "get", nil, "MaxKeyBytes"},
		{actor.MustID("counter", "x"), strings.Repeat("m", 300), nil, "MaxMethodBytes"},
		{actor.MustID("counter", "x"), "get", make([]byte, actor.MaxPayloadBytes+1), "MaxPayloadBytes"},
	}
	for _, c := range cases {
		_, err := e.rt.Invoke(ctx, c.id, c.method, c.payload)
		if !errors.Is(err, actor.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Invoke(%q, %q): %v, want ErrInvalid mentioning %q", c.id, trunc(c.method), err, c.want)
		}
	}
	if _, err := e.rt.Invoke(ctx, actor.MustID("nobody", "x"), "get", nil); !errors.Is(err, actor.ErrUnknownNamespace) {
		t.Errorf("unregistered namespace: %v, want ErrUnknownNamespace", err)
	}
	for _, s := range []string{"nocolon", ":x", "ns:", "ns:a:b"} {
		if _, err := actor.ParseID(s); err == nil {
			t.Errorf("ParseID(%q) succeeded", s)
		}
	}
	if id, err := actor.ParseID("agents:agent-1@x"); err != nil || id.Namespace != "agents" || id.Key != "agent-1@x" {
		t.Errorf("ParseID(agents:agent-1@x) = %v, %v", id, err)
	}
	bad := []actor.Config{
		{},
		{DB: e.db},
		{DB: e.db, Placement: e.pl, MailboxSize: actor.MaxMailboxSize + 1},
		{DB: e.db, Placement: e.pl, IdleTimeout: -time.Second},
		{DB: e.db, Placement: e.pl, MaxActive: -1},
		{DB: e.db, Placement: e.pl, InvocationTimeout: 2 * actor.MaxInvocationTimeout},
	}
	for i, cfg := range bad {
		if _, err := actor.New(cfg); err == nil || !strings.Contains(err.Error(), "Config.") {
			t.Errorf("bad config %d: %v, want an error naming the Config field", i, err)
		}
	}
}

func trunc(s string) string {
	if len(s) > 20 {
		return s[:20] + "..."
	}
	return s
}

func TestManyActorsConcurrently(t *testing.T) {
	e := newEnv(t, func(c *actor.Config) { c.MaxActive = 50 })
	const actors, perActor, workers = 200, 20, 8
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perActor*actors/workers; i++ {
				id := actor.MustID("counter", strconv.Itoa((i*workers+w)%actors))
				for {
					_, err := e.rt.Invoke(context.Background(), id, "add", []byte("1"))
					if err == nil {
						break
					}
					if !errors.Is(err, actor.ErrTooManyActive) && !errors.Is(err, actor.ErrMailboxFull) {
						errs <- err
						return
					}
					time.Sleep(time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := e.rt.NumActive(); n > 50 {
		t.Fatalf("%d active, over MaxActive 50", n)
	}
	for k := 0; k < actors; k++ {
		if got := invoke(t, e.rt, actor.MustID("counter", strconv.Itoa(k)), "get", ""); got != strconv.Itoa(perActor) {
			t.Fatalf("actor %d counted %s, want %d", k, got, perActor)
		}
	}
}

// scanner exercises Call.Scan, Clear and the limits against the store and
// the turn's own writes.
type scanner struct{ counter }

func (s *scanner) Receive(call *actor.Call) ([]byte, error) {
	switch call.Method() {
	case "seed":
		for _, k := range []string{"p/a", "p/b", "p/c", "q/z"} {
			if err := call.Set([]byte(k), []byte(k)); err != nil {
				return nil, err
			}
		}
		return nil, nil
	case "mix":
		// Hide p/b, add p/bb, change p/c, then list p/ in two ways.
		if err := call.Clear([]byte("p/b")); err != nil {
			return nil, err
		}
		if err := call.Set([]byte("p/bb"), []byte("new")); err != nil {
			return nil, err
		}
		if err := call.Set([]byte("p/c"), []byte("changed")); err != nil {
			return nil, err
		}
		all, err := call.Scan([]byte("p/"), 0)
		if err != nil {
			return nil, err
		}
		two, err := call.Scan([]byte("p/"), 2)
		if err != nil {
			return nil, err
		}
		var out []string
		for _, e := range all {
			out = append(out, string(e.Key)+"="+string(e.Value))
		}
		out = append(out, "|")
		for _, e := range two {
			out = append(out, string(e.Key))
		}
		if _, ok, _ := call.Get([]byte("p/b")); ok {
			return nil, errors.New("a cleared key is still visible")
		}
		return []byte(strings.Join(out, " ")), nil
	case "big":
		if err := call.Set(make([]byte, actor.MaxUserKeyBytes+1), nil); !errors.Is(err, kv.ErrKeyTooLarge) {
			return nil, fmt.Errorf("oversized key: %v", err)
		}
		if err := call.Set([]byte("v"), make([]byte, kv.ValueLimit+1)); !errors.Is(err, kv.ErrValueTooLarge) {
			return nil, fmt.Errorf("oversized value: %v", err)
		}
		v := make([]byte, kv.ValueLimit)
		for i := 0; ; i++ {
			if err := call.Set([]byte(strconv.Itoa(i)), v); err != nil {
				if !errors.Is(err, kv.ErrTransactionTooLarge) || !strings.Contains(err.Error(), "limit") {
					return nil, fmt.Errorf("turn past MaxTurnBytes: %v", err)
				}
				return []byte(strconv.Itoa(i)), nil
			}
		}
	}
	return s.counter.Receive(call)
}

func TestCallScanClearAndLimits(t *testing.T) {
	db := memkv.New()
	pl, err := placement.NewLocal(context.Background(), db, "n1")
	if err != nil {
		t.Fatal(err)
	}
	rt, err := actor.New(actor.Config{DB: db, Placement: pl})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	if err := rt.Register("scan", func(actor.ID) actor.Actor { return &scanner{} }); err != nil {
		t.Fatal(err)
	}
	id := actor.MustID("scan", "s")
	invoke(t, rt, id, "seed", "")
	got := invoke(t, rt, id, "mix", "")
	want := "p/a=p/a p/bb=new p/c=changed | p/a p/bb"
	if got != want {
		t.Fatalf("scan with own writes:\n got %q\nwant %q", got, want)
	}
	// The mix committed: a fresh activation (after a restart) sees it.
	_ = rt.Close()
	rt2, err := actor.New(actor.Config{DB: db, Placement: mustLocal(t, db)})
	if err != nil {
		t.Fatal(err)
	}
	defer rt2.Close()
	if err := rt2.Register("scan", func(actor.ID) actor.Actor { return &scanner{} }); err != nil {
		t.Fatal(err)
	}
	if got := invoke(t, rt2, id, "mix", ""); got != want {
		t.Fatalf("after restart: %q", got)
	}
	n := invoke(t, rt2, id, "big", "")
	if want := strconv.Itoa(actor.MaxTurnBytes / kv.ValueLimit); n != want && n != strconv.Itoa(actor.MaxTurnBytes/kv.ValueLimit-1) {
		t.Fatalf("a turn accepted %s values of kv.ValueLimit bytes, want about %s", n, want)
	}
}

func mustLocal(t *testing.T, db kv.DB) *placement.Local {
	t.Helper()
	pl, err := placement.NewLocal(context.Background(), db, "n1")
	if err != nil {
		t.Fatal(err)
	}
	return pl
}

func TestCloseFailsQueuedInvocations(t *testing.T) {
	gate := make(chan struct{})
	rt, _, _ := newRuntime(t, memkv.New(), gate, nil)
	id := actor.MustID("counter", "c")
	first := make(chan error, 1)
	go func() { _, err := rt.Invoke(context.Background(), id, "sleep", nil); first <- err }()
	waitFor(t, func() bool { return len(rt.Active()) == 1 })
	time.Sleep(10 * time.Millisecond) // the sleeper is running
	queued := make(chan error, 1)
	go func() { _, err := rt.Invoke(context.Background(), id, "add", []byte("1")); queued <- err }()
	time.Sleep(10 * time.Millisecond)
	closed := make(chan error, 1)
	go func() { closed <- rt.Close() }()
	time.Sleep(10 * time.Millisecond)
	close(gate) // the running turn finishes; Close waits for it
	if err := <-first; err != nil {
		t.Fatalf("the running invocation: %v, want success (Close lets it finish)", err)
	}
	if err := <-queued; !errors.Is(err, actor.ErrClosed) {
		t.Fatalf("the queued invocation: %v, want ErrClosed", err)
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	db := memkv.New()
	rt, _, _ := newRuntime(t, db, nil, func(c *actor.Config) { c.MaxActive = 100 })
	for i := 0; i < 300; i++ { // 200 evictions along the way
		invoke(t, rt, actor.MustID("counter", strconv.Itoa(i)), "add", "1")
	}
	if n := rt.NumActive(); n != 100 {
		t.Fatalf("%d active, want the cap of 100", n)
	}
	if err := rt.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return runtime.NumGoroutine() <= before })
	if n := rt.NumActive(); n != 0 {
		t.Fatalf("%d active after Close", n)
	}
}
