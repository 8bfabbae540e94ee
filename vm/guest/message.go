package guest

import (
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"
)

// Protocol versions this package speaks. A new version is added when a
// message changes meaning; the handshake picks the highest both sides speak.
const (
	MinProtocolVersion = 1
	MaxProtocolVersion = 1
	// ProtocolName identifies the protocol in the handshake, so a host that
	// reaches something else on the port gets a clear error.
	ProtocolName = "kelpie-guest"
)

// DefaultVsockPort is the vsock port the agent listens on when the guest
// kernel has vsock. It lives here, with the protocol, because both ends must
// agree on it: the agent (cmd/kelpie-guest, which moves it with
// kelpie.vsock_port= on the kernel command line) and every host that dials
// it (vm/firecracker's DefaultVsockPort).
const DefaultVsockPort = 1024

// Limits on requests. They keep every message inside MaxFrameBytes and bound
// the work one request can ask of the guest.
const (
	// MaxConcurrentRequests is how many requests the guest runs at once;
	// more are refused with CodeBusy rather than queued without bound.
	MaxConcurrentRequests = 16
	// MaxFileBytes bounds the data of one file read or write.
	MaxFileBytes = 16 << 20
	// MaxExecOutputBytes bounds what is kept of each of stdout and stderr.
	MaxExecOutputBytes = 16 << 20
	// DefaultExecOutputBytes is the per-stream cap when a request sets none.
	DefaultExecOutputBytes = 1 << 20
	// MaxExecStdinBytes bounds the stdin given to a command.
	MaxExecStdinBytes = 8 << 20
	// MaxExecArgs bounds argv plus env entries of a command.
	MaxExecArgs = 4096
	// MaxListEntries bounds the entries returned by one directory listing.
	MaxListEntries = 4096
	// MaxPathBytes bounds a path in a request.
	MaxPathBytes = 4096
	// DefaultExecTimeout applies when a request gives no timeout.
	DefaultExecTimeout = 30 * time.Second
	// MaxExecTimeout is the longest a command may be allowed to run.
	MaxExecTimeout = time.Hour
)

// Request kinds.
const (
	KindHello  = "hello"
	KindPing   = "ping"
	KindExec   = "exec"
	KindRead   = "read"
	KindWrite  = "write"
	KindList   = "list"
	KindCancel = "cancel"
	// KindResult marks a response.
	KindResult = "result"
)

// Error codes carried in responses, for callers that branch on the cause.
const (
	CodeBadRequest = "bad_request"
	CodeNotFound   = "not_found"
	CodeTooLarge   = "too_large"
	CodeBusy       = "busy"
	CodeHandshake  = "handshake"
	CodeTimeout    = "timeout"
	CodeInternal   = "internal"
	CodeFailed     = "failed"
	CodeProtocol   = "protocol"
)

// envelope is the JSON payload of every frame.
type envelope struct {
	Session uint64          `json:"session"`
	ID      uint64          `json:"id"`
	Kind    string          `json:"kind"`
	Code    string          `json:"code,omitempty"`
	Error   string          `json:"error,omitempty"`
	Body    json.RawMessage `json:"body,omitempty"`
}

// Hello opens a session.
type Hello struct {
	Protocol   string `json:"protocol"`
	MinVersion int    `json:"min_version"`
	MaxVersion int    `json:"max_version"`
}

// HelloReply is the guest's answer to Hello.
type HelloReply struct {
	// Version is the protocol version the session uses.
	Version int `json:"version"`
	// Agent names the guest agent and its version.
	Agent string `json:"agent"`
	// Kernel is the guest kernel release (uname -r).
	Kernel string `json:"kernel,omitempty"`
	// PID is the agent's process id; 1 when it is the VM's init.
	PID int `json:"pid"`
}

// PingReply is the answer to a ping.
type PingReply struct {
	// UptimeNanos is how long the agent has been running.
	UptimeNanos int64 `json:"uptime_nanos"`
	// InFlight is how many requests the guest is running, this ping included.
	InFlight int `json:"in_flight"`
}

// ExecRequest runs one command in the guest, without a shell.
type ExecRequest struct {
	// Argv is the program and its arguments; Argv[0] is looked up in PATH.
	Argv []string `json:"argv"`
	// Env is the command's whole environment, KEY=VALUE entries. Argv[0]
	// is looked up in the agent's PATH, not in Env.
	Env []string `json:"env,omitempty"`
	// Dir is the working directory; "" means "/".
	Dir string `json:"dir,omitempty"`
	// Stdin is given to the command on standard input.
	Stdin []byte `json:"stdin,omitempty"`
	// Timeout kills the command after this long; 0 means DefaultExecTimeout.
	Timeout time.Duration `json:"timeout_nanos,omitempty"`
	// MaxOutputBytes caps each of stdout and stderr; 0 means
	// DefaultExecOutputBytes.
	MaxOutputBytes int `json:"max_output_bytes,omitempty"`
}

// ExecResult is how a command ended and what it printed.
type ExecResult struct {
	// ExitCode is the exit status, or -1 when the command was killed by a signal.
	ExitCode int `json:"exit_code"`
	// Signal names the signal that killed the command, if one did.
	Signal string `json:"signal,omitempty"`
	// TimedOut reports that the command was killed at its timeout.
	TimedOut bool   `json:"timed_out,omitempty"`
	Stdout   []byte `json:"stdout,omitempty"`
	Stderr   []byte `json:"stderr,omitempty"`
	// StdoutTruncated and StderrTruncated report output beyond MaxExecOutputBytes.
	StdoutTruncated bool `json:"stdout_truncated,omitempty"`
	StderrTruncated bool `json:"stderr_truncated,omitempty"`
	// Duration is how long the command ran in the guest.
	Duration time.Duration `json:"duration_nanos"`
}

// ReadFileRequest reads a whole file.
type ReadFileRequest struct {
	Path string `json:"path"`
}

// ReadFileReply is a file's contents and permission bits.
type ReadFileReply struct {
	Data []byte `json:"data"`
	Mode uint32 `json:"mode"`
}

// WriteFileRequest creates or replaces a file.
type WriteFileRequest struct {
	Path string `json:"path"`
	Data []byte `json:"data"`
	// Mode is the permission bits of a new file; 0 means 0644.
	Mode uint32 `json:"mode,omitempty"`
	// MkdirAll creates missing parent directories.
	MkdirAll bool `json:"mkdir_all,omitempty"`
}

// WriteFileReply confirms a write.
type WriteFileReply struct {
	Bytes int `json:"bytes"`
}

// ListRequest lists a directory.
type ListRequest struct {
	Path string `json:"path"`
}

// DirEntry is one entry of a listing.
type DirEntry struct {
	Name  string `json:"name"`
	Size  int64  `json:"size"`
	Mode  uint32 `json:"mode"`
	IsDir bool   `json:"is_dir,omitempty"`
}

// ListReply is a directory listing, sorted by name.
type ListReply struct {
	Entries []DirEntry `json:"entries"`
	// Truncated reports that the directory has more than MaxListEntries entries.
	Truncated bool `json:"truncated,omitempty"`
}

// CancelRequest asks the guest to abandon a request of the same session.
type CancelRequest struct {
	ID uint64 `json:"id"`
}

// Error is an error with a protocol code. Handlers return it to choose the
// code the host sees; the Client returns it for every error response.
type Error struct {
	// Op is the request kind that failed.
	Op      string
	Code    string
	Message string
}

func (e *Error) Error() string {
	if e.Op == "" {
		return fmt.Sprintf("guest: %s (%s)", e.Message, e.Code)
	}
	return fmt.Sprintf("guest %s: %s (%s)", e.Op, e.Message, e.Code)
}

// Is matches the sentinel errors by code, so callers can write
// errors.Is(err, guest.ErrNotFound).
func (e *Error) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.Code == CodeNotFound
	case ErrBusy:
		return e.Code == CodeBusy
	case ErrTooLarge:
		return e.Code == CodeTooLarge
	case ErrBadRequest:
		return e.Code == CodeBadRequest
	case ErrHandshake:
		return e.Code == CodeHandshake
	}
	return false
}

// Sentinels matched by *Error.Is.
var (
	ErrNotFound   = errors.New("guest: not found")
	ErrBusy       = errors.New("guest: too many requests in flight")
	ErrTooLarge   = errors.New("guest: too large")
	ErrBadRequest = errors.New("guest: bad request")
	ErrHandshake  = errors.New("guest: handshake failed")
)

func badRequest(format string, args ...any) *Error {
	return &Error{Code: CodeBadRequest, Message: fmt.Sprintf(format, args...)}
}

// checkPath validates a path field: absolute, clean enough and bounded.
func checkPath(field, p string) error {
	switch {
	case p == "":
		return badRequest("%s is empty", field)
	case len(p) > MaxPathBytes:
		return badRequest("%s is %d bytes, limit %d", field, len(p), MaxPathBytes)
	case !path.IsAbs(p):
		return badRequest("%s %q is not absolute", field, p)
	case strings.IndexByte(p, 0) >= 0:
		return badRequest("%s contains a NUL byte", field)
	}
	return nil
}

// Validate checks an exec request against the protocol's limits.
func (r *ExecRequest) Validate() error {
	if len(r.Argv) == 0 || r.Argv[0] == "" {
		return badRequest("argv is empty")
	}
	if n := len(r.Argv) + len(r.Env); n > MaxExecArgs {
		return badRequest("argv and env have %d entries, limit %d", n, MaxExecArgs)
	}
	for i, a := range r.Argv {
		if strings.IndexByte(a, 0) >= 0 {
			return badRequest("argv[%d] contains a NUL byte", i)
		}
	}
	for i, e := range r.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" || strings.IndexByte(e, 0) >= 0 {
			return badRequest("env[%d] %q is not KEY=VALUE", i, e)
		}
	}
	if r.Dir != "" {
		if err := checkPath("dir", r.Dir); err != nil {
			return err
		}
	}
	if len(r.Stdin) > MaxExecStdinBytes {
		return &Error{Code: CodeTooLarge, Message: fmt.Sprintf("stdin is %d bytes, limit %d", len(r.Stdin), MaxExecStdinBytes)}
	}
	if r.Timeout < 0 || r.Timeout > MaxExecTimeout {
		return badRequest("timeout %v is outside (0, %v]", r.Timeout, MaxExecTimeout)
	}
	if r.MaxOutputBytes < 0 || r.MaxOutputBytes > MaxExecOutputBytes {
		return badRequest("max_output_bytes %d is outside [0, %d]", r.MaxOutputBytes, MaxExecOutputBytes)
	}
	return nil
}

// Validate checks a read request.
func (r *ReadFileRequest) Validate() error { return checkPath("path", r.Path) }

// Validate checks a list request.
func (r *ListRequest) Validate() error { return checkPath("path", r.Path) }

// Validate checks a write request.
func (r *WriteFileRequest) Validate() error {
	if err := checkPath("path", r.Path); err != nil {
		return err
	}
	if len(r.Data) > MaxFileBytes {
		return &Error{Code: CodeTooLarge, Message: fmt.Sprintf("data is %d bytes, limit %d", len(r.Data), MaxFileBytes)}
	}
	if r.Mode&^0o7777 != 0 {
		return badRequest("mode %#o has bits beyond 07777", r.Mode)
	}
	return nil
}
