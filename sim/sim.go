package sim

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"
)

// Simulation is one simulated run: a seed, a trace, a set of faults, nodes
// and invariants. Create one with New, or let Run and Execute do it.
type Simulation struct {
	name   string
	seed   uint64
	start  time.Time
	trace  *Trace
	faults *Faults

	mu         sync.Mutex
	streams    map[string]*Stream
	nodes      map[string]*Node
	invariants []invariant
	violations []string
}

type invariant struct {
	name  string
	check func() error
}

// MaxNodes bounds the nodes of one simulation.
const MaxNodes = 256

// maxViolations bounds how many invariant violations are kept for reporting.
const maxViolations = 32

// New starts a simulation called name with seed. Its clock starts now: under
// the executor that is a fixed virtual instant.
func New(name string, seed uint64) *Simulation {
	start := time.Now()
	tr := NewTrace(start)
	s := &Simulation{
		name:    name,
		seed:    seed,
		start:   start,
		trace:   tr,
		faults:  NewFaults(seed, start, tr),
		streams: map[string]*Stream{},
		nodes:   map[string]*Node{},
	}
	tr.Record("", "simulation %s seed=%d", name, seed)
	return s
}

// Name is the simulation's name.
func (s *Simulation) Name() string { return s.name }

// Seed is the simulation's seed.
func (s *Simulation) Seed() uint64 { return s.seed }

// Trace is the simulation's trace.
func (s *Simulation) Trace() *Trace { return s.trace }

// Faults is the simulation's fault set.
func (s *Simulation) Faults() *Faults { return s.faults }

// Elapsed is the simulated time since the simulation started.
func (s *Simulation) Elapsed() time.Duration { return time.Since(s.start) }

// Record appends an event to the trace; node may be "".
func (s *Simulation) Record(node, format string, args ...any) {
	s.trace.Record(node, format, args...)
}

// Rand returns the stream called name, the same stream for every call.
func (s *Simulation) Rand(name string) *Stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.streams[name]
	if !ok {
		st = NewStream(s.seed, name)
		s.streams[name] = st
	}
	return st
}

// AddNode creates the node called name and boots it.
func (s *Simulation) AddNode(name string, boot BootFunc) (*Node, error) {
	if name == "" || strings.ContainsAny(name, " \t\n/") {
		return nil, fmt.Errorf("node name %q: want a non-empty name without spaces or slashes", name)
	}
	s.mu.Lock()
	if _, dup := s.nodes[name]; dup {
		s.mu.Unlock()
		return nil, fmt.Errorf("node %s: already exists", name)
	}
	if len(s.nodes) >= MaxNodes {
		s.mu.Unlock()
		return nil, fmt.Errorf("node %s: the simulation already has %d nodes, the limit", name, MaxNodes)
	}
	n := &Node{sim: s, name: name, boot: boot, persist: map[string]any{}}
	s.nodes[name] = n
	s.mu.Unlock()
	return n, n.start()
}

// Node returns the node called name, or nil.
func (s *Simulation) Node(name string) *Node {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nodes[name]
}

// Nodes returns every node, sorted by name.
func (s *Simulation) Nodes() []*Node {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Node, 0, len(s.nodes))
	for _, n := range s.nodes {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// Invariant registers a check of the production code's state that must hold
// whenever it is evaluated: by CheckInvariants, by Monitor, and at the end of
// the run.
func (s *Simulation) Invariant(name string, check func() error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.invariants = append(s.invariants, invariant{name: name, check: check})
}

// CheckInvariants evaluates every invariant and returns the violations,
// which are also recorded in the trace and in the simulation's result.
func (s *Simulation) CheckInvariants() error {
	s.mu.Lock()
	invs := append([]invariant(nil), s.invariants...)
	s.mu.Unlock()
	var errs []error
	for _, inv := range invs {
		if err := inv.check(); err != nil {
			s.Violation(inv.name, err)
			errs = append(errs, fmt.Errorf("invariant %s: %w", inv.name, err))
		}
	}
	return errors.Join(errs...)
}

// Violation records that an invariant or property does not hold. The run
// fails with it.
func (s *Simulation) Violation(name string, err error) {
	s.trace.Record("", "VIOLATION %s: %v", name, err)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.violations) < maxViolations {
		s.violations = append(s.violations, fmt.Sprintf("%s at %s: %v", name, time.Since(s.start), err))
	}
}

// Violations returns the recorded violations.
func (s *Simulation) Violations() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.violations...)
}

// Monitor checks every invariant every interval of simulated time until
// stop is closed. It returns at once; the checks run in their own goroutine.
func (s *Simulation) Monitor(interval time.Duration, stop <-chan struct{}) {
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				_ = s.CheckInvariants()
			}
		}
	}()
}

// Shutdown stops every running node cleanly, in name order.
func (s *Simulation) Shutdown() error {
	var errs []error
	for _, n := range s.Nodes() {
		if n.Up() {
			if err := n.Shutdown(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Result is the outcome of one simulation.
type Result struct {
	Name    string
	Seed    uint64
	Trace   string        // hex SHA-256 of the trace
	Events  uint64        // events recorded
	Virtual time.Duration // simulated time the run took
	Err     error         // nil when the run passed
	Tail    []Event       // the last events, for failure reports
}

// Line is the one-line summary "dst <Name> seed=<N> trace=<hex> virtual=<d>"
// that make sim prints and make sim-check compares.
func (r Result) Line() string {
	return fmt.Sprintf("dst %s seed=%d trace=%s virtual=%s", r.Name, r.Seed, r.Trace, r.Virtual)
}

// reportTail is how many trace events a failure report prints.
const reportTail = 40

// Execute runs fn as the simulation called name with seed, then stops every
// node, checks the invariants and that every injected fault was consulted.
// A panic in fn is caught and reported as the run's error.
func Execute(name string, seed uint64, fn func(s *Simulation) error) (res Result) {
	s := New(name, seed)
	defer func() {
		if p := recover(); p != nil {
			buf := make([]byte, 16<<10)
			buf = buf[:runtime.Stack(buf, false)]
			res = s.finish(fmt.Errorf("panic: %v\n%s", p, buf))
		}
	}()
	return s.finish(fn(s))
}

// finish ends the run and builds its result; err is fn's error.
func (s *Simulation) finish(err error) Result {
	errs := []error{err}
	errs = append(errs, s.Shutdown())
	_ = s.CheckInvariants() // violations are collected below
	if err == nil {
		// A run that failed early may not have reached its faults; only a
		// run that completed must have consulted every one.
		errs = append(errs, s.faults.CheckConsulted())
	}
	for _, v := range s.Violations() {
		errs = append(errs, errors.New("violation: "+v))
	}
	s.trace.Record("", "end")
	res := Result{
		Name:    s.name,
		Seed:    s.seed,
		Trace:   s.trace.Sum(),
		Events:  s.trace.Len(),
		Virtual: s.Elapsed(),
		Err:     errors.Join(errs...),
	}
	res.Tail = s.trace.Tail(reportTail)
	return res
}

// UnderExecutor reports whether the program runs under Kelpie's
// deterministic executor (cmd/kelpie-dst), which sets KELPIE_DST=1.
func UnderExecutor() bool {
	return runtime.GOOS == "wasip1" && os.Getenv("KELPIE_DST") == "1"
}
