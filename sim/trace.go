package sim

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"strings"
	"sync"
	"time"
)

// Event is one line of a trace: when (virtual time since the simulation
// started), where (a node name, or "" for the simulation itself) and what.
type Event struct {
	At   time.Duration
	Node string
	What string
}

func (e Event) String() string {
	node := e.Node
	if node == "" {
		node = "-"
	}
	return fmt.Sprintf("%14s %-10s %s", e.At, node, e.What)
}

// TraceTail is how many of the most recent events a trace keeps in memory to
// print when a simulation fails. Older events are folded into the hash only.
const TraceTail = 4096

// maxEventBytes bounds one event's text; longer text is cut so that a
// component logging a large value cannot blow up the trace.
const maxEventBytes = 1024

// Trace is the ordered log every simulation writes. Each event is folded into
// a running SHA-256 as it is recorded, so traces of any length hash in
// constant memory; the last TraceTail events are kept for failure reports.
// Under the executor two runs of one seed must produce the same hash.
type Trace struct {
	mu    sync.Mutex
	start time.Time
	h     hash.Hash
	n     uint64
	tail  []Event // ring of the last TraceTail events
	next  int
	sink  io.Writer
}

// NewTrace starts an empty trace whose clock starts at start.
func NewTrace(start time.Time) *Trace {
	return &Trace{start: start, h: sha256.New()}
}

// Tee also writes every event, one per line, to w (nil to stop).
func (t *Trace) Tee(w io.Writer) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sink = w
}

// Record appends an event. what is formatted with fmt.Sprintf(format, args...).
func (t *Trace) Record(node, format string, args ...any) {
	what := format
	if len(args) > 0 {
		what = fmt.Sprintf(format, args...)
	}
	if len(what) > maxEventBytes {
		what = what[:maxEventBytes] + "…"
	}
	what = strings.ReplaceAll(what, "\n", `\n`)
	at := time.Since(t.start)

	t.mu.Lock()
	defer t.mu.Unlock()
	ev := Event{At: at, Node: node, What: what}
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(at))
	t.h.Write(b[:])
	t.h.Write([]byte(node))
	t.h.Write([]byte{0})
	t.h.Write([]byte(what))
	t.h.Write([]byte{'\n'})
	t.n++
	if len(t.tail) < TraceTail {
		t.tail = append(t.tail, ev)
	} else {
		t.tail[t.next] = ev
		t.next = (t.next + 1) % TraceTail
	}
	if t.sink != nil {
		fmt.Fprintln(t.sink, ev.String())
	}
}

// Len is the number of events recorded.
func (t *Trace) Len() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.n
}

// Sum is the hex SHA-256 of every event recorded so far.
func (t *Trace) Sum() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return hex.EncodeToString(t.h.Sum(nil))
}

// Tail returns up to the last n recorded events, oldest first.
func (t *Trace) Tail(n int) []Event {
	t.mu.Lock()
	defer t.mu.Unlock()
	ordered := make([]Event, 0, len(t.tail))
	ordered = append(ordered, t.tail[t.next:]...)
	ordered = append(ordered, t.tail[:t.next]...)
	if n < len(ordered) {
		ordered = ordered[len(ordered)-n:]
	}
	return ordered
}
