package occ

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/kelpie-go/kelpie/kv"
)

func kr(b, e string) kv.KeyRange { return kv.KeyRange{Begin: []byte(b), End: []byte(e)} }

func TestConflictLog(t *testing.T) {
	l := NewConflictLog(10)
	l.Add(11, []kv.KeyRange{kr("b", "c")})
	l.Add(12, []kv.KeyRange{kr("x", "y")})
	for _, c := range []struct {
		rv    kv.Version
		reads []kv.KeyRange
		want  bool
	}{
		{10, []kv.KeyRange{kr("a", "b")}, false},    // touches b only at its open end
		{10, []kv.KeyRange{kr("a", "b\x00")}, true}, // includes b
		{11, []kv.KeyRange{kr("a", "z")}, true},     // the commit at 12 wrote x
		{12, []kv.KeyRange{kr("a", "z")}, false},    // read after both
		{10, []kv.KeyRange{kr("d", "e"), kr("c", "d")}, false},
		{10, nil, false},
	} {
		err := l.Check(c.rv, c.reads)
		if got := errors.Is(err, kv.ErrConflict); got != c.want {
			t.Errorf("Check(%d, %v) = %v, want conflict %v", c.rv, c.reads, err, c.want)
		}
	}
	if err := l.Check(9, nil); !errors.Is(err, kv.ErrConflict) {
		t.Fatalf("a read version before the log's floor = %v, want a conflict", err)
	}
}

func TestConflictLogForgetsOldCommits(t *testing.T) {
	l := NewConflictLog(0)
	for v := kv.Version(1); v <= ConflictLogCommits+5; v++ {
		l.Add(v, []kv.KeyRange{kr(fmt.Sprint(v), fmt.Sprint(v)+"\x00")})
	}
	if l.n != ConflictLogCommits {
		t.Fatalf("log keeps %d commits, want ConflictLogCommits = %d", l.n, ConflictLogCommits)
	}
	// Commits 1-5 are forgotten: a transaction that read at 4 cannot be
	// checked and must conflict, even with an empty read set.
	if err := l.Check(4, []kv.KeyRange{kr("zzz", "zzzz")}); !errors.Is(err, kv.ErrConflict) {
		t.Fatalf("too-old read version = %v, want a conflict", err)
	}
	if err := l.Check(5, []kv.KeyRange{kr("zzz", "zzzz")}); err != nil {
		t.Fatalf("read version at the floor = %v, want no conflict", err)
	}
	// The log is circular: the entries after the wrap-around still decide.
	last := fmt.Sprint(ConflictLogCommits + 3)
	if err := l.Check(ConflictLogCommits, []kv.KeyRange{kr(last, last+"\x00")}); !errors.Is(err, kv.ErrConflict) {
		t.Fatalf("read of a key written at %s after the read version = %v, want a conflict", last, err)
	}
	if err := l.Check(ConflictLogCommits+3, []kv.KeyRange{kr(last, last+"\x00")}); err != nil {
		t.Fatalf("read of a key written at the read version = %v, want no conflict", err)
	}
	// Forgetting in bytes: an entry over ConflictLogBytes pushes out all
	// but itself.
	big := make([]byte, ConflictLogBytes)
	l.Add(ConflictLogCommits+6, []kv.KeyRange{{Begin: []byte("a"), End: big}})
	if l.n != 1 || l.floor != ConflictLogCommits+5 {
		t.Fatalf("after an oversized commit the log keeps %d commits with floor %d, want 1 and %d", l.n, l.floor, ConflictLogCommits+5)
	}
}

func TestAddRangeMerges(t *testing.T) {
	var rs []kv.KeyRange
	for _, r := range []kv.KeyRange{kr("m", "p"), kr("a", "c"), kr("c", "d"), kr("x", "z"), kr("o", "y")} {
		rs = addRange(rs, r)
	}
	got := fmt.Sprint(rs)
	want := fmt.Sprint([]kv.KeyRange{kr("a", "d"), kr("m", "z")})
	if got != want {
		t.Fatalf("merged ranges %s, want %s", got, want)
	}
}

func TestNormalize(t *testing.T) {
	for _, c := range []struct {
		in, want []kv.KeyRange
	}{
		{[]kv.KeyRange{kr("a", "b"), kr("c", "d")}, []kv.KeyRange{kr("a", "b"), kr("c", "d")}},
		{[]kv.KeyRange{kr("c", "d"), kr("a", "b")}, []kv.KeyRange{kr("a", "b"), kr("c", "d")}},
		{[]kv.KeyRange{kr("a", "b"), kr("b", "c")}, []kv.KeyRange{kr("a", "c")}}, // adjacent
		{[]kv.KeyRange{kr("a", "c"), kr("b", "d")}, []kv.KeyRange{kr("a", "d")}}, // overlapping
		{[]kv.KeyRange{kr("a", "b"), kr("x", "x")}, []kv.KeyRange{kr("a", "b")}}, // empty
	} {
		before := fmt.Sprint(c.in)
		got := normalize(c.in)
		if fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("normalize(%s) = %s, want %s", before, got, c.want)
		}
		if fmt.Sprint(c.in) != before {
			t.Errorf("normalize modified its input %s to %s", before, c.in)
		}
	}
}

// A range read's conflict range is the transaction's own copy: a caller
// that reuses its buffers after GetRange does not shrink what the commit is
// checked against.
func TestRangeReadKeepsItsOwnBounds(t *testing.T) {
	ctx := context.Background()
	db := NewDB(NewMem())
	attempts := 0
	err := db.Transact(ctx, func(tx kv.Tx) error {
		attempts++
		begin, end := []byte("a"), []byte("m")
		if _, err := tx.GetRange(kv.KeyRange{Begin: begin, End: end}, kv.RangeOptions{}); err != nil {
			return err
		}
		copy(begin, "y") // the caller's buffers, reused
		copy(end, "z")
		if attempts == 1 {
			// Another transaction writes inside the range that was read.
			if err := db.Transact(ctx, func(tx kv.Tx) error { return tx.Set([]byte("c"), []byte("1")) }); err != nil {
				return err
			}
		}
		return tx.Set([]byte("out"), []byte("x"))
	})
	if err != nil {
		t.Fatal(err)
	}
	if attempts != 2 {
		t.Fatalf("%d attempts, want 2: the first read [a, m), where c was then written, and must conflict", attempts)
	}
}
