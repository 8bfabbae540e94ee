package vm

import (
	"errors"
	"fmt"
	"strings"
	"sync"
)

// State is a VM's lifecycle state.
type State uint8

// The states. The zero value is StateCreated, so a zero Machine is a
// created VM.
const (
	StateCreated State = iota // configured, not booted (restore happens here)
	StateRunning              // vCPUs running, guest agent answering
	StatePaused               // vCPUs stopped; guest memory intact
	StateStopped              // hypervisor gone, resources released
	StateFailed               // crashed, failed to boot, restore or resume
	numStates
)

var stateNames = [numStates]string{"created", "running", "paused", "stopped", "failed"}

func (s State) String() string {
	if s < numStates {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Op is an operation on a VM, or (OpCrash) an event the VM reports.
type Op uint8

// The operations.
const (
	OpBoot Op = iota
	OpExec
	OpReadFile
	OpWriteFile
	OpPause
	OpResume
	OpSnapshot
	OpRestore
	OpStop
	// OpCrash is not called by users: a backend applies it when the
	// hypervisor dies or the guest stops answering.
	OpCrash
	numOps
)

var opNames = [numOps]string{"boot", "exec", "read file", "write file", "pause", "resume", "snapshot", "restore", "stop", "crash"}

func (o Op) String() string {
	if o < numOps {
		return opNames[o]
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Ops lists every operation, for tests that walk the table.
func Ops() []Op {
	out := make([]Op, numOps)
	for i := range out {
		out[i] = Op(i)
	}
	return out
}

// States lists every state, for tests that walk the table.
func States() []State {
	out := make([]State, numStates)
	for i := range out {
		out[i] = State(i)
	}
	return out
}

// rule is one allowed (state, op) pair: the state after success and after
// failure.
type rule struct {
	allowed bool
	ok      State
	fail    State
}

// transitions is the whole state machine. Anything not listed is illegal.
// Why the failure states are what they are:
//   - a failed boot or restore leaves a half-built hypervisor: failed;
//   - a failed exec or file operation is the command's problem, not the VM's
//     (a VM that died during it is reported separately with OpCrash);
//   - a failed pause or snapshot leaves the VM as it was, so callers can
//     retry or resume;
//   - a VM that does not resume cannot be trusted to be in any state: failed;
//   - stop always ends stopped; its error reports cleanup trouble only.
var transitions = func() (t [numStates][numOps]rule) {
	allow := func(from State, op Op, ok, fail State) {
		t[from][op] = rule{allowed: true, ok: ok, fail: fail}
	}
	allow(StateCreated, OpBoot, StateRunning, StateFailed)
	allow(StateCreated, OpRestore, StatePaused, StateFailed)
	allow(StateCreated, OpStop, StateStopped, StateStopped)

	allow(StateRunning, OpExec, StateRunning, StateRunning)
	allow(StateRunning, OpReadFile, StateRunning, StateRunning)
	allow(StateRunning, OpWriteFile, StateRunning, StateRunning)
	allow(StateRunning, OpPause, StatePaused, StateRunning)
	allow(StateRunning, OpStop, StateStopped, StateStopped)
	allow(StateRunning, OpCrash, StateFailed, StateFailed)

	allow(StatePaused, OpResume, StateRunning, StateFailed)
	allow(StatePaused, OpSnapshot, StatePaused, StatePaused)
	allow(StatePaused, OpStop, StateStopped, StateStopped)
	allow(StatePaused, OpCrash, StateFailed, StateFailed)

	allow(StateStopped, OpStop, StateStopped, StateStopped)

	allow(StateFailed, OpStop, StateStopped, StateStopped)
	return t
}()

// Allowed reports whether op may be applied in state from.
func Allowed(from State, op Op) bool {
	return from < numStates && op < numOps && transitions[from][op].allowed
}

// Next returns the state after op succeeds in state from, or a
// *TransitionError if op is not allowed there.
func Next(from State, op Op) (State, error) {
	if !Allowed(from, op) {
		return from, &TransitionError{Op: op, From: from}
	}
	return transitions[from][op].ok, nil
}

// AfterFailure returns the state after op, allowed in from, fails. For an
// illegal pair it returns from: an operation refused up front changes
// nothing.
func AfterFailure(from State, op Op) State {
	if !Allowed(from, op) {
		return from
	}
	return transitions[from][op].fail
}

// AllowedFrom lists the states op is allowed in.
func AllowedFrom(op Op) []State {
	var out []State
	for _, s := range States() {
		if Allowed(s, op) {
			out = append(out, s)
		}
	}
	return out
}

// TransitionError reports an operation refused in the VM's state. It
// matches ErrInvalidState.
type TransitionError struct {
	Op   Op
	From State
	// Cause is why a failed VM failed, when known.
	Cause error
}

func (e *TransitionError) Error() string {
	allowed := AllowedFrom(e.Op)
	names := make([]string, len(allowed))
	for i, s := range allowed {
		names[i] = s.String()
	}
	msg := fmt.Sprintf("vm: cannot %s a %s VM (%s is allowed only when %s)", e.Op, e.From, e.Op, strings.Join(names, " or "))
	if len(allowed) == 0 {
		msg = fmt.Sprintf("vm: %s is never allowed", e.Op)
	}
	if e.Cause != nil {
		msg += fmt.Sprintf("; the VM failed: %v", e.Cause)
	}
	return msg
}

// Is makes every TransitionError match ErrInvalidState.
func (e *TransitionError) Is(target error) bool { return target == ErrInvalidState }

// Unwrap returns the cause of a failed VM, so errors.Is(err, ErrCrashed)
// holds for operations refused after a crash.
func (e *TransitionError) Unwrap() error { return e.Cause }

// Machine is the state machine a backend embeds. It enforces the table,
// serializes state-changing operations, and remembers why a VM failed. The
// zero value is a created VM.
type Machine struct {
	// opMu serializes the state-changing operations, so two of them never
	// interleave (a Pause during a Snapshot).
	opMu  sync.Mutex
	mu    sync.Mutex
	state State
	cause error
	// observe, when set, is told of every state change (for traces).
	observe func(from, to State, op Op, err error)
}

// SetObserver registers fn to be called, outside the lock, after every state
// change; the simulated VM records them in the simulation's trace.
func (m *Machine) SetObserver(fn func(from, to State, op Op, err error)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.observe = fn
}

// State is the current state.
func (m *Machine) State() State {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state
}

// Cause is why the VM is failed, or nil.
func (m *Machine) Cause() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cause
}

// Check returns a *TransitionError if op is not allowed now. Exec and the
// file operations use it; they do not change the state.
func (m *Machine) Check(op Op) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !Allowed(m.state, op) {
		return &TransitionError{Op: op, From: m.state, Cause: m.cause}
	}
	return nil
}

// Do runs fn as the state-changing operation op: it refuses op when the
// table does, runs fn with state changes from other operations excluded,
// and moves to the table's success or failure state by fn's result. The
// error is fn's, unchanged.
func (m *Machine) Do(op Op, fn func() error) error {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	if err := m.Check(op); err != nil {
		return err
	}
	m.mu.Lock()
	from := m.state
	m.mu.Unlock()
	err := fn()
	var ref *refusal
	if errors.As(err, &ref) {
		// Refused before anything changed: the state stays, and the
		// caller sees the underlying error.
		m.mu.Lock()
		obs := m.observe
		m.mu.Unlock()
		if obs != nil {
			obs(from, from, op, ref.err)
		}
		return ref.err
	}
	m.mu.Lock()
	// A crash reported while fn ran wins: the VM is failed whatever fn says,
	// except that stop still ends it.
	cur := m.state
	var to State
	switch {
	case cur == StateFailed && op != OpStop:
		to = StateFailed
	case err != nil:
		to = AfterFailure(from, op)
		if to == StateFailed && m.cause == nil {
			m.cause = err
		}
	default:
		to, _ = Next(from, op)
	}
	m.state = to
	obs := m.observe
	m.mu.Unlock()
	if obs != nil && (to != from || err != nil) {
		obs(from, to, op, err)
	}
	return err
}

// Fail applies OpCrash: a running or paused VM becomes failed with cause.
// It reports whether the state changed (a created, stopped or already
// failed VM is left alone).
func (m *Machine) Fail(cause error) bool {
	m.mu.Lock()
	from := m.state
	if !Allowed(from, OpCrash) {
		m.mu.Unlock()
		return false
	}
	m.state = StateFailed
	m.cause = cause
	obs := m.observe
	m.mu.Unlock()
	if obs != nil {
		obs(from, StateFailed, OpCrash, cause)
	}
	return true
}

// refusal marks an error returned by an operation before it changed
// anything (a bad argument, an incompatible snapshot).
type refusal struct{ err error }

func (r *refusal) Error() string { return r.err.Error() }
func (r *refusal) Unwrap() error { return r.err }

// Refuse marks err, returned from a Machine.Do function, as a refusal made
// before the operation changed anything: Do then leaves the state as it was
// instead of applying the table's failure state. Restore uses it for
// incompatible snapshots, as the restore contract requires.
func Refuse(err error) error {
	if err == nil {
		return nil
	}
	return &refusal{err: err}
}
