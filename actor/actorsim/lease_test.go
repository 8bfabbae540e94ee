package actorsim

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kelpie-go/kelpie/actor"
	"github.com/kelpie-go/kelpie/actor/placement"
	"github.com/kelpie-go/kelpie/kv/simkv"
	"github.com/kelpie-go/kelpie/sim"
)

// The runtime's reaction to each placement fault, on the real runtime:
// an unavailable lease service fails the activation (and nothing runs); a
// lapsed session makes the node drop its activation before the next turn,
// after which another node takes the actor over with its state.
func TestSimRuntimeReactsToPlacementFaults(t *testing.T) {
	sim.Run(t, func(s *sim.Simulation) error {
		const ttl = time.Second
		f := s.Faults()
		f.MustInject(sim.Fault{Kind: placement.FaultUnavailable, P: 1, Max: 1})
		// n1's renewals are all lost from 100ms to 10s.
		f.MustInject(sim.Fault{Kind: placement.FaultKeepAliveLost, P: 1, Node: "n1", From: 100 * time.Millisecond, Until: 10 * time.Second})
		h := newHarness(s, true)
		svc, err := placement.NewSim(s, ttl)
		if err != nil {
			return err
		}
		if _, err := s.AddNode("store", func(n *sim.Node) error {
			db, err := simkv.OpenNode(n)
			h.mu.Lock()
			h.dbs["store"] = db
			h.mu.Unlock()
			return err
		}); err != nil {
			return err
		}
		db := h.db("store")
		cfg := actor.Config{IdleTimeout: time.Hour, InvocationTimeout: time.Second}
		for _, name := range []string{"n1", "n2"} {
			if _, err := s.AddNode(name, func(n *sim.Node) error {
				pl, err := svc.Join(n)
				if err != nil {
					return err
				}
				return h.start(n, db, pl, cfg)
			}); err != nil {
				return err
			}
		}
		ctx := context.Background()
		id := ledgerID(0)
		n1 := h.runtime("n1")

		// placement.unavailable: the activation fails, definitely.
		_, err = n1.Invoke(ctx, id, "add", []byte("u1"))
		if h.c.file(id, "u1", err) != failed || !errors.Is(err, actor.ErrActivation) || !errors.Is(err, placement.ErrUnavailable) {
			return fmt.Errorf("with the lease service unavailable: %v, want ErrActivation wrapping placement.ErrUnavailable", err)
		}
		if _, err := n1.Invoke(ctx, id, "add", []byte("u2")); h.c.file(id, "u2", err) != acked {
			return fmt.Errorf("once the service is back: %v", err)
		}

		// placement.keepalive_lost: n1 stops renewing; one TTL later it
		// no longer trusts its lease and drops the activation.
		time.Sleep(ttl + 200*time.Millisecond)
		_, err = n1.Invoke(ctx, id, "add", []byte("k1"))
		if h.c.file(id, "k1", err) != failed || !errors.Is(err, actor.ErrLeaseLost) {
			return fmt.Errorf("after the session lapsed: %v, want ErrLeaseLost", err)
		}
		if len(n1.Active()) != 0 {
			return errors.New("n1 kept the activation after its lease was lost")
		}
		// n2 takes over with the next epoch and the state n1 committed.
		out, err := h.runtime("n2").Invoke(ctx, id, "add", []byte("k2"))
		if h.c.file(id, "k2", err) != acked || string(out) != "2" {
			return fmt.Errorf("n2 taking over: %q %v, want count 2", out, err)
		}
		if o, ok := svc.Owner(id.String()); !ok || o.Node != "n2" || o.Epoch != 2 {
			return fmt.Errorf("owner %+v %v, want n2 at epoch 2", o, ok)
		}
		return h.verify(1, []string{"n2"})
	})
}

// A caller that gives up while its invocation waits is told it will not
// run; while its handler runs, that it is rolled back; while its commit is
// in flight, that the outcome is unknown. The ledger checks each: the first
// two never take effect.
func TestSimCallerGivingUp(t *testing.T) {
	sim.Run(t, func(s *sim.Simulation) error {
		// Slow store I/O (a handler's read, the commit), so a caller can give
		// up during each step.
		s.Faults().MustInject(sim.Fault{Kind: simkv.FaultLatency, P: 1, Delay: 50 * time.Millisecond})
		h := newHarness(s, true)
		if _, err := h.localNode("n1", actor.Config{}); err != nil {
			return err
		}
		rt := h.runtime("n1")
		id := ledgerID(0)
		// Warm up: activate.
		if _, err := rt.Invoke(context.Background(), id, "add", []byte("w")); h.c.file(id, "w", err) != acked {
			return fmt.Errorf("warm-up: %v", err)
		}
		// Two invocations: the first is in its handler (reading, slowly)
		// when both callers give up; the second is still queued.
		ctx, cancel := context.WithCancel(context.Background())
		errs := make(chan error, 2)
		go func() { _, err := rt.Invoke(ctx, id, "slow-add", []byte("r")); errs <- err }()
		time.Sleep(time.Millisecond)
		go func() { _, err := rt.Invoke(ctx, id, "add", []byte("q")); errs <- err }()
		time.Sleep(10 * time.Millisecond)
		cancel()
		e1, e2 := <-errs, <-errs
		var running, queued error
		for _, e := range []error{e1, e2} {
			if strings.Contains(fmt.Sprint(e), "while the handler ran") {
				running = e
			} else {
				queued = e
			}
		}
		if !errors.Is(running, context.Canceled) || errors.Is(running, actor.ErrOutcomeUnknown) || !errors.Is(queued, context.Canceled) || errors.Is(queued, actor.ErrOutcomeUnknown) {
			return fmt.Errorf("errors %v and %v: want context.Canceled for the running one (rolled back) and the queued one (will not run)", e1, e2)
		}
		h.c.file(id, "r", running)
		h.c.file(id, "q", queued)
		time.Sleep(time.Second) // let the running handler finish and be rolled back

		// A third gives up after its handler is done (5ms of work and a 50ms
		// read), while its commit is in the store.
		ctx, cancel = context.WithCancel(context.Background())
		go func() { _, err := rt.Invoke(ctx, id, "slow-add", []byte("c")); errs <- err }()
		time.Sleep(100 * time.Millisecond)
		cancel()
		committing := <-errs
		if !errors.Is(committing, actor.ErrOutcomeUnknown) {
			return fmt.Errorf("gave up during the commit: %v, want ErrOutcomeUnknown", committing)
		}
		h.c.file(id, "c", committing)
		time.Sleep(time.Second) // let the commit finish
		return h.verify(1, []string{"n1"})
	})
}
