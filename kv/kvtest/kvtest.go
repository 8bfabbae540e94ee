// Package kvtest is the conformance suite for kv.DB backends. Run drives
// one backend through table tests of the interface's contract (reads,
// writes, ranges, limits and their errors, snapshot reads, read-your-writes,
// conflicts, the fencing pattern, retries, hooks), a randomized model-based
// test that replays random transactions against a plain ordered map, and a
// linearizability check (porcupine, through sim.History) of concurrent
// single- and multi-key transactions. Every backend runs the same suite, so
// callers can rely on the same semantics from each.
package kvtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/kelpie-go/kelpie/kv"
)

// Open returns a fresh, empty database for one test. The suite closes it.
type Open func(t *testing.T) kv.DB

// testCase is one conformance test.
type testCase struct {
	name string
	fn   func(t *testing.T, db kv.DB)
}

// Cases is the number of conformance tests Run runs (each as a subtest).
func Cases() int { return len(cases()) }

// Run runs the conformance suite against the backend that open creates.
func Run(t *testing.T, open Open) {
	for _, c := range cases() {
		t.Run(c.name, func(t *testing.T) {
			db := open(t)
			defer func() {
				if err := db.Close(); err != nil {
					t.Errorf("close: %v", err)
				}
			}()
			c.fn(t, db)
		})
	}
}

func cases() []testCase {
	return []testCase{
		{"GetSetClear", testGetSetClear},
		{"EmptyValueIsPresent", testEmptyValue},
		{"ValuesAreCopies", testValuesAreCopies},
		{"ReadYourWrites", testReadYourWrites},
		{"ClearRange", testClearRange},
		{"RangeForwardReverseLimit", testRange},
		{"RangeMergesOwnWrites", testRangeMergesOwnWrites},
		{"PrefixRange", testPrefixRange},
		{"KeyLimit", testKeyLimit},
		{"ValueLimit", testValueLimit},
		{"TransactionLimit", testTransactionLimit},
		{"RangeResultLimit", testRangeResultLimit},
		{"InvalidInput", testInvalidInput},
		{"ErrorAborts", testErrorAborts},
		{"SnapshotReads", testSnapshotReads},
		{"ReadWriteConflictRetries", testConflictRetries},
		{"WriteSkewPrevented", testWriteSkew},
		{"RangeReadConflicts", testRangeReadConflicts},
		{"LimitedRangeConflictsOnlyOnWhatItRead", testLimitedRangeConflict},
		{"BlindWritesDoNotConflict", testBlindWrites},
		{"FencingEpoch", testFencing},
		{"RetryLimit", testRetryLimit},
		{"OnCommitVersions", testOnCommit},
		{"UseAfterEnd", testUseAfterEnd},
		{"ContextCanceled", testContextCanceled},
		{"ConcurrentIncrements", testConcurrentIncrements},
		{"ModelBased", testModelBased},
		{"Linearizable", testLinearizable},
		{"PanicAbortsAndReleases", testPanic},
		{"Closed", testClosed},
	}
}

var ctx = context.Background()

func b(s string) []byte { return []byte(s) }

func set(t *testing.T, db kv.DB, kvs ...string) {
	t.Helper()
	if len(kvs)%2 != 0 {
		t.Fatalf("set: odd number of arguments")
	}
	if err := db.Transact(ctx, func(tx kv.Tx) error {
		for i := 0; i < len(kvs); i += 2 {
			if err := tx.Set(b(kvs[i]), b(kvs[i+1])); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("set: %v", err)
	}
}

func get(t *testing.T, db kv.DB, key string) (string, bool) {
	t.Helper()
	var v []byte
	var ok bool
	if err := db.ReadTransact(ctx, func(tx kv.ReadTx) error {
		var err error
		v, ok, err = tx.Get(b(key))
		return err
	}); err != nil {
		t.Fatalf("get %q: %v", key, err)
	}
	return string(v), ok
}

func wantGet(t *testing.T, db kv.DB, key, want string, wantOK bool) {
	t.Helper()
	v, ok := get(t, db, key)
	if ok != wantOK || v != want {
		t.Fatalf("get %q = %q, %v; want %q, %v", key, v, ok, want, wantOK)
	}
}

func scan(t *testing.T, db kv.DB, r kv.KeyRange, o kv.RangeOptions) string {
	t.Helper()
	var out []kv.KeyValue
	if err := db.ReadTransact(ctx, func(tx kv.ReadTx) error {
		var err error
		out, err = tx.GetRange(r, o)
		return err
	}); err != nil {
		t.Fatalf("get range %s: %v", r, err)
	}
	return render(out)
}

func render(kvs []kv.KeyValue) string {
	var parts []string
	for _, e := range kvs {
		parts = append(parts, string(e.Key)+"="+string(e.Value))
	}
	return strings.Join(parts, " ")
}

func rng(begin, end string) kv.KeyRange { return kv.KeyRange{Begin: b(begin), End: b(end)} }

// inOtherGoroutine runs fn in a new goroutine and waits for it: the
// "another client" of conflict tests.
func inOtherGoroutine(fn func() error) error {
	errc := make(chan error, 1)
	go func() { errc <- fn() }()
	return <-errc
}

func testGetSetClear(t *testing.T, db kv.DB) {
	wantGet(t, db, "a", "", false)
	set(t, db, "a", "1", "b", "2")
	wantGet(t, db, "a", "1", true)
	wantGet(t, db, "b", "2", true)
	set(t, db, "a", "3")
	wantGet(t, db, "a", "3", true)
	if err := db.Transact(ctx, func(tx kv.Tx) error { return tx.Clear(b("a")) }); err != nil {
		t.Fatal(err)
	}
	wantGet(t, db, "a", "", false)
	wantGet(t, db, "b", "2", true)
	// Clearing a missing key is not an error.
	if err := db.Transact(ctx, func(tx kv.Tx) error { return tx.Clear(b("nope")) }); err != nil {
		t.Fatal(err)
	}
	// The empty key is a valid key.
	set(t, db, "", "empty-key")
	wantGet(t, db, "", "empty-key", true)
}

func testEmptyValue(t *testing.T, db kv.DB) {
	set(t, db, "k", "")
	v, ok := get(t, db, "k")
	if !ok || v != "" {
		t.Fatalf("empty value: got %q, %v; want present and empty", v, ok)
	}
	if got := scan(t, db, kv.All(), kv.RangeOptions{}); got != "k=" {
		t.Fatalf("range over empty value = %q", got)
	}
}

func testValuesAreCopies(t *testing.T, db kv.DB) {
	key, val := b("key"), b("value")
	if err := db.Transact(ctx, func(tx kv.Tx) error {
		if err := tx.Set(key, val); err != nil {
			return err
		}
		// Changing the caller's slices after Set must not change what was set.
		key[0], val[0] = 'X', 'X'
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	wantGet(t, db, "key", "value", true)
	if err := db.ReadTransact(ctx, func(tx kv.ReadTx) error {
		v, _, err := tx.Get(b("key"))
		if err != nil {
			return err
		}
		v[0] = 'Y'
		v2, _, err := tx.Get(b("key"))
		if err != nil {
			return err
		}
		if string(v2) != "value" {
			return fmt.Errorf("modifying a returned value changed the store: %q", v2)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func testReadYourWrites(t *testing.T, db kv.DB) {
	set(t, db, "a", "old", "c", "old")
	if err := db.Transact(ctx, func(tx kv.Tx) error {
		if err := tx.Set(b("a"), b("new")); err != nil {
			return err
		}
		v, ok, err := tx.Get(b("a"))
		if err != nil || !ok || string(v) != "new" {
			return fmt.Errorf("get after set = %q, %v, %v", v, ok, err)
		}
		if err := tx.Clear(b("c")); err != nil {
			return err
		}
		if _, ok, err := tx.Get(b("c")); err != nil || ok {
			return fmt.Errorf("get after clear = %v, %v; want absent", ok, err)
		}
		if err := tx.Set(b("c"), b("again")); err != nil {
			return err
		}
		if v, ok, err := tx.Get(b("c")); err != nil || !ok || string(v) != "again" {
			return fmt.Errorf("get after clear+set = %q, %v, %v", v, ok, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	wantGet(t, db, "a", "new", true)
	wantGet(t, db, "c", "again", true)
}

func testClearRange(t *testing.T, db kv.DB) {
	set(t, db, "a", "1", "b", "2", "c", "3", "d", "4")
	if err := db.Transact(ctx, func(tx kv.Tx) error {
		if err := tx.ClearRange(rng("b", "d")); err != nil {
			return err
		}
		if _, ok, err := tx.Get(b("c")); err != nil || ok {
			return fmt.Errorf("get inside cleared range = %v, %v; want absent", ok, err)
		}
		// A set after the clear, inside the range, survives it.
		return tx.Set(b("bb"), b("new"))
	}); err != nil {
		t.Fatal(err)
	}
	if got, want := scan(t, db, kv.All(), kv.RangeOptions{}), "a=1 bb=new d=4"; got != want {
		t.Fatalf("after clear range: %q, want %q", got, want)
	}
	// Set, then clear the range around it: the clear wins.
	if err := db.Transact(ctx, func(tx kv.Tx) error {
		if err := tx.Set(b("b5"), b("x")); err != nil {
			return err
		}
		return tx.ClearRange(rng("b", "c"))
	}); err != nil {
		t.Fatal(err)
	}
	if got, want := scan(t, db, kv.All(), kv.RangeOptions{}), "a=1 d=4"; got != want {
		t.Fatalf("after set then clear range: %q, want %q", got, want)
	}
	if err := db.Transact(ctx, func(tx kv.Tx) error { return tx.ClearRange(kv.All()) }); err != nil {
		t.Fatal(err)
	}
	if got := scan(t, db, kv.All(), kv.RangeOptions{}); got != "" {
		t.Fatalf("after clearing everything: %q", got)
	}
}

func testRange(t *testing.T, db kv.DB) {
	set(t, db, "a", "1", "b", "2", "c", "3", "d", "4", "e", "5")
	for _, c := range []struct {
		r    kv.KeyRange
		o    kv.RangeOptions
		want string
	}{
		{rng("b", "e"), kv.RangeOptions{}, "b=2 c=3 d=4"},
		{rng("b", "e"), kv.RangeOptions{Reverse: true}, "d=4 c=3 b=2"},
		{rng("b", "e"), kv.RangeOptions{Limit: 2}, "b=2 c=3"},
		{rng("b", "e"), kv.RangeOptions{Limit: 2, Reverse: true}, "d=4 c=3"},
		{rng("", "\xff"), kv.RangeOptions{Limit: 1, Reverse: true}, "e=5"},
		{rng("bb", "cc"), kv.RangeOptions{}, "c=3"},
		{rng("bb", "cc"), kv.RangeOptions{Reverse: true}, "c=3"},
		{rng("c", "c"), kv.RangeOptions{}, ""},
		{rng("x", "z"), kv.RangeOptions{}, ""},
		{rng("a", "b"), kv.RangeOptions{Reverse: true}, "a=1"},
		{kv.All(), kv.RangeOptions{Limit: 100}, "a=1 b=2 c=3 d=4 e=5"},
	} {
		if got := scan(t, db, c.r, c.o); got != c.want {
			t.Errorf("range %s %+v = %q, want %q", c.r, c.o, got, c.want)
		}
	}
}

func testRangeMergesOwnWrites(t *testing.T, db kv.DB) {
	set(t, db, "b", "2", "d", "4", "f", "6", "h", "8")
	if err := db.Transact(ctx, func(tx kv.Tx) error {
		for _, op := range []func() error{
			func() error { return tx.Set(b("a"), b("A")) },
			func() error { return tx.Set(b("d"), b("D")) },
			func() error { return tx.Clear(b("f")) },
			func() error { return tx.Set(b("g"), b("G")) },
			func() error { return tx.ClearRange(rng("h", "i")) },
			func() error { return tx.Set(b("z"), b("Z")) },
		} {
			if err := op(); err != nil {
				return err
			}
		}
		for _, c := range []struct {
			o    kv.RangeOptions
			want string
		}{
			{kv.RangeOptions{}, "a=A b=2 d=D g=G z=Z"},
			{kv.RangeOptions{Reverse: true}, "z=Z g=G d=D b=2 a=A"},
			{kv.RangeOptions{Limit: 3}, "a=A b=2 d=D"},
			{kv.RangeOptions{Limit: 2, Reverse: true}, "z=Z g=G"},
		} {
			got, err := tx.GetRange(kv.All(), c.o)
			if err != nil {
				return err
			}
			if render(got) != c.want {
				return fmt.Errorf("range %+v inside the transaction = %q, want %q", c.o, render(got), c.want)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got, want := scan(t, db, kv.All(), kv.RangeOptions{}), "a=A b=2 d=D g=G z=Z"; got != want {
		t.Fatalf("after commit: %q, want %q", got, want)
	}
}

func testPrefixRange(t *testing.T, db kv.DB) {
	set(t, db, "user/1", "a", "user/2", "b", "user0", "x", "users", "y", "use", "z")
	r, err := kv.PrefixRange(b("user/"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := scan(t, db, r, kv.RangeOptions{}), "user/1=a user/2=b"; got != want {
		t.Fatalf("prefix range: %q, want %q", got, want)
	}
	set(t, db, "p\xfe\xff", "1", "p\xff", "2", "q", "3")
	r, err = kv.PrefixRange(b("p\xfe"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := scan(t, db, r, kv.RangeOptions{}), "p\xfe\xff=1"; got != want {
		t.Fatalf("prefix range with 0xff tail: %q, want %q", got, want)
	}
	if _, err := kv.PrefixRange(b("\xff")); !errors.Is(err, kv.ErrInvalidKey) {
		t.Fatalf("prefix 0xff: %v, want ErrInvalidKey", err)
	}
}

// wantLimit checks err is a LimitError for what, wrapping sentinel and
// ErrTooLarge.
func wantLimit(t *testing.T, err error, sentinel error, limit int) {
	t.Helper()
	var le *kv.LimitError
	if !errors.As(err, &le) || !errors.Is(err, sentinel) || !errors.Is(err, kv.ErrTooLarge) {
		t.Fatalf("error %v: want a *kv.LimitError wrapping %v and kv.ErrTooLarge", err, sentinel)
	}
	if le.Limit != limit || le.Size <= limit {
		t.Fatalf("limit error %+v: want limit %d and a size past it", le, limit)
	}
	if !strings.Contains(err.Error(), fmt.Sprint(limit)) {
		t.Fatalf("error %q does not name the limit %d", err, limit)
	}
}

func testKeyLimit(t *testing.T, db kv.DB) {
	atLimit := bytes.Repeat(b("k"), kv.KeyLimit)
	if err := db.Transact(ctx, func(tx kv.Tx) error { return tx.Set(atLimit, b("v")) }); err != nil {
		t.Fatalf("key of exactly kv.KeyLimit bytes: %v", err)
	}
	over := append(atLimit, 'k')
	for name, op := range map[string]func(tx kv.Tx) error{
		"set":   func(tx kv.Tx) error { return tx.Set(over, b("v")) },
		"clear": func(tx kv.Tx) error { return tx.Clear(over) },
		"get":   func(tx kv.Tx) error { _, _, err := tx.Get(over); return err },
		"range": func(tx kv.Tx) error {
			_, err := tx.GetRange(kv.KeyRange{Begin: over, End: b("\xfe")}, kv.RangeOptions{})
			return err
		},
	} {
		err := db.Transact(ctx, op)
		t.Run(name, func(t *testing.T) { wantLimit(t, err, kv.ErrKeyTooLarge, kv.KeyLimit) })
	}
}

func testValueLimit(t *testing.T, db kv.DB) {
	atLimit := bytes.Repeat(b("v"), kv.ValueLimit)
	if err := db.Transact(ctx, func(tx kv.Tx) error { return tx.Set(b("k"), atLimit) }); err != nil {
		t.Fatalf("value of exactly kv.ValueLimit bytes: %v", err)
	}
	v, ok := get(t, db, "k")
	if !ok || len(v) != kv.ValueLimit {
		t.Fatalf("value at limit read back as %d bytes, %v", len(v), ok)
	}
	err := db.Transact(ctx, func(tx kv.Tx) error { return tx.Set(b("k2"), append(atLimit, 'v')) })
	wantLimit(t, err, kv.ErrValueTooLarge, kv.ValueLimit)
	wantGet(t, db, "k2", "", false)
}

func testTransactionLimit(t *testing.T, db kv.DB) {
	val := bytes.Repeat(b("v"), kv.ValueLimit)
	n := kv.TransactionLimit/kv.ValueLimit + 1
	var setErr error
	err := db.Transact(ctx, func(tx kv.Tx) error {
		for i := 0; i < n; i++ {
			if setErr = tx.Set(b(fmt.Sprintf("k%04d", i)), val); setErr != nil {
				return setErr
			}
		}
		return nil
	})
	wantLimit(t, setErr, kv.ErrTransactionTooLarge, kv.TransactionLimit)
	if !errors.Is(err, kv.ErrTransactionTooLarge) {
		t.Fatalf("Transact returned %v, want the transaction limit error", err)
	}
	if got := scan(t, db, kv.All(), kv.RangeOptions{Limit: 1}); got != "" {
		t.Fatalf("a transaction over the limit left data behind: %q", got)
	}
}

func testRangeResultLimit(t *testing.T, db kv.DB) {
	val := bytes.Repeat(b("v"), kv.ValueLimit)
	total := kv.RangeResultLimit/kv.ValueLimit + 1
	const perTx = 50
	for start := 0; start < total; start += perTx {
		if err := db.Transact(ctx, func(tx kv.Tx) error {
			for i := start; i < start+perTx && i < total; i++ {
				if err := tx.Set(b(fmt.Sprintf("k%04d", i)), val); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	err := db.ReadTransact(ctx, func(tx kv.ReadTx) error {
		_, err := tx.GetRange(kv.All(), kv.RangeOptions{})
		return err
	})
	wantLimit(t, err, kv.ErrRangeTooLarge, kv.RangeResultLimit)
	// Paging with a limit reads it all.
	read := 0
	begin := b("")
	for pages := 0; pages <= total; pages++ {
		var page []kv.KeyValue
		if err := db.ReadTransact(ctx, func(tx kv.ReadTx) error {
			var err error
			page, err = tx.GetRange(kv.KeyRange{Begin: begin, End: kv.UserEnd}, kv.RangeOptions{Limit: perTx})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		read += len(page)
		if len(page) < perTx {
			break
		}
		begin = kv.KeyAfter(page[len(page)-1].Key)
	}
	if read != total {
		t.Fatalf("paged read returned %d entries, want %d", read, total)
	}
}

func testInvalidInput(t *testing.T, db kv.DB) {
	for _, c := range []struct {
		name string
		op   func(tx kv.Tx) error
		want error
	}{
		{"set reserved key", func(tx kv.Tx) error { return tx.Set(b("\xffsys"), b("v")) }, kv.ErrInvalidKey},
		{"get reserved key", func(tx kv.Tx) error { _, _, err := tx.Get(b("\xff")); return err }, kv.ErrInvalidKey},
		{"range begin after end", func(tx kv.Tx) error {
			_, err := tx.GetRange(rng("b", "a"), kv.RangeOptions{})
			return err
		}, kv.ErrInvalidRange},
		{"range past user space", func(tx kv.Tx) error {
			_, err := tx.GetRange(rng("a", "\xff\x01"), kv.RangeOptions{})
			return err
		}, kv.ErrInvalidRange},
		{"negative limit", func(tx kv.Tx) error {
			_, err := tx.GetRange(rng("a", "b"), kv.RangeOptions{Limit: -1})
			return err
		}, kv.ErrInvalidRange},
		{"clear range begin after end", func(tx kv.Tx) error { return tx.ClearRange(rng("z", "a")) }, kv.ErrInvalidRange},
	} {
		err := db.Transact(ctx, c.op)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
}

func testErrorAborts(t *testing.T, db kv.DB) {
	set(t, db, "a", "1")
	boom := errors.New("boom")
	attempts := 0
	err := db.Transact(ctx, func(tx kv.Tx) error {
		attempts++
		if err := tx.Set(b("a"), b("2")); err != nil {
			return err
		}
		if err := tx.Set(b("b"), b("2")); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Transact = %v, want the function's error", err)
	}
	if attempts != 1 {
		t.Fatalf("a function error was retried: %d attempts", attempts)
	}
	wantGet(t, db, "a", "1", true)
	wantGet(t, db, "b", "", false)
}

func testSnapshotReads(t *testing.T, db kv.DB) {
	set(t, db, "a", "1", "b", "1")
	check := func(tx kv.ReadTx) error {
		v, _, err := tx.Get(b("a"))
		if err != nil {
			return err
		}
		if err := inOtherGoroutine(func() error {
			return db.Transact(ctx, func(tx kv.Tx) error {
				if err := tx.Set(b("a"), b("2")); err != nil {
					return err
				}
				return tx.Set(b("b"), b("2"))
			})
		}); err != nil {
			return err
		}
		v2, _, err := tx.Get(b("a"))
		if err != nil {
			return err
		}
		rb, _, err := tx.Get(b("b"))
		if err != nil {
			return err
		}
		if string(v) != "1" || string(v2) != "1" || string(rb) != "1" {
			return fmt.Errorf("snapshot saw a later commit: a=%q then %q, b=%q", v, v2, rb)
		}
		return nil
	}
	if err := db.ReadTransact(ctx, check); err != nil {
		t.Fatal(err)
	}
	wantGet(t, db, "a", "2", true)
}

func testConflictRetries(t *testing.T, db kv.DB) {
	set(t, db, "counter", "0")
	attempts := 0
	err := db.Transact(ctx, func(tx kv.Tx) error {
		attempts++
		v, _, err := tx.Get(b("counter"))
		if err != nil {
			return err
		}
		if attempts == 1 {
			// Another client increments the counter after we read it.
			if err := inOtherGoroutine(func() error {
				return db.Transact(ctx, func(tx kv.Tx) error { return tx.Set(b("counter"), b("1")) })
			}); err != nil {
				return err
			}
		}
		return tx.Set(b("counter"), append(v, '+'))
	})
	if err != nil {
		t.Fatal(err)
	}
	if attempts != 2 {
		t.Fatalf("attempts = %d, want 2 (one conflict, one success)", attempts)
	}
	wantGet(t, db, "counter", "1+", true)
}

func testWriteSkew(t *testing.T, db kv.DB) {
	// Invariant: at least one of x, y is "on". Each transaction turns one
	// off if the other is on. Under snapshot isolation alone both could
	// commit; serializability must stop the second.
	set(t, db, "x", "on", "y", "on")
	attempts := 0
	err := db.Transact(ctx, func(tx kv.Tx) error {
		attempts++
		y, _, err := tx.Get(b("y"))
		if err != nil {
			return err
		}
		if attempts == 1 {
			if err := inOtherGoroutine(func() error {
				return db.Transact(ctx, func(tx kv.Tx) error {
					x, _, err := tx.Get(b("x"))
					if err != nil {
						return err
					}
					if string(x) == "on" {
						return tx.Set(b("y"), b("off"))
					}
					return nil
				})
			}); err != nil {
				return err
			}
		}
		if string(y) == "on" {
			return tx.Set(b("x"), b("off"))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	x, _ := get(t, db, "x")
	y, _ := get(t, db, "y")
	if x == "off" && y == "off" {
		t.Fatalf("write skew: both x and y are off (attempts %d)", attempts)
	}
	if attempts != 2 {
		t.Fatalf("attempts = %d, want 2", attempts)
	}
}

func testRangeReadConflicts(t *testing.T, db kv.DB) {
	set(t, db, "q/1", "job")
	attempts := 0
	err := db.Transact(ctx, func(tx kv.Tx) error {
		attempts++
		r, _ := kv.PrefixRange(b("q/"))
		jobs, err := tx.GetRange(r, kv.RangeOptions{})
		if err != nil {
			return err
		}
		if attempts == 1 {
			// A phantom: a new key inside the range read.
			if err := inOtherGoroutine(func() error {
				return db.Transact(ctx, func(tx kv.Tx) error { return tx.Set(b("q/2"), b("job")) })
			}); err != nil {
				return err
			}
		}
		return tx.Set(b("count"), b(fmt.Sprint(len(jobs))))
	})
	if err != nil {
		t.Fatal(err)
	}
	if attempts != 2 {
		t.Fatalf("attempts = %d, want 2: an insert into a range read must conflict", attempts)
	}
	wantGet(t, db, "count", "2", true)
}

func testLimitedRangeConflict(t *testing.T, db kv.DB) {
	set(t, db, "a", "1", "c", "3")
	attempts := 0
	err := db.Transact(ctx, func(tx kv.Tx) error {
		attempts++
		first, err := tx.GetRange(rng("a", "z"), kv.RangeOptions{Limit: 1})
		if err != nil {
			return err
		}
		if len(first) != 1 || string(first[0].Key) != "a" {
			return fmt.Errorf("first = %q", render(first))
		}
		if attempts == 1 {
			// Past the last key returned: not part of what was read.
			if err := inOtherGoroutine(func() error {
				return db.Transact(ctx, func(tx kv.Tx) error { return tx.Set(b("b"), b("2")) })
			}); err != nil {
				return err
			}
		}
		return tx.Set(b("seen"), first[0].Key)
	})
	if err != nil {
		t.Fatal(err)
	}
	if attempts != 1 {
		t.Fatalf("attempts = %d, want 1: a write past a limited read's last key must not conflict", attempts)
	}
}

func testBlindWrites(t *testing.T, db kv.DB) {
	attempts := 0
	err := db.Transact(ctx, func(tx kv.Tx) error {
		attempts++
		if err := tx.Set(b("k"), b("mine")); err != nil {
			return err
		}
		if attempts == 1 {
			return inOtherGoroutine(func() error {
				return db.Transact(ctx, func(tx kv.Tx) error { return tx.Set(b("k"), b("theirs")) })
			})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if attempts != 1 {
		t.Fatalf("attempts = %d: a transaction that read nothing must not conflict", attempts)
	}
	wantGet(t, db, "k", "mine", true) // it committed last
}

// errFenced is what the fencing test's transaction returns when it finds a
// newer epoch.
var errFenced = errors.New("fenced: a newer activation owns the actor")

func testFencing(t *testing.T, db kv.DB) {
	// The actor runtime's pattern: read the activation epoch inside the
	// transaction that writes the actor's state, and refuse if it moved.
	set(t, db, "actor/1/epoch", "1", "actor/1/state", "s0")
	attempts := 0
	myEpoch := "1"
	err := db.Transact(ctx, func(tx kv.Tx) error {
		attempts++
		epoch, _, err := tx.Get(b("actor/1/epoch"))
		if err != nil {
			return err
		}
		if string(epoch) != myEpoch {
			return errFenced
		}
		if attempts == 1 {
			// A new activation takes over between our check and our commit.
			if err := inOtherGoroutine(func() error {
				return db.Transact(ctx, func(tx kv.Tx) error {
					if err := tx.Set(b("actor/1/epoch"), b("2")); err != nil {
						return err
					}
					return tx.Set(b("actor/1/state"), b("s-new-owner"))
				})
			}); err != nil {
				return err
			}
		}
		return tx.Set(b("actor/1/state"), b("s-stale-owner"))
	})
	if !errors.Is(err, errFenced) {
		t.Fatalf("stale owner's transaction = %v, want it fenced", err)
	}
	wantGet(t, db, "actor/1/state", "s-new-owner", true)
}

func testRetryLimit(t *testing.T, db kv.DB) {
	set(t, db, "hot", "0")
	attempts := 0
	err := db.Transact(ctx, func(tx kv.Tx) error {
		attempts++
		if _, _, err := tx.Get(b("hot")); err != nil {
			return err
		}
		// Every attempt loses to another writer.
		if err := inOtherGoroutine(func() error {
			return db.Transact(ctx, func(tx kv.Tx) error { return tx.Set(b("hot"), b(fmt.Sprint(attempts))) })
		}); err != nil {
			return err
		}
		return tx.Set(b("hot"), b("mine"))
	})
	if !errors.Is(err, kv.ErrRetryLimit) || !errors.Is(err, kv.ErrConflict) {
		t.Fatalf("Transact = %v, want ErrRetryLimit wrapping ErrConflict", err)
	}
	if attempts != kv.MaxAttempts {
		t.Fatalf("attempts = %d, want kv.MaxAttempts = %d", attempts, kv.MaxAttempts)
	}
	wantGet(t, db, "hot", fmt.Sprint(kv.MaxAttempts), true)
}

func testOnCommit(t *testing.T, db kv.DB) {
	var versions []kv.Version
	for i := 0; i < 3; i++ {
		calls := 0
		if err := db.Transact(ctx, func(tx kv.Tx) error {
			tx.OnCommit(func(v kv.Version) { calls++; versions = append(versions, v) })
			return tx.Set(b("k"), b(fmt.Sprint(i)))
		}); err != nil {
			t.Fatal(err)
		}
		if calls != 1 {
			t.Fatalf("OnCommit ran %d times, want once", calls)
		}
	}
	if !(versions[0] < versions[1] && versions[1] < versions[2]) {
		t.Fatalf("commit versions %v are not increasing", versions)
	}
	var rv kv.Version
	if err := db.ReadTransact(ctx, func(tx kv.ReadTx) error { rv = tx.ReadVersion(); return nil }); err != nil {
		t.Fatal(err)
	}
	if rv < versions[2] {
		t.Fatalf("read version %d is before the last commit %d", rv, versions[2])
	}
	ran := false
	_ = db.Transact(ctx, func(tx kv.Tx) error {
		tx.OnCommit(func(kv.Version) { ran = true })
		_ = tx.Set(b("k"), b("x"))
		return errors.New("abort")
	})
	if ran {
		t.Fatal("OnCommit ran for an aborted transaction")
	}
	// A transaction that writes nothing commits at its read version.
	var got kv.Version
	if err := db.Transact(ctx, func(tx kv.Tx) error {
		tx.OnCommit(func(v kv.Version) { got = v })
		_, _, err := tx.Get(b("k"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if got != rv {
		t.Fatalf("read-only Transact committed at %d, want its read version %d", got, rv)
	}
}

func testUseAfterEnd(t *testing.T, db kv.DB) {
	var leaked kv.Tx
	if err := db.Transact(ctx, func(tx kv.Tx) error { leaked = tx; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := leaked.Set(b("k"), b("v")); !errors.Is(err, kv.ErrTransactionDone) {
		t.Fatalf("set after end = %v, want ErrTransactionDone", err)
	}
	if _, _, err := leaked.Get(b("k")); !errors.Is(err, kv.ErrTransactionDone) {
		t.Fatalf("get after end = %v, want ErrTransactionDone", err)
	}
	wantGet(t, db, "k", "", false)
}

func testContextCanceled(t *testing.T, db kv.DB) {
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	ran := false
	err := db.Transact(cctx, func(tx kv.Tx) error { ran = true; return tx.Set(b("k"), b("v")) })
	if !errors.Is(err, context.Canceled) || ran {
		t.Fatalf("Transact on a canceled context = %v (ran %v), want context.Canceled without running", err, ran)
	}
}

func testConcurrentIncrements(t *testing.T, db kv.DB) {
	const workers, each = 4, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if err := db.Transact(ctx, func(tx kv.Tx) error {
					v, _, err := tx.Get(b("n"))
					if err != nil {
						return err
					}
					var n int
					fmt.Sscan(string(v), &n)
					return tx.Set(b("n"), b(fmt.Sprint(n+1)))
				}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	wantGet(t, db, "n", fmt.Sprint(workers*each), true)
}

func testPanic(t *testing.T, db kv.DB) {
	for _, read := range []bool{false, true} {
		func() {
			defer func() {
				if p := recover(); p != "boom" {
					t.Fatalf("recovered %v, want the function's panic", p)
				}
			}()
			if read {
				_ = db.ReadTransact(ctx, func(tx kv.ReadTx) error { panic("boom") })
			}
			_ = db.Transact(ctx, func(tx kv.Tx) error {
				if err := tx.Set(b("k"), b("v")); err != nil {
					return err
				}
				panic("boom")
			})
		}()
	}
	wantGet(t, db, "k", "", false)
	// The database still works (and, in the suite's deferred Close, closes:
	// a snapshot leaked by the panic would hang bbolt's Close).
	set(t, db, "k", "after")
	wantGet(t, db, "k", "after", true)
}

func testClosed(t *testing.T, db kv.DB) {
	set(t, db, "k", "v")
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := db.Transact(ctx, func(tx kv.Tx) error { return nil }); !errors.Is(err, kv.ErrClosed) {
		t.Fatalf("Transact after Close = %v, want ErrClosed", err)
	}
	if err := db.ReadTransact(ctx, func(tx kv.ReadTx) error { return nil }); !errors.Is(err, kv.ErrClosed) {
		t.Fatalf("ReadTransact after Close = %v, want ErrClosed", err)
	}
}
