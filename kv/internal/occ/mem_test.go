package occ

import (
	"context"
	"fmt"
	"testing"

	"github.com/kelpie-go/kelpie/kv"
)

func memSet(t *testing.T, m *Mem, kvs ...string) kv.Version {
	t.Helper()
	c := &Commit{ReadVersion: m.Version()}
	for i := 0; i+1 < len(kvs); i += 2 {
		c.Mutations = append(c.Mutations, Mutation{Op: OpSet, Key: []byte(kvs[i]), Value: []byte(kvs[i+1])})
		c.Writes = append(c.Writes, kv.SingleKey([]byte(kvs[i])))
	}
	v, err := m.Commit(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func snapGet(t *testing.T, s Snapshot, key string) string {
	t.Helper()
	v, ok, err := s.Get([]byte(key))
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		return "<absent>"
	}
	return string(v)
}

// TestMemSnapshotGenerations: snapshots of one version share a frozen view;
// a commit clones the tree only while one of them is in use, and writes in
// place once all are released. Either way no snapshot sees a later commit.
func TestMemSnapshotGenerations(t *testing.T) {
	ctx := context.Background()
	m := NewMem()
	// Enough keys for a tree several levels deep, so that writes touch
	// shared interior nodes as well as leaves.
	var init []string
	for i := 0; i < 5_000; i++ {
		init = append(init, fmt.Sprintf("k%05d", i), "v0")
	}
	memSet(t, m, init...)

	s1, _ := m.Snapshot(ctx)
	s2, _ := m.Snapshot(ctx)
	if s1.(*memSnap).gen != s2.(*memSnap).gen {
		t.Fatal("two snapshots of one version do not share a generation")
	}
	memSet(t, m, "k00000", "v1", "k04999", "v1", "new", "v1")
	s3, _ := m.Snapshot(ctx)
	s2.Release()
	s2.Release() // idempotent: must not release s3's or s1's hold
	for _, s := range []Snapshot{s1} {
		if got := snapGet(t, s, "k00000"); got != "v0" {
			t.Fatalf("snapshot at v1 sees %q after a later commit, want v0", got)
		}
		if got := snapGet(t, s, "new"); got != "<absent>" {
			t.Fatalf("snapshot at v1 sees key written later: %q", got)
		}
	}
	// s3 is live: this commit must clone, and s3 keep seeing v1.
	memSet(t, m, "k00000", "v2", "k02500", "v2")
	if got := snapGet(t, s3, "k00000"); got != "v1" {
		t.Fatalf("live snapshot sees %q, want v1", got)
	}
	if got := snapGet(t, s3, "k02500"); got != "v0" {
		t.Fatalf("live snapshot sees %q, want v0", got)
	}
	s3.Release()
	// Released snapshot of the current version: the next commits write in
	// place, and must not disturb s1 (two versions old, still live).
	s4, _ := m.Snapshot(ctx)
	s4.Release()
	for i := 0; i < 100; i++ {
		memSet(t, m, fmt.Sprintf("k%05d", i*50), fmt.Sprintf("w%d", i), fmt.Sprintf("x%03d", i), "x")
	}
	if got := snapGet(t, s1, "k00050"); got != "v0" {
		t.Fatalf("old snapshot sees %q after in-place commits, want v0", got)
	}
	n := 0
	if err := s1.Scan(kv.All(), false, func(k, v []byte) bool {
		if string(v) != "v0" {
			t.Errorf("old snapshot scans %s=%s, want v0", k, v)
		}
		n++
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if n != 5_000 {
		t.Fatalf("old snapshot scans %d keys, want 5000", n)
	}
	s1.Release()
	s5, _ := m.Snapshot(ctx)
	defer s5.Release()
	if got := snapGet(t, s5, "k04950"); got != "w99" {
		t.Fatalf("latest snapshot sees %q, want w99", got)
	}
	if got, want := m.Len(), 5_000+1+100; got != want {
		t.Fatalf("Len %d, want %d", got, want)
	}
}
