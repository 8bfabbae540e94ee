package simnet

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"
)

var _ net.Conn = (*Conn)(nil)
var _ net.Listener = (*Listener)(nil)

func TestOrderingAcrossManyWrites(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newTestNet(t, 1)
		// Wide jitter: if delivery did not keep order, bytes would swap.
		if err := tn.nw.SetDefaultLink(Link{Latency: time.Millisecond, Jitter: 20 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
		c, s := tn.pair(t, tn.a, tn.b)
		defer closeAll(c, s)
		r := rand.New(rand.NewPCG(1, 2))
		want := make([]byte, 3*ConnBufferBytes+17)
		for i := range want {
			want[i] = byte(r.Uint32())
		}
		done := make(chan error, 1)
		go func() {
			rest := want
			for len(rest) > 0 {
				k := min(len(rest), 1+r.IntN(9000))
				if _, err := c.Write(rest[:k]); err != nil {
					done <- err
					return
				}
				rest = rest[k:]
			}
			done <- c.Close()
		}()
		got, err := io.ReadAll(s)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if err := <-done; err != nil {
			t.Fatalf("write: %v", err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("got %d bytes, want %d, equal=%v", len(got), len(want), bytes.Equal(got, want))
		}
	})
}

func TestLatencyIsApplied(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newTestNet(t, 1)
		if err := tn.nw.SetLink("a", "b", Link{Latency: 40 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
		c, s := tn.pair(t, tn.a, tn.b)
		defer closeAll(c, s)
		start := time.Now()
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1)
		if _, err := s.Read(buf); err != nil {
			t.Fatal(err)
		}
		// The bubble's clock is fake: this is exact, not a wall-clock guess.
		if got := time.Since(start); got != 40*time.Millisecond {
			t.Fatalf("delivered after %s, want the link's 40ms", got)
		}
	})
}

func TestJitterIsSeeded(t *testing.T) {
	delays := func(seed uint64) []time.Duration {
		var out []time.Duration
		synctest.Test(t, func(t *testing.T) {
			tn := newTestNet(t, seed)
			if err := tn.nw.SetDefaultLink(Link{Latency: time.Millisecond, Jitter: 50 * time.Millisecond}); err != nil {
				t.Fatal(err)
			}
			c, s := tn.pair(t, tn.a, tn.b)
			defer closeAll(c, s)
			buf := make([]byte, 1)
			for range 8 {
				start := time.Now()
				if _, err := c.Write([]byte("x")); err != nil {
					t.Fatal(err)
				}
				if _, err := s.Read(buf); err != nil {
					t.Fatal(err)
				}
				out = append(out, time.Since(start))
			}
		})
		return out
	}
	a1, a2, b := delays(7), delays(7), delays(8)
	for i := range a1 {
		if a1[i] != a2[i] {
			t.Fatalf("seed 7 gave delays %v then %v", a1, a2)
		}
		if a1[i] < time.Millisecond || a1[i] > 51*time.Millisecond {
			t.Fatalf("delay %s outside latency+[0,jitter]", a1[i])
		}
	}
	same := true
	for i := range a1 {
		same = same && a1[i] == b[i]
	}
	if same {
		t.Fatalf("seeds 7 and 8 drew the same delays %v", a1)
	}
}

func TestCloseGivesPeerEOFAfterData(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newTestNet(t, 1)
		c, s := tn.pair(t, tn.a, tn.b)
		defer closeAll(s)
		if _, err := c.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(s)
		if err != nil || string(got) != "hello" {
			t.Fatalf("ReadAll = %q, %v; want hello, nil", got, err)
		}
		if _, err := s.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("second read after EOF: %v, want io.EOF", err)
		}
		if _, err := s.Write([]byte("late")); !errors.Is(err, syscall.EPIPE) {
			t.Fatalf("write to a closed peer: %v, want EPIPE", err)
		}
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read after own Close: %v, want net.ErrClosed", err)
		}
		if err := c.Close(); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("second Close: %v, want net.ErrClosed", err)
		}
		if !traceHas(tn.s, "net close conn=1 a:") {
			t.Fatalf("close not traced")
		}
	})
}

func TestCloseWriteHalfCloses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newTestNet(t, 1)
		c, s := tn.pair(t, tn.a, tn.b)
		defer closeAll(c, s)
		if _, err := c.Write([]byte("request")); err != nil {
			t.Fatal(err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		req, err := io.ReadAll(s)
		if err != nil || string(req) != "request" {
			t.Fatalf("server read %q, %v", req, err)
		}
		if _, err := s.Write([]byte("response")); err != nil {
			t.Fatalf("server write after client's CloseWrite: %v", err)
		}
		s.Close()
		resp, err := io.ReadAll(c)
		if err != nil || string(resp) != "response" {
			t.Fatalf("client read %q, %v", resp, err)
		}
		if _, err := c.Write([]byte("x")); !errors.Is(err, syscall.EPIPE) {
			t.Fatalf("write after CloseWrite: %v, want EPIPE", err)
		}
	})
}

func TestReadDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newTestNet(t, 1)
		c, s := tn.pair(t, tn.a, tn.b)
		defer closeAll(c, s)
		buf := make([]byte, 4)

		start := time.Now()
		s.SetReadDeadline(start.Add(100 * time.Millisecond))
		_, err := s.Read(buf)
		var ne net.Error
		if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("read past deadline: %v, want a timeout wrapping os.ErrDeadlineExceeded", err)
		}
		if got := time.Since(start); got != 100*time.Millisecond {
			t.Fatalf("timed out after %s, want 100ms", got)
		}
		// A deadline in the past fails at once, even with data waiting.
		c.Write([]byte("data"))
		time.Sleep(time.Second)
		s.SetReadDeadline(time.Now().Add(-time.Second))
		if _, err := s.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read with a past deadline: %v", err)
		}
		// Clearing it delivers the data.
		s.SetReadDeadline(time.Time{})
		if n, err := s.Read(buf); err != nil || string(buf[:n]) != "data" {
			t.Fatalf("read after clearing the deadline: %q, %v", buf[:n], err)
		}

		// Moving the deadline of a blocked Read applies at once.
		s.SetReadDeadline(time.Now().Add(time.Hour))
		start = time.Now()
		errc := make(chan error, 1)
		go func() { _, err := s.Read(buf); errc <- err }()
		time.Sleep(10 * time.Millisecond)
		s.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		if err := <-errc; !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("blocked read after the deadline moved: %v", err)
		}
		if got := time.Since(start); got != 20*time.Millisecond {
			t.Fatalf("blocked read returned after %s, want 20ms", got)
		}
	})
}

func TestBackpressureAndWriteDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newTestNet(t, 1)
		c, s := tn.pair(t, tn.a, tn.b)
		defer closeAll(c, s)

		// Nobody reads: a write of more than the buffer queues exactly
		// ConnBufferBytes and blocks for the rest.
		type result struct {
			n   int
			err error
		}
		res := make(chan result, 1)
		go func() {
			n, err := c.Write(make([]byte, ConnBufferBytes+10))
			res <- result{n, err}
		}()
		synctest.Wait()
		select {
		case r := <-res:
			t.Fatalf("write past the buffer returned (%d, %v) with nobody reading", r.n, r.err)
		default:
		}
		// Reading 10 bytes makes room for the last 10.
		time.Sleep(time.Second) // let the first bytes arrive
		buf := make([]byte, 10)
		if n, err := io.ReadFull(s, buf); err != nil || n != 10 {
			t.Fatalf("read: %d, %v", n, err)
		}
		if r := <-res; r.n != ConnBufferBytes+10 || r.err != nil {
			t.Fatalf("write after room was made: (%d, %v)", r.n, r.err)
		}

		// The buffer is full again: a write with a deadline stops there.
		c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
		n, err := c.Write([]byte("more"))
		if n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("write into a full buffer with a deadline: (%d, %v)", n, err)
		}
	})
}

func TestCloseWhileBlocked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newTestNet(t, 1)
		c, s := tn.pair(t, tn.a, tn.b)

		// A blocked Read returns net.ErrClosed when its own end closes.
		errc := make(chan error, 2)
		go func() { _, err := s.Read(make([]byte, 1)); errc <- err }()
		synctest.Wait()
		s.Close()
		if err := <-errc; !errors.Is(err, net.ErrClosed) {
			t.Fatalf("blocked read, own Close: %v", err)
		}

		// A Write blocked on a full buffer returns EPIPE when the peer
		// (which will never read) closes.
		go func() { _, err := c.Write(make([]byte, 2*ConnBufferBytes)); errc <- err }()
		synctest.Wait()
		if err := <-errc; !errors.Is(err, syscall.EPIPE) {
			t.Fatalf("write to a closed peer: %v, want EPIPE", err)
		}
		c.Close()

		// A Write blocked on a full buffer returns net.ErrClosed when its
		// own end closes.
		c2, s2 := tn.pair(t, tn.a, tn.b)
		defer closeAll(s2)
		go func() { _, err := c2.Write(make([]byte, 2*ConnBufferBytes)); errc <- err }()
		synctest.Wait()
		c2.Close()
		if err := <-errc; !errors.Is(err, net.ErrClosed) {
			t.Fatalf("blocked write, own Close: %v", err)
		}

		// A blocked Accept returns net.ErrClosed when the listener closes.
		l, err := tn.nw.Listen(tn.b, "b:9000")
		if err != nil {
			t.Fatal(err)
		}
		go func() { _, err := l.Accept(); errc <- err }()
		synctest.Wait()
		l.Close()
		if err := <-errc; !errors.Is(err, net.ErrClosed) {
			t.Fatalf("blocked accept, Close: %v", err)
		}
	})
}

func TestConcurrentReadersAndWriters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newTestNet(t, 1)
		c, s := tn.pair(t, tn.a, tn.b)
		defer closeAll(c, s)
		const writers, perWriter, msg = 4, 200, 16
		var wg sync.WaitGroup
		for w := range writers {
			wg.Go(func() {
				b := bytes.Repeat([]byte{byte('A' + w)}, msg)
				for range perWriter {
					if _, err := c.Write(b); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		go func() { wg.Wait(); c.CloseWrite() }()
		got, err := io.ReadAll(s)
		if err != nil {
			t.Fatal(err)
		}
		// Each Write is atomic here (it fits the buffer), so every 16-byte
		// block is one writer's.
		if len(got) != writers*perWriter*msg {
			t.Fatalf("read %d bytes, want %d", len(got), writers*perWriter*msg)
		}
		for i := 0; i < len(got); i += msg {
			if !bytes.Equal(got[i:i+msg], bytes.Repeat(got[i:i+1], msg)) {
				t.Fatalf("block at %d is interleaved: %q", i, got[i:i+msg])
			}
		}
	})
}

func TestBadInputErrors(t *testing.T) {
	tn := newTestNet(t, 1)
	ctx := context.Background()
	cases := []struct {
		name string
		err  func() error
		want string
	}{
		{"dial without port", func() error { _, err := tn.nw.Dial(ctx, tn.a, "b"); return err }, "want node:port"},
		{"dial port 0", func() error { _, err := tn.nw.Dial(ctx, tn.a, "b:0"); return err }, "outside [1, 65535]"},
		{"dial port too big", func() error { _, err := tn.nw.Dial(ctx, tn.a, "b:70000"); return err }, "outside [1, 65535]"},
		{"dial no host", func() error { _, err := tn.nw.Dial(ctx, tn.a, ":80"); return err }, "no node name"},
		{"dial unknown node", func() error { _, err := tn.nw.Dial(ctx, tn.a, "zz:80"); return err }, "no such host"},
		{"dial nil node", func() error { _, err := tn.nw.Dial(ctx, nil, "b:80"); return err }, "no node given"},
		{"dial nothing listening", func() error { _, err := tn.nw.Dial(ctx, tn.a, "b:80"); return err }, "connection refused"},
		{"dial bad network", func() error { _, err := tn.nw.Host(tn.a).DialContext(ctx, "udp", "b:80"); return err }, `network "udp"`},
		{"listen other node", func() error { _, err := tn.nw.Listen(tn.a, "b:80"); return err }, "only on its own name"},
		{"listen bad port", func() error { _, err := tn.nw.Listen(tn.a, ":x"); return err }, `port "x" is not a number`},
		{"partition unknown", func() error { return tn.nw.Partition("a", "zz") }, `node "zz": no such node`},
		{"partition self", func() error { return tn.nw.Partition("a", "a") }, "from itself"},
		{"negative latency", func() error { return tn.nw.SetLink("a", "b", Link{Latency: -1}) }, "latency -1ns is outside"},
		{"huge jitter", func() error { return tn.nw.SetDefaultLink(Link{Jitter: time.Hour}) }, "jitter 1h0m0s is outside"},
	}
	for _, tc := range cases {
		err := tc.err()
		if err == nil || !contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
	l, err := tn.nw.Listen(tn.b, "b:80")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := tn.nw.Listen(tn.b, ":80"); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("second listen on b:80: %v, want EADDRINUSE", err)
	}
	var dns *net.DNSError
	if _, err := tn.nw.Dial(ctx, tn.a, "nowhere:80"); !errors.As(err, &dns) || !dns.IsNotFound {
		t.Errorf("dial unknown node: %v, want a not-found *net.DNSError", err)
	}
}

func TestBacklogBound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tn := newTestNet(t, 1)
		l, err := tn.nw.Listen(tn.b, ":80")
		if err != nil {
			t.Fatal(err)
		}
		var conns []net.Conn
		for range ListenBacklog {
			c, err := tn.nw.Dial(context.Background(), tn.a, "b:80")
			if err != nil {
				t.Fatalf("dial %d: %v", len(conns), err)
			}
			conns = append(conns, c)
		}
		if _, err := tn.nw.Dial(context.Background(), tn.a, "b:80"); !errors.Is(err, syscall.ECONNREFUSED) || !contains(err.Error(), "backlog of") {
			t.Fatalf("dial past the backlog: %v", err)
		}
		// Closing the listener resets what it never accepted.
		l.Close()
		if _, err := conns[0].Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("read on a connection its listener closed before accepting: %v", err)
		}
		closeAll(conns...)
	})
}
