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
	act := func(key string) *activation {
		id := MustID("c", key)
		// closing: no goroutine runs these, so a drop only records why.
		return &activation{rt: rt, id: id, keys: keysFor(id), chain: 1, settled: make(chan struct{}, 1), closing: true}
	}
	good, stale := act("good"), act("stale")
	// A newer activation (epoch 9) has committed "stale".
	err = db.Transact(ctx, func(tx kv.Tx) error {
		return tx.Set(stale.keys.record, appendRecord(nil, meta{epoch: 9, seq: 1}, []byte("new")))
	})
	if err != nil {
		t.Fatal(err)
	}
	mk := func(a *activation, m meta, state string, key string) *pendingCommit {
		full := append(append([]byte{}, a.keys.data...), key...)
		req := &request{reply: make(chan result, 1)}
		req.commit = pendingCommit{a: a, req: req, chain: a.chain, mine: m, changed: true,
			record: appendRecord(nil, m.next(), []byte(state)),
			writes: map[string]pendingWrite{string(full): {value: []byte("v")}}, bytes: len(full) + 1}
		req.commit.state = req.commit.record[recordHeaderBytes:]
		a.inflight.Add(1)
		return &req.commit
	}
	pg := mk(good, meta{epoch: 1, seq: 0}, "g1", "k")
	ps := mk(stale, meta{epoch: 1, seq: 0}, "old", "k")
	// A second turn of stale, run on the first one's effects, must fail
	// with it without being committed.
	ps2 := mk(stale, meta{epoch: 1, seq: 1}, "old2", "k2")
	rt.commitBatch([]*pendingCommit{ps, pg, ps2})
	resG, resS, resS2 := <-pg.req.reply, <-ps.req.reply, <-ps2.req.reply
	if resG.err != nil {
		t.Fatalf("the good turn failed: %v", resG.err)
	}
	var fe *FencedError
	if !errors.As(resS.err, &fe) || fe.StoredEpoch != 9 {
		t.Fatalf("the stale turn: %v, want a FencedError naming epoch 9", resS.err)
	}
	if !errors.Is(resS2.err, ErrRolledBack) || !errors.Is(resS2.err, ErrFenced) {
		t.Fatalf("the stale actor's next turn: %v, want a rollback naming the fence", resS2.err)
	}
	if good.committed.Load() != 1 || stale.committed.Load() != 0 || stale.broken.Load() != stale.chain {
		t.Fatalf("committed seqs good %d stale %d, stale broken %d: want 1, 0 and its chain", good.committed.Load(), stale.committed.Load(), stale.broken.Load())
	}
	if good.inflight.Load() != 0 || stale.inflight.Load() != 0 {
		t.Fatalf("turns still in flight: good %d, stale %d", good.inflight.Load(), stale.inflight.Load())
	}
	if stale.dropped == nil {
		t.Fatal("the fenced activation was not dropped")
	}
	err = db.ReadTransact(ctx, func(tx kv.ReadTx) error {
		if v, _, _ := tx.Get(good.keys.record); string(v[recordHeaderBytes:]) != "g1" {
			t.Errorf("good state %q, want g1", v)
		}
		if v, _, _ := tx.Get(stale.keys.record); string(v[recordHeaderBytes:]) != "new" {
			t.Errorf("stale turn overwrote the state: %q", v)
		}
		if _, ok, _ := tx.Get(append(append([]byte{}, stale.keys.data...), "k2"...)); ok {
			t.Error("the stale actor's second turn's write is visible")
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
	if st := rt.Stats(); st.Batches != 1 || st.Turns != 3 {
		t.Fatalf("stats %+v, want one batch of three turns", st)
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
		{"record vanished", meta{3, 5}, meta{}, false, kv.ErrCorrupt, false},
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
	if err := checkLoad(id, 3, meta{4, 1}, true); !errors.Is(err, ErrFenced) {
		t.Errorf("load with an older lease: %v", err)
	}
	if err := checkLoad(id, 3, meta{}, false); err != nil {
		t.Errorf("fresh actor: %v", err)
	}
	for _, bad := range []struct {
		name string
		rec  []byte
	}{
		{"short", []byte("short")},
		{"unknown format", append([]byte{9}, make([]byte, 16)...)},
		{"claim holding state", appendRecord(nil, meta{epoch: 3, seq: 0}, []byte("x"))},
	} {
		if _, _, err := decodeRecord(id, bad.rec); !errors.Is(err, kv.ErrCorrupt) {
			t.Errorf("%s record: %v, want kv.ErrCorrupt", bad.name, err)
		}
	}
	for _, c := range []struct {
		m     meta
		state []byte
	}{{meta{7, 42}, []byte("s")}, {meta{7, 1}, []byte{}}, {meta{7, 0}, nil}} {
		m, state, err := decodeRecord(id, appendRecord(nil, c.m, c.state))
		if err != nil || m != c.m || string(state) != string(c.state) || (state == nil) != (c.state == nil) {
			t.Errorf("round trip %+v %q: %+v %q %v", c.m, c.state, m, state, err)
		}
	}
}
