package simnet

import (
	"bytes"
	"context"
	"fmt"
	"hash/fnv"
	"io"
	"log"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/kelpie-go/kelpie/sim"
)

// Scenarios are simnet's simulations: a small mail service (every node
// sends numbered messages to every other node over HTTP and retries until
// they are acknowledged; receivers keep a durable log and drop duplicates)
// run under increasingly hostile networks. TestSim* runs them, and so does
// kelpie sim.
var Scenarios = []sim.Scenario{
	{
		Name: "simnet-ping",
		Doc:  "3 nodes exchange HTTP messages over seeded latency; every message is delivered exactly once, intact",
		Run: func(s *sim.Simulation) error {
			return runMail(s, mailConfig{nodes: 3, perPair: 8, gap: 20 * time.Millisecond})
		},
	},
	{
		Name: "simnet-partition",
		Doc:  "4 nodes exchange HTTP messages through symmetric and one-way partitions and heals; acknowledged messages are never lost or duplicated",
		Run: func(s *sim.Simulation) error {
			return runMail(s, mailConfig{nodes: 4, perPair: 12, gap: 400 * time.Millisecond, chaos: partitionChaos})
		},
	},
	{
		Name: "simnet-chaos",
		Doc:  "5 nodes exchange HTTP messages under resets, stalls, latency spikes, refused dials, injected partitions and node kills; exactly-once delivery holds and all converge",
		Run: func(s *sim.Simulation) error {
			return runMail(s, mailConfig{nodes: 5, perPair: 10, gap: 500 * time.Millisecond, faults: chaosFaults, chaos: killChaos})
		},
	},
}

// Limits and timing of the mail service.
const (
	mailPort           = 80
	mailMaxPayload     = 6000                   // bytes; a message spans several segments
	mailRequestTimeout = time.Second            // one HTTP attempt
	mailRetryMin       = 50 * time.Millisecond  // backoff between attempts, drawn in
	mailRetryMax       = 150 * time.Millisecond // [mailRetryMin, mailRetryMax]
	mailMaxAttempts    = 500                    // per message; past it the sender gives up, and the run fails
	mailChaosFor       = 3 * time.Second        // how long faults are applied
	mailConvergeWithin = time.Minute            // after the faults end, everything must be delivered by then
	mailPoll           = 100 * time.Millisecond
	mailMonitorEvery   = 50 * time.Millisecond // invariant checks during the run
)

type mailConfig struct {
	nodes   int
	perPair int           // messages each node sends each other node
	gap     time.Duration // a sender waits up to this (drawn) before each message, to spread them over the faults
	// faults, if set, returns the faults to inject; they end at mailChaosFor.
	faults func() []sim.Fault
	// chaos, if set, runs while the messages flow and returns by
	// mailChaosFor; afterwards every link is healed and every node restarted.
	chaos func(m *mail) error
}

// mail is one run of the mail service: the network, the nodes, and the
// durable state the invariants read.
type mail struct {
	s     *sim.Simulation
	nw    *Network
	cfg   mailConfig
	names []string // sorted
	nodes []*sim.Node
	// want holds the checksum of every message, by sender -> receiver and
	// sequence-1, computed once so the invariant is cheap to check often.
	want map[linkKey][]uint64
}

// inbox is a node's durable receive log: for each sender, the payload
// checksums of the messages delivered, in sequence order.
type inbox struct {
	mu   sync.Mutex
	logs map[string][]uint64
}

// outbox is a node's durable send state: for each receiver, the highest
// sequence number acknowledged.
type outbox struct {
	mu    sync.Mutex
	acked map[string]int
}

func (m *mail) inbox(n *sim.Node) *inbox {
	return n.Persistent("mail/inbox", func() any { return &inbox{logs: map[string][]uint64{}} }).(*inbox)
}

func (m *mail) outbox(n *sim.Node) *outbox {
	return n.Persistent("mail/outbox", func() any { return &outbox{acked: map[string]int{}} }).(*outbox)
}

// payload is the body of message seq from -> to: its length and bytes are a
// function of the three, so the receiver can check it arrived intact.
func payload(from, to string, seq int) []byte {
	h := fnv.New64a()
	fmt.Fprintf(h, "%s->%s#%d", from, to, seq)
	x := h.Sum64()
	b := make([]byte, x%(mailMaxPayload+1))
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x)
	}
	return b
}

func checksum(b []byte) uint64 {
	h := fnv.New64a()
	h.Write(b)
	return h.Sum64()
}

func runMail(s *sim.Simulation, cfg mailConfig) error {
	m := &mail{s: s, nw: New(s), cfg: cfg}
	for i := 1; i <= cfg.nodes; i++ {
		m.names = append(m.names, "n"+strconv.Itoa(i))
	}
	m.want = map[linkKey][]uint64{}
	for _, from := range m.names {
		for _, to := range m.names {
			for seq := 1; seq <= cfg.perPair; seq++ {
				k := linkKey{from, to}
				m.want[k] = append(m.want[k], checksum(payload(from, to, seq)))
			}
		}
	}
	if cfg.faults != nil {
		for _, f := range cfg.faults() {
			f.Until = mailChaosFor
			if err := s.Faults().Inject(f); err != nil {
				return err
			}
		}
	}
	s.Invariant("mail-acked-delivered-once", m.checkLogs)
	// Checked while the faults run too, not only at the end (sim.Run
	// checks once more after the nodes stop).
	stopMonitor := make(chan struct{})
	defer close(stopMonitor)
	s.Monitor(mailMonitorEvery, stopMonitor)
	for _, name := range m.names {
		n, err := s.AddNode(name, m.boot)
		if err != nil {
			return err
		}
		m.nodes = append(m.nodes, n)
	}
	if cfg.chaos != nil {
		if err := cfg.chaos(m); err != nil {
			return err
		}
	}
	m.nw.HealAll()
	for _, n := range m.nodes {
		if !n.Up() {
			if err := n.Restart(); err != nil {
				return err
			}
		}
	}
	err := sim.Eventually(context.Background(), mailConvergeWithin, mailPoll, m.checkComplete)
	if err != nil {
		return fmt.Errorf("mail did not converge: %w", err)
	}
	s.Record("", "mail converged: %d messages delivered exactly once", cfg.nodes*(cfg.nodes-1)*cfg.perPair)
	return nil
}

// checkLogs is the safety invariant: every receiver's log from every sender
// is the messages 1..k, each intact and once, and the sender has had at
// most k of them acknowledged.
func (m *mail) checkLogs() error {
	for _, rn := range m.nodes {
		ib := m.inbox(rn)
		ib.mu.Lock()
		for _, sn := range m.nodes {
			log := ib.logs[sn.Name()]
			for i, sum := range log {
				if i >= m.cfg.perPair || sum != m.want[linkKey{sn.Name(), rn.Name()}][i] {
					ib.mu.Unlock()
					return fmt.Errorf("%s's log from %s: entry %d is not message %d", rn.Name(), sn.Name(), i+1, i+1)
				}
			}
			ob := m.outbox(sn)
			ob.mu.Lock()
			acked := ob.acked[rn.Name()]
			ob.mu.Unlock()
			if acked > len(log) {
				ib.mu.Unlock()
				return fmt.Errorf("%s has %d messages to %s acknowledged, but only %d were delivered", sn.Name(), acked, rn.Name(), len(log))
			}
		}
		ib.mu.Unlock()
	}
	return nil
}

// checkComplete is the liveness condition: every message was acknowledged
// and delivered exactly once.
func (m *mail) checkComplete() error {
	for _, sn := range m.nodes {
		ob := m.outbox(sn)
		for _, rn := range m.nodes {
			if sn == rn {
				continue
			}
			ob.mu.Lock()
			acked := ob.acked[rn.Name()]
			ob.mu.Unlock()
			ib := m.inbox(rn)
			ib.mu.Lock()
			got := len(ib.logs[sn.Name()])
			ib.mu.Unlock()
			if acked != m.cfg.perPair || got != m.cfg.perPair {
				return fmt.Errorf("%s->%s: %d acknowledged, %d delivered, want %d", sn.Name(), rn.Name(), acked, got, m.cfg.perPair)
			}
		}
	}
	return nil
}

// boot starts a node's mail server and its senders, one per peer.
func (m *mail) boot(n *sim.Node) error {
	l, err := m.nw.Listen(n, ":"+strconv.Itoa(mailPort))
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           &mailHandler{m: m, n: n, ctx: n.Context()},
		ReadHeaderTimeout: mailRequestTimeout,
		ErrorLog:          log.New(io.Discard, "", 0), // failures are the point here
	}
	tr := &http.Transport{
		DialContext:         m.nw.Dialer(n),
		MaxIdleConnsPerHost: 2,
	}
	client := &http.Client{Transport: tr, Timeout: mailRequestTimeout}
	if err := n.Go(func(ctx context.Context) { _ = srv.Serve(l) }); err != nil {
		return err
	}
	if err := n.Go(func(ctx context.Context) {
		<-ctx.Done()
		_ = srv.Close()
		tr.CloseIdleConnections()
	}); err != nil {
		return err
	}
	for _, peer := range m.names {
		if peer == n.Name() {
			continue
		}
		if err := n.Go(func(ctx context.Context) { m.sendAll(ctx, n, peer, client) }); err != nil {
			return err
		}
	}
	return nil
}

// sendAll sends n's messages to peer, from the first not yet acknowledged.
func (m *mail) sendAll(ctx context.Context, n *sim.Node, peer string, client *http.Client) {
	ob := m.outbox(n)
	backoff := n.Rand("mail/backoff/" + peer)
	gap := n.Rand("mail/gap/" + peer)
	for {
		ob.mu.Lock()
		seq := ob.acked[peer] + 1
		ob.mu.Unlock()
		if seq > m.cfg.perPair {
			return
		}
		if !sleepCtx(ctx, gap.Duration(0, m.cfg.gap)) {
			return
		}
		for attempt := 1; ; attempt++ {
			if attempt > mailMaxAttempts {
				n.Record("mail give up %s#%d after %d attempts", peer, seq, mailMaxAttempts)
				return
			}
			err := m.post(ctx, client, n.Name(), peer, seq)
			if ctx.Err() != nil {
				return
			}
			if err == nil {
				ob.mu.Lock()
				ob.acked[peer] = seq
				ob.mu.Unlock()
				n.Record("mail acked %s#%d", peer, seq)
				break
			}
			n.Record("mail retry %s#%d attempt %d: %v", peer, seq, attempt, err)
			if !sleepCtx(ctx, backoff.Duration(mailRetryMin, mailRetryMax)) {
				return
			}
		}
	}
}

// sleepCtx sleeps for d and reports whether ctx is still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (m *mail) post(ctx context.Context, client *http.Client, from, to string, seq int) error {
	u := fmt.Sprintf("http://%s:%d/msg?from=%s&seq=%d", to, mailPort, url.QueryEscape(from), seq)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(payload(from, to, seq)))
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<10)); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s: %s", u, resp.Status)
	}
	return nil
}

// mailHandler receives messages for node n.
type mailHandler struct {
	m   *mail
	n   *sim.Node
	ctx context.Context // the incarnation the server belongs to
}

func (h *mailHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/msg" {
		http.Error(w, "POST /msg only", http.StatusNotFound)
		return
	}
	from := r.URL.Query().Get("from")
	seq, err := strconv.Atoi(r.URL.Query().Get("seq"))
	if err != nil || seq < 1 || seq > h.m.cfg.perPair || h.n.Sim().Node(from) == nil {
		http.Error(w, "bad from or seq", http.StatusBadRequest)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, mailMaxPayload+1))
	if err != nil {
		http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
		return
	}
	if !bytes.Equal(body, payload(from, h.n.Name(), seq)) {
		// HTTP framed it, so simnet delivered corrupt or reordered bytes.
		h.m.s.Violation("mail-intact", fmt.Errorf("%s got a damaged message %s#%d (%d bytes)", h.n.Name(), from, seq, len(body)))
		http.Error(w, "damaged", http.StatusBadRequest)
		return
	}
	ib := h.m.inbox(h.n)
	ib.mu.Lock()
	// A killed incarnation's handler may still be running; it must not
	// write to the disk of the next.
	if h.ctx.Err() != nil {
		ib.mu.Unlock()
		http.Error(w, "node stopped", http.StatusServiceUnavailable)
		return
	}
	next := len(ib.logs[from]) + 1
	switch {
	case seq == next:
		ib.logs[from] = append(ib.logs[from], checksum(body))
		ib.mu.Unlock()
		h.n.Record("mail delivered %s#%d", from, seq)
		_, _ = io.WriteString(w, "delivered\n")
	case seq < next:
		ib.mu.Unlock()
		h.n.Record("mail duplicate %s#%d", from, seq)
		_, _ = io.WriteString(w, "duplicate\n")
	default:
		ib.mu.Unlock()
		// Senders send seq only after seq-1 was acknowledged, and an
		// acknowledgement follows a delivery: a gap is a lost message.
		h.m.s.Violation("mail-no-gap", fmt.Errorf("%s got %s#%d but has only %d from it", h.n.Name(), from, seq, next-1))
		http.Error(w, "gap", http.StatusConflict)
	}
}

// sleepChaos sleeps for a duration drawn from r, and reports whether the
// chaos period is still running.
func (m *mail) sleepChaos(r *sim.Stream, lo, hi time.Duration) bool {
	time.Sleep(r.Duration(lo, hi))
	return m.s.Elapsed() < mailChaosFor
}

// pickPair draws two different node names.
func (m *mail) pickPair(r *sim.Stream) (string, string) {
	i := r.IntN(len(m.names))
	j := (i + 1 + r.IntN(len(m.names)-1)) % len(m.names)
	return m.names[i], m.names[j]
}

// partitionChaos cuts and heals links, symmetric and one way, at random.
func partitionChaos(m *mail) error {
	r := m.s.Rand("simnet/scenario/partition")
	for m.sleepChaos(r, 50*time.Millisecond, 250*time.Millisecond) {
		a, b := m.pickPair(r)
		var err error
		// Cuts outnumber heals so some last longer than a request's timeout.
		switch k := r.IntN(10); {
		case k < 4:
			err = m.nw.Partition(a, b)
		case k < 7:
			err = m.nw.PartitionOneWay(a, b)
		case k < 9:
			err = m.nw.Heal(a, b)
		default:
			m.nw.HealAll()
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// chaosFaults are the injected faults of simnet-chaos, every net kind.
func chaosFaults() []sim.Fault {
	return []sim.Fault{
		{Kind: FaultReset, P: 0.01},
		{Kind: FaultStall, P: 0.01, Delay: 300 * time.Millisecond},
		{Kind: FaultLatency, P: 0.02, Delay: 100 * time.Millisecond},
		{Kind: FaultDialRefused, P: 0.05},
		{Kind: FaultPartition, P: 0.002, Delay: 500 * time.Millisecond},
	}
}

// killChaos kills a random node now and then and restarts it a little later.
func killChaos(m *mail) error {
	r := m.s.Rand("simnet/scenario/kill")
	for m.sleepChaos(r, 100*time.Millisecond, 500*time.Millisecond) {
		n := m.nodes[r.IntN(len(m.nodes))]
		if err := n.Kill(); err != nil {
			return err
		}
		time.Sleep(r.Duration(50*time.Millisecond, 400*time.Millisecond))
		if err := n.Restart(); err != nil {
			return err
		}
	}
	return nil
}
