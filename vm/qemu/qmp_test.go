package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeQMP is a QMP server over a real unix socket that behaves like QEMU's
// monitor for the commands the tests need: greeting, capability
// negotiation (required first), replies by id, events, and getfd with
// SCM_RIGHTS.
type fakeQMP struct {
	t        *testing.T
	path     string
	ln       *net.UnixListener
	greeting string
	mu       sync.Mutex
	handlers map[string]func(args json.RawMessage, fds []int) (any, string)
	conns    []*net.UnixConn
}

func newFakeQMP(t *testing.T) *fakeQMP {
	t.Helper()
	dir, err := os.MkdirTemp("", "kq-fake-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := &fakeQMP{
		t:        t,
		path:     filepath.Join(dir, "qmp.sock"),
		greeting: `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7"}, "capabilities": ["oob"]}}`,
		handlers: map[string]func(json.RawMessage, []int) (any, string){},
	}
	f.handle("query-status", func(json.RawMessage, []int) (any, string) {
		return map[string]any{"status": "running", "running": true}, ""
	})
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: f.path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	f.ln = ln
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		for _, c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
	})
	go f.serve()
	return f
}

func (f *fakeQMP) handle(cmd string, h func(args json.RawMessage, fds []int) (any, string)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.handlers[cmd] = h
}

func (f *fakeQMP) serve() {
	for {
		c, err := f.ln.AcceptUnix()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.conns = append(f.conns, c)
		f.mu.Unlock()
		go f.session(c)
	}
}

func (f *fakeQMP) send(c *net.UnixConn, wmu *sync.Mutex, v any) {
	b, _ := json.Marshal(v)
	wmu.Lock()
	defer wmu.Unlock()
	c.Write(append(b, '\r', '\n'))
}

func (f *fakeQMP) session(c *net.UnixConn) {
	var wmu sync.Mutex
	f.mu.Lock()
	greeting := f.greeting
	f.mu.Unlock()
	wmu.Lock()
	c.Write([]byte(greeting + "\r\n"))
	wmu.Unlock()
	negotiated := false
	var buf []byte
	var fds []int
	for {
		data := make([]byte, 4096)
		oob := make([]byte, 256)
		n, oobn, _, _, err := c.ReadMsgUnix(data, oob)
		if err != nil {
			return
		}
		if oobn > 0 {
			msgs, _ := syscall.ParseSocketControlMessage(oob[:oobn])
			for _, m := range msgs {
				got, _ := syscall.ParseUnixRights(&m)
				fds = append(fds, got...)
			}
		}
		buf = append(buf, data[:n]...)
		for {
			i := bytes.IndexByte(buf, '\n')
			if i < 0 {
				break
			}
			line := buf[:i]
			buf = buf[i+1:]
			var req struct {
				Execute   string          `json:"execute"`
				Arguments json.RawMessage `json:"arguments"`
				ID        any             `json:"id"`
			}
			if err := json.Unmarshal(line, &req); err != nil {
				f.send(c, &wmu, map[string]any{"error": map[string]string{"class": "GenericError", "desc": "JSON parse error"}})
				continue
			}
			reply := func(ret any, errDesc string) {
				if errDesc != "" {
					f.send(c, &wmu, map[string]any{"error": map[string]string{"class": "GenericError", "desc": errDesc}, "id": req.ID})
					return
				}
				if ret == nil {
					ret = map[string]any{}
				}
				f.send(c, &wmu, map[string]any{"return": ret, "id": req.ID})
			}
			if !negotiated {
				if req.Execute != "qmp_capabilities" {
					f.send(c, &wmu, map[string]any{"error": map[string]string{"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}, "id": req.ID})
					continue
				}
				negotiated = true
				reply(nil, "")
				continue
			}
			f.mu.Lock()
			h := f.handlers[req.Execute]
			f.mu.Unlock()
			if h == nil {
				f.send(c, &wmu, map[string]any{"error": map[string]string{"class": "CommandNotFound", "desc": "The command " + req.Execute + " has not been found"}, "id": req.ID})
				continue
			}
			myFDs := fds
			fds = nil
			go func() { reply(h(req.Arguments, myFDs)) }()
		}
	}
}

// event sends an event to every connected client.
func (f *fakeQMP) event(name string, data any) {
	f.mu.Lock()
	conns := append([]*net.UnixConn(nil), f.conns...)
	f.mu.Unlock()
	var wmu sync.Mutex
	for _, c := range conns {
		f.send(c, &wmu, map[string]any{"event": name, "data": data, "timestamp": map[string]int{"seconds": 1, "microseconds": 2}})
	}
}

func qmpCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestQMPHandshakeAndCommands(t *testing.T) {
	f := newFakeQMP(t)
	q, err := DialQMP(qmpCtx(t), f.path)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if v := q.Version(); v.String() != "7.2.22" || !strings.HasPrefix(v.Package, "Debian") {
		t.Fatalf("version %+v", v)
	}
	var st struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	if err := q.Execute(qmpCtx(t), "query-status", nil, &st); err != nil || st.Status != "running" || !st.Running {
		t.Fatalf("query-status = %+v, %v", st, err)
	}
	err = q.Execute(qmpCtx(t), "frobnicate", map[string]int{"x": 1}, nil)
	var qe *QMPError
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" || qe.Command != "frobnicate" || !strings.Contains(err.Error(), "has not been found") {
		t.Fatalf("unknown command: %v", err)
	}
}

func TestQMPRepliesMatchedByIDAndEvents(t *testing.T) {
	f := newFakeQMP(t)
	release := make(chan struct{})
	f.handle("slow", func(json.RawMessage, []int) (any, string) { <-release; return "slow", "" })
	f.handle("fast", func(json.RawMessage, []int) (any, string) { return "fast", "" })
	q, err := DialQMP(qmpCtx(t), f.path)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	slow := make(chan string, 1)
	go func() {
		var s string
		if err := q.Execute(qmpCtx(t), "slow", nil, &s); err != nil {
			s = err.Error()
		}
		slow <- s
	}()
	var s string
	// The fast reply arrives while the slow command is still pending.
	if err := q.Execute(qmpCtx(t), "fast", nil, &s); err != nil || s != "fast" {
		t.Fatalf("fast = %q, %v", s, err)
	}
	f.event("STOP", map[string]any{})
	close(release)
	if got := <-slow; got != "slow" {
		t.Fatalf("slow = %q", got)
	}
	select {
	case ev := <-q.Events():
		if ev.Name != "STOP" {
			t.Fatalf("event %+v", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("event not delivered")
	}
}

func TestQMPEventsAreBoundedAndDropOldest(t *testing.T) {
	f := newFakeQMP(t)
	q, err := DialQMP(qmpCtx(t), f.path)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	for i := range qmpEventBuffer + 10 {
		f.event("E", map[string]int{"n": i})
	}
	// A command after the events proves the reader has processed them all.
	if err := q.Execute(qmpCtx(t), "query-status", nil, nil); err != nil {
		t.Fatal(err)
	}
	if q.Dropped() != 10 {
		t.Fatalf("dropped %d, want 10", q.Dropped())
	}
	ev := <-q.Events()
	var d struct{ N int }
	json.Unmarshal(ev.Data, &d)
	if d.N != 10 {
		t.Fatalf("oldest kept event is %d, want 10", d.N)
	}
}

func TestQMPPassesFiles(t *testing.T) {
	f := newFakeQMP(t)
	f.handle("getfd", func(args json.RawMessage, fds []int) (any, string) {
		if len(fds) != 1 {
			return nil, "No file descriptor supplied via SCM_RIGHTS"
		}
		w := os.NewFile(uintptr(fds[0]), "passed")
		defer w.Close()
		var a struct{ Fdname string }
		json.Unmarshal(args, &a)
		w.Write([]byte("written by qemu through " + a.Fdname))
		return nil, ""
	})
	q, err := DialQMP(qmpCtx(t), f.path)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.Execute(qmpCtx(t), "getfd", map[string]string{"fdname": "x"}, nil); err == nil || !strings.Contains(err.Error(), "SCM_RIGHTS") {
		t.Fatalf("getfd without a file: %v", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := q.ExecuteWithFile(qmpCtx(t), "getfd", map[string]string{"fdname": "snap"}, w, nil); err != nil {
		t.Fatal(err)
	}
	w.Close()
	got, _ := io.ReadAll(r)
	if string(got) != "written by qemu through snap" {
		t.Fatalf("through the passed pipe: %q", got)
	}
}

func TestQMPFailures(t *testing.T) {
	t.Run("no banner", func(t *testing.T) {
		f := newFakeQMP(t)
		f.mu.Lock()
		f.greeting = `{"hello": "world"}`
		f.mu.Unlock()
		if _, err := DialQMP(qmpCtx(t), f.path); err == nil || !strings.Contains(err.Error(), "did not greet") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("no socket", func(t *testing.T) {
		if _, err := DialQMP(qmpCtx(t), filepath.Join(t.TempDir(), "none.sock")); err == nil {
			t.Fatal("dialing a missing socket succeeded")
		}
	})
	t.Run("silent server", func(t *testing.T) {
		f := newFakeQMP(t)
		f.handle("hang", func(json.RawMessage, []int) (any, string) { select {} })
		q, err := DialQMP(qmpCtx(t), f.path)
		if err != nil {
			t.Fatal(err)
		}
		defer q.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		if err := q.Execute(ctx, "hang", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("connection lost", func(t *testing.T) {
		f := newFakeQMP(t)
		started := make(chan struct{})
		f.handle("die", func(json.RawMessage, []int) (any, string) {
			close(started)
			select {}
		})
		q, err := DialQMP(qmpCtx(t), f.path)
		if err != nil {
			t.Fatal(err)
		}
		errc := make(chan error, 1)
		go func() { errc <- q.Execute(qmpCtx(t), "die", nil, nil) }()
		<-started
		f.mu.Lock()
		for _, c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
		if err := <-errc; !errors.Is(err, ErrQMPClosed) {
			t.Fatalf("pending command: %v", err)
		}
		<-q.Done()
		if err := q.Execute(qmpCtx(t), "query-status", nil, nil); !errors.Is(err, ErrQMPClosed) {
			t.Fatalf("after loss: %v", err)
		}
	})
	t.Run("oversized message", func(t *testing.T) {
		f := newFakeQMP(t)
		f.handle("huge", func(json.RawMessage, []int) (any, string) {
			return strings.Repeat("x", MaxQMPMessageBytes), ""
		})
		q, err := DialQMP(qmpCtx(t), f.path)
		if err != nil {
			t.Fatal(err)
		}
		defer q.Close()
		if err := q.Execute(qmpCtx(t), "huge", nil, nil); !errors.Is(err, ErrQMPClosed) || !strings.Contains(err.Error(), "MaxQMPMessageBytes") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestReadQMPMessageSkipsBlankLines(t *testing.T) {
	r := bufio.NewReader(strings.NewReader("\r\n\n{\"return\": {}, \"id\": 3}\r\n"))
	m, err := readQMPMessage(r)
	if err != nil || m.ID == nil || *m.ID != 3 {
		t.Fatalf("m = %+v, %v", m, err)
	}
}
