// Package placement decides which node may run an actor's activation, and
// with which epoch.
//
// The model: before a node activates an actor it asks its Placement for a
// Lease. A lease names the actor, the node and an epoch. Epochs of one actor
// only grow: every new grant, on any node, carries a larger epoch than every
// grant before it. The actor runtime records the epoch of the newest
// activation next to the actor's state in the KV (when it activates, unless
// the lease is Sole, and with every commit), and every commit checks it
// inside the commit transaction, so an activation whose lease was lost (a
// paused or partitioned old owner) can commit nothing once its successor has
// activated: this is fencing, and it is what makes single activation safe
// even when leases are wrong. Check is the cheap local test a node runs before each turn: it
// does no I/O and only says whether the node itself still believes its lease
// holds.
//
// Two implementations ship here. Local is the single-node placement: it
// grants every actor to its one node, with an epoch that is bumped in the KV
// once per process start, so a restarted process fences the one before it.
// Sim is the simulated lease service of a cluster: nodes hold sessions with a
// TTL that they renew, actors hang on sessions, and faults make a lease lapse
// or be stolen so that the fencing path runs. Its decisions live in Table,
// which does no I/O and reads no clock: the caller passes the time in.
package placement

import (
	"context"
	"errors"
	"fmt"
)

// Lease is a node's right to run one activation of one actor.
type Lease struct {
	// Actor is the actor's identity, "namespace:id".
	Actor string
	// Node is the node the lease was granted to.
	Node string
	// Epoch orders the grants of one actor: a later grant has a larger
	// epoch. Commits carry it; the store rejects a commit whose epoch is
	// older than the one it holds.
	Epoch uint64
	// Session identifies the node session the lease hangs on, for
	// placements that have sessions (Sim); 0 otherwise.
	Session uint64
	// Sole says no holder of another epoch can be running against the same
	// store: one process owns it (Local). Otherwise (the zero value, and
	// every lease of a cluster) the runtime records the lease's epoch in
	// the store when it activates the actor, so that an older holder's next
	// commit is refused at once rather than only after the new holder's
	// first commit. Sole leases skip that write.
	Sole bool

	// local is the grant behind a lease from Local, which checks it
	// without a lookup.
	local *localHold
}

// String names the lease for messages.
func (l Lease) String() string {
	return fmt.Sprintf("lease %s on %s epoch %d", l.Actor, l.Node, l.Epoch)
}

// Placement grants and checks leases for one node.
type Placement interface {
	// Acquire asks whether this node may activate actor now. It returns a
	// lease with a fresh epoch, or an error: a *NotOwnerError when another
	// node holds the actor.
	Acquire(ctx context.Context, actor string) (Lease, error)
	// Check reports, without I/O, whether this node still believes it holds
	// l. A nil answer is a belief, not a guarantee: fencing at commit is
	// what makes a wrong belief harmless.
	Check(l Lease) error
	// Release gives l up so that another node may take the actor at once
	// instead of waiting for the lease to lapse.
	Release(ctx context.Context, l Lease) error
}

// Errors callers branch on with errors.Is.
var (
	// ErrNotOwner: another node holds the actor's lease. The error is a
	// *NotOwnerError that names it.
	ErrNotOwner = errors.New("placement: actor is held by another node")
	// ErrLeaseLost: this node no longer holds the lease (its session lapsed,
	// or the placement was closed).
	ErrLeaseLost = errors.New("placement: lease lost")
	// ErrNoSession: the node has no live session with the lease service, so
	// it may not activate anything.
	ErrNoSession = errors.New("placement: node has no live session")
	// ErrHeld: the node already holds a lease on the actor and did not
	// release it; a second activation on one node is a bug in the caller.
	ErrHeld = errors.New("placement: actor already held by this node")
	// ErrUnavailable: the lease service could not be reached.
	ErrUnavailable = errors.New("placement: lease service unavailable")
)

// NotOwnerError says which node holds an actor.
type NotOwnerError struct {
	Actor string
	Owner string
	Epoch uint64
}

// Error names the holder.
func (e *NotOwnerError) Error() string {
	return fmt.Sprintf("placement: actor %s is held by node %s (epoch %d)", e.Actor, e.Owner, e.Epoch)
}

// Unwrap returns ErrNotOwner.
func (e *NotOwnerError) Unwrap() error { return ErrNotOwner }

// MaxNodeNameBytes bounds a node name.
const MaxNodeNameBytes = 253

// CheckNodeName reports whether name is a usable node name: non-empty, at
// most MaxNodeNameBytes, printable ASCII without spaces or slashes.
func CheckNodeName(name string) error {
	if name == "" {
		return errors.New("placement: node name is empty")
	}
	if len(name) > MaxNodeNameBytes {
		return fmt.Errorf("placement: node name is %d bytes, the limit is %d (MaxNodeNameBytes)", len(name), MaxNodeNameBytes)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c >= 0x7f || c == '/' {
			return fmt.Errorf("placement: node name %q has byte %q at %d; want printable ASCII without spaces or slashes", name, c, i)
		}
	}
	return nil
}
