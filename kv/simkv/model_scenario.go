package simkv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/kelpie-go/kelpie/kv"
	"github.com/kelpie-go/kelpie/sim"
)

// Sizes of kv-crash-model.
const (
	modelRounds = 10
	// modelKeys is the key space: small, so clears and range clears hit
	// keys that exist.
	modelKeys = 12
	// modelOpsMax bounds the mutations of one random transaction.
	modelOpsMax = 6
)

// modelState is the reference state: what the acknowledged commits leave.
type modelState map[string]string

func (m modelState) clone() modelState {
	out := make(modelState, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (m modelState) String() string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b bytes.Buffer
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%s ", k, m[k])
	}
	return b.String()
}

// modelMut is one drawn mutation.
type modelMut struct {
	op       int // 0 set, 1 clear, 2 clear range
	key, end string
	value    string
}

func (m modelState) apply(muts []modelMut) modelState {
	out := m.clone()
	for _, mu := range muts {
		switch mu.op {
		case 0:
			out[mu.key] = mu.value
		case 1:
			delete(out, mu.key)
		case 2:
			for k := range out {
				if k >= mu.key && k < mu.end {
					delete(out, k)
				}
			}
		}
	}
	return out
}

func drawMuts(r *sim.Stream, seq int) []modelMut {
	n := 1 + r.IntN(modelOpsMax)
	muts := make([]modelMut, n)
	key := func() string { return fmt.Sprintf("m%02d", r.IntN(modelKeys)) }
	for i := range muts {
		mu := modelMut{op: r.IntN(5), key: key(), value: fmt.Sprintf("v%d.%d", seq, i)}
		if mu.op > 2 {
			mu.op = 0 // sets are most common, so the store fills up
		}
		if mu.op == 2 {
			mu.end = key()
			if mu.end < mu.key {
				mu.key, mu.end = mu.end, mu.key
			}
		}
		muts[i] = mu
	}
	return muts
}

func readModelState(db kv.DB) (modelState, error) {
	var out modelState
	var err error
	for attempt := 1; attempt <= verifyAttempts; attempt++ {
		out = modelState{}
		err = db.ReadTransact(context.Background(), func(tx kv.ReadTx) error {
			kvs, err := tx.GetRange(kv.All(), kv.RangeOptions{})
			for _, e := range kvs {
				out[string(e.Key)] = string(e.Value)
			}
			return err
		})
		if !errors.Is(err, kv.ErrIO) {
			break
		}
	}
	return out, err
}

func runCrashModel(s *sim.Simulation) error {
	f := s.Faults()
	for _, k := range []sim.FaultKind{FaultWriteError, FaultCommitError, FaultFsyncError} {
		f.MustInject(sim.Fault{Kind: k, P: 0.03})
	}
	f.MustInject(sim.Fault{Kind: FaultTornWrite, P: 0.5})

	// What the client knows, shared with the driver. The client runs one
	// transaction at a time, so at most one outcome is unknown at a kill.
	type shared struct {
		acked   modelState
		unknown []modelMut // the transaction in flight when the node died
		hasUnk  bool
		seq     int
		commits int
		failed  int
		errs    []error
	}
	st := &shared{acked: modelState{}}
	var mu sync.Mutex
	lock, unlock := mu.Lock, mu.Unlock

	var current *DB
	n, err := s.AddNode("kv", func(n *sim.Node) error {
		db, err := OpenNode(n)
		if err != nil {
			return err
		}
		lock()
		current = db
		unlock()
		return nil
	})
	if err != nil {
		return err
	}
	// startClient runs the client on the node's current incarnation. The
	// driver starts it only after checking the store, so the check sees
	// no commit the model does not know about.
	r := s.Rand("kv/model-client")
	startClient := func() error {
		lock()
		db := current
		unlock()
		return n.Go(func(ctx context.Context) {
			for ctx.Err() == nil {
				lock()
				st.seq++
				muts := drawMuts(r, st.seq)
				unlock()
				err := db.Transact(ctx, func(tx kv.Tx) error {
					for _, m := range muts {
						var err error
						switch m.op {
						case 0:
							err = tx.Set([]byte(m.key), []byte(m.value))
						case 1:
							err = tx.Clear([]byte(m.key))
						case 2:
							err = tx.ClearRange(kv.KeyRange{Begin: []byte(m.key), End: []byte(m.end)})
						}
						if err != nil {
							return err
						}
					}
					return nil
				})
				lock()
				switch {
				case err == nil:
					st.acked = st.acked.apply(muts)
					st.commits++
				case errors.Is(err, kv.ErrCommitFailed):
					st.failed++
				case errors.Is(err, kv.ErrClosed), errors.Is(err, context.Canceled):
					st.unknown, st.hasUnk = muts, true
				default:
					st.errs = append(st.errs, err)
				}
				unlock()
			}
		})
	}
	if err := startClient(); err != nil {
		return err
	}
	drv := s.Rand("kv/model-driver")
	for round := 1; round <= modelRounds; round++ {
		time.Sleep(drv.Duration(roundMin, roundMax))
		lock()
		disk := current.Disk()
		unlock()
		if round%2 == 1 {
			// Odd rounds kill mid-commit, where a write can tear.
			if err := sim.Eventually(context.Background(), pendingWait, 50*time.Microsecond, func() error {
				if disk.Pending() == 0 {
					return errors.New("no commit between write and sync")
				}
				return nil
			}); err != nil {
				return fmt.Errorf("round %d: %w", round, err)
			}
		}
		if err := n.Kill(); err != nil {
			return err
		}
		// The client's goroutine has returned: its last outcome is final.
		lock()
		acked, unknown, hasUnk := st.acked, st.unknown, st.hasUnk
		st.unknown, st.hasUnk = nil, false
		errs := st.errs
		unlock()
		if len(errs) > 0 {
			return fmt.Errorf("round %d: unexpected errors: %w", round, errors.Join(errs...))
		}
		if err := n.Restart(); err != nil {
			return fmt.Errorf("round %d: restart: %w", round, err)
		}
		lock()
		db := current
		unlock()
		got, err := readModelState(db)
		if err != nil {
			return fmt.Errorf("round %d: read: %w", round, err)
		}
		switch {
		case got.String() == acked.String():
		case hasUnk && got.String() == acked.apply(unknown).String():
			// The interrupted commit reached the disk before the kill.
			acked = acked.apply(unknown)
		default:
			err := fmt.Errorf("round %d: store is {%s}, the acknowledged commits give {%s}", round, got, acked)
			s.Violation("store-equals-acknowledged-commits", err)
			return err
		}
		lock()
		st.acked = acked
		commits, failed := st.commits, st.failed
		unlock()
		if err := startClient(); err != nil {
			return err
		}
		s.Record("kv", "round %d: store matches the model: %d keys, %d commits, %d failed, torn %d bytes", round, len(got), commits, failed, db.Recovery().TornBytes)
	}
	lock()
	commits := st.commits
	unlock()
	if commits == 0 {
		return errors.New("no commit was acknowledged: the scenario tested nothing")
	}
	return nil
}
