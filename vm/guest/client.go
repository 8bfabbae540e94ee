package guest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// ErrClosed is returned by calls on a Client whose connection has ended.
var ErrClosed = errors.New("guest: connection closed")

// Client is the host side of one channel to a guest agent. It is safe for
// concurrent use: calls are multiplexed by request id, at most
// MaxConcurrentRequests at a time (further calls wait for a slot or their
// context).
type Client struct {
	conn    io.ReadWriteCloser
	session uint64
	nextID  atomic.Uint64
	sem     chan struct{}
	out     chan [][]byte // frame payloads, in parts, for the writer goroutine
	done    chan struct{}

	mu       sync.Mutex
	pending  map[uint64]chan *envelope
	err      error
	version  int
	protoErr error

	// Logf, when set before the first call, receives stream problems that
	// belong to no call (bad frames, protocol errors from the guest).
	Logf func(format string, args ...any)
}

// NewClient starts a Client on conn. It owns conn from now on: Close closes
// it. Call Handshake before anything else.
func NewClient(conn io.ReadWriteCloser) *Client {
	session := rand.Uint64()
	for session == 0 {
		session = rand.Uint64()
	}
	c := &Client{
		conn:    conn,
		session: session,
		sem:     make(chan struct{}, MaxConcurrentRequests),
		out:     make(chan [][]byte, MaxConcurrentRequests),
		done:    make(chan struct{}),
		pending: map[uint64]chan *envelope{},
	}
	go c.readLoop()
	go c.writeLoop()
	return c
}

// Session is the random number that tags this client's requests.
func (c *Client) Session() uint64 { return c.session }

// Version is the negotiated protocol version, 0 before a handshake.
func (c *Client) Version() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.version
}

// Close ends the connection; calls in flight fail with ErrClosed.
func (c *Client) Close() error {
	err := c.conn.Close()
	c.fail(ErrClosed)
	return err
}

// Done is closed when the connection has ended.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err is why the connection ended, nil while it is up.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// LastProtocolError is the most recent stream-level complaint from the guest
// (a frame of ours it could not read), nil if none.
func (c *Client) LastProtocolError() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.protoErr
}

func (c *Client) logf(format string, args ...any) {
	if c.Logf != nil {
		c.Logf(format, args...)
	}
}

func (c *Client) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return
	}
	c.err = err
	close(c.done)
}

func (c *Client) readLoop() {
	fr := NewFrameReader(c.conn, MaxFrameBytes)
	for {
		payload, err := fr.ReadFrame()
		if err != nil {
			var fe *FrameError
			if errors.As(err, &fe) {
				c.logf("%v", fe)
				continue
			}
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			c.fail(fmt.Errorf("%w: %v", ErrClosed, err))
			return
		}
		var env envelope
		if err := json.Unmarshal(payload, &env); err != nil {
			c.logf("guest: undecodable response: %v", err)
			continue
		}
		if env.Kind != KindResult {
			// Our own request echoed back by a serial line not yet in
			// raw mode: harmless, the guest will answer the original.
			continue
		}
		if env.ID == 0 {
			perr := &Error{Code: env.Code, Message: env.Error}
			c.mu.Lock()
			c.protoErr = perr
			c.mu.Unlock()
			c.logf("%v", perr)
			continue
		}
		if env.Session != c.session {
			continue // an answer to an earlier host's request
		}
		c.mu.Lock()
		ch := c.pending[env.ID]
		delete(c.pending, env.ID)
		c.mu.Unlock()
		if ch != nil {
			ch <- &env
		}
	}
}

func (c *Client) writeLoop() {
	for {
		select {
		case <-c.done:
			return
		case parts := <-c.out:
			if err := writeFrame(c.conn, MaxFrameBytes, parts...); err != nil {
				c.fail(fmt.Errorf("%w: write: %v", ErrClosed, err))
				return
			}
		}
	}
}

// send queues one frame for the writer.
func (c *Client) send(ctx context.Context, parts [][]byte) error {
	select {
	case c.out <- parts:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return c.Err()
	}
}

// call sends one request and decodes its answer into resp.
func (c *Client) call(ctx context.Context, kind string, req, resp any) error {
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("guest %s: %w", kind, ctx.Err())
	case <-c.done:
		return fmt.Errorf("guest %s: %w", kind, c.Err())
	}
	defer func() { <-c.sem }()

	body, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("guest %s: encoding request: %w", kind, err)
	}
	id := c.nextID.Add(1)
	parts, err := encodeEnvelope(&envelope{Session: c.session, ID: id, Kind: kind}, body)
	if err != nil {
		return fmt.Errorf("guest %s: encoding request: %w", kind, err)
	}
	if n := frameLen(parts); n > MaxFrameBytes {
		return fmt.Errorf("guest %s: %w: request of %d bytes, limit %d", kind, ErrFrameTooLarge, n, MaxFrameBytes)
	}
	ch := make(chan *envelope, 1)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return fmt.Errorf("guest %s: %w", kind, c.err)
	}
	c.pending[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()
	if err := c.send(ctx, parts); err != nil {
		return fmt.Errorf("guest %s: %w", kind, err)
	}
	var env *envelope
	select {
	case env = <-ch:
	case <-ctx.Done():
		if kind != KindHello && kind != KindPing {
			c.cancelRemote(id)
		}
		return fmt.Errorf("guest %s: %w", kind, ctx.Err())
	case <-c.done:
		return fmt.Errorf("guest %s: %w", kind, c.Err())
	}
	if env.Error != "" || env.Code != "" {
		return &Error{Op: kind, Code: env.Code, Message: env.Error}
	}
	if resp == nil {
		return nil
	}
	if err := json.Unmarshal(env.Body, resp); err != nil {
		return fmt.Errorf("guest %s: undecodable response: %w", kind, err)
	}
	return nil
}

// cancelRemote tells the guest to abandon request id, without waiting.
func (c *Client) cancelRemote(id uint64) {
	body, _ := json.Marshal(&CancelRequest{ID: id})
	parts, err := encodeEnvelope(&envelope{Session: c.session, ID: c.nextID.Add(1), Kind: KindCancel}, body)
	if err != nil {
		return
	}
	select {
	case c.out <- parts:
	default:
		// The writer is backed up; the guest's own timeout will end the
		// request instead.
	}
}

// Handshake opens the session and returns the guest's description.
func (c *Client) Handshake(ctx context.Context) (*HelloReply, error) {
	var r HelloReply
	err := c.call(ctx, KindHello, &Hello{Protocol: ProtocolName, MinVersion: MinProtocolVersion, MaxVersion: MaxProtocolVersion}, &r)
	if err != nil {
		return nil, err
	}
	if r.Version < MinProtocolVersion || r.Version > MaxProtocolVersion {
		return nil, &Error{Op: KindHello, Code: CodeHandshake, Message: fmt.Sprintf("guest chose version %d, host speaks %d..%d", r.Version, MinProtocolVersion, MaxProtocolVersion)}
	}
	c.mu.Lock()
	c.version = r.Version
	c.mu.Unlock()
	return &r, nil
}

// WaitReady repeats the handshake every attempt until the guest answers or
// ctx ends. It is how a host learns that a booting VM's agent is up: until
// the agent opens its end of the channel, requests go unanswered.
func (c *Client) WaitReady(ctx context.Context, attempt time.Duration) (*HelloReply, error) {
	for {
		actx, cancel := context.WithTimeout(ctx, attempt)
		r, err := c.Handshake(actx)
		cancel()
		if err == nil {
			return r, nil
		}
		var ge *Error
		if errors.As(err, &ge) || ctx.Err() != nil || c.Err() != nil {
			// An answer that is an error (wrong protocol, no common
			// version) will not improve by asking again.
			return nil, err
		}
	}
}

// Ping checks that the agent answers.
func (c *Client) Ping(ctx context.Context) (*PingReply, error) {
	var r PingReply
	if err := c.call(ctx, KindPing, struct{}{}, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Exec runs a command in the guest. A command that runs and exits non-zero
// is not an error: look at ExecResult.ExitCode.
func (c *Client) Exec(ctx context.Context, req *ExecRequest) (*ExecResult, error) {
	if err := req.Validate(); err != nil {
		return nil, opError(KindExec, err)
	}
	var r ExecResult
	if err := c.call(ctx, KindExec, req, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// ReadFile reads a whole file of at most MaxFileBytes.
func (c *Client) ReadFile(ctx context.Context, path string) (*ReadFileReply, error) {
	req := &ReadFileRequest{Path: path}
	if err := req.Validate(); err != nil {
		return nil, opError(KindRead, err)
	}
	var r ReadFileReply
	if err := c.call(ctx, KindRead, req, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// WriteFile creates or replaces a file.
func (c *Client) WriteFile(ctx context.Context, req *WriteFileRequest) error {
	if err := req.Validate(); err != nil {
		return opError(KindWrite, err)
	}
	var r WriteFileReply
	if err := c.call(ctx, KindWrite, req, &r); err != nil {
		return err
	}
	if r.Bytes != len(req.Data) {
		return &Error{Op: KindWrite, Code: CodeFailed, Message: fmt.Sprintf("guest wrote %d of %d bytes to %s", r.Bytes, len(req.Data), req.Path)}
	}
	return nil
}

// List lists a directory.
func (c *Client) List(ctx context.Context, path string) (*ListReply, error) {
	req := &ListRequest{Path: path}
	if err := req.Validate(); err != nil {
		return nil, opError(KindList, err)
	}
	var r ListReply
	if err := c.call(ctx, KindList, req, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

func opError(op string, err error) error {
	var ge *Error
	if errors.As(err, &ge) {
		return &Error{Op: op, Code: ge.Code, Message: ge.Message}
	}
	return fmt.Errorf("guest %s: %w", op, err)
}
