package simkv

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kelpie-go/kelpie/kv"
	"github.com/kelpie-go/kelpie/kv/kvtest"
	"github.com/kelpie-go/kelpie/sim"
)

// Scenarios are the simulations of the store under crashes and faults, run
// by this package's TestSim* tests and by `kelpie sim --scenario NAME`.
var Scenarios = []sim.Scenario{
	{
		Name: "kv-crash",
		Doc:  "clients commit multi-key transactions while the node is killed and restarted; acknowledged commits survive, failed ones are invisible, commits are atomic",
		Run:  runCrash,
	},
	{
		Name: "kv-faults",
		Doc:  "read, write, commit and fsync errors and latency under concurrent clients; failed commits are invisible, the history is linearizable, acknowledged commits survive a kill",
		Run:  runFaults,
	},
	{
		Name: "kv-torn-write",
		Doc:  "the node is killed while a commit is between write and fsync and the write tears; reopening detects and discards the torn tail and keeps every acknowledged commit",
		Run:  runTornWrite,
	},
	{
		Name: "kv-crash-model",
		Doc:  "one client runs random transactions (sets, clears, range clears) under commit faults and kills; after every restart the whole store equals the model of acknowledged commits, plus the interrupted one or not",
		Run:  runCrashModel,
	},
}

// Scenario sizes.
const (
	scenarioClients = 3
	// crashRounds is how many kill-and-restart rounds a crash scenario runs.
	crashRounds = 8
	// roundMin and roundMax bound how long the clients run between kills.
	roundMin = 20 * time.Millisecond
	roundMax = 200 * time.Millisecond
	// thinkMax bounds a client's pause between transactions.
	thinkMax = 5 * time.Millisecond
	// verifyAttempts bounds the retries of a verification read that meets
	// an injected read error.
	verifyAttempts = 50
	// pendingWait bounds the wait for a commit to be between write and sync.
	pendingWait = 10 * time.Second
	// faultsRun is how long the kv-faults clients run.
	faultsRun = 2 * time.Second
	// linearOps bounds each linearizability client's operations.
	linearOps = 30
)

// ledger records what each client's commits returned, across incarnations.
type ledger struct {
	mu      sync.Mutex
	seq     [scenarioClients]int
	acked   map[string]bool // committed and acknowledged
	failed  map[string]bool // definitely not applied
	unknown map[string]bool // the node died during the commit
	errs    []error         // unexpected errors
}

func newLedger() *ledger {
	return &ledger{acked: map[string]bool{}, failed: map[string]bool{}, unknown: map[string]bool{}}
}

// countKey counts the client keys; every client transaction adds one key
// and increments it, so after any crash it must equal the number of keys.
var countKey = []byte("count")

func clientKey(client, seq int) string { return fmt.Sprintf("c/%d/%06d", client, seq) }

// clientTx is one client transaction: read the count, add a key, bump the
// count.
func clientTx(ctx context.Context, db kv.DB, key string) error {
	return db.Transact(ctx, func(tx kv.Tx) error {
		raw, _, err := tx.Get(countKey)
		if err != nil {
			return err
		}
		n := 0
		if raw != nil {
			if n, err = strconv.Atoi(string(raw)); err != nil {
				return fmt.Errorf("count %q: %w", raw, err)
			}
		}
		if err := tx.Set([]byte(key), []byte("v")); err != nil {
			return err
		}
		return tx.Set(countKey, []byte(strconv.Itoa(n+1)))
	})
}

// classify files one commit's outcome.
func (l *ledger) classify(key string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case err == nil:
		l.acked[key] = true
	case errors.Is(err, kv.ErrClosed), errors.Is(err, context.Canceled):
		// The node was stopped during the transaction: it may or may not
		// have reached the disk.
		l.unknown[key] = true
	case errors.Is(err, kv.ErrCommitFailed), errors.Is(err, kv.ErrIO), errors.Is(err, kv.ErrRetryLimit):
		// A failed commit, a failed read (nothing was committed) or
		// retries exhausted: not applied.
		l.failed[key] = true
	default:
		l.errs = append(l.errs, fmt.Errorf("commit of %s: unexpected error: %w", key, err))
	}
}

// runClients starts the ledger's clients on node n against db.
func (l *ledger) runClients(n *sim.Node, db kv.DB) error {
	for c := 0; c < scenarioClients; c++ {
		think := n.Rand(fmt.Sprintf("client%d", c))
		if err := n.Go(func(ctx context.Context) {
			for ctx.Err() == nil {
				l.mu.Lock()
				seq := l.seq[c]
				l.seq[c]++
				l.mu.Unlock()
				key := clientKey(c, seq)
				l.classify(key, clientTx(ctx, db, key))
				select {
				case <-ctx.Done():
				case <-time.After(think.Duration(0, thinkMax)):
				}
			}
		}); err != nil {
			return err
		}
	}
	return nil
}

// verify checks the store against the ledger: every acknowledged key is
// present, no failed key is, and the count matches the keys (commits are
// atomic).
func (l *ledger) verify(db kv.DB) (present int, err error) {
	// Clients may still be committing: only commits acknowledged before
	// the read began must be in what it reads. (Failed commits are final:
	// they must never appear.)
	l.mu.Lock()
	ackedBefore := make([]string, 0, len(l.acked))
	for k := range l.acked {
		ackedBefore = append(ackedBefore, k)
	}
	l.mu.Unlock()
	var keys map[string]bool
	var count int
	for attempt := 1; ; attempt++ {
		keys, count, err = readClientState(db)
		if err == nil || !errors.Is(err, kv.ErrIO) || attempt == verifyAttempts {
			break
		}
	}
	if err != nil {
		return 0, fmt.Errorf("verify: %w", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) > 0 {
		return 0, errors.Join(l.errs...)
	}
	var lost, visible []string
	for _, k := range ackedBefore {
		if !keys[k] {
			lost = append(lost, k)
		}
	}
	for k := range l.failed {
		if keys[k] {
			visible = append(visible, k)
		}
	}
	if len(lost) > 0 {
		return 0, fmt.Errorf("%d acknowledged commits lost, e.g. %s", len(lost), minString(lost))
	}
	if len(visible) > 0 {
		return 0, fmt.Errorf("%d failed commits are visible, e.g. %s", len(visible), minString(visible))
	}
	if count != len(keys) {
		return 0, fmt.Errorf("count is %d but %d client keys exist: a commit was applied in part", count, len(keys))
	}
	return len(keys), nil
}

func minString(ss []string) string {
	m := ss[0]
	for _, s := range ss[1:] {
		if s < m {
			m = s
		}
	}
	return m
}

func readClientState(db kv.DB) (map[string]bool, int, error) {
	keys := map[string]bool{}
	count := 0
	err := db.ReadTransact(context.Background(), func(tx kv.ReadTx) error {
		clear(keys)
		r, _ := kv.PrefixRange([]byte("c/"))
		kvs, err := tx.GetRange(r, kv.RangeOptions{})
		if err != nil {
			return err
		}
		for _, e := range kvs {
			keys[string(e.Key)] = true
		}
		raw, ok, err := tx.Get(countKey)
		if err != nil || !ok {
			return err
		}
		count, err = strconv.Atoi(string(raw))
		return err
	})
	return keys, count, err
}

func (l *ledger) summary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Sprintf("acked=%d failed=%d unknown=%d", len(l.acked), len(l.failed), len(l.unknown))
}

// storeNode adds node "kv" whose boot opens the store and starts the
// ledger's clients; current returns the open DB.
func storeNode(s *sim.Simulation, l *ledger) (n *sim.Node, current func() *DB, err error) {
	var mu sync.Mutex
	var db *DB
	n, err = s.AddNode("kv", func(n *sim.Node) error {
		d, err := OpenNode(n)
		if err != nil {
			return err
		}
		mu.Lock()
		db = d
		mu.Unlock()
		if l == nil {
			return nil
		}
		return l.runClients(n, d)
	})
	return n, func() *DB { mu.Lock(); defer mu.Unlock(); return db }, err
}

// crashLoop runs rounds of: let the clients work, (optionally wait for a
// commit in flight), kill, restart, verify.
func crashLoop(s *sim.Simulation, n *sim.Node, current func() *DB, l *ledger, midCommit bool) error {
	r := s.Rand("kv/driver")
	for round := 1; round <= crashRounds; round++ {
		time.Sleep(r.Duration(roundMin, roundMax))
		if midCommit {
			disk := current().Disk()
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
			return fmt.Errorf("round %d: kill: %w", round, err)
		}
		if err := n.Restart(); err != nil {
			return fmt.Errorf("round %d: restart: %w", round, err)
		}
		present, err := l.verify(current())
		if err != nil {
			s.Violation("acknowledged-commits-survive", err)
			return fmt.Errorf("round %d: %w", round, err)
		}
		rec := current().Recovery()
		s.Record("kv", "round %d verified: %d keys, %s, replayed %d records, torn %d bytes", round, present, l.summary(), rec.Records, rec.TornBytes)
	}
	return nil
}

func runCrash(s *sim.Simulation) error {
	l := newLedger()
	n, current, err := storeNode(s, l)
	if err != nil {
		return err
	}
	if err := crashLoop(s, n, current, l, false); err != nil {
		return err
	}
	l.mu.Lock()
	acked := len(l.acked)
	l.mu.Unlock()
	if acked == 0 {
		return errors.New("no commit was acknowledged: the scenario tested nothing")
	}
	return nil
}

func runTornWrite(s *sim.Simulation) error {
	s.Faults().MustInject(sim.Fault{Kind: FaultTornWrite, P: 1})
	l := newLedger()
	n, current, err := storeNode(s, l)
	if err != nil {
		return err
	}
	if err := crashLoop(s, n, current, l, true); err != nil {
		return err
	}
	st := current().Disk().Stats()
	if st.TornWrites == 0 || st.TornRepairs != st.TornWrites {
		return fmt.Errorf("disk stats %+v: every kill was mid-commit with kv.torn_write at p=1, so every reopen must have repaired a torn tail", st)
	}
	return nil
}

func runFaults(s *sim.Simulation) error {
	f := s.Faults()
	for _, k := range []sim.FaultKind{FaultReadError, FaultWriteError, FaultCommitError, FaultFsyncError} {
		f.MustInject(sim.Fault{Kind: k, P: 0.05})
	}
	f.MustInject(sim.Fault{Kind: FaultLatency, P: 0.1, Delay: 5 * time.Millisecond})

	l := newLedger()
	n, current, err := storeNode(s, l)
	if err != nil {
		return err
	}
	// Linearizability clients run beside the ledger clients.
	var h sim.History
	var wg sync.WaitGroup
	lin := s.Rand("kv/linear")
	for c := 0; c < scenarioClients; c++ {
		seed := lin.Uint64()
		wg.Add(1)
		if err := n.Go(func(ctx context.Context) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, 0))
			for i := 0; i < linearOps && ctx.Err() == nil; i++ {
				in := kvtest.RandomLinearOp(r)
				op := h.Call(c, in)
				out, err := kvtest.ApplyLinear(current(), in)
				if err == nil {
					op.Return(out)
				}
				// A failed operation applied nothing (reads fail before
				// commit, failed commits are invisible): it is left out
				// of the history.
			}
		}); err != nil {
			return err
		}
	}
	time.Sleep(faultsRun)
	wg.Wait()
	if _, err := l.verify(current()); err != nil {
		s.Violation("failed-commits-invisible", err)
		return err
	}
	if err := h.CheckLinearizable(kvtest.LinearModel()); err != nil {
		s.Violation("linearizable", err)
		return err
	}
	// Everything acknowledged survives a kill too.
	if err := n.Kill(); err != nil {
		return err
	}
	if err := n.Restart(); err != nil {
		return err
	}
	present, err := l.verify(current())
	if err != nil {
		s.Violation("acknowledged-commits-survive", err)
		return err
	}
	var fired []string
	for _, st := range f.Stats() {
		fired = append(fired, fmt.Sprintf("%s=%d/%d", st.Fault.Kind, st.Fired, st.Consulted))
	}
	s.Record("kv", "faults verified: %d keys, %s, %d linearizable ops; fired/consulted %s", present, l.summary(), h.Len(), strings.Join(fired, " "))
	l.mu.Lock()
	failed := len(l.failed)
	l.mu.Unlock()
	if failed == 0 {
		return errors.New("no commit failed: the faults tested nothing")
	}
	return nil
}
