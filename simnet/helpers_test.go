package simnet

import (
	"context"
	"net"
	"strings"
	"testing"

	"github.com/kelpie-go/kelpie/sim"
)

// testNet is a simulation with nodes a, b and c (no services) and a network.
type testNet struct {
	s       *sim.Simulation
	nw      *Network
	a, b, c *sim.Node
}

func newTestNet(t *testing.T, seed uint64) *testNet {
	t.Helper()
	s := sim.New(t.Name(), seed)
	tn := &testNet{s: s, nw: New(s)}
	for _, p := range []struct {
		name string
		n    **sim.Node
	}{{"a", &tn.a}, {"b", &tn.b}, {"c", &tn.c}} {
		n, err := s.AddNode(p.name, nil)
		if err != nil {
			t.Fatal(err)
		}
		*p.n = n
	}
	return tn
}

// pair listens on to:port, dials it from from, and returns both ends.
func (tn *testNet) pair(t *testing.T, from, to *sim.Node) (client, server *Conn) {
	t.Helper()
	l, err := tn.nw.Listen(to, ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	client, err = tn.nw.Dial(context.Background(), from, l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return client, s.(*Conn)
}

// closeAll closes conns, ignoring errors: tests close what they opened so
// no goroutine of the bubble outlives the test.
func closeAll(cs ...net.Conn) {
	for _, c := range cs {
		_ = c.Close()
	}
}

// traceHas reports whether the last events of s's trace include one whose
// text contains sub.
func traceHas(s *sim.Simulation, sub string) bool {
	for _, e := range s.Trace().Tail(sim.TraceTail) {
		if contains(e.What, sub) {
			return true
		}
	}
	return false
}

// contains reports whether s contains sub, ignoring case: errno texts
// differ in case between platforms ("connection refused" on Linux,
// "Connection refused" on wasip1).
func contains(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}
