//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/kelpie-go/kelpie/vm/guest"
)

// Limits of the stream listeners: the vsock port in a VM, the unix socket
// of -listen outside one.
const (
	// maxVsockConns bounds the connections served at once on the vsock
	// port. The host needs one; the rest cover a reconnect racing the old
	// connection's teardown and a debugging session alongside. Past it a
	// connection is closed at once, so its peer learns immediately instead
	// of waiting on a handshake nobody will answer.
	maxVsockConns = 8
	// maxUnixConns is the same bound for -listen's unix socket.
	maxUnixConns = 8
	// maxAcceptFailures is how many Accept failures in a row end a
	// listener. Accept fails transiently (out of descriptors or memory, a
	// connection aborted before it was taken); a listener that fails this
	// often has stopped working, and the serial channels remain.
	maxAcceptFailures = 20
	// acceptBackoff is the wait after a failed Accept; it doubles with
	// each further failure up to maxAcceptBackoff, so a burst of transient
	// failures does not spin.
	acceptBackoff    = 10 * time.Millisecond
	maxAcceptBackoff = time.Second
)

// connServer serves the protocol on every connection a stream listener
// accepts, each with the same guest.Server (which keeps one session per
// connection). It does not care what family the listener is, which is what
// lets the tests drive it over unix sockets on a machine whose vsock cannot
// be connected to.
type connServer struct {
	srv *guest.Server
	// maxConns bounds the connections served at once.
	maxConns int
	// maxFailures, backoff and maxBackoff are the Accept retry policy;
	// newConnServer sets them from the constants, tests shorten them.
	maxFailures         int
	backoff, maxBackoff time.Duration
	logf                func(format string, args ...any)
}

func newConnServer(srv *guest.Server, maxConns int, logf func(format string, args ...any)) *connServer {
	return &connServer{
		srv: srv, maxConns: maxConns,
		maxFailures: maxAcceptFailures, backoff: acceptBackoff, maxBackoff: maxAcceptBackoff,
		logf: logf,
	}
}

// serve accepts connections on ln until ln is closed (it returns nil), ctx
// is done (ctx.Err()), or Accept has failed maxFailures times in a row (an
// error saying so). It closes ln when it returns. Connections keep being
// served after that, until their peer hangs up or ctx is done: a listener
// that stopped accepting is no reason to cut off a host that is connected.
func (s *connServer) serve(ctx context.Context, ln net.Listener) error {
	defer ln.Close()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	slots := make(chan struct{}, s.maxConns)
	failures, delay := 0, s.backoff
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			failures++
			if failures >= s.maxFailures {
				return fmt.Errorf("accepting on %s: %d failures in a row, the last: %w", ln.Addr(), failures, err)
			}
			s.logf("accepting on %s: %v (failure %d of %d, retrying in %s)", ln.Addr(), err, failures, s.maxFailures, delay)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(delay):
			}
			delay = min(2*delay, s.maxBackoff)
			continue
		}
		failures, delay = 0, s.backoff
		select {
		case slots <- struct{}{}:
		default:
			s.logf("%s: refusing a connection from %s: %d connections are open, the limit", ln.Addr(), c.RemoteAddr(), s.maxConns)
			c.Close()
			continue
		}
		go func() {
			// The slot is freed only once the connection is closed, so
			// the bound counts open connections, not running goroutines.
			defer func() { <-slots }()
			defer c.Close()
			stopConn := context.AfterFunc(ctx, func() { c.Close() })
			defer stopConn()
			if err := s.srv.Serve(ctx, c); !errors.Is(err, io.EOF) && ctx.Err() == nil {
				s.logf("connection from %s on %s: %v", c.RemoteAddr(), ln.Addr(), err)
			}
		}()
	}
}
