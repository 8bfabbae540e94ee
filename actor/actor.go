// Package actor is Kelpie's virtual actor runtime.
//
// An actor is addressed by an ID ("namespace:key") and always exists: there
// is nothing to create. The first invocation of an actor on a node activates
// it: the runtime asks the node's placement for a lease (which says the node
// may run the actor, and with which epoch), loads the actor's committed state
// from the KV, and starts one goroutine for it. That goroutine owns the
// activation and runs invocations one at a time, in the order its bounded
// mailbox received them (turn-based execution: a handler never races
// another handler of the same actor). A full mailbox is refused at once with
// a *MailboxFullError; nothing waits for room. After an idle period the
// activation ends and its memory is freed; a node also caps how many
// activations it keeps, evicting the least recently used idle one to make
// room.
//
// Each invocation's effects commit in one KV transaction. The handler's
// writes of the actor's own keys (through Call) are buffered, and its reads
// see them; when it returns, the actor's new state and its writes commit
// together, or, if the handler fails, times out, or the commit fails, none
// of them do and the in-memory actor is rebuilt from the last committed
// state. Commits are grouped: one committer goroutine per node puts the
// finished turns of many actors into one transaction, which reads each
// actor's record (its fencing epoch, its commit sequence and its state, in
// one value) and applies a turn only if no newer activation of that actor
// has committed. A fenced turn is left out and fails alone; an old owner
// that lost its lease can never overwrite the new one.
//
// Turns are pipelined: once a turn is handed to the commit, the actor runs
// its next one on the state the first left, and the committer replies to
// each caller once its commit is decided. Reads during a turn see the
// writes of the actor's turns still being committed, so the pipeline is
// invisible to handlers; a commit that fails fails every turn that ran on
// it (none of them committed), and the actor goes back to its last
// committed state before its next turn.
//
// Every error Invoke returns means the invocation had no effect, except
// those that wrap ErrOutcomeUnknown (the caller stopped waiting, or the node
// stopped, while the commit was in flight): such an invocation may or may
// not have committed.
package actor

import (
	"errors"
	"fmt"
	"time"

	"github.com/kelpie-go/kelpie/kv"
)

// Actor is one activation of an actor: the runtime makes one with the
// namespace's Factory, loads it, and calls Receive for each invocation, one
// at a time, from the activation's goroutine.
type Actor interface {
	// Load restores the actor from its committed state: nil for an actor
	// that has never committed. An error fails the activation; the runtime
	// never substitutes a default.
	Load(state []byte) error
	// Receive handles one invocation and returns its reply. An error rolls
	// the invocation back: nothing it did is committed.
	Receive(c *Call) ([]byte, error)
	// Save returns the state to commit after a successful Receive. When the
	// bytes equal the last committed state and the handler wrote no keys,
	// the runtime commits nothing. The runtime copies the bytes before Save
	// returns to it, so an actor may return the same buffer every time.
	Save() ([]byte, error)
}

// Factory makes an empty actor for id; Load then fills it.
type Factory func(id ID) Actor

// Limits of one invocation.
const (
	// MaxMethodBytes bounds an invocation's method name.
	MaxMethodBytes = 256
	// MaxPayloadBytes bounds an invocation's payload.
	MaxPayloadBytes = kv.ValueLimit
	// MaxStateBytes bounds the state an actor's Save returns: the state is
	// stored in one KV value with its 17-byte fencing header.
	MaxStateBytes = kv.ValueLimit - recordHeaderBytes
)

// Errors Invoke returns; branch on them with errors.Is.
var (
	// ErrMailboxFull: the actor's mailbox is full; the invocation was not
	// accepted. The error is a *MailboxFullError. Back off and retry.
	ErrMailboxFull = errors.New("actor: mailbox full")
	// ErrTooManyActive: the node holds its maximum of activations and none
	// is idle enough to evict.
	ErrTooManyActive = errors.New("actor: too many active actors")
	// ErrTimeout: the invocation's deadline passed before it committed; it
	// was rolled back (or never started).
	ErrTimeout = errors.New("actor: invocation timed out")
	// ErrFenced: a newer activation of the actor committed, so this one may
	// not; the activation was dropped. The error is a *FencedError.
	ErrFenced = errors.New("actor: fenced by a newer activation")
	// ErrLeaseLost: the node no longer holds the actor's lease; the
	// activation was dropped and the invocation did not run.
	ErrLeaseLost = errors.New("actor: lease lost")
	// ErrActivation: the actor could not be activated (no lease, or its
	// state failed to load).
	ErrActivation = errors.New("actor: activation failed")
	// ErrUnknownNamespace: no Factory is registered for the ID's namespace.
	ErrUnknownNamespace = errors.New("actor: unknown namespace")
	// ErrClosed: the runtime is closed or closing.
	ErrClosed = errors.New("actor: runtime closed")
	// ErrHandler wraps an error the actor's Receive (or Save) returned.
	ErrHandler = errors.New("actor: handler failed")
	// ErrOutcomeUnknown: the invocation may or may not have committed; the
	// caller stopped waiting, or the node or its storage stopped, while the
	// commit was in flight.
	ErrOutcomeUnknown = errors.New("actor: outcome unknown")
	// ErrRolledBack: the invocation ran on the effects of an earlier
	// invocation of the same actor that then failed to commit, so it was
	// rolled back with it. The error also wraps that failure. Retry.
	ErrRolledBack = errors.New("actor: rolled back with an earlier invocation")
	// ErrInvalid: the invocation itself is malformed (bad ID, method or
	// payload).
	ErrInvalid = errors.New("actor: invalid invocation")
)

// MailboxFullError reports backpressure.
type MailboxFullError struct {
	ID       ID
	Capacity int
}

// Error says which actor refused and how to react.
func (e *MailboxFullError) Error() string {
	return fmt.Sprintf("actor %s: mailbox full (%d invocations waiting, Config.MailboxSize); back off and retry", e.ID, e.Capacity)
}

// Unwrap returns ErrMailboxFull.
func (e *MailboxFullError) Unwrap() error { return ErrMailboxFull }

// FencedError says why a commit or an activation was refused.
type FencedError struct {
	ID          ID
	Epoch       uint64 // this activation's epoch
	StoredEpoch uint64 // the epoch in the store
	Seq         uint64 // the commit sequence in the store
	MySeq       uint64 // the sequence this activation last saw (Stale)
	Stale       bool   // same or older epoch, but another activation committed since this one loaded
}

// Error says which epochs collided.
func (e *FencedError) Error() string {
	if e.Stale {
		return fmt.Sprintf("actor %s: epoch %d loaded commit %d but the store is at commit %d by epoch %d: another activation committed; this one is stale",
			e.ID, e.Epoch, e.MySeq, e.Seq, e.StoredEpoch)
	}
	return fmt.Sprintf("actor %s: epoch %d is older than the stored epoch %d: a newer activation owns the actor", e.ID, e.Epoch, e.StoredEpoch)
}

// Unwrap returns ErrFenced.
func (e *FencedError) Unwrap() error { return ErrFenced }

// Observer hears about activations and commits; the simulation uses it to
// check single activation and fencing on the runtime's own events. Methods
// are called from activation goroutines (Activated, Deactivated) and from
// the committer (Committed, in commit order), and must be quick.
type Observer interface {
	// Activated: the actor is active on this node with epoch, at commit
	// seq, having read (or claimed) it at KV version v.
	Activated(id ID, epoch, seq uint64, v kv.Version)
	// Committed: a state-changing commit at (epoch, seq) succeeded, at KV
	// version v.
	Committed(id ID, epoch, seq uint64, v kv.Version)
	// Deactivated: the activation ended, for reason.
	Deactivated(id ID, epoch uint64, reason string)
}

// Activation describes one active actor.
type Activation struct {
	ID       ID
	Epoch    uint64
	Seq      uint64
	LastUsed time.Time
}
