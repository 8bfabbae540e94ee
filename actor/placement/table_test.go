package placement

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kelpie-go/kelpie/kv"
	"github.com/kelpie-go/kelpie/kv/memkv"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func TestTableGrantsEpochsAndRefusesOtherNodes(t *testing.T) {
	tb, err := NewTable(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s1, _, _ := tb.Open("n1", t0)
	s2, _, _ := tb.Open("n2", t0)
	l1, err := tb.Acquire(s1, "a:x", t0, false)
	if err != nil || l1.Epoch != 1 || l1.Node != "n1" {
		t.Fatalf("first grant: %+v, %v", l1, err)
	}
	_, err = tb.Acquire(s2, "a:x", t0.Add(time.Second), false)
	var no *NotOwnerError
	if !errors.As(err, &no) || no.Owner != "n1" || no.Epoch != 1 || !errors.Is(err, ErrNotOwner) {
		t.Fatalf("second node: %v, want NotOwnerError naming n1 epoch 1", err)
	}
	if _, err := tb.Acquire(s1, "a:x", t0, false); !errors.Is(err, ErrHeld) {
		t.Fatalf("same session twice: %v, want ErrHeld", err)
	}
	// Released: the other node gets it with the next epoch.
	if err := tb.Release(l1); err != nil {
		t.Fatal(err)
	}
	if err := tb.Release(l1); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("double release: %v, want ErrLeaseLost", err)
	}
	l2, err := tb.Acquire(s2, "a:x", t0.Add(time.Second), false)
	if err != nil || l2.Epoch != 2 || l2.Node != "n2" {
		t.Fatalf("after release: %+v, %v", l2, err)
	}
	// Steal: granted to n1 with epoch 3 while n2 holds it.
	l3, err := tb.Acquire(s1, "a:x", t0.Add(2*time.Second), true)
	if err != nil || l3.Epoch != 3 {
		t.Fatalf("steal: %+v, %v", l3, err)
	}
	if err := tb.Release(l2); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("the robbed holder's release: %v, want ErrLeaseLost", err)
	}
	if o, ok := tb.Owner("a:x", t0.Add(2*time.Second)); !ok || o.Epoch != 3 || o.Node != "n1" {
		t.Fatalf("owner %+v %v, want n1 epoch 3", o, ok)
	}
}

func TestTableSessionsExpire(t *testing.T) {
	tb, _ := NewTable(10 * time.Second)
	s1, exp, _ := tb.Open("n1", t0)
	if !exp.Equal(t0.Add(10 * time.Second)) {
		t.Fatalf("expiry %s", exp)
	}
	s2, _, _ := tb.Open("n2", t0)
	if _, err := tb.Acquire(s1, "a:x", t0, false); err != nil {
		t.Fatal(err)
	}
	// Renewed at 8s, alive at 17s; n2 cannot take the actor.
	if _, err := tb.KeepAlive(s1, t0.Add(8*time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.KeepAlive(s2, t0.Add(8*time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.Acquire(s2, "a:x", t0.Add(17*time.Second), false); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("at 17s: %v, want ErrNotOwner", err)
	}
	// Not renewed again: at 18s the lease is free and the epoch moves on.
	if _, ok := tb.Owner("a:x", t0.Add(18*time.Second)); ok {
		t.Fatal("owner after the session lapsed")
	}
	if _, err := tb.KeepAlive(s1, t0.Add(18*time.Second)); !errors.Is(err, ErrNoSession) {
		t.Fatalf("renewing a lapsed session: %v, want ErrNoSession", err)
	}
	l, err := tb.Acquire(s2, "a:x", t0.Add(17500*time.Millisecond), true)
	if err != nil || l.Epoch != 2 {
		t.Fatalf("n2 after the lapse: %+v %v", l, err)
	}
	if _, err := tb.Acquire(s1, "a:y", t0.Add(18*time.Second), false); !errors.Is(err, ErrNoSession) {
		t.Fatalf("acquire on a lapsed session: %v, want ErrNoSession", err)
	}
	tb.Expire(s2)
	if _, ok := tb.Owner("a:x", t0.Add(17500*time.Millisecond)); ok {
		t.Fatal("owner after Expire")
	}
	if tb.Epoch("a:x") != 2 || tb.Epoch("a:nothing") != 0 {
		t.Fatalf("epochs %d %d", tb.Epoch("a:x"), tb.Epoch("a:nothing"))
	}
}

func TestBadInput(t *testing.T) {
	for _, ttl := range []time.Duration{0, time.Microsecond, 2 * MaxTTL} {
		if _, err := NewTable(ttl); err == nil || !strings.Contains(err.Error(), "MinTTL") {
			t.Errorf("NewTable(%s): %v, want an error naming the bounds", ttl, err)
		}
	}
	for _, name := range []string{"", "a b", "a/b", strings.Repeat("n", MaxNodeNameBytes+1)} {
		if err := CheckNodeName(name); err == nil {
			t.Errorf("CheckNodeName(%q) accepted", name)
		}
	}
	if _, err := NewLocal(context.Background(), memkv.New(), "bad name"); err == nil {
		t.Error("NewLocal accepted a bad node name")
	}
	if _, err := NewLocal(context.Background(), nil, "n1"); err == nil {
		t.Error("NewLocal accepted a nil db")
	}
}

func TestLocalBumpsEpochPerProcess(t *testing.T) {
	ctx := context.Background()
	db := memkv.New()
	a, err := NewLocal(ctx, db, "n1")
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewLocal(ctx, db, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if a.Epoch() != 1 || b.Epoch() != 2 {
		t.Fatalf("epochs %d, %d; want 1, 2", a.Epoch(), b.Epoch())
	}
	l, err := b.Acquire(ctx, "a:x")
	if err != nil || l.Epoch != 2 {
		t.Fatalf("acquire: %+v %v", l, err)
	}
	if _, err := b.Acquire(ctx, "a:x"); !errors.Is(err, ErrHeld) {
		t.Fatalf("second acquire: %v, want ErrHeld", err)
	}
	if err := b.Check(l); err != nil {
		t.Fatal(err)
	}
	if err := a.Check(l); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("another process's lease checked: %v, want ErrLeaseLost", err)
	}
	if err := b.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	if err := b.Check(l); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("released lease checked: %v, want ErrLeaseLost", err)
	}
	// The actor granted again: the old lease stays released, the new one
	// is good, and so is a copy of it rebuilt from its exported fields,
	// which Check looks up.
	l2, err := b.Acquire(ctx, "a:x")
	if err != nil {
		t.Fatal(err)
	}
	rebuilt := Lease{Actor: l2.Actor, Node: l2.Node, Epoch: l2.Epoch, Sole: l2.Sole}
	if err := b.Check(l); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("the released lease after a new grant: %v, want ErrLeaseLost", err)
	}
	if err := b.Release(ctx, l); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("releasing the old lease released the new grant: %v", err)
	}
	if err := b.Check(l2); err != nil {
		t.Fatal(err)
	}
	if err := b.Check(rebuilt); err != nil {
		t.Fatalf("rebuilt lease: %v", err)
	}
	b.Close()
	if err := b.Check(l2); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("lease after Close: %v, want ErrLeaseLost", err)
	}
	if err := b.Check(rebuilt); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("rebuilt lease after Close: %v, want ErrLeaseLost", err)
	}
	if _, err := b.Acquire(ctx, "a:y"); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("acquire after Close: %v", err)
	}
	// A stored epoch that is not 8 bytes is corruption, not zero.
	if err := db.Transact(ctx, func(tx kv.Tx) error { return tx.Set(LocalEpochKey, []byte("x")) }); err != nil {
		t.Fatal(err)
	}
	if _, err := NewLocal(ctx, db, "n1"); !errors.Is(err, kv.ErrCorrupt) {
		t.Fatalf("NewLocal over a corrupt epoch: %v, want kv.ErrCorrupt", err)
	}
}
