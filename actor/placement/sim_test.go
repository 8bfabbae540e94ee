package placement

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/kelpie-go/kelpie/sim"
)

// ttl is the tests' session TTL, short so that they run quickly natively.
const ttl = 500 * time.Millisecond

// twoNodes starts n1 and n2 joined to a service with ttl.
func twoNodes(s *sim.Simulation, ttl time.Duration) (*SimService, map[string]*SimClient, error) {
	svc, err := NewSim(s, ttl)
	if err != nil {
		return nil, nil, err
	}
	cs := map[string]*SimClient{}
	for _, name := range []string{"n1", "n2"} {
		if _, err := s.AddNode(name, func(n *sim.Node) error {
			c, err := svc.Join(n)
			cs[n.Name()] = c
			return err
		}); err != nil {
			return nil, nil, err
		}
	}
	return svc, cs, nil
}

func TestSimLeasesSurviveRenewalAndMoveAfterACrash(t *testing.T) {
	sim.Run(t, func(s *sim.Simulation) error {
		svc, cs, err := twoNodes(s, ttl)
		if err != nil {
			return err
		}
		ctx := context.Background()
		l, err := cs["n1"].Acquire(ctx, "a:x")
		if err != nil {
			return err
		}
		// Renewals keep it for far longer than one TTL.
		time.Sleep(4 * ttl)
		if err := cs["n1"].Check(l); err != nil {
			return fmt.Errorf("after 4 TTLs of renewals: %w", err)
		}
		if _, err := cs["n2"].Acquire(ctx, "a:x"); !errors.Is(err, ErrNotOwner) {
			return fmt.Errorf("n2 while n1 renews: %v, want ErrNotOwner", err)
		}
		// n1 crashes: its session lapses one TTL later, and n2 takes over.
		if err := s.Node("n1").Kill(); err != nil {
			return err
		}
		if _, err := cs["n2"].Acquire(ctx, "a:x"); !errors.Is(err, ErrNotOwner) {
			return fmt.Errorf("n2 right after the crash: %v, want ErrNotOwner until the TTL passes", err)
		}
		time.Sleep(ttl)
		l2, err := cs["n2"].Acquire(ctx, "a:x")
		if err != nil || l2.Epoch != 2 {
			return fmt.Errorf("n2 after the TTL: %+v %v, want epoch 2", l2, err)
		}
		if o, ok := svc.Owner("a:x"); !ok || o.Node != "n2" {
			return fmt.Errorf("owner %+v %v", o, ok)
		}
		return nil
	})
}

// The fault tests: each fault fires and has its effect.

func TestSimFaultLeaseStolen(t *testing.T) {
	sim.Run(t, func(s *sim.Simulation) error {
		s.Faults().MustInject(sim.Fault{Kind: FaultLeaseStolen, P: 1})
		_, cs, err := twoNodes(s, ttl)
		if err != nil {
			return err
		}
		ctx := context.Background()
		l1, err := cs["n1"].Acquire(ctx, "a:x")
		if err != nil {
			return err
		}
		l2, err := cs["n2"].Acquire(ctx, "a:x")
		if err != nil || l2.Epoch != l1.Epoch+1 {
			return fmt.Errorf("steal: %+v %v, want epoch %d", l2, err, l1.Epoch+1)
		}
		// The robbed holder does not know: that is what fencing is for.
		if err := cs["n1"].Check(l1); err != nil {
			return fmt.Errorf("the robbed holder's check: %v, want nil (it cannot know)", err)
		}
		if err := cs["n1"].Release(ctx, l1); !errors.Is(err, ErrLeaseLost) {
			return fmt.Errorf("the robbed holder's release: %v, want ErrLeaseLost", err)
		}
		return nil
	})
}

func TestSimFaultKeepAliveLost(t *testing.T) {
	sim.Run(t, func(s *sim.Simulation) error {
		s.Faults().MustInject(sim.Fault{Kind: FaultKeepAliveLost, P: 1, Node: "n1", Until: 5 * ttl})
		svc, cs, err := twoNodes(s, ttl)
		if err != nil {
			return err
		}
		ctx := context.Background()
		l, err := cs["n1"].Acquire(ctx, "a:x")
		if err != nil {
			return err
		}
		time.Sleep(ttl + ttl/10)
		if err := cs["n1"].Check(l); !errors.Is(err, ErrLeaseLost) {
			return fmt.Errorf("check after a TTL of lost renewals: %v, want ErrLeaseLost", err)
		}
		if _, ok := svc.Owner("a:x"); ok {
			return errors.New("the service still has an owner after the session lapsed")
		}
		l2, err := cs["n2"].Acquire(ctx, "a:x")
		if err != nil || l2.Epoch != 2 {
			return fmt.Errorf("n2 after n1 lapsed: %+v %v", l2, err)
		}
		// Once renewals get through again, n1 gets a new session and can
		// acquire other actors.
		time.Sleep(5 * ttl)
		old := l.Session
		if cs["n1"].Session() == old {
			return errors.New("n1 did not open a new session after its old one lapsed")
		}
		if _, err := cs["n1"].Acquire(ctx, "a:y"); err != nil {
			return fmt.Errorf("n1 with its new session: %w", err)
		}
		return nil
	})
}

func TestSimFaultUnavailable(t *testing.T) {
	sim.Run(t, func(s *sim.Simulation) error {
		s.Faults().MustInject(sim.Fault{Kind: FaultUnavailable, P: 1, Max: 1})
		_, cs, err := twoNodes(s, ttl)
		if err != nil {
			return err
		}
		ctx := context.Background()
		if _, err := cs["n1"].Acquire(ctx, "a:x"); !errors.Is(err, ErrUnavailable) {
			return fmt.Errorf("acquire: %v, want ErrUnavailable", err)
		}
		if _, err := cs["n1"].Acquire(ctx, "a:x"); err != nil {
			return fmt.Errorf("acquire once the fault is spent: %w", err)
		}
		return nil
	})
}
