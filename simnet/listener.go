package simnet

import (
	"net"
)

// Listener accepts connections dialled to one address. It implements
// net.Listener.
type Listener struct {
	nw      *Network
	node    string
	inc     int // incarnation of node that opened it
	addr    Addr
	backlog chan *Conn    // dialled, not yet accepted; at most ListenBacklog
	done    chan struct{} // closed by Close
	closed  bool          // guarded by nw.mu
}

// Accept waits for the next connection. It returns an error wrapping
// net.ErrClosed once the listener is closed (also when its node stops).
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case <-l.done:
		return nil, l.closedErr()
	default:
	}
	select {
	case c := <-l.backlog:
		l.nw.mu.Lock()
		defer l.nw.mu.Unlock()
		l.nw.sim.Record(l.node, "net accept conn=%d %s<-%s", c.pair.id, c.local, c.remote)
		return c, nil
	case <-l.done:
		return nil, l.closedErr()
	}
}

func (l *Listener) closedErr() error {
	return &net.OpError{Op: "accept", Net: networkName, Addr: l.addr, Err: net.ErrClosed}
}

// Close stops the listener. Connections dialled to it and not yet accepted
// are reset.
func (l *Listener) Close() error {
	l.nw.mu.Lock()
	defer l.nw.mu.Unlock()
	if l.closed {
		return &net.OpError{Op: "close", Net: networkName, Addr: l.addr, Err: net.ErrClosed}
	}
	l.nw.closeListenerLocked(l, "closed")
	return nil
}

func (nw *Network) closeListenerLocked(l *Listener, why string) {
	if l.closed {
		return
	}
	l.closed = true
	close(l.done)
	delete(nw.listeners, l.addr)
	nw.sim.Record(l.node, "net close listener %s: %s", l.addr, why)
	for {
		select {
		case c := <-l.backlog:
			nw.resetLocked(c.pair, l.node, "listener closed before accept")
		default:
			return
		}
	}
}

// Addr is the address the listener accepts on.
func (l *Listener) Addr() net.Addr { return l.addr }
