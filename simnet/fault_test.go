package simnet

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/kelpie-go/kelpie/sim"
)

// fired returns how often the injected faults of kind fired.
func fired(s *sim.Simulation, kind sim.FaultKind) int {
	n := 0
	for _, st := range s.Faults().Stats() {
		if st.Fault.Kind == kind {
			n += st.Fired
		}
	}
	return n
}

func TestFaultDialRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newTestNet(t, 1)
		l, err := tn.nw.Listen(tn.b, ":80")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		tn.s.Faults().MustInject(sim.Fault{Kind: FaultDialRefused, P: 1, Node: "a", Max: 1})
		if _, err := tn.nw.Dial(context.Background(), tn.a, "b:80"); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("dial under net.dial_refused: %v, want ECONNREFUSED", err)
		}
		// Max=1: the next dial goes through, and c (no fault) is never refused.
		for _, n := range []*sim.Node{tn.a, tn.c} {
			c, err := tn.nw.Dial(context.Background(), n, "b:80")
			if err != nil {
				t.Fatalf("dial from %s after the fault: %v", n.Name(), err)
			}
			c.Close()
		}
		if got := fired(tn.s, FaultDialRefused); got != 1 {
			t.Fatalf("fired %d times, want 1", got)
		}
		if !traceHas(tn.s, "fault net.dial_refused") {
			t.Fatal("refusal not in the trace")
		}
	})
}

func TestFaultReset(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newTestNet(t, 1)
		c, s := tn.pair(t, tn.a, tn.b)
		defer closeAll(c, s)
		if _, err := c.Write([]byte("before")); err != nil {
			t.Fatal(err)
		}
		// On a write: the writer fails and so does the peer, whose queued
		// bytes are gone.
		tn.s.Faults().MustInject(sim.Fault{Kind: FaultReset, P: 1, Node: "a", Max: 1})
		if _, err := c.Write([]byte("x")); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("write under net.reset: %v, want ECONNRESET", err)
		}
		if _, err := s.Read(make([]byte, 10)); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("peer read after reset: %v, want ECONNRESET", err)
		}
		if _, err := s.Write([]byte("x")); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("peer write after reset: %v, want ECONNRESET", err)
		}

		// On a read: the reader at b fails, and its blocked-on-nothing peer
		// learns too.
		c2, s2 := tn.pair(t, tn.a, tn.b)
		defer closeAll(c2, s2)
		tn.s.Faults().MustInject(sim.Fault{Kind: FaultReset, P: 1, Node: "b", Max: 1})
		errc := make(chan error, 1)
		go func() { _, err := c2.Read(make([]byte, 1)); errc <- err }()
		synctest.Wait()
		if _, err := s2.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("read under net.reset: %v, want ECONNRESET", err)
		}
		if err := <-errc; !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("peer's blocked read: %v, want ECONNRESET", err)
		}
		if got := fired(tn.s, FaultReset); got != 2 {
			t.Fatalf("fired %d times, want 2", got)
		}
		if !traceHas(tn.s, "net reset conn=2") {
			t.Fatal("reset not in the trace")
		}
	})
}

func TestFaultStall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newTestNet(t, 1)
		tn.nw.SetDefaultLink(Link{Latency: time.Millisecond})
		c, s := tn.pair(t, tn.a, tn.b)
		defer closeAll(c, s)
		tn.s.Faults().MustInject(sim.Fault{Kind: FaultStall, P: 1, Node: "a", Max: 1, Delay: 3 * time.Second})
		start := time.Now()
		if _, err := c.Write([]byte("stalled")); err != nil {
			t.Fatal(err)
		}
		// Not there after a second, though the link takes a millisecond.
		s.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := s.Read(make([]byte, 16)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read during the stall: %v, want a timeout", err)
		}
		// The other direction is not stalled.
		if _, err := s.Write([]byte("pong")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 16)
		if n, err := c.Read(buf); err != nil || string(buf[:n]) != "pong" {
			t.Fatalf("reverse direction during the stall: %q, %v", buf[:n], err)
		}
		s.SetReadDeadline(time.Time{})
		n, err := s.Read(buf)
		if err != nil || string(buf[:n]) != "stalled" {
			t.Fatalf("read after the stall: %q, %v", buf[:n], err)
		}
		if got := time.Since(start); got != 3*time.Second {
			t.Fatalf("delivered after %s, want the 3s stall", got)
		}
		if fired(tn.s, FaultStall) != 1 || !traceHas(tn.s, "net stall conn=1 a->b for 3s") {
			t.Fatal("stall not counted or not traced")
		}
	})
}

func TestFaultLatency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newTestNet(t, 1)
		tn.nw.SetDefaultLink(Link{Latency: time.Millisecond})
		c, s := tn.pair(t, tn.a, tn.b)
		defer closeAll(c, s)
		tn.s.Faults().MustInject(sim.Fault{Kind: FaultLatency, P: 1, Node: "a", Max: 1, Delay: 500 * time.Millisecond})
		start := time.Now()
		c.Write([]byte("slow"))
		c.Write([]byte("next")) // no fault, but it queues behind the slow one
		buf := make([]byte, 4)
		io.ReadFull(s, buf)
		if got := time.Since(start); got != 501*time.Millisecond {
			t.Fatalf("slow write arrived after %s, want 1ms + 500ms", got)
		}
		if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "next" {
			t.Fatalf("second write: %q, %v", buf, err)
		}
		if fired(tn.s, FaultLatency) != 1 || !traceHas(tn.s, "net latency conn=1 a->b +500ms") {
			t.Fatal("latency not counted or not traced")
		}
	})
}

func TestFaultPartition(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newTestNet(t, 1)
		tn.nw.SetDefaultLink(Link{Latency: time.Millisecond})
		l, err := tn.nw.Listen(tn.b, ":80")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()

		// At a dial: the link is cut for Delay, so a dial that gives up
		// sooner times out, and one after the heal connects.
		tn.s.Faults().MustInject(sim.Fault{Kind: FaultPartition, P: 1, Node: "a", Max: 1, Delay: 2 * time.Second})
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		_, err = tn.nw.Dial(ctx, tn.a, "b:80")
		cancel()
		var ne net.Error
		if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("dial across the injected partition: %v, want a timeout", err)
		}
		if !tn.nw.Partitioned("a", "b") || !tn.nw.Partitioned("b", "a") {
			t.Fatal("the fault did not cut a<->b")
		}
		start := time.Now()
		c, err := tn.nw.Dial(context.Background(), tn.a, "b:80") // waits for the heal
		if err != nil {
			t.Fatalf("dial after the heal: %v", err)
		}
		if got := time.Since(start); got < 1500*time.Millisecond {
			t.Fatalf("dial connected after %s, before the partition healed", got)
		}
		sc, _ := l.Accept()
		s := sc.(*Conn)
		defer closeAll(c, s)
		if !traceHas(tn.s, "net heal a<->b (fault ended)") {
			t.Fatal("heal not in the trace")
		}

		// At a write: the bytes wait, in order, for the heal.
		tn.s.Faults().MustInject(sim.Fault{Kind: FaultPartition, P: 1, Node: "b", Max: 1, Delay: time.Second})
		start = time.Now()
		s.Write([]byte("held"))
		c.SetReadDeadline(time.Now().Add(900 * time.Millisecond))
		if _, err := c.Read(make([]byte, 4)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read across the partition: %v, want a timeout", err)
		}
		c.SetReadDeadline(time.Time{})
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "held" {
			t.Fatalf("read after the heal: %q, %v", buf, err)
		}
		if got := time.Since(start); got != time.Second {
			t.Fatalf("held bytes arrived after %s, want at the 1s heal", got)
		}
		if got := fired(tn.s, FaultPartition); got != 2 {
			t.Fatalf("fired %d times, want 2", got)
		}
	})
}

func TestPartitionSymmetric(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newTestNet(t, 1)
		c, s := tn.pair(t, tn.a, tn.b)
		defer closeAll(c, s)
		if err := tn.nw.Partition("a", "b"); err != nil {
			t.Fatal(err)
		}
		// New dials time out.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		l, _ := tn.nw.Listen(tn.b, ":81")
		defer l.Close()
		if _, err := tn.nw.Dial(ctx, tn.a, "b:81"); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("dial across a partition: %v", err)
		}
		cancel()
		// Without a context deadline, DialTimeout applies.
		start := time.Now()
		if _, err := tn.nw.Dial(context.Background(), tn.b, "a:1"); !errors.Is(err, syscall.ETIMEDOUT) {
			t.Fatalf("dial across a partition: %v, want ETIMEDOUT", err)
		}
		if got := time.Since(start); got != DialTimeout {
			t.Fatalf("dial gave up after %s, want DialTimeout", got)
		}
		// Both directions hold their bytes.
		c.Write([]byte("ab"))
		s.Write([]byte("ba"))
		for _, e := range []*Conn{c, s} {
			e.SetReadDeadline(time.Now().Add(time.Second))
			if _, err := e.Read(make([]byte, 2)); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("read at %s across a partition: %v", e.local, err)
			}
			e.SetReadDeadline(time.Time{})
		}
		// A blocked reader gets its bytes at the heal.
		got := make(chan string, 1)
		go func() {
			b := make([]byte, 2)
			io.ReadFull(s, b)
			got <- string(b)
		}()
		synctest.Wait()
		if err := tn.nw.Heal("a", "b"); err != nil {
			t.Fatal(err)
		}
		if g := <-got; g != "ab" {
			t.Fatalf("after heal b read %q", g)
		}
		b := make([]byte, 2)
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "ba" {
			t.Fatalf("after heal a read %q, %v", b, err)
		}
		if !traceHas(tn.s, "net partition a<->b") || !traceHas(tn.s, "net heal a<->b") {
			t.Fatal("partition or heal not traced")
		}
	})
}

func TestPartitionOneWay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newTestNet(t, 1)
		c, s := tn.pair(t, tn.a, tn.b)
		defer closeAll(c, s)
		if err := tn.nw.PartitionOneWay("a", "b"); err != nil {
			t.Fatal(err)
		}
		if !tn.nw.Partitioned("a", "b") || tn.nw.Partitioned("b", "a") {
			t.Fatal("one-way partition cut the wrong directions")
		}
		c.Write([]byte("ab"))
		s.Write([]byte("ba"))
		b := make([]byte, 2)
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "ba" {
			t.Fatalf("b->a during a->b partition: %q, %v", b, err)
		}
		s.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := s.Read(b); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("a->b during a->b partition: %v", err)
		}
		s.SetReadDeadline(time.Time{})
		// A dial needs both directions, so it fails either way.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if _, err := tn.nw.Dial(ctx, tn.b, "a:1"); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("dial b->a during a->b partition: %v", err)
		}
		tn.nw.HealAll()
		if _, err := io.ReadFull(s, b); err != nil || string(b) != "ab" {
			t.Fatalf("a->b after HealAll: %q, %v", b, err)
		}
	})
}

func TestNodeStopClosesListenersAndConns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newTestNet(t, 1)
		l, err := tn.nw.Listen(tn.b, ":80")
		if err != nil {
			t.Fatal(err)
		}
		acceptErr := make(chan error, 1)
		c, err := tn.nw.Dial(context.Background(), tn.a, "b:80")
		if err != nil {
			t.Fatal(err)
		}
		s, _ := l.Accept()
		go func() { _, err := l.Accept(); acceptErr <- err }()
		readErr := make(chan error, 1)
		go func() { _, err := c.Read(make([]byte, 1)); readErr <- err }()
		synctest.Wait()

		if err := tn.b.Kill(); err != nil {
			t.Fatal(err)
		}
		if err := <-acceptErr; !errors.Is(err, net.ErrClosed) {
			t.Fatalf("accept on a killed node: %v", err)
		}
		if err := <-readErr; !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("peer of a killed node: %v, want ECONNRESET", err)
		}
		if _, err := s.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("the killed node's own end: %v, want net.ErrClosed", err)
		}
		if _, err := tn.nw.Dial(context.Background(), tn.b, "a:1"); !errors.Is(err, sim.ErrNodeDown) {
			t.Fatalf("dial from a killed node: %v", err)
		}
		if _, err := tn.nw.Listen(tn.b, ":80"); !errors.Is(err, sim.ErrNodeDown) {
			t.Fatalf("listen on a killed node: %v", err)
		}
		if _, err := tn.nw.Dial(context.Background(), tn.a, "b:80"); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("dial to a killed node: %v", err)
		}
		c.Close()

		// After a restart the node listens again, on the same port.
		if err := tn.b.Restart(); err != nil {
			t.Fatal(err)
		}
		l2, err := tn.nw.Listen(tn.b, ":80")
		if err != nil {
			t.Fatalf("listen after restart: %v", err)
		}
		c2, err := tn.nw.Dial(context.Background(), tn.a, "b:80")
		if err != nil {
			t.Fatalf("dial after restart: %v", err)
		}
		s2, _ := l2.Accept()
		// A clean shutdown tears down the same way.
		if err := tn.b.Shutdown(); err != nil {
			t.Fatal(err)
		}
		if _, err := c2.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("peer of a shut-down node: %v", err)
		}
		closeAll(c2, s2)
		if !traceHas(tn.s, "net close listener b:80: node stopped") || !traceHas(tn.s, "node stopped") {
			t.Fatal("teardown not traced")
		}
	})
}

func TestEveryFaultKindIsTested(t *testing.T) {
	// The tests above prove each kind; this one fails when a kind is added
	// to the boundary without being added here (and to a test).
	tested := map[string]bool{
		FaultPartition.Name(): true, FaultReset.Name(): true, FaultStall.Name(): true,
		FaultLatency.Name(): true, FaultDialRefused.Name(): true,
	}
	for _, f := range sim.DeclaredFaults() {
		if f.Kind.Boundary() == "net" && !tested[f.Kind.Name()] {
			t.Errorf("fault %s is declared but has no test here", f.Kind)
		}
	}
}
