package actorsim

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/kelpie-go/kelpie/actor"
	"github.com/kelpie-go/kelpie/actor/placement"
	"github.com/kelpie-go/kelpie/kv"
	"github.com/kelpie-go/kelpie/kv/simkv"
	"github.com/kelpie-go/kelpie/sim"
)

// Scenarios are the actor runtime's simulations, run by this package's
// TestSim* tests and by `kelpie sim --scenario NAME`.
var Scenarios = []sim.Scenario{
	{
		Name: "actor-crash",
		Doc:  "clients invoke ledger actors on one node while its store fails (read, write, commit, fsync errors, torn writes) and the node is killed and restarted; no acknowledged invocation is lost, no failed one is visible, one activation per actor",
		Run:  runCrash,
	},
	{
		Name: "actor-fencing",
		Doc:  "three nodes share a store and a lease service that loses renewals and lets leases be stolen, while nodes are killed; stale owners' commits are fenced, every actor's commits form one chain, no acknowledged invocation is lost",
		Run:  runFencing,
	},
	{
		Name: "actor-idle",
		Doc:  "a node with a short idle timeout and a cap of 5 activations serves 15 actors; activations are deactivated and evicted and come back with their state",
		Run:  runIdle,
	},
	{
		Name: "actor-pipeline",
		Doc:  "8 clients keep two actors busy while the store is slow and its commits fail; turns run while the turns before them commit, and every turn that ran on a commit that failed is rolled back with it: no failed invocation is visible, no acknowledged one lost, each actor's count equals its keys",
		Run:  runPipeline,
	},
	{
		Name: "actor-flood",
		Doc:  "20 clients flood one actor with an 8-slot mailbox; the excess is refused with backpressure, every accepted invocation commits, other actors stay reachable",
		Run:  runFlood,
	},
}

// Scenario sizes and timings (virtual time).
const (
	// bootAttempts bounds the restarts of a node whose boot meets an
	// injected store fault.
	bootAttempts = 50
	// drainWait is how long the driver lets in-flight invocations finish
	// after the load phase.
	drainWait = 3 * time.Second
	// clientStop bounds how long the driver waits for its clients.
	clientStop = 30 * time.Second
	// pendingWait bounds the wait for a commit to be in flight.
	pendingWait = 10 * time.Second
)

// harness is a set of nodes, each running one runtime per incarnation.
type harness struct {
	s *sim.Simulation
	c *checker

	mu  sync.Mutex
	rts map[string]*actor.Runtime
	dbs map[string]kv.DB
}

func newHarness(s *sim.Simulation, strict bool) *harness {
	c := newChecker(s)
	c.strictActivation = strict
	h := &harness{s: s, c: c, rts: map[string]*actor.Runtime{}, dbs: map[string]kv.DB{}}
	s.Invariant("commits-form-one-chain", c.checkChains)
	return h
}

// runtime is node's current runtime, nil while it is down.
func (h *harness) runtime(node string) *actor.Runtime {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.rts[node]
}

func (h *harness) db(node string) kv.DB {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.dbs[node]
}

// start makes the runtime of n's incarnation over db and pl.
func (h *harness) start(n *sim.Node, db kv.DB, pl placement.Placement, cfg actor.Config) error {
	cfg.DB, cfg.Placement = db, pl
	inc := n.Incarnation()
	cfg.Observer = observer{c: h.c, node: n.Name(), inc: inc}
	cfg.Record = n.Record
	rt, err := actor.New(cfg)
	if err != nil {
		return err
	}
	if err := rt.Register(Namespace, func(actor.ID) actor.Actor { return &ledgerActor{check: h.c} }); err != nil {
		return err
	}
	h.mu.Lock()
	h.rts[n.Name()] = rt
	h.dbs[n.Name()] = db
	h.mu.Unlock()
	n.OnStop(func() {
		h.mu.Lock()
		if h.rts[n.Name()] == rt {
			delete(h.rts, n.Name())
		}
		h.mu.Unlock()
		h.c.died(n.Name(), inc)
		// A kill is a crash: the node's store dies under the runtime at
		// once (the disk is crashed right after this hook), so commits in
		// flight are cut off rather than awaited. The runtime's goroutines
		// see the dead store and exit on their own.
		go rt.Abort()
	})
	return nil
}

// restart kills n (if up) and starts it again, retrying boots that fail on
// injected faults.
func restart(n *sim.Node) error {
	var err error
	for i := 0; i < bootAttempts; i++ {
		if err = n.Restart(); err == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("node %s did not boot in %d attempts: %w", n.Name(), bootAttempts, err)
}

// addNode adds a node, retrying a first boot that meets a fault.
func addNode(s *sim.Simulation, name string, boot sim.BootFunc) (*sim.Node, error) {
	n, err := s.AddNode(name, boot)
	if err == nil {
		return n, nil
	}
	if n = s.Node(name); n == nil {
		return nil, err
	}
	return n, restart(n)
}

// localNode adds a node with its own store and the single-node placement.
func (h *harness) localNode(name string, cfg actor.Config) (*sim.Node, error) {
	return addNode(h.s, name, func(n *sim.Node) error {
		db, err := simkv.OpenNode(n)
		if err != nil {
			return err
		}
		pl, err := placement.NewLocal(n.Context(), db, n.Name())
		if err != nil {
			return err
		}
		n.OnStop(pl.Close)
		return h.start(n, db, pl, cfg)
	})
}

func ledgerID(i int) actor.ID { return actor.MustID(Namespace, "a"+strconv.Itoa(i)) }

// clients runs n clients until stop closes; each invokes method on a random
// one of actors actors on a random one of nodes, pausing up to think
// between invocations, and files each outcome.
func (h *harness) clients(n, actors int, nodes []string, method string, think time.Duration, stop <-chan struct{}) *sync.WaitGroup {
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		r := h.s.Rand(fmt.Sprintf("actor/client%d", i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				case <-time.After(r.Duration(0, think)):
				}
				node := nodes[r.IntN(len(nodes))]
				rt := h.runtime(node)
				if rt == nil {
					continue
				}
				id := ledgerID(r.IntN(actors))
				op := h.c.newOp(i)
				_, err := rt.Invoke(context.Background(), id, method, []byte(op))
				h.c.file(id, op, err)
			}
		}()
	}
	return &wg
}

func waitGroup(wg *sync.WaitGroup) error {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-time.After(clientStop):
		return fmt.Errorf("clients still running %s after they were told to stop", clientStop)
	}
}

// verify reads every actor back through the first node that can serve it
// and checks the ledger and the commit chains.
func (h *harness) verify(actors int, nodes []string) error {
	ctx := context.Background()
	for i := 0; i < actors; i++ {
		id := ledgerID(i)
		var err error
		for _, node := range nodes {
			rt, db := h.runtime(node), h.db(node)
			if rt == nil {
				err = fmt.Errorf("node %s is down", node)
				continue
			}
			if err = h.c.verifyActor(ctx, rt, db, id); err == nil || !errors.Is(err, placement.ErrNotOwner) {
				break
			}
		}
		if err != nil {
			h.s.Violation("acknowledged-kept-failed-invisible", err)
			return err
		}
	}
	if err := h.c.checkChains(); err != nil {
		return err
	}
	h.s.Record("", "verified %d actors; %s", actors, h.c.summary())
	// Also on stdout, so a run shows what it exercised.
	fmt.Printf("%s: verified %d actors; %s\n", h.s.Name(), actors, h.c.summary())
	return nil
}

// requireSome fails when the scenario did not produce what it exists to test.
func (h *harness) requireSome(kind string, min int) error {
	if got := h.c.count(kind); got < min {
		return fmt.Errorf("only %d invocations ended %s, want at least %d: the scenario did not test it (%s)", got, kind, min, h.c.summary())
	}
	return nil
}

func (h *harness) requireEvent(name string, min int) error {
	if got := h.c.event(name); got < min {
		return fmt.Errorf("only %d %q events, want at least %d (%s)", got, name, min, h.c.summary())
	}
	return nil
}

func runCrash(s *sim.Simulation) error {
	const (
		actors = 12
		load   = 3 * time.Second
	)
	f := s.Faults()
	for _, k := range []sim.FaultKind{simkv.FaultReadError, simkv.FaultWriteError, simkv.FaultCommitError, simkv.FaultFsyncError} {
		f.MustInject(sim.Fault{Kind: k, P: 0.02, Until: load})
	}
	f.MustInject(sim.Fault{Kind: simkv.FaultTornWrite, P: 0.5})
	f.MustInject(sim.Fault{Kind: simkv.FaultLatency, P: 0.05, Delay: 20 * time.Millisecond, Until: load})

	h := newHarness(s, true)
	cfg := actor.Config{MailboxSize: 16, IdleTimeout: time.Second, MaxActive: 64, InvocationTimeout: 2 * time.Second}
	n, err := h.localNode("n1", cfg)
	if err != nil {
		return err
	}
	stop := make(chan struct{})
	wg := h.clients(4, actors, []string{"n1"}, "add", 20*time.Millisecond, stop)
	r := s.Rand("actor/crasher")
	kills := 0
	for start := time.Now(); time.Since(start) < load; kills++ {
		time.Sleep(r.Duration(200*time.Millisecond, 600*time.Millisecond))
		if kills%2 == 1 {
			// Every other kill lands while a commit is between its write
			// and its fsync, where kv.torn_write can tear it.
			disk := simkv.NodeDisk(n)
			if err := sim.Eventually(context.Background(), pendingWait, 50*time.Microsecond, func() error {
				if disk.Pending() == 0 {
					return errors.New("no commit between write and fsync")
				}
				return nil
			}); err != nil {
				close(stop)
				return fmt.Errorf("kill %d: %w", kills, err)
			}
		}
		if err := restart(n); err != nil {
			close(stop)
			return err
		}
	}
	close(stop)
	if err := waitGroup(wg); err != nil {
		return err
	}
	// One more crash: everything acknowledged must be durable.
	if err := restart(n); err != nil {
		return err
	}
	if err := h.verify(actors, []string{"n1"}); err != nil {
		return err
	}
	s.Record("", "%d kills", kills)
	if err := h.requireSome("ok", 20); err != nil {
		return err
	}
	return h.requireEvent("activated", actors)
}

func runFencing(s *sim.Simulation) error {
	const (
		actors = 6
		load   = 4 * time.Second
		ttl    = time.Second
	)
	f := s.Faults()
	// The directed phase, in the first virtual milliseconds: one steal and
	// no other fault.
	const directed = 100 * time.Millisecond
	f.MustInject(sim.Fault{Kind: placement.FaultLeaseStolen, P: 1, Max: 1, Until: directed})
	// The random phase.
	f.MustInject(sim.Fault{Kind: placement.FaultLeaseStolen, P: 0.2, From: directed, Until: load})
	f.MustInject(sim.Fault{Kind: placement.FaultKeepAliveLost, P: 0.5, Node: "n2", From: directed, Until: load})
	f.MustInject(sim.Fault{Kind: placement.FaultUnavailable, P: 0.05, From: directed, Until: load})
	f.MustInject(sim.Fault{Kind: simkv.FaultFsyncError, P: 0.02, From: directed, Until: load})
	f.MustInject(sim.Fault{Kind: simkv.FaultLatency, P: 0.05, Delay: 10 * time.Millisecond, From: directed, Until: load})

	h := newHarness(s, false)
	svc, err := placement.NewSim(s, ttl)
	if err != nil {
		return err
	}
	s.Invariant("one-current-activation", func() error { return h.oneCurrent(svc, actors) })
	store, err := s.AddNode("store", func(n *sim.Node) error {
		db, err := simkv.OpenNode(n)
		if err != nil {
			return err
		}
		h.mu.Lock()
		h.dbs["store"] = db
		h.mu.Unlock()
		return nil
	})
	if err != nil {
		return err
	}
	_ = store
	db := h.db("store")
	cfg := actor.Config{MailboxSize: 16, IdleTimeout: 2 * time.Second, MaxActive: 64, InvocationTimeout: 2 * time.Second}
	nodes := []string{"n1", "n2", "n3"}
	ns := map[string]*sim.Node{}
	for _, name := range nodes {
		n, err := addNode(s, name, func(n *sim.Node) error {
			pl, err := svc.Join(n)
			if err != nil {
				return err
			}
			return h.start(n, db, pl, cfg)
		})
		if err != nil {
			return err
		}
		ns[name] = n
	}

	// Directed: n1 owns the actor; n2 steals it and commits; n1, which
	// still believes in its lease, must be fenced.
	ctx := context.Background()
	id := ledgerID(0)
	for _, step := range []struct{ node, op string }{{"n1", "d1"}, {"n2", "d2"}} {
		_, err := h.runtime(step.node).Invoke(ctx, id, "add", []byte(step.op))
		if h.c.file(id, step.op, err) != acked {
			return fmt.Errorf("directed phase: add %s on %s: %v", step.op, step.node, err)
		}
	}
	_, err = h.runtime("n1").Invoke(ctx, id, "add", []byte("d3"))
	h.c.file(id, "d3", err)
	var fe *actor.FencedError
	if !errors.As(err, &fe) || fe.StoredEpoch <= fe.Epoch {
		return fmt.Errorf("directed phase: the stale owner's commit returned %v, want a FencedError", err)
	}
	s.Record("", "directed phase: stale owner fenced: %v", err)

	stop := make(chan struct{})
	wg := h.clients(6, actors, nodes, "add", 20*time.Millisecond, stop)
	r := s.Rand("actor/crasher")
	for start := time.Now(); time.Since(start) < load; {
		time.Sleep(r.Duration(300*time.Millisecond, time.Second))
		victim := ns[nodes[r.IntN(len(nodes))]]
		if err := restart(victim); err != nil {
			close(stop)
			return err
		}
	}
	close(stop)
	if err := waitGroup(wg); err != nil {
		return err
	}
	// Let lapsed sessions and lost leases expire, then read back.
	time.Sleep(drainWait)
	if err := h.verify(actors, nodes); err != nil {
		return err
	}
	if err := h.requireSome("ok", 20); err != nil {
		return err
	}
	return h.requireSome("fenced", 1)
}

// oneCurrent checks, on the runtimes' own lists of activations, that no
// actor is active on two nodes with the epoch the lease service granted
// last, and that no node runs an actor with an epoch it was never granted.
func (h *harness) oneCurrent(svc *placement.SimService, actors int) error {
	h.mu.Lock()
	type nodeRT struct {
		name string
		rt   *actor.Runtime
	}
	var rts []nodeRT
	for _, name := range []string{"n1", "n2", "n3"} {
		if rt := h.rts[name]; rt != nil {
			rts = append(rts, nodeRT{name, rt})
		}
	}
	h.mu.Unlock()
	current := map[string][]string{}
	for _, n := range rts {
		for _, a := range n.rt.Active() {
			e := svc.Epoch(a.ID.String())
			if a.Epoch > e {
				return fmt.Errorf("%s active on %s at epoch %d, but the service granted at most %d", a.ID, n.name, a.Epoch, e)
			}
			if a.Epoch == e {
				current[a.ID.Key] = append(current[a.ID.Key], n.name)
			}
		}
	}
	for i := 0; i < actors; i++ {
		if on := current[ledgerID(i).Key]; len(on) > 1 {
			return fmt.Errorf("%s is active with the current epoch on %v", ledgerID(i), on)
		}
	}
	return nil
}

func runIdle(s *sim.Simulation) error {
	const (
		actors    = 15
		maxActive = 5
		load      = 5 * time.Second
	)
	s.Faults().MustInject(sim.Fault{Kind: simkv.FaultLatency, P: 0.1, Delay: 5 * time.Millisecond})
	h := newHarness(s, true)
	cfg := actor.Config{MailboxSize: 16, IdleTimeout: 200 * time.Millisecond, MaxActive: maxActive, InvocationTimeout: 2 * time.Second}
	if _, err := h.localNode("n1", cfg); err != nil {
		return err
	}
	s.Invariant("max-active", func() error {
		if rt := h.runtime("n1"); rt != nil {
			if n := rt.NumActive(); n > maxActive {
				return fmt.Errorf("%d activations, Config.MaxActive is %d", n, maxActive)
			}
		}
		return nil
	})
	stopMon := make(chan struct{})
	s.Monitor(50*time.Millisecond, stopMon)
	defer close(stopMon)
	stop := make(chan struct{})
	// Three busy clients keep the cap under pressure (eviction); one slow
	// client lets its actors go idle between calls (idle deactivation).
	wg := h.clients(3, actors, []string{"n1"}, "add", 50*time.Millisecond, stop)
	wg2 := h.clients(1, actors, []string{"n1"}, "add", 600*time.Millisecond, stop)
	time.Sleep(load)
	close(stop)
	if err := waitGroup(wg); err != nil {
		return err
	}
	if err := waitGroup(wg2); err != nil {
		return err
	}
	// Everything goes idle, then comes back with its state.
	time.Sleep(time.Second)
	if n := h.runtime("n1").NumActive(); n != 0 {
		return fmt.Errorf("%d activations left after 1s idle with a 200ms idle timeout", n)
	}
	if err := h.verify(actors, []string{"n1"}); err != nil {
		return err
	}
	if err := h.requireEvent("deactivated idle", 1); err != nil {
		return err
	}
	if err := h.requireEvent("deactivated evicted", 1); err != nil {
		return err
	}
	// too-many-active is allowed (all five busy at once), anything else is not.
	for _, k := range []string{"other", "fenced", "timeout", "outcome-unknown", "activation"} {
		if n := h.c.count(k); n > 0 {
			return fmt.Errorf("%d invocations ended %s without any fault injected (%s)", n, k, h.c.summary())
		}
	}
	return h.requireSome("ok", 30)
}

func runPipeline(s *sim.Simulation) error {
	const (
		actors = 2
		load   = time.Second
	)
	f := s.Faults()
	// Slow commits let turns of one actor pile up behind them; failed
	// ones must take those turns down with them.
	f.MustInject(sim.Fault{Kind: simkv.FaultLatency, P: 0.3, Delay: 5 * time.Millisecond, Until: load})
	f.MustInject(sim.Fault{Kind: simkv.FaultCommitError, P: 0.05, Until: load})
	h := newHarness(s, true)
	cfg := actor.Config{MailboxSize: 32, IdleTimeout: time.Minute, MaxActive: 16, InvocationTimeout: 2 * time.Second}
	if _, err := h.localNode("n1", cfg); err != nil {
		return err
	}
	stop := make(chan struct{})
	wg := h.clients(8, actors, []string{"n1"}, "add", time.Millisecond, stop)
	time.Sleep(load)
	close(stop)
	if err := waitGroup(wg); err != nil {
		return err
	}
	if err := h.verify(actors, []string{"n1"}); err != nil {
		return err
	}
	for _, k := range []string{"ok", "commit-failed", "rolled-back"} {
		if err := h.requireSome(k, 1); err != nil {
			return err
		}
	}
	return nil
}

func runFlood(s *sim.Simulation) error {
	const (
		clients = 20
		load    = time.Second
	)
	h := newHarness(s, true)
	cfg := actor.Config{MailboxSize: 8, IdleTimeout: time.Minute, MaxActive: 16, InvocationTimeout: 5 * time.Second}
	if _, err := h.localNode("n1", cfg); err != nil {
		return err
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	// The flood: every client hammers one actor with slow invocations,
	// backing off briefly when refused.
	hot := ledgerID(0)
	for i := 0; i < clients; i++ {
		r := s.Rand(fmt.Sprintf("actor/flood%d", i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				op := h.c.newOp(i)
				_, err := h.runtime("n1").Invoke(context.Background(), hot, "slow-add", []byte(op))
				if h.c.file(hot, op, err) == failed {
					time.Sleep(r.Duration(time.Millisecond, 3*time.Millisecond))
				}
			}
		}()
	}
	// Meanwhile another actor must stay reachable.
	probe := ledgerID(1)
	probes := 0
	for start := time.Now(); time.Since(start) < load; probes++ {
		time.Sleep(50 * time.Millisecond)
		op := fmt.Sprintf("probe-%d", probes)
		_, err := h.runtime("n1").Invoke(context.Background(), probe, "add", []byte(op))
		if h.c.file(probe, op, err) != acked {
			err = fmt.Errorf("%s unreachable during the flood of %s: %v", probe, hot, err)
			s.Violation("backpressure-is-per-actor", err)
			close(stop)
			return err
		}
	}
	close(stop)
	if err := waitGroup(&wg); err != nil {
		return err
	}
	if err := h.verify(2, []string{"n1"}); err != nil {
		return err
	}
	for _, k := range []string{"other", "fenced", "timeout", "outcome-unknown", "activation", "too-many-active"} {
		if n := h.c.count(k); n > 0 {
			return fmt.Errorf("%d invocations ended %s: only backpressure is expected (%s)", n, k, h.c.summary())
		}
	}
	if err := h.requireSome("mailbox-full", 1); err != nil {
		return err
	}
	// Turns are serial: the accepted slow turns cannot take more time than
	// the run had.
	if ok, most := h.c.count("ok")-probes, int((load+drainWait)/slowAdd); ok > most {
		return fmt.Errorf("%d slow turns of %s finished in %s: turns overlapped", ok, slowAdd, load+drainWait)
	}
	return h.requireSome("ok", 30)
}
