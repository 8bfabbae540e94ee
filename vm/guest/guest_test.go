package guest

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"
)

// memHandler is an in-memory guest for protocol tests: files in a map and a
// few built-in commands. The real handler (cmd/kelpie-guest) has its own
// tests that run real processes over this protocol.
type memHandler struct {
	mu      sync.Mutex
	files   map[string][]byte
	arrived chan string   // exec "wait" commands report here
	release chan struct{} // and block until this closes or ctx ends
	ctxErrs chan error    // the ctx error a blocked exec saw
}

func newMemHandler() *memHandler {
	return &memHandler{
		files:   map[string][]byte{},
		arrived: make(chan string, 64),
		release: make(chan struct{}),
		ctxErrs: make(chan error, 64),
	}
}

func (h *memHandler) Info() HelloReply { return HelloReply{Agent: "mem-test", PID: 7} }

func (h *memHandler) Exec(ctx context.Context, req *ExecRequest) (*ExecResult, error) {
	switch req.Argv[0] {
	case "echo":
		return &ExecResult{Stdout: []byte(strings.Join(req.Argv[1:], " ") + "\n")}, nil
	case "cat":
		return &ExecResult{Stdout: req.Stdin}, nil
	case "exit":
		return &ExecResult{ExitCode: 3, Stderr: []byte("bye")}, nil
	case "wait":
		h.arrived <- strings.Join(req.Argv[1:], " ")
		select {
		case <-h.release:
			return &ExecResult{Stdout: []byte("released " + strings.Join(req.Argv[1:], " "))}, nil
		case <-ctx.Done():
			h.ctxErrs <- ctx.Err()
			return nil, ctx.Err()
		}
	case "panic":
		panic("handler exploded")
	}
	return nil, fmt.Errorf("exec %q: %w", req.Argv[0], fs.ErrNotExist)
}

func (h *memHandler) ReadFile(_ context.Context, req *ReadFileRequest) (*ReadFileReply, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, ok := h.files[req.Path]
	if !ok {
		return nil, fmt.Errorf("open %s: %w", req.Path, fs.ErrNotExist)
	}
	return &ReadFileReply{Data: d, Mode: 0o644}, nil
}

func (h *memHandler) WriteFile(_ context.Context, req *WriteFileRequest) (*WriteFileReply, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.files[req.Path] = bytes.Clone(req.Data)
	return &WriteFileReply{Bytes: len(req.Data)}, nil
}

func (h *memHandler) List(_ context.Context, req *ListRequest) (*ListReply, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var r ListReply
	for p, d := range h.files {
		if name, ok := strings.CutPrefix(p, req.Path); ok && name != "" && !strings.Contains(name, "/") {
			r.Entries = append(r.Entries, DirEntry{Name: name, Size: int64(len(d))})
		}
	}
	sort.Slice(r.Entries, func(i, j int) bool { return r.Entries[i].Name < r.Entries[j].Name })
	return &r, nil
}

// startServer serves h on one end of a pipe and returns the other end.
func startServer(t *testing.T, h Handler) net.Conn {
	t.Helper()
	host, guestEnd := net.Pipe()
	srv := &Server{Handler: h, Logf: t.Logf}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), guestEnd) }()
	t.Cleanup(func() {
		host.Close()
		guestEnd.Close()
		if err := <-done; err == nil {
			t.Errorf("Serve returned nil after its connection closed")
		}
	})
	return host
}

func connect(t *testing.T, h Handler) *Client {
	t.Helper()
	c := NewClient(startServer(t, h))
	c.Logf = t.Logf
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Handshake(ctx); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestRoundTrip(t *testing.T) {
	h := newMemHandler()
	host := startServer(t, h)
	c := NewClient(host)
	defer c.Close()
	ctx := testCtx(t)

	hello, err := c.Handshake(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if hello.Version != MaxProtocolVersion || hello.Agent != "mem-test" || hello.PID != 7 {
		t.Fatalf("hello = %+v", hello)
	}
	if c.Version() != MaxProtocolVersion {
		t.Fatalf("Version() = %d", c.Version())
	}
	if _, err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := c.Exec(ctx, &ExecRequest{Argv: []string{"echo", "hi", "there"}})
	if err != nil || string(res.Stdout) != "hi there\n" {
		t.Fatalf("exec echo = %+v, %v", res, err)
	}
	res, err = c.Exec(ctx, &ExecRequest{Argv: []string{"exit"}})
	if err != nil || res.ExitCode != 3 || string(res.Stderr) != "bye" {
		t.Fatalf("exec exit = %+v, %v", res, err)
	}
	data := bytes.Repeat([]byte{0, 1, 2, 'K', 'L', 'P', 'F', 255}, 1000) // binary, contains the magic
	if err := c.WriteFile(ctx, &WriteFileRequest{Path: "/tmp/a", Data: data}); err != nil {
		t.Fatal(err)
	}
	got, err := c.ReadFile(ctx, "/tmp/a")
	if err != nil || !bytes.Equal(got.Data, data) {
		t.Fatalf("read back %d bytes, err %v", len(got.Data), err)
	}
	ls, err := c.List(ctx, "/tmp/")
	if err != nil || len(ls.Entries) != 1 || ls.Entries[0].Name != "a" || ls.Entries[0].Size != int64(len(data)) {
		t.Fatalf("list = %+v, %v", ls, err)
	}
	_, err = c.ReadFile(ctx, "/nope")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "/nope") {
		t.Fatalf("read missing file: err = %v, want not_found naming the path", err)
	}
}

func TestErrorsCarryTheirMessage(t *testing.T) {
	c := connect(t, newMemHandler())
	defer c.Close()
	_, err := c.Exec(testCtx(t), &ExecRequest{Argv: []string{"frobnicate"}})
	var ge *Error
	if !errors.As(err, &ge) || ge.Op != KindExec || ge.Code != CodeNotFound || !strings.Contains(ge.Message, `exec "frobnicate"`) {
		t.Fatalf("err = %#v", err)
	}
}

func TestPanicInHandlerIsAnErrorAndServerGoesOn(t *testing.T) {
	c := connect(t, newMemHandler())
	defer c.Close()
	ctx := testCtx(t)
	_, err := c.Exec(ctx, &ExecRequest{Argv: []string{"panic"}})
	var ge *Error
	if !errors.As(err, &ge) || ge.Code != CodeInternal || !strings.Contains(ge.Message, "handler exploded") {
		t.Fatalf("err = %v", err)
	}
	if _, err := c.Ping(ctx); err != nil {
		t.Fatalf("ping after panic: %v", err)
	}
}

func TestClientRejectsBadRequestsLocally(t *testing.T) {
	c := connect(t, newMemHandler())
	defer c.Close()
	ctx := testCtx(t)
	cases := []struct {
		name string
		err  error
		want string
	}{
		{"empty argv", func() error { _, err := c.Exec(ctx, &ExecRequest{}); return err }(), "argv is empty"},
		{"relative path", func() error { _, err := c.ReadFile(ctx, "etc/passwd"); return err }(), "not absolute"},
		{"big file", c.WriteFile(ctx, &WriteFileRequest{Path: "/x", Data: make([]byte, MaxFileBytes+1)}), "limit 16777216"},
		{"bad env", func() error {
			_, err := c.Exec(ctx, &ExecRequest{Argv: []string{"echo"}, Env: []string{"NOEQUALS"}})
			return err
		}(), "env[0]"},
		{"timeout", func() error {
			_, err := c.Exec(ctx, &ExecRequest{Argv: []string{"echo"}, Timeout: 2 * time.Hour})
			return err
		}(), "outside"},
	}
	for _, tc := range cases {
		if tc.err == nil || !strings.Contains(tc.err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want it to mention %q", tc.name, tc.err, tc.want)
		}
	}
	// A request that passes validation but does not fit in a frame.
	env := make([]string, 3000)
	for i := range env {
		env[i] = fmt.Sprintf("K%d=%s", i, strings.Repeat("v", 20000))
	}
	_, err := c.Exec(ctx, &ExecRequest{Argv: []string{"echo"}, Env: env})
	if !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized request: err = %v, want ErrFrameTooLarge", err)
	}
	if _, err := c.Ping(ctx); err != nil {
		t.Fatalf("ping after refused requests: %v", err)
	}
}

func TestConcurrentRequests(t *testing.T) {
	h := newMemHandler()
	c := connect(t, h)
	defer c.Close()
	ctx := testCtx(t)
	const n = MaxConcurrentRequests
	var wg sync.WaitGroup
	results := make([]string, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := c.Exec(ctx, &ExecRequest{Argv: []string{"wait", fmt.Sprint(i)}})
			errs[i] = err
			if r != nil {
				results[i] = string(r.Stdout)
			}
		}()
	}
	// All n must be running in the guest at the same time before any is
	// released: a server that handled requests one by one would stall here.
	seen := map[string]bool{}
	for len(seen) < n {
		select {
		case id := <-h.arrived:
			seen[id] = true
		case <-ctx.Done():
			t.Fatalf("only %d of %d requests reached the handler concurrently", len(seen), n)
		}
	}
	// The client holds MaxConcurrentRequests slots; a ping must wait for one.
	pctx, pcancel := context.WithTimeout(ctx, 100*time.Millisecond)
	if _, err := c.Ping(pctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ping while %d requests were in flight: err = %v, want it to wait for a slot", n, err)
	}
	pcancel()
	close(h.release)
	wg.Wait()
	for i := range n {
		if errs[i] != nil || results[i] != fmt.Sprintf("released %d", i) {
			t.Errorf("request %d: %q, %v (answers crossed?)", i, results[i], errs[i])
		}
	}
}

func TestCancelReachesTheGuest(t *testing.T) {
	h := newMemHandler()
	c := connect(t, h)
	defer c.Close()
	ctx, cancel := context.WithCancel(testCtx(t))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, &ExecRequest{Argv: []string{"wait", "forever"}})
		errc <- err
	}()
	<-h.arrived
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("exec err = %v, want context.Canceled", err)
	}
	select {
	case err := <-h.ctxErrs:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("handler saw %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the guest's request was never cancelled")
	}
}

func TestConnectionLossFailsPendingCalls(t *testing.T) {
	h := newMemHandler()
	host, guestEnd := net.Pipe()
	srv := &Server{Handler: h}
	go srv.Serve(context.Background(), guestEnd)
	c := NewClient(host)
	ctx := testCtx(t)
	if _, err := c.Handshake(ctx); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, &ExecRequest{Argv: []string{"wait", "x"}})
		errc <- err
	}()
	<-h.arrived
	guestEnd.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("pending exec err = %v, want ErrClosed", err)
	}
	if _, err := c.Ping(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("ping after loss err = %v, want ErrClosed", err)
	}
	<-c.Done()
}

// rawPeer speaks frames directly, to send what a Client never would.
type rawPeer struct {
	t    *testing.T
	conn net.Conn
	in   chan envelope
}

func newRawPeer(t *testing.T, conn net.Conn) *rawPeer {
	p := &rawPeer{t: t, conn: conn, in: make(chan envelope, 64)}
	go func() {
		fr := NewFrameReader(conn, MaxFrameBytes)
		for {
			b, err := fr.ReadFrame()
			if err != nil {
				var fe *FrameError
				if errors.As(err, &fe) {
					continue
				}
				close(p.in)
				return
			}
			var e envelope
			if err := json.Unmarshal(b, &e); err != nil {
				t.Errorf("server sent undecodable JSON: %v", err)
				continue
			}
			p.in <- e
		}
	}()
	return p
}

func (p *rawPeer) write(b []byte) {
	p.t.Helper()
	if _, err := p.conn.Write(b); err != nil {
		p.t.Fatal(err)
	}
}

func (p *rawPeer) frame(payload []byte) []byte {
	f, err := appendFrame(nil, payload, 1<<30)
	if err != nil {
		p.t.Fatal(err)
	}
	return f
}

func (p *rawPeer) request(session, id uint64, kind string, body any) []byte {
	b, _ := json.Marshal(body)
	payload, _ := json.Marshal(&envelope{Session: session, ID: id, Kind: kind, Body: b})
	return p.frame(payload)
}

func (p *rawPeer) next() envelope {
	p.t.Helper()
	select {
	case e, ok := <-p.in:
		if !ok {
			p.t.Fatal("server closed the connection")
		}
		return e
	case <-time.After(10 * time.Second):
		p.t.Fatal("no answer from the server")
	}
	return envelope{}
}

func (p *rawPeer) hello(session uint64) {
	p.t.Helper()
	p.write(p.request(session, 1, KindHello, &Hello{Protocol: ProtocolName, MinVersion: 1, MaxVersion: 1}))
	if e := p.next(); e.Error != "" || e.ID != 1 {
		p.t.Fatalf("hello answer %+v", e)
	}
}

func TestServerSurvivesBadFrames(t *testing.T) {
	p := newRawPeer(t, startServer(t, newMemHandler()))
	p.hello(9)

	// Garbage between frames is skipped silently.
	p.write([]byte("\r\nboot noise KLP garbage\x00\xff"))
	p.write(p.request(9, 2, KindPing, struct{}{}))
	if e := p.next(); e.ID != 2 || e.Error != "" {
		t.Fatalf("ping after garbage: %+v", e)
	}

	// A corrupted frame is reported (id 0) and skipped.
	bad := p.request(9, 3, KindPing, struct{}{})
	bad[len(bad)-2] ^= 0x40
	p.write(bad)
	if e := p.next(); e.ID != 0 || e.Code != CodeProtocol || !strings.Contains(e.Error, "checksum") {
		t.Fatalf("corrupt frame answer: %+v", e)
	}

	// A frame whose header is corrupted is reported at once.
	bad = p.request(9, 3, KindPing, struct{}{})
	bad[5] ^= 0x10
	p.write(bad)
	if e := p.next(); e.ID != 0 || e.Code != CodeProtocol || !strings.Contains(e.Error, "header failed its checksum") {
		t.Fatalf("corrupt header answer: %+v", e)
	}

	// An oversized frame header is reported with the limit.
	hdr := p.frame(nil)
	binary.BigEndian.PutUint32(hdr[4:8], 0x7fffffff)
	binary.BigEndian.PutUint32(hdr[12:16], crc32.Checksum(hdr[:12], crcTable))
	p.write(hdr)
	if e := p.next(); e.ID != 0 || !strings.Contains(e.Error, "over the 50331648-byte limit") {
		t.Fatalf("oversized frame answer: %+v", e)
	}

	// Valid frames whose content is wrong get answers by id.
	p.write(p.frame([]byte("{not json")))
	if e := p.next(); e.Code != CodeBadRequest || !strings.Contains(e.Error, "undecodable request") {
		t.Fatalf("bad JSON answer: %+v", e)
	}
	p.write(p.request(9, 4, "reboot", struct{}{}))
	if e := p.next(); e.ID != 4 || !strings.Contains(e.Error, `unknown request kind "reboot"`) {
		t.Fatalf("unknown kind answer: %+v", e)
	}
	p.write(p.request(9, 5, KindExec, &ExecRequest{}))
	if e := p.next(); e.ID != 5 || e.Code != CodeBadRequest || e.Error != "argv is empty" {
		t.Fatalf("empty argv answer: %+v", e)
	}
	p.write(p.request(9, 6, KindRead, map[string]any{"path": 42}))
	if e := p.next(); e.ID != 6 || !strings.Contains(e.Error, "undecodable body") {
		t.Fatalf("wrong body type answer: %+v", e)
	}
	p.write(p.request(9, 7, KindWrite, &WriteFileRequest{Path: "/big", Data: make([]byte, MaxFileBytes+1)}))
	if e := p.next(); e.ID != 7 || e.Code != CodeTooLarge {
		t.Fatalf("big write answer: %+v", e)
	}

	// And after all that the server still works.
	p.write(p.request(9, 8, KindExec, &ExecRequest{Argv: []string{"echo", "alive"}}))
	e := p.next()
	var r ExecResult
	if e.ID != 8 || json.Unmarshal(e.Body, &r) != nil || string(r.Stdout) != "alive\n" {
		t.Fatalf("exec after bad frames: %+v", e)
	}
}

func TestHandshakeRules(t *testing.T) {
	p := newRawPeer(t, startServer(t, newMemHandler()))
	p.write(p.request(5, 1, KindPing, struct{}{}))
	if e := p.next(); e.Code != CodeHandshake {
		t.Fatalf("ping before hello: %+v", e)
	}
	p.write(p.request(5, 2, KindHello, &Hello{Protocol: ProtocolName, MinVersion: 5, MaxVersion: 7}))
	if e := p.next(); e.Code != CodeHandshake || e.Error != "no common protocol version: host speaks 5..7, guest speaks 1..1" {
		t.Fatalf("version mismatch: %+v", e)
	}
	p.write(p.request(5, 3, KindHello, &Hello{Protocol: "http", MinVersion: 1, MaxVersion: 1}))
	if e := p.next(); e.Code != CodeHandshake || !strings.Contains(e.Error, `"http"`) {
		t.Fatalf("wrong protocol: %+v", e)
	}
	p.hello(5)
	// A request from another session is refused: it belongs to a host that
	// has not said hello on this channel.
	p.write(p.request(6, 4, KindPing, struct{}{}))
	if e := p.next(); e.Code != CodeHandshake {
		t.Fatalf("ping from another session: %+v", e)
	}
}

func TestServerRefusesBeyondConcurrencyLimit(t *testing.T) {
	h := newMemHandler()
	p := newRawPeer(t, startServer(t, h))
	p.hello(3)
	for i := range MaxConcurrentRequests {
		p.write(p.request(3, uint64(100+i), KindExec, &ExecRequest{Argv: []string{"wait", fmt.Sprint(i)}}))
	}
	for range MaxConcurrentRequests {
		<-h.arrived
	}
	p.write(p.request(3, 200, KindPing, struct{}{}))
	if e := p.next(); e.ID != 200 || e.Code != CodeBusy || !strings.Contains(e.Error, "limit 16") {
		t.Fatalf("request beyond limit: %+v", e)
	}
	p.write(p.request(3, 100, KindPing, struct{}{}))
	if e := p.next(); e.ID != 100 || !strings.Contains(e.Error, "request id 100 is already in flight") {
		t.Fatalf("duplicate id: %+v", e)
	}
	close(h.release)
	got := map[uint64]bool{}
	for range MaxConcurrentRequests {
		e := p.next()
		if e.Error != "" && e.ID != 100 {
			t.Fatalf("unexpected error %+v", e)
		}
		got[e.ID] = true
	}
	if len(got) != MaxConcurrentRequests {
		t.Fatalf("answers: %v", got)
	}
}

func TestClientDropsAnswersForOtherSessions(t *testing.T) {
	host, fake := net.Pipe()
	c := NewClient(host)
	defer c.Close()
	go func() {
		fr := NewFrameReader(fake, 0)
		for {
			b, err := fr.ReadFrame()
			if err != nil {
				return
			}
			var req envelope
			json.Unmarshal(b, &req)
			// First an answer for the same id from a stale session, then a
			// protocol complaint, then the real answer.
			for _, e := range []envelope{
				{Session: req.Session + 1, ID: req.ID, Kind: KindResult, Error: "stale"},
				{Kind: KindResult, Code: CodeProtocol, Error: "complaint"},
				{Session: req.Session, ID: req.ID, Kind: KindResult, Body: json.RawMessage(`{"version":1,"agent":"fake"}`)},
			} {
				payload, _ := json.Marshal(&e)
				f, _ := appendFrame(nil, payload, MaxFrameBytes)
				fake.Write(f)
			}
		}
	}()
	h, err := c.Handshake(testCtx(t))
	if err != nil || h.Agent != "fake" {
		t.Fatalf("handshake = %+v, %v", h, err)
	}
	if err := c.LastProtocolError(); err == nil || !strings.Contains(err.Error(), "complaint") {
		t.Fatalf("LastProtocolError = %v", err)
	}
}

func TestWaitReadyRetriesUntilTheAgentListens(t *testing.T) {
	host, guestEnd := net.Pipe()
	c := NewClient(host)
	defer c.Close()
	// Like a serial port before the agent opens it: bytes vanish.
	swallowed := make(chan struct{})
	go func() {
		buf := make([]byte, 4096)
		n := 0
		for n < 3 { // at least three hello attempts
			if _, err := guestEnd.Read(buf); err != nil {
				return
			}
			n++
		}
		close(swallowed)
		(&Server{Handler: newMemHandler()}).Serve(context.Background(), guestEnd)
	}()
	r, err := c.WaitReady(testCtx(t), 50*time.Millisecond)
	if err != nil || r.Agent != "mem-test" {
		t.Fatalf("WaitReady = %+v, %v", r, err)
	}
	select {
	case <-swallowed:
	default:
		t.Fatal("WaitReady succeeded before the agent was listening")
	}
}

func TestFrameReaderSplitsAndResyncs(t *testing.T) {
	var stream bytes.Buffer
	var want [][]byte
	for i := range 50 {
		p := bytes.Repeat([]byte{byte(i)}, i*97)
		p = append(p, "KLPF"...)
		f, _ := appendFrame(nil, p, MaxFrameBytes)
		if i%7 == 3 {
			stream.WriteString("junk") // garbage before a frame
		}
		if i%11 == 5 {
			c := bytes.Clone(f)
			c[len(c)-1] ^= 1 // a corrupted copy first
			stream.Write(c)
		}
		stream.Write(f)
		want = append(want, p)
	}
	fr := NewFrameReader(iotest.OneByteReader(bytes.NewReader(stream.Bytes())), 0)
	var got [][]byte
	var frameErrs int
	for {
		b, err := fr.ReadFrame()
		var fe *FrameError
		if errors.As(err, &fe) {
			frameErrs++
			continue
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, bytes.Clone(b))
	}
	if len(got) != len(want) {
		t.Fatalf("got %d frames, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("frame %d differs", i)
		}
	}
	if frameErrs == 0 {
		t.Fatal("corruption and garbage went unreported")
	}
}

func TestFrameReaderLimit(t *testing.T) {
	f, _ := appendFrame(nil, make([]byte, 100), 1000)
	fr := NewFrameReader(bytes.NewReader(f), 99)
	_, err := fr.ReadFrame()
	if !errors.Is(err, ErrFrameTooLarge) || !strings.Contains(err.Error(), "announces 100 bytes, over the 99-byte limit") {
		t.Fatalf("err = %v", err)
	}
	if _, err := appendFrame(nil, make([]byte, 100), 99); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("appendFrame over limit: %v", err)
	}
}

func FuzzFrameReader(f *testing.F) {
	good, _ := appendFrame(nil, []byte(`{"kind":"ping"}`), MaxFrameBytes)
	f.Add(good)
	f.Add([]byte("KLPF\x00\x00\x00\x05"))
	f.Add(append([]byte("xxKLPF\xff\xff\xff\xff"), good...))
	f.Fuzz(func(t *testing.T, data []byte) {
		fr := NewFrameReader(bytes.NewReader(data), 1024)
		for range len(data) + 2 {
			b, err := fr.ReadFrame()
			var fe *FrameError
			if err != nil && !errors.As(err, &fe) {
				return
			}
			if len(b) > 1024 {
				t.Fatalf("frame of %d bytes passed a 1024 limit", len(b))
			}
		}
		t.Fatal("reader did not reach the end of its input")
	})
}

// FuzzServerPayloads sends arbitrary frame payloads to a Server; whatever
// they are, the server must answer a ping that follows them.
func FuzzServerPayloads(f *testing.F) {
	f.Add([]byte(`{"session":1,"id":2,"kind":"exec","body":{"argv":["echo","x"]}}`))
	f.Add([]byte(`{"session":1,"id":2,"kind":"write","body":{"path":"/a","data":"AAAA","mode":4095}}`))
	f.Add([]byte(`{"session":1,"id":3,"kind":"cancel","body":{"id":2}}`))
	f.Add([]byte(`{"kind":"hello","body":{"protocol":"kelpie-guest","min_version":-1,"max_version":99}}`))
	f.Add([]byte(`[1,2,3]`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		host, g := net.Pipe()
		defer host.Close()
		defer g.Close()
		go (&Server{Handler: newMemHandler()}).Serve(context.Background(), g)
		p := &rawPeer{t: t, conn: host, in: make(chan envelope, 64)}
		go func() {
			fr := NewFrameReader(host, MaxFrameBytes)
			for {
				b, err := fr.ReadFrame()
				var fe *FrameError
				if errors.As(err, &fe) {
					continue
				}
				if err != nil {
					close(p.in)
					return
				}
				var e envelope
				if json.Unmarshal(b, &e) == nil {
					p.in <- e
				}
			}
		}()
		go func() {
			p.conn.Write(p.frame(payload))
			p.conn.Write(p.request(77, 1, KindHello, &Hello{Protocol: ProtocolName, MinVersion: 1, MaxVersion: 1}))
			p.conn.Write(p.request(77, 999999, KindPing, struct{}{}))
		}()
		for {
			select {
			case e, ok := <-p.in:
				if !ok {
					t.Fatal("the server closed the connection")
				}
				if e.Session == 77 && e.ID == 999999 {
					if e.Error != "" {
						t.Fatalf("ping after the payload: %+v", e)
					}
					return
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no answer to the ping after the payload")
			}
		}
	})
}
