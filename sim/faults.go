package sim

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// FaultKind names one kind of fault at one boundary, such as
// "net.reset" or "kv.fsync_error". Kinds are declared once, by the package
// that owns the boundary and reacts to them, with DeclareFault.
type FaultKind struct {
	name string
}

// Name is the kind's name, "boundary.what".
func (k FaultKind) Name() string { return k.name }

// Boundary is the part of the name before the first dot ("net", "kv", "vm").
func (k FaultKind) Boundary() string {
	b, _, _ := strings.Cut(k.name, ".")
	return b
}

func (k FaultKind) String() string { return k.name }

// FaultInfo describes a declared fault kind.
type FaultInfo struct {
	Kind FaultKind
	Doc  string // what the fault does, as the boundary implements it
}

var faultRegistry = struct {
	sync.Mutex
	kinds map[string]FaultInfo
}{kinds: map[string]FaultInfo{}}

// DeclareFault declares a fault kind. It is called from package-level
// variable declarations of the boundary that implements the fault; declaring
// one name twice is a programming error and panics at start-up.
func DeclareFault(name, doc string) FaultKind {
	if b, w, ok := strings.Cut(name, "."); !ok || b == "" || w == "" {
		panic(fmt.Sprintf("sim.DeclareFault(%q): a fault name is boundary.what", name))
	}
	faultRegistry.Lock()
	defer faultRegistry.Unlock()
	if _, dup := faultRegistry.kinds[name]; dup {
		panic(fmt.Sprintf("sim.DeclareFault(%q): declared twice", name))
	}
	k := FaultKind{name: name}
	faultRegistry.kinds[name] = FaultInfo{Kind: k, Doc: doc}
	return k
}

// DeclaredFaults lists every declared fault kind, sorted by name.
func DeclaredFaults() []FaultInfo {
	faultRegistry.Lock()
	defer faultRegistry.Unlock()
	out := make([]FaultInfo, 0, len(faultRegistry.kinds))
	for _, f := range faultRegistry.kinds {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Kind.name < out[j].Kind.name })
	return out
}

// LookupFault returns the declared kind called name.
func LookupFault(name string) (FaultKind, error) {
	faultRegistry.Lock()
	defer faultRegistry.Unlock()
	f, ok := faultRegistry.kinds[name]
	if !ok {
		return FaultKind{}, fmt.Errorf("unknown fault kind %q", name)
	}
	return f.Kind, nil
}

// Fault is one injected fault: a kind, how likely it fires each time the
// boundary consults it, and where and when it applies.
type Fault struct {
	Kind FaultKind
	// P is the probability of firing on each consultation, in [0, 1].
	P float64
	// Node restricts the fault to one node; "" means every node.
	Node string
	// From and Until bound the virtual-time window, measured from the start
	// of the simulation, in which the fault may fire. Until == 0 means no end.
	From, Until time.Duration
	// Max bounds how many times the fault fires; 0 means no bound.
	Max int
	// Delay is the magnitude of faults that take one (extra latency, the
	// length of a stall); kinds that take none ignore it.
	Delay time.Duration
}

func (f Fault) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s p=%g", f.Kind, f.P)
	if f.Node != "" {
		fmt.Fprintf(&b, " node=%s", f.Node)
	}
	if f.From != 0 || f.Until != 0 {
		fmt.Fprintf(&b, " window=[%s,%s)", f.From, f.Until)
	}
	if f.Max != 0 {
		fmt.Fprintf(&b, " max=%d", f.Max)
	}
	if f.Delay != 0 {
		fmt.Fprintf(&b, " delay=%s", f.Delay)
	}
	return b.String()
}

// maxFaults bounds how many faults one simulation may inject.
const maxFaults = 1024

type faultState struct {
	Fault
	consulted int
	fired     int
}

// Faults is the set of faults injected into one simulation. Boundaries hold a
// *Faults and ask Fire at each point where a fault could happen; a nil
// *Faults never fires, so production code paths can carry one unconditionally.
type Faults struct {
	mu      sync.Mutex
	seed    uint64
	start   time.Time
	trace   *Trace
	faults  []*faultState
	streams map[string]*Stream
}

// NewFaults returns an empty fault set whose draws derive from seed and whose
// windows are measured from start. Firings are recorded in trace (may be nil).
func NewFaults(seed uint64, start time.Time, trace *Trace) *Faults {
	return &Faults{seed: seed, start: start, trace: trace, streams: map[string]*Stream{}}
}

// Inject adds a fault. It is an error to inject an undeclared kind, a
// probability outside [0, 1], an empty window, or more than maxFaults.
func (fs *Faults) Inject(f Fault) error {
	if f.Kind.name == "" {
		return fmt.Errorf("inject fault: no kind")
	}
	if _, err := LookupFault(f.Kind.name); err != nil {
		return fmt.Errorf("inject fault: %w", err)
	}
	if !(f.P >= 0 && f.P <= 1) {
		return fmt.Errorf("inject fault %s: probability %g is outside [0, 1]", f.Kind, f.P)
	}
	if f.From < 0 || f.Until < 0 || (f.Until != 0 && f.Until <= f.From) {
		return fmt.Errorf("inject fault %s: window [%s, %s) is empty", f.Kind, f.From, f.Until)
	}
	if f.Max < 0 || f.Delay < 0 {
		return fmt.Errorf("inject fault %s: max and delay must not be negative", f.Kind)
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if len(fs.faults) >= maxFaults {
		return fmt.Errorf("inject fault %s: %d faults already injected, the limit is %d", f.Kind, len(fs.faults), maxFaults)
	}
	fs.faults = append(fs.faults, &faultState{Fault: f})
	return nil
}

// MustInject is Inject for tests and scenarios, where a bad fault is a bug in
// the test itself.
func (fs *Faults) MustInject(f Fault) {
	if err := fs.Inject(f); err != nil {
		panic(err)
	}
}

// Fire consults every injected fault of kind that applies to node, and
// reports the first that fires. The draw comes from the kind's own stream,
// and only when a fault of that kind is injected, so a simulation without
// faults of a kind draws nothing for it.
func (fs *Faults) Fire(kind FaultKind, node string) (Fault, bool) {
	if fs == nil {
		return Fault{}, false
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	var now time.Duration
	nowSet := false
	for _, f := range fs.faults {
		if f.Kind != kind || (f.Node != "" && f.Node != node) {
			continue
		}
		f.consulted++
		if !nowSet {
			now, nowSet = time.Since(fs.start), true
		}
		if now < f.From || (f.Until != 0 && now >= f.Until) || (f.Max != 0 && f.fired >= f.Max) {
			continue
		}
		if !fs.stream(kind).Chance(f.P) {
			continue
		}
		f.fired++
		if fs.trace != nil {
			fs.trace.Record(node, "fault %s", kind)
		}
		return f.Fault, true
	}
	return Fault{}, false
}

// Fires is Fire without the fault's parameters.
func (fs *Faults) Fires(kind FaultKind, node string) bool {
	_, ok := fs.Fire(kind, node)
	return ok
}

// Active reports whether any fault of kind is injected (whatever its window),
// for boundaries that run a background schedule only when asked to.
func (fs *Faults) Active(kind FaultKind) bool {
	if fs == nil {
		return false
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for _, f := range fs.faults {
		if f.Kind == kind {
			return true
		}
	}
	return false
}

func (fs *Faults) stream(kind FaultKind) *Stream {
	s, ok := fs.streams[kind.name]
	if !ok {
		s = NewStream(fs.seed, "fault/"+kind.name)
		fs.streams[kind.name] = s
	}
	return s
}

// FaultStat reports how often one injected fault was consulted and fired.
type FaultStat struct {
	Fault     Fault
	Consulted int
	Fired     int
}

// Stats reports every injected fault with its counts, in injection order.
func (fs *Faults) Stats() []FaultStat {
	if fs == nil {
		return nil
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	out := make([]FaultStat, len(fs.faults))
	for i, f := range fs.faults {
		out[i] = FaultStat{Fault: f.Fault, Consulted: f.consulted, Fired: f.fired}
	}
	return out
}

// CheckConsulted returns an error naming every injected fault that nothing
// consulted: a fault no code path asks about tests nothing, and is a bug in
// the simulation or the boundary.
func (fs *Faults) CheckConsulted() error {
	var never []string
	for _, st := range fs.Stats() {
		if st.Consulted == 0 {
			never = append(never, st.Fault.String())
		}
	}
	if len(never) > 0 {
		return fmt.Errorf("faults injected but never consulted by any boundary: %s", strings.Join(never, "; "))
	}
	return nil
}
