package simnet

import (
	"context"
	"net"
	"testing"

	"github.com/kelpie-go/kelpie/sim"
	"golang.org/x/net/nettest"
)

// TestNettestConformance runs the Go project's own net.Conn conformance
// suite (ping-pong, racing reads and writes, past, present and future
// deadlines, Close unblocking I/O, concurrent methods) against simnet.
func TestNettestConformance(t *testing.T) {
	seed := uint64(0)
	nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
		seed++
		s := sim.New(t.Name(), seed)
		nw := New(s)
		// The suite measures deadlines on the real clock; no link delay
		// keeps its timings about deadlines alone.
		if err := nw.SetDefaultLink(Link{}); err != nil {
			return nil, nil, nil, err
		}
		a, err := s.AddNode("a", nil)
		if err != nil {
			return nil, nil, nil, err
		}
		b, err := s.AddNode("b", nil)
		if err != nil {
			return nil, nil, nil, err
		}
		l, err := nw.Listen(b, ":80")
		if err != nil {
			return nil, nil, nil, err
		}
		defer l.Close()
		c1, err = nw.Dial(context.Background(), a, "b:80")
		if err != nil {
			return nil, nil, nil, err
		}
		c2, err = l.Accept()
		if err != nil {
			return nil, nil, nil, err
		}
		stop = func() {
			c1.Close()
			c2.Close()
		}
		return c1, c2, stop, nil
	})
}
