package firecracker

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// Vsock handshake limits.
const (
	// maxHandshakeLine bounds Firecracker's answer to CONNECT ("OK 1073741824\n").
	maxHandshakeLine = 64
	// handshakeTimeout bounds the CONNECT exchange when ctx has no deadline.
	handshakeTimeout = 5 * time.Second
)

// DialVsock opens a stream to port in the guest through Firecracker's
// host-side vsock Unix socket at uds: it connects, sends "CONNECT <port>\n"
// and expects "OK <host port>\n". Firecracker closes the connection instead
// when nothing in the guest listens on port.
func DialVsock(ctx context.Context, uds string, port uint32) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", uds)
	if err != nil {
		return nil, fmt.Errorf("vsock %s: %w", uds, err)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(handshakeTimeout)
	}
	conn.SetDeadline(deadline)
	if _, err := fmt.Fprintf(conn, "CONNECT %d\n", port); err != nil {
		conn.Close()
		return nil, fmt.Errorf("vsock %s: send CONNECT %d: %w", uds, port, err)
	}
	br := bufio.NewReaderSize(conn, maxHandshakeLine)
	line, err := br.ReadSlice('\n')
	if err != nil {
		conn.Close()
		if err == bufio.ErrBufferFull {
			return nil, fmt.Errorf("vsock %s: CONNECT %d: answer longer than %d bytes without a newline", uds, port, maxHandshakeLine)
		}
		return nil, fmt.Errorf("vsock %s: CONNECT %d: no answer (is the guest listening on port %d?): %w", uds, port, port, err)
	}
	ans := strings.TrimSuffix(string(line), "\n")
	rest, ok := strings.CutPrefix(ans, "OK ")
	if _, perr := strconv.ParseUint(rest, 10, 32); !ok || perr != nil {
		conn.Close()
		return nil, fmt.Errorf("vsock %s: CONNECT %d: unexpected answer %q, want \"OK <port>\"", uds, port, ans)
	}
	conn.SetDeadline(time.Time{})
	// Bytes the guest sent right after the handshake may already sit in
	// the reader's buffer: keep reading through it.
	return &bufferedConn{Conn: conn, r: br}, nil
}

// bufferedConn is a net.Conn whose reads drain a bufio.Reader first.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
