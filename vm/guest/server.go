package guest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sync"
	"time"
)

// Handler does the guest's real work. The Server has validated every
// request before it calls a method. An error becomes an error response:
// return *Error to choose its code; fs.ErrNotExist maps to CodeNotFound.
type Handler interface {
	// Info describes the agent for the handshake reply (Version is set by
	// the Server).
	Info() HelloReply
	Exec(ctx context.Context, req *ExecRequest) (*ExecResult, error)
	ReadFile(ctx context.Context, req *ReadFileRequest) (*ReadFileReply, error)
	WriteFile(ctx context.Context, req *WriteFileRequest) (*WriteFileReply, error)
	List(ctx context.Context, req *ListRequest) (*ListReply, error)
}

// Server answers requests from one host channel.
type Server struct {
	Handler Handler
	// Logf, when set, receives problems with the stream (bad frames,
	// undecodable requests) that have no request to answer.
	Logf func(format string, args ...any)

	// start is when the Server first served; ping reports uptime from it.
	// Serve may run on several connections at once, hence the Once.
	startOnce sync.Once
	start     time.Time
}

// serveState is one Serve call's state: the negotiated session, in-flight
// requests, and the write lock that keeps frames whole.
type serveState struct {
	s       *Server
	w       io.Writer
	wmu     sync.Mutex
	mu      sync.Mutex
	session uint64
	version int
	running map[uint64]context.CancelFunc // keyed by request id, current session only
	wg      sync.WaitGroup
}

// Serve reads requests from rw until it fails or ctx is done, running each
// in its own goroutine. Bad frames and bad requests are answered (or logged
// when nothing can be answered) and never end the loop. Serve returns the
// read error; requests still running are cancelled and waited for.
func (s *Server) Serve(ctx context.Context, rw io.ReadWriter) error {
	if s.Handler == nil {
		return errors.New("guest: Server.Handler is nil")
	}
	s.startOnce.Do(func() { s.start = time.Now() })
	ctx, cancel := context.WithCancel(ctx)
	st := &serveState{s: s, w: rw, running: map[uint64]context.CancelFunc{}}
	defer func() {
		cancel()
		st.wg.Wait()
	}()
	fr := NewFrameReader(rw, MaxFrameBytes)
	for {
		payload, err := fr.ReadFrame()
		if err != nil {
			var fe *FrameError
			if !errors.As(err, &fe) {
				return err
			}
			s.logf("%v", fe)
			if fe.Kind != "garbage" {
				// Nobody can be answered by id; tell the host anyway so
				// the problem is visible on its side.
				st.reply(0, 0, "", nil, &Error{Code: CodeProtocol, Message: fe.Error()})
			}
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		st.dispatch(ctx, payload)
	}
}

func (s *Server) logf(format string, args ...any) {
	if s.Logf != nil {
		s.Logf(format, args...)
	}
}

func (st *serveState) dispatch(ctx context.Context, payload []byte) {
	var env envelope
	if err := json.Unmarshal(payload, &env); err != nil {
		st.s.logf("guest: undecodable request: %v", err)
		st.reply(0, 0, "", nil, badRequest("undecodable request: %v", err))
		return
	}
	switch env.Kind {
	case KindResult:
		// Our own frames echoed back (a serial line before raw mode), or a
		// confused peer: there is nothing to answer.
		st.s.logf("guest: ignoring a result frame from the host (id %d)", env.ID)
		return
	case KindHello:
		st.hello(&env)
		return
	case KindCancel:
		st.cancel(&env)
		return
	}
	st.mu.Lock()
	if st.version == 0 || env.Session != st.session {
		st.mu.Unlock()
		st.reply(env.Session, env.ID, env.Kind, nil, &Error{Code: CodeHandshake, Message: "no handshake for this session: send hello first"})
		return
	}
	if _, dup := st.running[env.ID]; dup {
		st.mu.Unlock()
		st.reply(env.Session, env.ID, env.Kind, nil, badRequest("request id %d is already in flight", env.ID))
		return
	}
	if len(st.running) >= MaxConcurrentRequests {
		st.mu.Unlock()
		st.reply(env.Session, env.ID, env.Kind, nil, &Error{Code: CodeBusy, Message: fmt.Sprintf("%d requests already in flight, limit %d", MaxConcurrentRequests, MaxConcurrentRequests)})
		return
	}
	rctx, cancel := context.WithCancel(ctx)
	st.running[env.ID] = cancel
	st.mu.Unlock()
	st.wg.Add(1)
	go func() {
		defer st.wg.Done()
		body, err := st.run(rctx, &env)
		st.mu.Lock()
		if st.session == env.Session {
			delete(st.running, env.ID)
		}
		st.mu.Unlock()
		cancel()
		st.reply(env.Session, env.ID, env.Kind, body, err)
	}()
}

func (st *serveState) hello(env *envelope) {
	var h Hello
	if err := json.Unmarshal(env.Body, &h); err != nil {
		st.reply(env.Session, env.ID, env.Kind, nil, &Error{Code: CodeHandshake, Message: fmt.Sprintf("undecodable hello: %v", err)})
		return
	}
	if h.Protocol != ProtocolName {
		st.reply(env.Session, env.ID, env.Kind, nil, &Error{Code: CodeHandshake, Message: fmt.Sprintf("protocol %q is not %q", h.Protocol, ProtocolName)})
		return
	}
	v := min(h.MaxVersion, MaxProtocolVersion)
	if v < h.MinVersion || v < MinProtocolVersion {
		st.reply(env.Session, env.ID, env.Kind, nil, &Error{Code: CodeHandshake, Message: fmt.Sprintf(
			"no common protocol version: host speaks %d..%d, guest speaks %d..%d", h.MinVersion, h.MaxVersion, MinProtocolVersion, MaxProtocolVersion)})
		return
	}
	st.mu.Lock()
	if env.Session != st.session {
		// A new host session: requests of the old one keep running to
		// completion (their answers go to a session nobody listens to),
		// but they no longer count against the new session's limit.
		st.running = map[uint64]context.CancelFunc{}
	}
	st.session, st.version = env.Session, v
	st.mu.Unlock()
	info := st.s.Handler.Info()
	info.Version = v
	st.reply(env.Session, env.ID, env.Kind, &info, nil)
}

func (st *serveState) cancel(env *envelope) {
	var c CancelRequest
	if err := json.Unmarshal(env.Body, &c); err != nil {
		st.reply(env.Session, env.ID, env.Kind, nil, badRequest("undecodable cancel: %v", err))
		return
	}
	st.mu.Lock()
	stop, ok := st.running[c.ID]
	if env.Session != st.session {
		ok = false
	}
	st.mu.Unlock()
	if ok {
		stop()
	}
	// Cancels are fire-and-forget: the client does not wait for an answer.
}

// run decodes, validates and executes one request, turning panics into
// errors so that no request can stop the agent.
func (st *serveState) run(ctx context.Context, env *envelope) (body any, err error) {
	defer func() {
		if p := recover(); p != nil {
			body, err = nil, &Error{Code: CodeInternal, Message: fmt.Sprintf("panic: %v", p)}
		}
	}()
	h := st.s.Handler
	switch env.Kind {
	case KindPing:
		st.mu.Lock()
		n := len(st.running)
		st.mu.Unlock()
		return &PingReply{UptimeNanos: int64(time.Since(st.s.start)), InFlight: n}, nil
	case KindExec:
		var req ExecRequest
		if err := decode(env.Body, &req); err != nil {
			return nil, err
		}
		return h.Exec(ctx, &req)
	case KindRead:
		var req ReadFileRequest
		if err := decode(env.Body, &req); err != nil {
			return nil, err
		}
		return h.ReadFile(ctx, &req)
	case KindWrite:
		var req WriteFileRequest
		if err := decode(env.Body, &req); err != nil {
			return nil, err
		}
		return h.WriteFile(ctx, &req)
	case KindList:
		var req ListRequest
		if err := decode(env.Body, &req); err != nil {
			return nil, err
		}
		return h.List(ctx, &req)
	}
	return nil, badRequest("unknown request kind %q", env.Kind)
}

// validator is implemented by every request type.
type validator interface{ Validate() error }

func decode(raw json.RawMessage, v validator) error {
	if len(raw) == 0 {
		return badRequest("request has no body")
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return badRequest("undecodable body: %v", err)
	}
	return v.Validate()
}

// reply sends one response. A response that would not fit in a frame is
// replaced by an error saying so.
func (st *serveState) reply(session, id uint64, op string, body any, err error) {
	env := envelope{Session: session, ID: id, Kind: KindResult}
	var raw []byte
	if err != nil {
		env.Code, env.Error = errorCode(err), errorMessage(err)
	} else if body != nil {
		var merr error
		if raw, merr = json.Marshal(body); merr != nil {
			env.Code, env.Error = CodeInternal, fmt.Sprintf("encoding %s result: %v", op, merr)
			raw = nil
		}
	}
	parts, perr := encodeEnvelope(&env, raw)
	if perr == nil && frameLen(parts) > MaxFrameBytes {
		msg := fmt.Sprintf("%s result is %d bytes, over the %d-byte frame limit", op, frameLen(parts), MaxFrameBytes)
		parts, perr = encodeEnvelope(&envelope{Session: session, ID: id, Kind: KindResult, Code: CodeTooLarge, Error: msg}, nil)
	}
	if perr != nil {
		st.s.logf("guest: cannot encode response %d: %v", id, perr)
		return
	}
	st.wmu.Lock()
	werr := writeFrame(st.w, MaxFrameBytes, parts...)
	st.wmu.Unlock()
	if werr != nil {
		st.s.logf("guest: writing response %d: %v", id, werr)
	}
}

// encodeEnvelope returns env as JSON with body spliced in as its "body"
// field, in parts, so that a large body is not copied.
func encodeEnvelope(env *envelope, body []byte) ([][]byte, error) {
	env.Body = nil
	head, err := json.Marshal(env)
	if err != nil {
		return nil, err
	}
	if len(body) == 0 {
		return [][]byte{head}, nil
	}
	return [][]byte{head[:len(head)-1], []byte(`,"body":`), body, []byte("}")}, nil
}

func frameLen(parts [][]byte) int {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	return n
}

func errorCode(err error) string {
	var ge *Error
	switch {
	case errors.As(err, &ge):
		return ge.Code
	case errors.Is(err, fs.ErrNotExist):
		return CodeNotFound
	case errors.Is(err, context.DeadlineExceeded):
		return CodeTimeout
	}
	return CodeFailed
}

func errorMessage(err error) string {
	if ge, ok := err.(*Error); ok {
		return ge.Message
	}
	return err.Error()
}
