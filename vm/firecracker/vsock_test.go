package firecracker

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// vsockServer plays Firecracker's host-side vsock socket: it reads the
// CONNECT line, checks it, and answers with reply (then, when echo is set,
// echoes the stream).
func vsockServer(t *testing.T, reply string, echo bool) (string, <-chan string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "fcvsock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	uds := filepath.Join(dir, "v.sock")
	ln, err := net.Listen("unix", uds)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	lines := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		line, _ := br.ReadString('\n')
		lines <- line
		if reply == "" {
			return // nothing listens on the port: Firecracker hangs up
		}
		io.WriteString(c, reply)
		if echo {
			io.Copy(c, br)
		}
	}()
	return uds, lines
}

func TestDialVsock(t *testing.T) {
	// The answer and the guest's first bytes arrive in one write: the
	// bytes after the handshake must not be lost.
	uds, lines := vsockServer(t, "OK 1073741824\nhello from the guest", true)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := DialVsock(ctx, uds, 52)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if l := <-lines; l != "CONNECT 52\n" {
		t.Errorf("sent %q, want %q", l, "CONNECT 52\n")
	}
	buf := make([]byte, len("hello from the guest"))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello from the guest" {
		t.Fatalf("read %q, %v", buf, err)
	}
	io.WriteString(c, "ping")
	if _, err := io.ReadFull(c, buf[:4]); err != nil || string(buf[:4]) != "ping" {
		t.Fatalf("echo %q, %v", buf[:4], err)
	}
}

func TestDialVsockErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cases := map[string]string{
		"":                                       "no answer",
		"NO\n":                                   "unexpected answer",
		"OK port\n":                              "unexpected answer",
		strings.Repeat("x", maxHandshakeLine+10): "without a newline",
	}
	for reply, want := range cases {
		uds, _ := vsockServer(t, reply, false)
		_, err := DialVsock(ctx, uds, 52)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("reply %.20q: %v, want %q", reply, err, want)
		}
	}
	if _, err := DialVsock(ctx, filepath.Join(t.TempDir(), "none.sock"), 52); err == nil {
		t.Error("dialled a missing socket")
	}
}
