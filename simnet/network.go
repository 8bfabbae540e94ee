package simnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/kelpie-go/kelpie/sim"
)

// Limits of one network. Every queue is bounded by one of these.
const (
	// ConnBufferBytes bounds the bytes of one direction of one connection
	// that are in flight or delivered but unread: the window plus the
	// receive buffer of a TCP connection. A writer past it blocks.
	ConnBufferBytes = 256 << 10

	// ListenBacklog bounds the connections dialled to a listener and not yet
	// accepted; a dial past it is refused.
	ListenBacklog = 128

	// MaxConns bounds the open connections of one network.
	MaxConns = 1 << 16

	// MaxListeners bounds the open listeners of one network.
	MaxListeners = 1 << 12

	// DialTimeout bounds how long a dial waits for a partitioned link to
	// heal (TCP's SYN retries) when the caller's context allows longer.
	DialTimeout = 10 * time.Second

	// MaxLinkDelay bounds a link's configured latency and jitter.
	MaxLinkDelay = time.Minute
)

// Default link: a fast LAN.
const (
	DefaultLatency = 500 * time.Microsecond
	DefaultJitter  = 500 * time.Microsecond
)

// Link is the timing of one direction between two nodes.
type Link struct {
	// Latency is the one-way delay of every write.
	Latency time.Duration
	// Jitter is the most extra delay a write draws, uniformly in
	// [0, Jitter], from the link's own stream. Bytes stay in order.
	Jitter time.Duration
}

func (l Link) validate() error {
	if l.Latency < 0 || l.Latency > MaxLinkDelay {
		return fmt.Errorf("link latency %s is outside [0, %s]", l.Latency, MaxLinkDelay)
	}
	if l.Jitter < 0 || l.Jitter > MaxLinkDelay {
		return fmt.Errorf("link jitter %s is outside [0, %s]", l.Jitter, MaxLinkDelay)
	}
	return nil
}

// Network is a simulated network among the nodes of one simulation. All of
// its state is guarded by one mutex; blocked operations wait on channels
// outside it.
type Network struct {
	sim    *sim.Simulation
	faults *sim.Faults

	mu          sync.Mutex
	defaultLink Link
	links       map[linkKey]*link
	hosts       map[string]*host
	listeners   map[Addr]*Listener
	conns       map[uint64]*connPair
	nextConn    uint64
	linkChanged chan struct{} // closed and replaced when a partition starts or heals
}

type linkKey struct{ from, to string }

func (k linkKey) String() string { return k.from + "->" + k.to }

// link is the state of one direction between two nodes.
type link struct {
	cfg        Link
	cfgSet     bool        // cfg was set for this link; otherwise the default applies
	cut        bool        // explicitly partitioned
	faultUntil time.Time   // partitioned by net.partition until then
	stream     *sim.Stream // latency and jitter draws
}

// host is the network's record of one node.
type host struct {
	hookInc  int // incarnation whose stop hook is registered
	deadInc  int // highest incarnation whose resources were torn down
	nextPort int // next ephemeral port to try
}

// New returns an empty network bound to s, with DefaultLatency and
// DefaultJitter on every link.
func New(s *sim.Simulation) *Network {
	return &Network{
		sim:         s,
		faults:      s.Faults(),
		defaultLink: Link{Latency: DefaultLatency, Jitter: DefaultJitter},
		links:       map[linkKey]*link{},
		hosts:       map[string]*host{},
		listeners:   map[Addr]*Listener{},
		conns:       map[uint64]*connPair{},
		linkChanged: make(chan struct{}),
	}
}

// Sim is the simulation the network belongs to.
func (nw *Network) Sim() *sim.Simulation { return nw.sim }

// SetDefaultLink sets the timing of every link that SetLink has not set.
func (nw *Network) SetDefaultLink(l Link) error {
	if err := l.validate(); err != nil {
		return fmt.Errorf("default link: %w", err)
	}
	nw.mu.Lock()
	defer nw.mu.Unlock()
	nw.defaultLink = l
	return nil
}

// SetLink sets the timing of the direction from -> to.
func (nw *Network) SetLink(from, to string, l Link) error {
	if err := nw.checkNodes(from, to, true); err != nil {
		return fmt.Errorf("set link: %w", err)
	}
	if err := l.validate(); err != nil {
		return fmt.Errorf("link %s->%s: %w", from, to, err)
	}
	nw.mu.Lock()
	defer nw.mu.Unlock()
	lk := nw.linkLocked(from, to)
	lk.cfg, lk.cfgSet = l, true
	return nil
}

// checkNodes reports an error unless a and b name nodes of the simulation
// (and, unless same is allowed, different ones).
func (nw *Network) checkNodes(a, b string, same bool) error {
	for _, n := range []string{a, b} {
		if n == "" {
			return errors.New("empty node name")
		}
		if nw.sim.Node(n) == nil {
			return fmt.Errorf("node %q: no such node in simulation %s", n, nw.sim.Name())
		}
	}
	if a == b && !same {
		return fmt.Errorf("nodes %q and %q: a node cannot be partitioned from itself", a, b)
	}
	return nil
}

func (nw *Network) linkLocked(from, to string) *link {
	k := linkKey{from, to}
	lk, ok := nw.links[k]
	if !ok {
		lk = &link{stream: nw.sim.Rand("simnet/link/" + k.String())}
		nw.links[k] = lk
	}
	return lk
}

// delayLocked draws the delivery delay of one write on from -> to.
func (nw *Network) delayLocked(from, to string) time.Duration {
	lk := nw.linkLocked(from, to)
	cfg := nw.defaultLink
	if lk.cfgSet {
		cfg = lk.cfg
	}
	if cfg.Jitter == 0 {
		return cfg.Latency
	}
	return lk.stream.Duration(cfg.Latency, cfg.Latency+cfg.Jitter)
}

// blockedLocked reports whether from -> to delivers nothing at now, and
// until when a fault partition holds it (zero if none does).
func (nw *Network) blockedLocked(from, to string, now time.Time) (blocked bool, until time.Time) {
	lk, ok := nw.links[linkKey{from, to}]
	if !ok {
		return false, time.Time{}
	}
	if now.Before(lk.faultUntil) {
		return true, lk.faultUntil
	}
	return lk.cut, time.Time{}
}

func (nw *Network) linksChangedLocked() {
	close(nw.linkChanged)
	nw.linkChanged = make(chan struct{})
}

// Partition cuts the links between a and b in both directions until Heal.
func (nw *Network) Partition(a, b string) error {
	if err := nw.checkNodes(a, b, false); err != nil {
		return fmt.Errorf("partition: %w", err)
	}
	nw.mu.Lock()
	defer nw.mu.Unlock()
	nw.linkLocked(a, b).cut = true
	nw.linkLocked(b, a).cut = true
	nw.sim.Record("", "net partition %s<->%s", a, b)
	nw.linksChangedLocked()
	return nil
}

// PartitionOneWay cuts the link from -> to until Heal: from's bytes stop
// reaching to, while to's still reach from.
func (nw *Network) PartitionOneWay(from, to string) error {
	if err := nw.checkNodes(from, to, false); err != nil {
		return fmt.Errorf("partition one way: %w", err)
	}
	nw.mu.Lock()
	defer nw.mu.Unlock()
	nw.linkLocked(from, to).cut = true
	nw.sim.Record("", "net partition %s->%s", from, to)
	nw.linksChangedLocked()
	return nil
}

// Heal restores both directions between a and b, ending explicit and
// injected partitions alike. Queued bytes are then delivered in order.
func (nw *Network) Heal(a, b string) error {
	if err := nw.checkNodes(a, b, false); err != nil {
		return fmt.Errorf("heal: %w", err)
	}
	nw.mu.Lock()
	defer nw.mu.Unlock()
	for _, k := range []linkKey{{a, b}, {b, a}} {
		lk := nw.linkLocked(k.from, k.to)
		lk.cut, lk.faultUntil = false, time.Time{}
	}
	nw.sim.Record("", "net heal %s<->%s", a, b)
	nw.linksChangedLocked()
	return nil
}

// HealAll ends every partition.
func (nw *Network) HealAll() {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	healed := 0
	for _, lk := range nw.links {
		if lk.cut || !lk.faultUntil.IsZero() {
			healed++
		}
		lk.cut, lk.faultUntil = false, time.Time{}
	}
	nw.sim.Record("", "net heal all (%d links were cut)", healed)
	nw.linksChangedLocked()
}

// Partitioned reports whether the link from -> to delivers nothing now.
func (nw *Network) Partitioned(from, to string) bool {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	b, _ := nw.blockedLocked(from, to, time.Now())
	return b
}

// faultPartitionLocked cuts a <-> b for d because net.partition fired at
// node, and schedules the heal.
func (nw *Network) faultPartitionLocked(node, a, b string, d time.Duration) {
	until := time.Now().Add(d)
	for _, k := range []linkKey{{a, b}, {b, a}} {
		lk := nw.linkLocked(k.from, k.to)
		if until.After(lk.faultUntil) {
			lk.faultUntil = until
		}
	}
	nw.sim.Record(node, "net partition %s<->%s for %s (fault)", a, b, d)
	nw.linksChangedLocked()
	time.AfterFunc(d, func() {
		nw.mu.Lock()
		defer nw.mu.Unlock()
		now := time.Now()
		healed := false
		for _, k := range []linkKey{{a, b}, {b, a}} {
			lk := nw.linkLocked(k.from, k.to)
			// A later fault may have extended the cut, and Heal may
			// already have ended it; only the last timer heals.
			if !lk.faultUntil.IsZero() && !now.Before(lk.faultUntil) {
				lk.faultUntil = time.Time{}
				healed = true
			}
		}
		if healed {
			nw.sim.Record("", "net heal %s<->%s (fault ended)", a, b)
			nw.linksChangedLocked()
		}
	})
}

// attachLocked checks that node n is up and makes sure the network hears
// when its current incarnation stops. It returns that incarnation.
func (nw *Network) attachLocked(n *sim.Node) (int, error) {
	if n == nil {
		return 0, errors.New("no node given")
	}
	if n.Sim() != nw.sim {
		return 0, fmt.Errorf("node %s belongs to simulation %s, not %s", n.Name(), n.Sim().Name(), nw.sim.Name())
	}
	name := n.Name()
	h := nw.hostLocked(name)
	inc := n.Incarnation()
	if !n.Up() || inc <= h.deadInc {
		return 0, fmt.Errorf("node %s: %w", name, sim.ErrNodeDown)
	}
	if h.hookInc != inc {
		h.hookInc = inc
		n.OnStop(func() { nw.nodeStopped(name, inc) })
		// The node may have begun stopping between the check above and
		// OnStop, and then the hook went to a later incarnation's list.
		// Node.stop marks the node down before it collects the hooks, so
		// this second look tells.
		if !n.Up() || n.Incarnation() != inc {
			nw.teardownLocked(name, inc)
			return 0, fmt.Errorf("node %s: %w", name, sim.ErrNodeDown)
		}
	}
	return inc, nil
}

func (nw *Network) hostLocked(name string) *host {
	h, ok := nw.hosts[name]
	if !ok {
		h = &host{nextPort: firstEphemeralPort}
		nw.hosts[name] = h
	}
	return h
}

// ephemeralPortLocked hands out the node's next ephemeral port, skipping
// ports a listener holds.
func (nw *Network) ephemeralPortLocked(node string) (int, error) {
	h := nw.hostLocked(node)
	for range lastEphemeralPort - firstEphemeralPort + 1 {
		p := h.nextPort
		h.nextPort++
		if h.nextPort > lastEphemeralPort {
			h.nextPort = firstEphemeralPort
		}
		if _, taken := nw.listeners[Addr{node, p}]; !taken {
			return p, nil
		}
	}
	return 0, fmt.Errorf("node %s: every ephemeral port in [%d, %d] has a listener", node, firstEphemeralPort, lastEphemeralPort)
}

// nodeStopped is the stop hook of incarnation inc of node.
func (nw *Network) nodeStopped(node string, inc int) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	nw.teardownLocked(node, inc)
}

// teardownLocked closes the listeners and resets the connections of node's
// incarnations up to inc, in address and id order so the trace is stable.
func (nw *Network) teardownLocked(node string, inc int) {
	h := nw.hostLocked(node)
	if inc > h.deadInc {
		h.deadInc = inc
	}
	var ls []*Listener
	for _, l := range nw.listeners {
		if l.addr.Node == node && l.inc <= inc {
			ls = append(ls, l)
		}
	}
	sort.Slice(ls, func(i, j int) bool { return ls[i].addr.Port < ls[j].addr.Port })
	for _, l := range ls {
		nw.closeListenerLocked(l, "node stopped")
	}
	var ps []*connPair
	for _, p := range nw.conns {
		for _, c := range p.ends {
			if c.node == node && c.inc <= inc && !c.closed {
				ps = append(ps, p)
				break
			}
		}
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].id < ps[j].id })
	for _, p := range ps {
		nw.resetLocked(p, node, "node stopped")
		// The stopped node's own ends are closed, not reset: whatever of
		// its code still runs finds its sockets gone.
		for _, c := range p.ends {
			if c.node == node && c.inc <= inc {
				c.closed = true
			}
		}
	}
}

// Listen opens a listener for node at addr: "node:port", ":port", or port 0
// for an ephemeral port. The listener closes when the node stops.
func (nw *Network) Listen(n *sim.Node, addr string) (*Listener, error) {
	a, err := parseAddr(addr, true, true)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	nw.mu.Lock()
	defer nw.mu.Unlock()
	inc, err := nw.attachLocked(n)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	if a.Node == "" {
		a.Node = n.Name()
	}
	if a.Node != n.Name() {
		return nil, fmt.Errorf("listen %s: node %s can listen only on its own name", addr, n.Name())
	}
	if len(nw.listeners) >= MaxListeners {
		return nil, fmt.Errorf("listen %s: the network already has %d listeners, the limit", addr, MaxListeners)
	}
	if a.Port == 0 {
		if a.Port, err = nw.ephemeralPortLocked(a.Node); err != nil {
			return nil, fmt.Errorf("listen %s: %w", addr, err)
		}
	}
	if _, dup := nw.listeners[a]; dup {
		return nil, &net.OpError{Op: "listen", Net: networkName, Addr: a, Err: syscall.EADDRINUSE}
	}
	l := &Listener{
		nw:      nw,
		node:    n.Name(),
		inc:     inc,
		addr:    a,
		backlog: make(chan *Conn, ListenBacklog),
		done:    make(chan struct{}),
	}
	nw.listeners[a] = l
	nw.sim.Record(l.node, "net listen %s", a)
	return l, nil
}

// Dial connects node from to addr ("node:port"). It fails at once if from is
// down, if no node has that name (a *net.DNSError), or if net.dial_refused
// fires; it waits for a partition between the two to heal, until ctx or
// DialTimeout ends; it takes one round trip; and it is refused
// (ECONNREFUSED) when nothing listens at addr or the listener's backlog is
// full.
func (nw *Network) Dial(ctx context.Context, from *sim.Node, addr string) (*Conn, error) {
	to, err := parseAddr(addr, false, false)
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	nw.mu.Lock()
	inc, err := nw.attachLocked(from)
	if err != nil {
		nw.mu.Unlock()
		return nil, &net.OpError{Op: "dial", Net: networkName, Addr: to, Err: err}
	}
	src := from.Name()
	if nw.sim.Node(to.Node) == nil {
		nw.mu.Unlock()
		return nil, &net.OpError{Op: "dial", Net: networkName, Addr: to,
			Err: &net.DNSError{Err: "no such host", Name: to.Node, IsNotFound: true}}
	}
	// fail records a failed dial and returns its error; note says why, when
	// the error alone does not.
	fail := func(err error, note string) (*Conn, error) {
		if note != "" {
			err = &noteError{err: err, note: note}
		}
		nw.sim.Record(src, "net dial %s->%s failed: %v", src, to, err)
		return nil, &net.OpError{Op: "dial", Net: networkName, Addr: to, Err: err}
	}
	if nw.faults.Fires(FaultDialRefused, src) {
		defer nw.mu.Unlock()
		return fail(syscall.ECONNREFUSED, "fault net.dial_refused")
	}
	if f, ok := nw.faults.Fire(FaultPartition, src); ok && to.Node != src {
		nw.faultPartitionLocked(src, src, to.Node, delayOr(f, DefaultFaultPartition))
	}
	nw.mu.Unlock()

	// The handshake needs both directions: wait out a partition.
	limit, ctxLimit := time.Now().Add(DialTimeout), false
	if d, ok := ctx.Deadline(); ok && d.Before(limit) {
		limit, ctxLimit = d, true
	}
	for {
		nw.mu.Lock()
		now := time.Now()
		b1, u1 := nw.blockedLocked(src, to.Node, now)
		b2, u2 := nw.blockedLocked(to.Node, src, now)
		changed := nw.linkChanged
		if !b1 && !b2 {
			nw.mu.Unlock()
			break
		}
		if !now.Before(limit) {
			defer nw.mu.Unlock()
			if ctxLimit {
				// The context's own timer may not have fired yet at this
				// instant; its deadline has passed all the same.
				return fail(context.DeadlineExceeded, "")
			}
			return fail(syscall.ETIMEDOUT, "partitioned")
		}
		nw.mu.Unlock()
		wake := limit
		for _, u := range []time.Time{u1, u2} {
			if !u.IsZero() && u.Before(wake) {
				wake = u
			}
		}
		if err := waitUntil(ctx, changed, wake); err != nil {
			nw.mu.Lock()
			defer nw.mu.Unlock()
			return fail(err, "")
		}
	}

	nw.mu.Lock()
	rtt := nw.delayLocked(src, to.Node) + nw.delayLocked(to.Node, src)
	nw.mu.Unlock()
	if err := waitUntil(ctx, nil, time.Now().Add(rtt)); err != nil {
		nw.mu.Lock()
		defer nw.mu.Unlock()
		return fail(err, "")
	}

	nw.mu.Lock()
	defer nw.mu.Unlock()
	if inc2, err := nw.attachLocked(from); err != nil || inc2 != inc {
		return fail(fmt.Errorf("node %s: %w", src, sim.ErrNodeDown), "")
	}
	l := nw.listeners[to]
	if l == nil || l.closed {
		return fail(syscall.ECONNREFUSED, "")
	}
	if len(l.backlog) >= cap(l.backlog) {
		return fail(syscall.ECONNREFUSED, fmt.Sprintf("backlog of %d full", ListenBacklog))
	}
	if len(nw.conns) >= MaxConns {
		return fail(fmt.Errorf("the network already has %d connections, the limit", MaxConns), "")
	}
	port, err := nw.ephemeralPortLocked(src)
	if err != nil {
		return fail(err, "")
	}
	client, server := nw.newPairLocked(Addr{src, port}, inc, to, l.inc)
	l.backlog <- server // cannot block: checked above under the lock
	nw.sim.Record(src, "net dial conn=%d %s->%s", client.pair.id, client.local, to)
	return client, nil
}

// noteError adds why to an error callers test with errors.Is, keeping its
// Timeout and Temporary answers.
type noteError struct {
	err  error
	note string
}

func (e *noteError) Error() string { return e.err.Error() + " (" + e.note + ")" }
func (e *noteError) Unwrap() error { return e.err }

// Timeout reports whether the underlying error is a timeout, so that
// net.OpError.Timeout sees through the note.
func (e *noteError) Timeout() bool {
	t, ok := e.err.(interface{ Timeout() bool })
	return ok && t.Timeout()
}

// Temporary is the underlying error's answer, for the same reason.
func (e *noteError) Temporary() bool {
	t, ok := e.err.(interface{ Temporary() bool })
	return ok && t.Temporary()
}

// waitUntil blocks until ch is closed (nil: never), wake passes, or ctx is
// done; only the last is an error.
func waitUntil(ctx context.Context, ch <-chan struct{}, wake time.Time) error {
	t := time.NewTimer(time.Until(wake))
	defer t.Stop()
	select {
	case <-ch:
		return nil
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Dialer returns a dial function for node from, shaped for
// http.Transport.DialContext.
func (nw *Network) Dialer(from *sim.Node) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return nw.Host(from).DialContext
}

// Host is one node's view of the network, for code that is handed a way to
// listen and dial rather than a whole network.
type Host struct {
	nw   *Network
	node *sim.Node
}

// Host returns node n's view of the network.
func (nw *Network) Host(n *sim.Node) Host { return Host{nw: nw, node: n} }

// Listen is Network.Listen for this host; network is "tcp" or "simnet".
func (h Host) Listen(network, addr string) (net.Listener, error) {
	if err := checkNetwork(network); err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	l, err := h.nw.Listen(h.node, addr)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// DialContext is Network.Dial for this host; network is "tcp" or "simnet".
func (h Host) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if err := checkNetwork(network); err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	c, err := h.nw.Dial(ctx, h.node, addr)
	if err != nil {
		return nil, err
	}
	return c, nil
}
