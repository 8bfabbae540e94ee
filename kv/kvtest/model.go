package kvtest

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"testing"

	"github.com/anishathalye/porcupine"
	"github.com/kelpie-go/kelpie/kv"
	"github.com/kelpie-go/kelpie/sim"
)

// Sizes of the randomized tests. They are small enough that every backend,
// bbolt with its fsyncs included, runs them in seconds.
const (
	// ModelSeeds is how many seeds the model-based test runs.
	ModelSeeds = 8
	// ModelTransactions is how many random transactions each seed runs.
	ModelTransactions = 150
	// modelOpsPerTx bounds the operations in one random transaction.
	modelOpsPerTx = 8
	// LinearClients and LinearOpsPerClient size the concurrent history
	// checked for linearizability.
	LinearClients      = 4
	LinearOpsPerClient = 40
)

// abortErr is returned by random transactions that the test aborts.
var abortErr = errors.New("kvtest: aborted on purpose")

// model is the reference: a plain map, sorted on demand.
type model map[string]string

func (m model) clone() model {
	out := make(model, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (m model) rangeRead(r kv.KeyRange, o kv.RangeOptions) string {
	var keys []string
	for k := range m {
		if r.Contains([]byte(k)) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	if o.Reverse {
		for i, j := 0, len(keys)-1; i < j; i, j = i+1, j-1 {
			keys[i], keys[j] = keys[j], keys[i]
		}
	}
	if o.Limit > 0 && len(keys) > o.Limit {
		keys = keys[:o.Limit]
	}
	out := make([]kv.KeyValue, len(keys))
	for i, k := range keys {
		out[i] = kv.KeyValue{Key: []byte(k), Value: []byte(m[k])}
	}
	return render(out)
}

// randKey draws from a small space (strings of length 0-3 over "abc") so
// that operations collide often, including on the empty key.
func randKey(r *rand.Rand) []byte {
	n := r.IntN(4)
	k := make([]byte, n)
	for i := range k {
		k[i] = "abc"[r.IntN(3)]
	}
	return k
}

func randRange(r *rand.Rand) kv.KeyRange {
	a, c := randKey(r), randKey(r)
	if r.IntN(8) == 0 {
		c = kv.UserEnd
	}
	if bytes.Compare(a, c) > 0 {
		a, c = c, a
	}
	return kv.KeyRange{Begin: a, End: c}
}

// testModelBased runs random transactions, with random reads checked
// against the model inside each transaction (so read-your-writes, clears
// and ranges are all compared), random aborts, and a full comparison after
// each seed.
func testModelBased(t *testing.T, db kv.DB) {
	for seed := uint64(1); seed <= ModelSeeds; seed++ {
		r := rand.New(rand.NewPCG(seed, 0x6b76))
		// Each seed starts from an empty store.
		if err := db.Transact(ctx, func(tx kv.Tx) error { return tx.ClearRange(kv.All()) }); err != nil {
			t.Fatal(err)
		}
		state := model{}
		for i := 0; i < ModelTransactions; i++ {
			if err := modelTx(db, r, &state); err != nil {
				t.Fatalf("seed %d transaction %d: %v", seed, i, err)
			}
		}
		want := state.rangeRead(kv.All(), kv.RangeOptions{})
		if got := scan(t, db, kv.All(), kv.RangeOptions{}); got != want {
			t.Fatalf("seed %d: store %q\nmodel %q", seed, got, want)
		}
	}
}

// modelTx runs one random transaction against db and the model.
func modelTx(db kv.DB, r *rand.Rand, state *model) error {
	nops := 1 + r.IntN(modelOpsPerTx)
	abort := r.IntN(10) == 0
	readOnly := r.IntN(5) == 0
	// Draw the script before running it: Transact may run the function
	// more than once, and each attempt must do the same thing.
	type step struct {
		op   int
		key  []byte
		val  []byte
		rng  kv.KeyRange
		opts kv.RangeOptions
	}
	script := make([]step, nops)
	for i := range script {
		s := step{op: r.IntN(5), key: randKey(r), rng: randRange(r)}
		if readOnly {
			s.op = r.IntN(2)
		}
		s.val = []byte(strconv.Itoa(r.IntN(1000)))
		s.opts = kv.RangeOptions{Limit: r.IntN(4), Reverse: r.IntN(2) == 0}
		script[i] = s
	}
	var work model
	run := func(get func([]byte) ([]byte, bool, error), getRange func(kv.KeyRange, kv.RangeOptions) ([]kv.KeyValue, error), tx kv.Tx) error {
		work = state.clone()
		for _, s := range script {
			switch s.op {
			case 0:
				v, ok, err := get(s.key)
				if err != nil {
					return err
				}
				mv, mok := work[string(s.key)]
				if ok != mok || string(v) != mv {
					return fmt.Errorf("get %q = %q, %v; model %q, %v", s.key, v, ok, mv, mok)
				}
			case 1:
				got, err := getRange(s.rng, s.opts)
				if err != nil {
					return err
				}
				if want := work.rangeRead(s.rng, s.opts); render(got) != want {
					return fmt.Errorf("range %s %+v = %q; model %q", s.rng, s.opts, render(got), want)
				}
			case 2:
				if err := tx.Set(s.key, s.val); err != nil {
					return err
				}
				work[string(s.key)] = string(s.val)
			case 3:
				if err := tx.Clear(s.key); err != nil {
					return err
				}
				delete(work, string(s.key))
			case 4:
				if err := tx.ClearRange(s.rng); err != nil {
					return err
				}
				for k := range work {
					if s.rng.Contains([]byte(k)) {
						delete(work, k)
					}
				}
			}
		}
		if abort {
			return abortErr
		}
		return nil
	}
	var err error
	if readOnly {
		err = db.ReadTransact(ctx, func(tx kv.ReadTx) error { return run(tx.Get, tx.GetRange, nil) })
	} else {
		err = db.Transact(ctx, func(tx kv.Tx) error { return run(tx.Get, tx.GetRange, tx) })
	}
	switch {
	case abort && errors.Is(err, abortErr):
		return nil
	case err != nil:
		return err
	case !readOnly:
		*state = work
	}
	return nil
}

// Linearizability: clients run transactions over three integer registers.
// The model's state is the three values; every transaction is one atomic
// step, so a linearizable history proves the transactions serializable in
// an order consistent with real time (strict serializability).

const linearKeys = 3

type linOp struct {
	Kind  int // 0 get, 1 put, 2 increment, 3 transfer, 4 read all
	K, K2 int
	V     int
}

type linOut struct {
	V   int
	All [linearKeys]int
}

var linearModel = porcupine.Model{
	Init: func() any { return [linearKeys]int{} },
	Step: func(state, input, output any) (bool, any) {
		s := state.([linearKeys]int)
		in := input.(linOp)
		out := output.(linOut)
		switch in.Kind {
		case 0:
			return out.V == s[in.K], s
		case 1:
			s[in.K] = in.V
			return true, s
		case 2:
			s[in.K]++
			return out.V == s[in.K], s
		case 3:
			s[in.K]--
			s[in.K2]++
			return true, s
		default:
			return out.All == s, s
		}
	},
	DescribeOperation: func(input, output any) string {
		return fmt.Sprintf("%+v -> %+v", input, output)
	},
}

func regKey(i int) []byte { return []byte{'r', byte('0' + i)} }

func readReg(tx kv.ReadTx, i int) (int, error) {
	v, ok, err := tx.Get(regKey(i))
	if err != nil || !ok {
		return 0, err
	}
	return strconv.Atoi(string(v))
}

func writeReg(tx kv.Tx, i, n int) error { return tx.Set(regKey(i), []byte(strconv.Itoa(n))) }

// applyLin runs one operation as a transaction.
func applyLin(db kv.DB, in linOp) (linOut, error) {
	var out linOut
	var err error
	switch in.Kind {
	case 0:
		err = db.ReadTransact(ctx, func(tx kv.ReadTx) error {
			var e error
			out.V, e = readReg(tx, in.K)
			return e
		})
	case 1:
		err = db.Transact(ctx, func(tx kv.Tx) error { return writeReg(tx, in.K, in.V) })
	case 2:
		err = db.Transact(ctx, func(tx kv.Tx) error {
			n, e := readReg(tx, in.K)
			if e != nil {
				return e
			}
			out.V = n + 1
			// Yield between read and write so other clients' transactions
			// interleave with this one even on a fast backend.
			runtime.Gosched()
			return writeReg(tx, in.K, n+1)
		})
	case 3:
		err = db.Transact(ctx, func(tx kv.Tx) error {
			a, e := readReg(tx, in.K)
			if e != nil {
				return e
			}
			runtime.Gosched()
			c, e := readReg(tx, in.K2)
			if e != nil {
				return e
			}
			if e := writeReg(tx, in.K, a-1); e != nil {
				return e
			}
			return writeReg(tx, in.K2, c+1)
		})
	default:
		err = db.ReadTransact(ctx, func(tx kv.ReadTx) error {
			kvs, e := tx.GetRange(kv.KeyRange{Begin: []byte("r"), End: []byte("s")}, kv.RangeOptions{})
			if e != nil {
				return e
			}
			out.All = [linearKeys]int{}
			for _, e := range kvs {
				n, perr := strconv.Atoi(string(e.Value))
				if perr != nil {
					return perr
				}
				out.All[e.Key[1]-'0'] = n
			}
			return nil
		})
	}
	return out, err
}

// RandomLinOp draws one operation of the linearizability workload.
func randLinOp(r *rand.Rand) linOp {
	in := linOp{Kind: r.IntN(5), K: r.IntN(linearKeys), V: r.IntN(100)}
	in.K2 = (in.K + 1 + r.IntN(linearKeys-1)) % linearKeys
	return in
}

func testLinearizable(t *testing.T, db kv.DB) {
	var h sim.History
	var wg sync.WaitGroup
	errs := make(chan error, LinearClients)
	for c := 0; c < LinearClients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(c), 0x11ea))
			for i := 0; i < LinearOpsPerClient; i++ {
				in := randLinOp(r)
				op := h.Call(c, in)
				out, err := applyLin(db, in)
				if err != nil {
					errs <- fmt.Errorf("client %d op %+v: %w", c, in, err)
					return
				}
				op.Return(out)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := h.Len(); n != LinearClients*LinearOpsPerClient {
		t.Fatalf("history has %d operations, want %d", n, LinearClients*LinearOpsPerClient)
	}
	if err := h.CheckLinearizable(linearModel); err != nil {
		t.Fatal(err)
	}
}

// LinearModel is the porcupine model of the linearizability workload, for
// backends that check histories they record themselves (the simulated
// store under faults).
func LinearModel() porcupine.Model { return linearModel }

// LinearOp is one operation of the linearizability workload.
type LinearOp = linOp

// LinearOut is an operation's result.
type LinearOut = linOut

// RandomLinearOp draws one operation of the workload from r.
func RandomLinearOp(r *rand.Rand) LinearOp { return randLinOp(r) }

// ApplyLinear runs op against db as one transaction.
func ApplyLinear(db kv.DB, op LinearOp) (LinearOut, error) { return applyLin(db, op) }
