//go:build linux

package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kelpie-go/kelpie/vm/guest"
)

// The accept-and-serve loop is the vsock channel's, but it does not care
// about the socket family: these tests drive it over unix sockets with the
// real guest.Server and handler, because this machine (and CI) cannot
// complete a vsock connection.

// unixListener listens on a fresh socket in a short temporary directory
// (socket paths are limited to 108 bytes, t.TempDir's can be longer).
func unixListener(t *testing.T) (net.Listener, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "kg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "a.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln, sock
}

// logLines collects a connServer's log, safe for its goroutines.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

func (l *logLines) has(sub string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.lines {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// testConnServer is a connServer with the real handler and short retry
// delays, and where its log and the Server's go. Not t.Logf: connections
// may outlive the test, and logging after it ends panics.
func testConnServer(t *testing.T, maxConns int) (*connServer, *logLines) {
	t.Helper()
	logs := &logLines{}
	s := newConnServer(&guest.Server{Handler: newHandler(false), Logf: logs.logf}, maxConns, logs.logf)
	s.backoff, s.maxBackoff = time.Millisecond, 4*time.Millisecond
	return s, logs
}

// startServe runs s.serve on ln and returns its result channel.
func startServe(t *testing.T, ctx context.Context, s *connServer, ln net.Listener) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- s.serve(ctx, ln) }()
	return done
}

func dialClient(t *testing.T, sock string) *guest.Client {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c := guest.NewClient(conn)
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestConnServerServesConnectionsConcurrently(t *testing.T) {
	ln, sock := unixListener(t)
	s, _ := testConnServer(t, maxVsockConns)
	startServe(t, context.Background(), s, ln)
	ctx := testCtx(t)

	// The first host stays connected and idle: a loop that served one
	// connection at a time would never answer the second.
	first := dialClient(t, sock)
	if _, err := first.Handshake(ctx); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, maxVsockConns-1)
	for range maxVsockConns - 1 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := dialClient(t, sock)
			if _, err := c.Handshake(ctx); err != nil {
				errs <- err
				return
			}
			// Several requests on one connection.
			for range 3 {
				ls, err := c.List(ctx, dir)
				if err != nil || len(ls.Entries) != 1 || ls.Entries[0].Name != "f" {
					errs <- fmt.Errorf("list: %+v %v", ls, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// The idle first connection is still served.
	p, err := first.Ping(ctx)
	if err != nil || p.UptimeNanos <= 0 {
		t.Fatalf("ping on the first connection: %+v %v", p, err)
	}
}

func TestConnServerBoundsConnections(t *testing.T) {
	const limit = 2
	ln, sock := unixListener(t)
	s, logs := testConnServer(t, limit)
	startServe(t, context.Background(), s, ln)
	ctx := testCtx(t)

	var open []*guest.Client
	for range limit {
		c := dialClient(t, sock)
		if _, err := c.Handshake(ctx); err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
	}
	// One past the bound is closed at once: its handshake fails instead
	// of hanging until the deadline.
	over := dialClient(t, sock)
	start := time.Now()
	if _, err := over.Handshake(ctx); !errors.Is(err, guest.ErrClosed) {
		t.Fatalf("connection past the bound: %v, want it closed", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("refusal took %s", d)
	}
	if !logs.has("refusing a connection") || !logs.has(fmt.Sprintf("%d connections are open", limit)) {
		t.Fatalf("no refusal in the log:\n%s", logs)
	}
	// The open ones are unaffected.
	for _, c := range open {
		if _, err := c.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// A host that hangs up frees its slot (once the server has seen it go).
	open[0].Close()
	for {
		c := dialClient(t, sock)
		hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := c.Handshake(hctx)
		cancel()
		if err == nil {
			break
		}
		c.Close()
		if ctx.Err() != nil {
			t.Fatalf("no slot freed after a host hung up: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rawFrame encodes a frame as vm/guest specifies it (magic, length, payload
// CRC-32C, header CRC-32C, payload), written out independently here.
func rawFrame(payload []byte, corruptPayloadCRC bool) []byte {
	tab := crc32.MakeTable(crc32.Castagnoli)
	h := make([]byte, 16)
	copy(h, "KLPF")
	binary.BigEndian.PutUint32(h[4:], uint32(len(payload)))
	crc := crc32.Checksum(payload, tab)
	if corruptPayloadCRC {
		crc ^= 1
	}
	binary.BigEndian.PutUint32(h[8:], crc)
	binary.BigEndian.PutUint32(h[12:], crc32.Checksum(h[:12], tab))
	return append(h, payload...)
}

func TestConnServerSurvivesBadInput(t *testing.T) {
	ln, sock := unixListener(t)
	s, _ := testConnServer(t, maxVsockConns)
	done := startServe(t, context.Background(), s, ln)
	ctx := testCtx(t)

	// A peer that sends half a frame and hangs up.
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(rawFrame([]byte(`{"kind":"hello"}`), false)[:10]); err != nil {
		t.Fatal(err)
	}
	conn.Close()

	// A peer that sends noise, a frame failing its checksum and a frame
	// that is not JSON, then speaks properly on the same connection.
	conn, err = net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	junk := []byte("boot noise\r\n\x00\xff")
	junk = append(junk, rawFrame([]byte(`{"kind":"ping"}`), true)...)
	junk = append(junk, rawFrame([]byte("not json"), false)...)
	if _, err := conn.Write(junk); err != nil {
		t.Fatal(err)
	}
	c := guest.NewClient(conn)
	t.Cleanup(func() { c.Close() })
	if _, err := c.Handshake(ctx); err != nil {
		t.Fatalf("handshake after bad input: %v", err)
	}
	// The server answered the bad frames (before the handshake) with
	// protocol errors rather than going quiet.
	if c.LastProtocolError() == nil {
		t.Fatal("no protocol error reported for the bad frames")
	}
	if _, err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	// And the listener still takes new hosts.
	if _, err := dialClient(t, sock).Handshake(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("serve returned after bad input: %v", err)
	default:
	}
}

// flakyListener fails Accept with err until fails reaches zero (negative:
// forever), then accepts from the real listener.
type flakyListener struct {
	net.Listener
	mu    sync.Mutex
	fails int
	err   error
}

func (l *flakyListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if l.fails != 0 {
		l.fails--
		l.mu.Unlock()
		return nil, l.err
	}
	l.mu.Unlock()
	return l.Listener.Accept()
}

func TestConnServerRetriesAcceptFailures(t *testing.T) {
	errEMFILE := errors.New("accept: too many open files")
	t.Run("transient", func(t *testing.T) {
		ln, sock := unixListener(t)
		s, logs := testConnServer(t, maxVsockConns)
		startServe(t, context.Background(), s, &flakyListener{Listener: ln, fails: 3, err: errEMFILE})
		if _, err := dialClient(t, sock).Handshake(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		if !logs.has("too many open files (failure 3 of") {
			t.Fatalf("failures not logged:\n%s", logs)
		}
	})
	t.Run("persistent", func(t *testing.T) {
		ln, _ := unixListener(t)
		s, _ := testConnServer(t, maxVsockConns)
		s.maxFailures = 5
		select {
		case err := <-startServe(t, context.Background(), s, &flakyListener{Listener: ln, fails: -1, err: errEMFILE}):
			if !errors.Is(err, errEMFILE) || !strings.Contains(err.Error(), "5 failures in a row") {
				t.Fatalf("serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("serve kept retrying a listener that always fails")
		}
	})
}

func TestConnServerStops(t *testing.T) {
	t.Run("listener closed", func(t *testing.T) {
		ln, sock := unixListener(t)
		s, _ := testConnServer(t, maxVsockConns)
		done := startServe(t, context.Background(), s, ln)
		c := dialClient(t, sock)
		ctx := testCtx(t)
		if _, err := c.Handshake(ctx); err != nil {
			t.Fatal(err)
		}
		ln.Close()
		if err := <-done; err != nil {
			t.Fatalf("serve after its listener closed: %v, want nil", err)
		}
		// A connected host keeps its connection.
		if _, err := c.Ping(ctx); err != nil {
			t.Fatalf("connection after the listener closed: %v", err)
		}
	})
	t.Run("context done", func(t *testing.T) {
		ln, sock := unixListener(t)
		s, _ := testConnServer(t, maxVsockConns)
		ctx, cancel := context.WithCancel(context.Background())
		done := startServe(t, ctx, s, ln)
		c := dialClient(t, sock)
		if _, err := c.Handshake(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("serve after cancel: %v", err)
		}
		select {
		case <-c.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("a connection outlived the context")
		}
		if _, err := net.Dial("unix", sock); err == nil {
			t.Fatal("the listener still accepts after the context ended")
		}
	})
}
