package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// timeZero clears a connection deadline.
var timeZero time.Time

// QMP, the QEMU Machine Protocol, is newline-delimited JSON over a socket.
// The server greets with {"QMP": {...}}; the client must send
// qmp_capabilities before anything else; then each {"execute", "arguments",
// "id"} gets a {"return"} or {"error"} with the same id, and asynchronous
// {"event"} messages arrive in between. File descriptors (for getfd) travel
// as SCM_RIGHTS ancillary data on the message that names them.
const (
	// MaxQMPMessageBytes bounds one message from QEMU; the largest replies
	// we ask for (query-migrate, query-status) are a few hundred bytes.
	MaxQMPMessageBytes = 1 << 20
	// qmpEventBuffer bounds undelivered events; older ones are dropped
	// and counted rather than blocking the reader.
	qmpEventBuffer = 64
)

// ErrQMPClosed is returned by commands on a closed or broken connection.
var ErrQMPClosed = errors.New("qmp: connection closed")

// QMPError is an error reply from QEMU.
type QMPError struct {
	Command string
	Class   string
	Desc    string
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s (%s)", e.Command, e.Desc, e.Class)
}

// QMPVersion is QEMU's version from the greeting.
type QMPVersion struct {
	Major, Minor, Micro int
	Package             string
}

func (v QMPVersion) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro) }

// QMPEvent is an asynchronous event ("STOP", "SHUTDOWN", ...).
type QMPEvent struct {
	Name string
	Data json.RawMessage
}

// qmpMessage is any message from QEMU.
type qmpMessage struct {
	QMP *struct {
		Version struct {
			QEMU struct {
				Major int `json:"major"`
				Minor int `json:"minor"`
				Micro int `json:"micro"`
			} `json:"qemu"`
			Package string `json:"package"`
		} `json:"version"`
	} `json:"QMP"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
	ID    *uint64         `json:"id"`
}

// QMP is a client for one QMP socket. It is safe for concurrent use.
type QMP struct {
	conn    *net.UnixConn
	version QMPVersion
	nextID  atomic.Uint64
	wmu     sync.Mutex
	events  chan QMPEvent
	dropped atomic.Int64
	done    chan struct{}

	mu      sync.Mutex
	pending map[uint64]pendingCmd
	err     error
}

type pendingCmd struct {
	name string
	ch   chan *qmpMessage
}

// DialQMP connects to the QMP socket at path, reads the greeting and
// negotiates capabilities. ctx bounds the whole handshake.
func DialQMP(ctx context.Context, path string) (*QMP, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: %w", err)
	}
	q := &QMP{
		conn:    c.(*net.UnixConn),
		events:  make(chan QMPEvent, qmpEventBuffer),
		done:    make(chan struct{}),
		pending: map[uint64]pendingCmd{},
	}
	// The greeting is read synchronously, under ctx's deadline.
	if dl, ok := ctx.Deadline(); ok {
		q.conn.SetReadDeadline(dl)
	}
	r := bufio.NewReaderSize(q.conn, 64<<10)
	greet, err := readQMPMessage(r)
	if err != nil {
		q.conn.Close()
		return nil, fmt.Errorf("qmp: reading the greeting from %s: %w", path, err)
	}
	if greet.QMP == nil {
		q.conn.Close()
		return nil, fmt.Errorf("qmp: %s did not greet with a QMP banner", path)
	}
	v := greet.QMP.Version
	q.version = QMPVersion{Major: v.QEMU.Major, Minor: v.QEMU.Minor, Micro: v.QEMU.Micro, Package: v.Package}
	q.conn.SetReadDeadline(timeZero)
	go q.readLoop(r)
	if err := q.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		q.Close()
		return nil, err
	}
	return q, nil
}

// Version is the QEMU version from the greeting.
func (q *QMP) Version() QMPVersion { return q.version }

// Events delivers asynchronous events. If nobody reads them, the oldest are
// dropped (see Dropped).
func (q *QMP) Events() <-chan QMPEvent { return q.events }

// Dropped is how many events were dropped because Events was not read.
func (q *QMP) Dropped() int64 { return q.dropped.Load() }

// Done is closed when the connection has ended.
func (q *QMP) Done() <-chan struct{} { return q.done }

// Close closes the connection; pending commands fail with ErrQMPClosed.
func (q *QMP) Close() error {
	err := q.conn.Close()
	q.fail(ErrQMPClosed)
	return err
}

func (q *QMP) fail(err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err != nil {
		return
	}
	q.err = err
	close(q.done)
}

// readQMPMessage reads one line-delimited message of at most
// MaxQMPMessageBytes.
func readQMPMessage(r *bufio.Reader) (*qmpMessage, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		if len(line)+len(chunk) > MaxQMPMessageBytes {
			return nil, fmt.Errorf("message over MaxQMPMessageBytes=%d", MaxQMPMessageBytes)
		}
		line = append(line, chunk...)
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(line)) == 0 {
			line = line[:0]
			continue
		}
		var m qmpMessage
		if err := json.Unmarshal(line, &m); err != nil {
			return nil, fmt.Errorf("undecodable message %.200q: %v", line, err)
		}
		return &m, nil
	}
}

func (q *QMP) readLoop(r *bufio.Reader) {
	for {
		m, err := readQMPMessage(r)
		if err != nil {
			q.fail(fmt.Errorf("%w: %v", ErrQMPClosed, err))
			return
		}
		switch {
		case m.Event != "":
			ev := QMPEvent{Name: m.Event, Data: m.Data}
			select {
			case q.events <- ev:
			default:
				// Full: drop the oldest so recent events (a SHUTDOWN) survive.
				select {
				case <-q.events:
					q.dropped.Add(1)
				default:
				}
				select {
				case q.events <- ev:
				default:
					q.dropped.Add(1)
				}
			}
		case m.ID != nil:
			q.mu.Lock()
			p, ok := q.pending[*m.ID]
			delete(q.pending, *m.ID)
			q.mu.Unlock()
			if ok {
				p.ch <- m
			}
		}
		// A reply without an id answers nothing we sent (we always send
		// one); ignore it.
	}
}

// Execute runs command with args (nil for none) and decodes its return
// value into result (nil to ignore it).
func (q *QMP) Execute(ctx context.Context, command string, args, result any) error {
	return q.execute(ctx, command, args, result, nil)
}

// ExecuteWithFile is Execute with f passed to QEMU as SCM_RIGHTS, for
// getfd and add-fd.
func (q *QMP) ExecuteWithFile(ctx context.Context, command string, args any, f *os.File, result any) error {
	return q.execute(ctx, command, args, result, f)
}

func (q *QMP) execute(ctx context.Context, command string, args, result any, f *os.File) error {
	id := q.nextID.Add(1)
	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        uint64 `json:"id"`
	}{command, args, id}
	b, err := json.Marshal(&req)
	if err != nil {
		return fmt.Errorf("qmp %s: encoding arguments: %w", command, err)
	}
	b = append(b, '\n')
	ch := make(chan *qmpMessage, 1)
	q.mu.Lock()
	if q.err != nil {
		q.mu.Unlock()
		return fmt.Errorf("qmp %s: %w", command, q.err)
	}
	q.pending[id] = pendingCmd{name: command, ch: ch}
	q.mu.Unlock()
	defer func() {
		q.mu.Lock()
		delete(q.pending, id)
		q.mu.Unlock()
	}()

	q.wmu.Lock()
	if dl, ok := ctx.Deadline(); ok {
		q.conn.SetWriteDeadline(dl)
	} else {
		q.conn.SetWriteDeadline(timeZero)
	}
	if f != nil {
		_, _, err = q.conn.WriteMsgUnix(b, syscall.UnixRights(int(f.Fd())), nil)
	} else {
		_, err = q.conn.Write(b)
	}
	q.wmu.Unlock()
	if err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	var m *qmpMessage
	select {
	case m = <-ch:
	case <-ctx.Done():
		return fmt.Errorf("qmp %s: %w", command, ctx.Err())
	case <-q.done:
		q.mu.Lock()
		err := q.err
		q.mu.Unlock()
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	if m.Error != nil {
		return &QMPError{Command: command, Class: m.Error.Class, Desc: m.Error.Desc}
	}
	if result != nil && len(m.Return) > 0 {
		if err := json.Unmarshal(m.Return, result); err != nil {
			return fmt.Errorf("qmp %s: undecodable return %.200q: %w", command, m.Return, err)
		}
	}
	return nil
}
