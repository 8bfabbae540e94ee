package simnet

import (
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// connPair is one connection: the dialling end (ends[0]) and the accepted
// end (ends[1]), and the pipe each writes into.
type connPair struct {
	id    uint64
	ends  [2]*Conn
	reset bool // aborted: both ends fail with ECONNRESET
	open  int  // ends not yet closed
}

// segment is one write's bytes (or the part of it the window allowed) and
// the time it reaches the reader.
type segment struct {
	data []byte
	at   time.Time
}

// pipe is one direction of a connection, from node from to node to.
type pipe struct {
	from, to   string
	segs       []segment // in delivery order
	unread     int       // bytes in segs; at most ConnBufferBytes
	last       time.Time // delivery time of the newest segment
	stallUntil time.Time // net.stall: nothing is delivered before this
	fin        bool      // the writer closed; EOF follows the last segment
	finAt      time.Time
	readerGone bool // the reading end closed; writes fail with EPIPE
	waiting    int  // goroutines blocked on changed
	changed    chan struct{}
}

// signalLocked wakes every goroutine blocked on p.
func (p *pipe) signalLocked() {
	if p.waiting > 0 {
		close(p.changed)
		p.changed = make(chan struct{})
	}
}

func (p *pipe) dropLocked() {
	p.segs, p.unread = nil, 0
}

// Conn is one end of a simulated connection. It implements net.Conn and,
// like *net.TCPConn, CloseWrite.
type Conn struct {
	nw            *Network
	pair          *connPair
	node          string
	inc           int // incarnation of node that owns this end
	local, remote Addr
	rd, wr        *pipe

	// Guarded by nw.mu.
	closed        bool
	writeClosed   bool
	readDeadline  time.Time
	writeDeadline time.Time
}

// newPairLocked creates a connection from client (owned by incarnation cinc
// of its node) to server (sinc).
func (nw *Network) newPairLocked(client Addr, cinc int, server Addr, sinc int) (*Conn, *Conn) {
	nw.nextConn++
	p := &connPair{id: nw.nextConn, open: 2}
	up := &pipe{from: client.Node, to: server.Node, changed: make(chan struct{})}
	down := &pipe{from: server.Node, to: client.Node, changed: make(chan struct{})}
	c := &Conn{nw: nw, pair: p, node: client.Node, inc: cinc, local: client, remote: server, rd: down, wr: up}
	s := &Conn{nw: nw, pair: p, node: server.Node, inc: sinc, local: server, remote: client, rd: up, wr: down}
	p.ends = [2]*Conn{c, s}
	nw.conns[p.id] = p
	return c, s
}

// ID is the connection's number in the trace ("conn=N"); both ends share it.
func (c *Conn) ID() uint64 { return c.pair.id }

// LocalAddr is this end's address.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr is the peer's address.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

func (c *Conn) opErr(op string, err error) error {
	return &net.OpError{Op: op, Net: networkName, Source: c.local, Addr: c.remote, Err: err}
}

// waitLocked blocks until p changes, a partition starts or heals, or wake
// (if set) passes. It releases nw.mu while it waits.
func (nw *Network) waitLocked(p *pipe, wake time.Time) {
	ch, links := p.changed, nw.linkChanged
	p.waiting++
	nw.mu.Unlock()
	var timeout <-chan time.Time
	if !wake.IsZero() {
		t := time.NewTimer(time.Until(wake))
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-ch:
	case <-links:
	case <-timeout:
	}
	nw.mu.Lock()
	p.waiting--
}

func earliest(a, b time.Time) time.Time {
	switch {
	case a.IsZero():
		return b
	case b.IsZero():
		return a
	case b.Before(a):
		return b
	}
	return a
}

func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// readyLocked reports whether p's head (a segment, or the FIN) can be read
// at now, and if not, when to look again (zero: when something changes).
func (nw *Network) readyLocked(p *pipe, now time.Time) (ready bool, wake time.Time) {
	var at time.Time
	switch {
	case len(p.segs) > 0:
		at = p.segs[0].at
	case p.fin:
		at = p.finAt
	default:
		return false, time.Time{}
	}
	if blocked, until := nw.blockedLocked(p.from, p.to, now); blocked {
		return false, until // zero for an explicit partition: wait for Heal
	}
	at = latest(at, p.stallUntil)
	if now.Before(at) {
		return false, at
	}
	return true, time.Time{}
}

// Read reads bytes the peer wrote, in order, once they have arrived. It
// returns io.EOF after the peer's Close or CloseWrite and everything before
// it, an error wrapping os.ErrDeadlineExceeded past the read deadline,
// ECONNRESET once the connection is reset, and net.ErrClosed after Close.
func (c *Conn) Read(b []byte) (int, error) {
	nw := c.nw
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if !c.closed && !c.pair.reset && nw.faults.Fires(FaultReset, c.node) {
		nw.resetLocked(c.pair, c.node, "fault on read")
	}
	p := c.rd
	for {
		if c.closed {
			return 0, c.opErr("read", net.ErrClosed)
		}
		if c.pair.reset {
			return 0, c.opErr("read", syscall.ECONNRESET)
		}
		now := time.Now()
		if !c.readDeadline.IsZero() && !now.Before(c.readDeadline) {
			return 0, c.opErr("read", os.ErrDeadlineExceeded)
		}
		if len(b) == 0 {
			return 0, nil
		}
		ready, wake := nw.readyLocked(p, now)
		if ready {
			if len(p.segs) == 0 {
				return 0, io.EOF
			}
			n := 0
			for n < len(b) && len(p.segs) > 0 && !now.Before(p.segs[0].at) {
				k := copy(b[n:], p.segs[0].data)
				n += k
				if k == len(p.segs[0].data) {
					p.segs[0].data = nil
					p.segs = p.segs[1:]
				} else {
					p.segs[0].data = p.segs[0].data[k:]
				}
			}
			p.unread -= n
			if len(p.segs) == 0 {
				p.segs = nil // let the backing array go
			}
			p.signalLocked() // the writer may have room now
			return n, nil
		}
		nw.waitLocked(p, earliest(wake, c.readDeadline))
	}
}

// Write queues b for the peer. It blocks while ConnBufferBytes of this
// direction are in flight or unread; it returns how much it queued and an
// error wrapping os.ErrDeadlineExceeded past the write deadline,
// ECONNRESET once the connection is reset, EPIPE after CloseWrite or once
// the peer has closed, and net.ErrClosed after Close.
func (c *Conn) Write(b []byte) (int, error) {
	nw := c.nw
	nw.mu.Lock()
	defer nw.mu.Unlock()
	p := c.wr
	var extra time.Duration
	if !c.closed && !c.pair.reset {
		// One consultation per Write, in a fixed order; each kind draws
		// from its own stream.
		if nw.faults.Fires(FaultReset, c.node) {
			nw.resetLocked(c.pair, c.node, "fault on write")
		} else {
			if f, ok := nw.faults.Fire(FaultStall, c.node); ok {
				d := delayOr(f, DefaultFaultStall)
				p.stallUntil = latest(p.stallUntil, time.Now().Add(d))
				nw.sim.Record(c.node, "net stall conn=%d %s->%s for %s", c.pair.id, p.from, p.to, d)
			}
			if f, ok := nw.faults.Fire(FaultLatency, c.node); ok {
				extra = delayOr(f, DefaultFaultLatency)
				nw.sim.Record(c.node, "net latency conn=%d %s->%s +%s", c.pair.id, p.from, p.to, extra)
			}
			if f, ok := nw.faults.Fire(FaultPartition, c.node); ok && p.from != p.to {
				nw.faultPartitionLocked(c.node, p.from, p.to, delayOr(f, DefaultFaultPartition))
			}
		}
	}
	n := 0
	for {
		if c.closed {
			return n, c.opErr("write", net.ErrClosed)
		}
		if c.pair.reset {
			return n, c.opErr("write", syscall.ECONNRESET)
		}
		if c.writeClosed || p.readerGone {
			return n, c.opErr("write", syscall.EPIPE)
		}
		now := time.Now()
		if !c.writeDeadline.IsZero() && !now.Before(c.writeDeadline) {
			return n, c.opErr("write", os.ErrDeadlineExceeded)
		}
		if n == len(b) {
			return n, nil
		}
		room := ConnBufferBytes - p.unread
		if room <= 0 {
			nw.waitLocked(p, c.writeDeadline)
			continue
		}
		k := min(room, len(b)-n)
		at := latest(now.Add(nw.delayLocked(p.from, p.to)+extra), p.last)
		p.last = at
		p.segs = append(p.segs, segment{data: append([]byte(nil), b[n:n+k]...), at: at})
		p.unread += k
		n += k
		p.signalLocked()
	}
}

// finLocked queues the end of c's outgoing direction.
func (nw *Network) finLocked(c *Conn) {
	p := c.wr
	if p.fin {
		return
	}
	p.fin = true
	p.finAt = latest(time.Now().Add(nw.delayLocked(p.from, p.to)), p.last)
	p.signalLocked()
}

// CloseWrite ends this end's outgoing direction: the peer reads io.EOF after
// the bytes already written, and this end can still read.
func (c *Conn) CloseWrite() error {
	nw := c.nw
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if c.closed {
		return c.opErr("close", net.ErrClosed)
	}
	if c.writeClosed || c.pair.reset {
		return nil
	}
	c.writeClosed = true
	nw.finLocked(c)
	nw.sim.Record(c.node, "net close-write conn=%d %s", c.pair.id, c.local)
	return nil
}

// Close closes this end. Blocked reads and writes on it return
// net.ErrClosed; the peer reads io.EOF after what was already written, and
// its later writes fail with EPIPE.
func (c *Conn) Close() error {
	nw := c.nw
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if c.closed {
		return c.opErr("close", net.ErrClosed)
	}
	nw.closeEndLocked(c)
	return nil
}

func (nw *Network) closeEndLocked(c *Conn) {
	c.closed = true
	p := c.pair
	if !p.reset {
		nw.finLocked(c)
		c.rd.readerGone = true
		c.rd.dropLocked()
	}
	c.rd.signalLocked()
	c.wr.signalLocked()
	p.open--
	nw.sim.Record(c.node, "net close conn=%d %s", p.id, c.local)
	if p.open == 0 {
		delete(nw.conns, p.id)
	}
}

// resetLocked aborts connection p: queued bytes are dropped and both ends
// fail with ECONNRESET. by is the node where it happened.
func (nw *Network) resetLocked(p *connPair, by, why string) {
	if p.reset {
		return
	}
	p.reset = true
	for _, c := range p.ends {
		c.wr.dropLocked()
		c.wr.signalLocked()
	}
	nw.sim.Record(by, "net reset conn=%d %s<->%s: %s", p.id, p.ends[0].local, p.ends[1].local, why)
	delete(nw.conns, p.id)
}

// Reset aborts the connection, as a TCP RST would: both ends fail with
// ECONNRESET.
func (c *Conn) Reset() {
	c.nw.mu.Lock()
	defer c.nw.mu.Unlock()
	c.nw.resetLocked(c.pair, c.node, "reset by "+c.local.String())
}

// SetDeadline sets the read and write deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	c.nw.mu.Lock()
	defer c.nw.mu.Unlock()
	if c.closed {
		return c.opErr("set deadline", net.ErrClosed)
	}
	c.readDeadline, c.writeDeadline = t, t
	c.rd.signalLocked()
	c.wr.signalLocked()
	return nil
}

// SetReadDeadline sets the time after which Read fails with an error
// wrapping os.ErrDeadlineExceeded; zero means none. It applies to a Read
// already blocked.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.nw.mu.Lock()
	defer c.nw.mu.Unlock()
	if c.closed {
		return c.opErr("set deadline", net.ErrClosed)
	}
	c.readDeadline = t
	c.rd.signalLocked()
	return nil
}

// SetWriteDeadline sets the time after which Write fails with an error
// wrapping os.ErrDeadlineExceeded; zero means none. It applies to a Write
// already blocked.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.nw.mu.Lock()
	defer c.nw.mu.Unlock()
	if c.closed {
		return c.opErr("set deadline", net.ErrClosed)
	}
	c.writeDeadline = t
	c.wr.signalLocked()
	return nil
}
