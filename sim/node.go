package sim

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"
)

// NodeStopTimeout bounds how long (in the simulation's time) a killed node's
// goroutines may take to notice that their context is done. A goroutine that
// outlives it is a leak the simulation reports.
const NodeStopTimeout = 30 * time.Second

// Crasher is implemented by per-node state that survives restarts (a disk, a
// store) but loses what was not made durable when the node is killed.
type Crasher interface {
	Crash()
}

// BootFunc starts a node's services. It runs in its own goroutine under the
// node's context, and may start more goroutines with Node.Go. It returns when
// the node has started; it is called again on every restart.
type BootFunc func(n *Node) error

// Node is one simulated machine. A node runs goroutines tied to its current
// incarnation; Kill cancels their context, runs the incarnation's stop hooks
// (simnet closes the node's connections and listeners there), crashes its
// persistent state, and waits for the goroutines to return.
type Node struct {
	sim  *Simulation
	name string
	boot BootFunc

	mu          sync.Mutex
	up          bool
	incarnation int
	ctx         context.Context
	cancel      context.CancelFunc
	wg          sync.WaitGroup
	onStop      []func()
	persist     map[string]any
}

// ErrNodeDown is returned by operations on a node that is not running.
var ErrNodeDown = errors.New("node is down")

// Name is the node's name.
func (n *Node) Name() string { return n.name }

// Sim is the simulation the node belongs to.
func (n *Node) Sim() *Simulation { return n.sim }

// Up reports whether the node is running.
func (n *Node) Up() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.up
}

// Incarnation counts the node's starts: 1 after the first boot.
func (n *Node) Incarnation() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.incarnation
}

// Context is done when the current incarnation stops.
func (n *Node) Context() context.Context {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ctx
}

// Go runs fn in a goroutine of the current incarnation. fn must return soon
// after ctx is done. It returns ErrNodeDown if the node is not running.
func (n *Node) Go(fn func(ctx context.Context)) error {
	n.mu.Lock()
	if !n.up {
		n.mu.Unlock()
		return fmt.Errorf("node %s: %w", n.name, ErrNodeDown)
	}
	ctx := n.ctx
	n.wg.Add(1)
	n.mu.Unlock()
	go func() {
		defer n.wg.Done()
		fn(ctx)
	}()
	return nil
}

// OnStop registers fn to run when the current incarnation stops, before its
// goroutines are waited for. Hooks run in reverse order of registration.
func (n *Node) OnStop(fn func()) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.onStop = append(n.onStop, fn)
}

// Persistent returns the node's value for key, creating it with create the
// first time. Persistent values survive restarts; those that implement
// Crasher are crashed when the node is killed.
func (n *Node) Persistent(key string, create func() any) any {
	n.mu.Lock()
	defer n.mu.Unlock()
	v, ok := n.persist[key]
	if !ok {
		v = create()
		n.persist[key] = v
	}
	return v
}

// Rand is the node's own stream called name.
func (n *Node) Rand(name string) *Stream { return n.sim.Rand(n.name + "/" + name) }

// Record appends an event from this node to the trace.
func (n *Node) Record(format string, args ...any) { n.sim.trace.Record(n.name, format, args...) }

func (n *Node) start() error {
	n.mu.Lock()
	if n.up {
		n.mu.Unlock()
		return fmt.Errorf("node %s: already running", n.name)
	}
	n.up = true
	n.incarnation++
	n.ctx, n.cancel = context.WithCancel(context.Background())
	inc := n.incarnation
	n.mu.Unlock()
	n.Record("start incarnation=%d", inc)
	if n.boot == nil {
		return nil
	}
	if err := n.boot(n); err != nil {
		n.Record("boot failed: %v", err)
		_ = n.stop(true)
		return fmt.Errorf("node %s: boot: %w", n.name, err)
	}
	return nil
}

// stop ends the current incarnation. crash says whether persistent state
// loses what was not made durable.
func (n *Node) stop(crash bool) error {
	n.mu.Lock()
	if !n.up {
		n.mu.Unlock()
		return fmt.Errorf("node %s: %w", n.name, ErrNodeDown)
	}
	n.up = false
	n.cancel()
	hooks := n.onStop
	n.onStop = nil
	var crashers []Crasher
	if crash {
		// Crash in key order, not map order, so the trace is stable.
		keys := make([]string, 0, len(n.persist))
		for k := range n.persist {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if c, ok := n.persist[k].(Crasher); ok {
				crashers = append(crashers, c)
			}
		}
	}
	n.mu.Unlock()

	if crash {
		n.Record("kill")
	} else {
		n.Record("shutdown")
	}
	for i := len(hooks) - 1; i >= 0; i-- {
		hooks[i]()
	}
	for _, c := range crashers {
		c.Crash()
	}
	done := make(chan struct{})
	go func() { n.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-time.After(NodeStopTimeout):
		return fmt.Errorf("node %s: goroutines still running %s after it stopped", n.name, NodeStopTimeout)
	}
}

// Kill stops the node abruptly: its goroutines are told to stop, its
// connections are torn down, and its persistent state loses everything that
// was not durable.
func (n *Node) Kill() error { return n.stop(true) }

// Shutdown stops the node cleanly: like Kill, but persistent state is kept
// whole.
func (n *Node) Shutdown() error { return n.stop(false) }

// Restart starts a node that is down, or kills and starts one that is up.
func (n *Node) Restart() error {
	if n.Up() {
		if err := n.Kill(); err != nil {
			return err
		}
	}
	return n.start()
}
