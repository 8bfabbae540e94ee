package placement

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/kelpie-go/kelpie/sim"
)

// Faults of the simulated lease service.
var (
	// FaultLeaseStolen: an Acquire for an actor that another node holds is
	// granted anyway, with the next epoch; the holder is not told. It models
	// a holder whose lease lapsed at the service while it was paused. The
	// old holder's commits must then be fenced.
	FaultLeaseStolen = sim.DeclareFault("placement.lease_stolen",
		"Acquire of an actor held by another node succeeds with the next epoch; the old holder still believes it owns the actor")
	// FaultKeepAliveLost: one session renewal is lost. When renewals keep
	// failing for a TTL the session lapses, the node's Check starts failing,
	// and its actors become free for other nodes.
	FaultKeepAliveLost = sim.DeclareFault("placement.keepalive_lost",
		"a session renewal does not reach the lease service; enough of them in a row make the session lapse")
	// FaultUnavailable: Acquire fails with ErrUnavailable.
	FaultUnavailable = sim.DeclareFault("placement.unavailable",
		"Acquire fails with ErrUnavailable, as when the lease service cannot be reached")
)

// SimService is the simulated lease service of a cluster, shared by every
// node of a simulation. It models etcd: state lives outside the nodes, so it
// survives their crashes, and a crashed node's session lapses one TTL after
// its last renewal.
type SimService struct {
	s      *sim.Simulation
	faults *sim.Faults

	mu    sync.Mutex
	table *Table
}

// NewSim returns a lease service for s whose sessions live ttl.
func NewSim(s *sim.Simulation, ttl time.Duration) (*SimService, error) {
	t, err := NewTable(ttl)
	if err != nil {
		return nil, err
	}
	return &SimService{s: s, faults: s.Faults(), table: t}, nil
}

// Owner returns the lease that currently holds actor, if a live session
// holds it.
func (svc *SimService) Owner(actor string) (Lease, bool) {
	svc.mu.Lock()
	defer svc.mu.Unlock()
	return svc.table.Owner(actor, time.Now())
}

// Epoch is the actor's latest granted epoch.
func (svc *SimService) Epoch(actor string) uint64 {
	svc.mu.Lock()
	defer svc.mu.Unlock()
	return svc.table.Epoch(actor)
}

// SimClient is one node incarnation's view of the lease service. It renews
// its session from a goroutine of the node and believes its leases valid
// until one TTL after the last renewal that succeeded (measured from when
// the renewal was sent, so the belief never outlives the service's record).
type SimClient struct {
	svc  *SimService
	node *sim.Node

	mu         sync.Mutex
	session    uint64
	validUntil time.Time
	closed     bool
}

// Join opens a session for node's current incarnation and starts renewing it
// every TTL/3 until the incarnation stops.
func (svc *SimService) Join(n *sim.Node) (*SimClient, error) {
	now := time.Now()
	svc.mu.Lock()
	id, _, err := svc.table.Open(n.Name(), now)
	ttl := svc.table.TTL()
	svc.mu.Unlock()
	if err != nil {
		return nil, err
	}
	c := &SimClient{svc: svc, node: n, session: id, validUntil: now.Add(ttl)}
	n.Record("placement session %d open", id)
	n.OnStop(func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
	})
	if err := n.Go(func(ctx context.Context) { c.keepAlive(ctx, ttl) }); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *SimClient) keepAlive(ctx context.Context, ttl time.Duration) {
	t := time.NewTicker(ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.renew(ttl)
	}
}

// renew sends one renewal; when the session is gone it opens a new one, so a
// node whose session lapsed can activate actors again (with new epochs).
func (c *SimClient) renew(ttl time.Duration) {
	sent := time.Now()
	c.mu.Lock()
	id := c.session
	c.mu.Unlock()
	if c.svc.faults.Fires(FaultKeepAliveLost, c.node.Name()) {
		return
	}
	c.svc.mu.Lock()
	_, err := c.svc.table.KeepAlive(id, sent)
	if err != nil {
		id, _, err = c.svc.table.Open(c.node.Name(), sent)
	}
	c.svc.mu.Unlock()
	if err != nil {
		c.node.Record("placement renew failed: %v", err)
		return
	}
	c.mu.Lock()
	if c.session != id {
		c.node.Record("placement session %d open (the previous one lapsed)", id)
	}
	c.session = id
	c.validUntil = sent.Add(ttl)
	c.mu.Unlock()
}

// Session is the client's current session id.
func (c *SimClient) Session() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.session
}

// Acquire asks the service for actor.
func (c *SimClient) Acquire(ctx context.Context, actor string) (Lease, error) {
	if err := ctx.Err(); err != nil {
		return Lease{}, err
	}
	c.mu.Lock()
	id, closed := c.session, c.closed
	c.mu.Unlock()
	if closed {
		return Lease{}, fmt.Errorf("acquire %s: %w: node %s stopped", actor, ErrLeaseLost, c.node.Name())
	}
	name := c.node.Name()
	if c.svc.faults.Fires(FaultUnavailable, name) {
		return Lease{}, fmt.Errorf("acquire %s: %w (simulated)", actor, ErrUnavailable)
	}
	now := time.Now()
	c.svc.mu.Lock()
	defer c.svc.mu.Unlock()
	steal := false
	if cur, ok := c.svc.table.Owner(actor, now); ok && cur.Session != id {
		steal = c.svc.faults.Fires(FaultLeaseStolen, name)
	}
	l, err := c.svc.table.Acquire(id, actor, now, steal)
	if err != nil {
		return Lease{}, err
	}
	c.node.Record("placement grant %s epoch %d", actor, l.Epoch)
	return l, nil
}

// Check reports whether the node still believes it holds l: the lease is of
// its current session and the session has not lapsed by its own account.
func (c *SimClient) Check(l Lease) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return fmt.Errorf("%s: %w: node stopped", l, ErrLeaseLost)
	}
	if l.Session != c.session {
		return fmt.Errorf("%s: %w: session %d lapsed", l, ErrLeaseLost, l.Session)
	}
	if !time.Now().Before(c.validUntil) {
		return fmt.Errorf("%s: %w: session %d not renewed since %s", l, ErrLeaseLost, l.Session, c.validUntil)
	}
	return nil
}

// Release gives l back to the service.
func (c *SimClient) Release(ctx context.Context, l Lease) error {
	c.svc.mu.Lock()
	defer c.svc.mu.Unlock()
	return c.svc.table.Release(l)
}
