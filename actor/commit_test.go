package actor

import (
	"context"
	"errors"
	"testing"

	"github.com/kelpie-go/kelpie/actor/placement"
	"github.com/kelpie-go/kelpie/kv"
	"github.com/kelpie-go/kelpie/kv/memkv"
)

// One group commit carries a fenced turn and a good one: the fenced turn
// fails alone and leaves nothing behind; the good one commits.
func TestGroupCommitIsolatesAFencedTurn(t *testing.T) {
	ctx := context.Background()
	db := memkv.New()
	pl, err := placement.NewLocal(ctx, db, "n1")
	if err != nil {
		t.Fatal(err)
	}
	rt, err := New(Config{DB: db, Placement: pl})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	good := &activation{rt: rt, id: MustID("c", "good"), keys: keysFor(MustID("c", "good"))}
	stale := &activation{rt: rt, id: MustID("c", "stale"), keys: keysFor(MustID("c", "stale"))}
	// A newer activation (epoch 9) has committed "stale".
	err = db.Transact(ctx, func(tx kv.Tx) error {
		if err := tx.Set(stale.keys.state, []byte("new")); err != nil {
			return err
		}
		return tx.Set(stale.keys.meta, meta{epoch: 9, seq: 1}.encode())
	})
	if err != nil {
		t.Fatal(err)
	}
	mk := func(a *activation, m meta, state string, key string) *pendingCommit {
		full := append(append([]byte{}, a.keys.data...), key...)
		return &pendingCommit{a: a, mine: m, changed: true, state: []byte(state),
			writes: map[string]pendingWrite{string(full): {value: []byte("v")}}, bytes: len(full) + 1,
			done: make(chan struct{}, 1)}
	}
	pg := mk(good, meta{epoch: 1, seq: 0}, "g1", "k")
	ps := mk(stale, meta{epoch: 1, seq: 0}, "old", "k")
	rt.commitBatch([]*pendingCommit{ps, pg})
	<-pg.done
	<-ps.done
	if pg.err != nil {
		t.Fatalf("the good turn failed: %v", pg.err)
	}
	var fe *FencedError
	if !errors.As(ps.err, &fe) || fe.StoredEpoch != 9 {
		t.Fatalf("the stale turn: %v, want a FencedError naming epoch 9", ps.err)
	}
	err = db.ReadTransact(ctx, func(tx kv.ReadTx) error {
		if v, _, _ := tx.Get(good.keys.state); string(v) != "g1" {
			t.Errorf("good state %q, want g1", v)
		}
		if v, _, _ := tx.Get(stale.keys.state); string(v) != "new" {
			t.Errorf("stale turn overwrote the state: %q", v)
		}
		if _, ok, _ := tx.Get(append(append([]byte{}, stale.keys.data...), 'k')); ok {
			t.Error("the stale turn's write is visible")
		}
		if _, ok, _ := tx.Get(append(append([]byte{}, good.keys.data...), 'k')); !ok {
			t.Error("the good turn's write is missing")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if st := rt.Stats(); st.Batches != 1 || st.Turns != 2 {
		t.Fatalf("stats %+v, want one batch of two turns", st)
	}
}

func TestFencePureDecisions(t *testing.T) {
	id := MustID("c", "x")
	cases := []struct {
		name    string
		mine    meta
		stored  meta
		present bool
		want    error
		stale   bool
	}{
		{"new actor", meta{1, 0}, meta{}, false, nil, false},
		{"same epoch, same seq", meta{3, 5}, meta{3, 5}, true, nil, false},
		{"older stored epoch", meta{4, 5}, meta{3, 5}, true, nil, false},
		{"newer stored epoch", meta{3, 5}, meta{4, 6}, true, ErrFenced, false},
		{"someone committed since", meta{3, 5}, meta{2, 6}, true, ErrFenced, true},
		{"meta vanished", meta{3, 5}, meta{}, false, kv.ErrCorrupt, false},
	}
	for _, c := range cases {
		err := checkCommit(id, c.mine, c.stored, c.present)
		if !errors.Is(err, c.want) && !(c.want == nil && err == nil) {
			t.Errorf("%s: checkCommit = %v, want %v", c.name, err, c.want)
		}
		var fe *FencedError
		if errors.As(err, &fe) && fe.Stale != c.stale {
			t.Errorf("%s: Stale = %v", c.name, fe.Stale)
		}
	}
	if err := checkLoad(id, 3, meta{4, 1}, true, true); !errors.Is(err, ErrFenced) {
		t.Errorf("load with an older lease: %v", err)
	}
	if err := checkLoad(id, 3, meta{3, 1}, true, false); !errors.Is(err, kv.ErrCorrupt) {
		t.Errorf("meta without state: %v", err)
	}
	if err := checkLoad(id, 3, meta{}, false, false); err != nil {
		t.Errorf("fresh actor: %v", err)
	}
	if _, err := decodeMeta(id, []byte("short")); !errors.Is(err, kv.ErrCorrupt) {
		t.Errorf("short meta: %v", err)
	}
	m := meta{epoch: 7, seq: 42}
	if got, err := decodeMeta(id, m.encode()); err != nil || got != m {
		t.Errorf("round trip %+v: %+v %v", m, got, err)
	}
}
