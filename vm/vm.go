// Package vm is Kelpie's virtual machine abstraction: one interface,
// VMInstance, that every hypervisor backend implements (Firecracker, QEMU,
// and the simulated VM the deterministic simulation uses), with one state
// machine and one restore contract for all of them.
//
// A VM is created from a validated VMConfig and moves through five states:
//
//	created --boot--> running --pause--> paused --resume--> running
//	created --restore--> paused          (the restore contract, below)
//	paused  --snapshot--> paused         (a snapshot never changes the state)
//	any     --stop--> stopped            (stop is idempotent)
//	running, paused --crash--> failed    (failed VMs accept only stop)
//
// Exec, ReadFile and WriteFile need a running VM. The legal transitions are
// a pure table (Next, AfterFailure) that backends consult through Machine,
// so a backend cannot drift from the contract, and every illegal call
// returns a *TransitionError naming the operation, the current state and
// the states it is allowed from.
//
// The restore contract, which every backend is held to by the conformance
// suite in package vm/vmtest: Restore is called on a VM that is created and
// never booted, whose VMConfig has the same vCPUs and memory as the
// snapshot. The snapshot blob (package vm/snapshot) is decoded and its
// metadata checked against the backend and host before anything is loaded.
// A blob that is refused — incompatible (snapshot.ErrIncompatible), corrupt
// (snapshot.ErrCorrupt) or oversized (snapshot.ErrTooLarge) — leaves the VM
// created. Once loading starts, a failure (vm.ErrRestoreFailed) leaves the
// VM failed. On success the VM is paused, holding exactly the guest state of
// the moment the snapshot was taken (memory, files, running processes); the
// caller calls Resume to run it, and Resume re-establishes the host's
// session with the guest agent.
//
// Backends are chosen through a Registry, by name or by what the host
// supports (each Backend reports Available). Package vm imports none of its
// backends: a program assembles its registry from the backends it links
// (each backend package has a Register), in its order of preference;
// kelpie vm offers Firecracker, then QEMU.
package vm

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
	"time"
)

// VMInstance is one virtual machine. Methods are safe for concurrent use;
// state-changing operations (Boot, Pause, Resume, Snapshot, Restore, Stop)
// are serialized, while Exec, ReadFile and WriteFile may run concurrently
// with each other on a running VM.
type VMInstance interface {
	// ID is the VM's identifier, unique within its backend.
	ID() string
	// Backend is the name of the backend that runs the VM ("firecracker").
	Backend() string
	// Config is the configuration the VM was created with.
	Config() VMConfig
	// State is the VM's current state.
	State() State

	// Boot starts a created VM and returns once its guest agent answers,
	// or fails within Config().BootTimeout. Created -> Running.
	Boot(ctx context.Context) error
	// Exec runs a command in the guest of a running VM and waits for it.
	// A command that outlives its timeout is killed and Exec returns an
	// error matching ErrExecTimeout. A non-zero exit status is not an
	// error: it is ExecResult.ExitCode.
	Exec(ctx context.Context, req ExecRequest) (ExecResult, error)
	// ReadFile returns the contents of the guest file at path (absolute),
	// at most MaxFileBytes.
	ReadFile(ctx context.Context, path string) ([]byte, error)
	// WriteFile creates or replaces the guest file at path (absolute) with
	// data, at most MaxFileBytes, with permission bits mode.
	WriteFile(ctx context.Context, path string, data []byte, mode fs.FileMode) error
	// Pause stops the guest's vCPUs. Running -> Paused.
	Pause(ctx context.Context) error
	// Resume restarts the guest's vCPUs. Paused -> Running. A VM that
	// does not resume within ResumeTimeout is failed.
	Resume(ctx context.Context) error
	// Snapshot captures a paused VM as a blob in the format of package
	// vm/snapshot. The VM stays paused.
	Snapshot(ctx context.Context) ([]byte, error)
	// Restore loads a snapshot blob into a created, never-booted VM; see
	// the restore contract in the package documentation. Created -> Paused.
	Restore(ctx context.Context, blob []byte) error
	// Stop ends the VM and releases its resources. Any state -> Stopped;
	// stopping a stopped VM does nothing and returns nil.
	Stop(ctx context.Context) error
}

// ResumeTimeout bounds how long Resume waits for the hypervisor to report
// that the vCPUs run again before it declares the VM failed.
const ResumeTimeout = 10 * time.Second

// Errors callers branch on with errors.Is. Backends wrap them with detail.
var (
	// ErrInvalidState matches every *TransitionError: the operation is not
	// allowed in the VM's current state.
	ErrInvalidState = errors.New("operation not allowed in this VM state")
	// ErrInvalidConfig matches every *ConfigError.
	ErrInvalidConfig = errors.New("invalid VM configuration")
	// ErrInvalidRequest matches errors for malformed exec or file requests.
	ErrInvalidRequest = errors.New("invalid VM request")
	// ErrExecTimeout is returned when a command outlives its timeout.
	ErrExecTimeout = errors.New("exec timed out")
	// ErrBootFailed is returned when a VM does not reach its guest agent.
	ErrBootFailed = errors.New("VM boot failed")
	// ErrCrashed is returned by operations cut short because the VM died.
	ErrCrashed = errors.New("VM crashed")
	// ErrResumeTimeout is returned when a paused VM does not resume.
	ErrResumeTimeout = errors.New("VM did not resume")
	// ErrUnknownBackend is returned for a backend name nobody registered.
	ErrUnknownBackend = errors.New("unknown VM backend")
	// ErrBackendUnavailable is returned when a backend cannot run on this
	// host (no hypervisor binary, no /dev/kvm).
	ErrBackendUnavailable = errors.New("VM backend not available on this host")
	// ErrSnapshotFailed is returned when the hypervisor fails to write a
	// snapshot; the VM stays paused.
	ErrSnapshotFailed = errors.New("VM snapshot failed")
	// ErrRestoreFailed is returned when loading a valid, compatible
	// snapshot fails; the VM is failed.
	ErrRestoreFailed = errors.New("VM restore failed")
	// ErrNotFound is returned by ReadFile for a missing guest file.
	ErrNotFound = errors.New("guest file not found")
)

// Limits of exec and file requests.
const (
	// MaxExecArgs bounds the number of arguments of one command.
	MaxExecArgs = 1024
	// MaxExecArgBytes bounds the total bytes of command, arguments and
	// environment, as the kernel's ARG_MAX does.
	MaxExecArgBytes = 128 << 10
	// MaxExecEnv bounds the number of environment entries.
	MaxExecEnv = 256
	// MaxExecStdinBytes bounds the stdin given to one command.
	MaxExecStdinBytes = 8 << 20
	// DefaultExecTimeout applies when ExecRequest.Timeout is zero.
	DefaultExecTimeout = 30 * time.Second
	// MaxExecTimeout bounds ExecRequest.Timeout.
	MaxExecTimeout = 1 * time.Hour
	// DefaultExecOutputBytes is the per-stream output cap when
	// ExecRequest.MaxOutputBytes is zero.
	DefaultExecOutputBytes = 1 << 20
	// MaxExecOutputBytes bounds ExecRequest.MaxOutputBytes.
	MaxExecOutputBytes = 16 << 20
	// MaxFileBytes bounds one file read or written with ReadFile/WriteFile.
	MaxFileBytes = 16 << 20
	// MaxPathBytes bounds a guest path.
	MaxPathBytes = 4096
)

// ExecRequest is one command to run in the guest.
type ExecRequest struct {
	// Command is the program: an absolute path, or a name looked up in the
	// guest's PATH.
	Command string
	// Args are the arguments after the program name.
	Args []string
	// Env holds "KEY=VALUE" entries: the command's whole environment.
	Env []string
	// Dir is the working directory, absolute; "" means "/".
	Dir string
	// Stdin is given to the command on its standard input.
	Stdin []byte
	// Timeout bounds the command's run; 0 means DefaultExecTimeout.
	Timeout time.Duration
	// MaxOutputBytes caps each of stdout and stderr; the rest is discarded
	// and reported as truncated. 0 means DefaultExecOutputBytes.
	MaxOutputBytes int
}

// ExecResult is the outcome of a command that ran to completion.
type ExecResult struct {
	ExitCode        int
	Stdout, Stderr  []byte
	StdoutTruncated bool // Stdout was cut at the request's output cap
	StderrTruncated bool // Stderr was cut at the request's output cap
}

// Normalize validates req and returns it with defaults filled in (Timeout,
// MaxOutputBytes, Dir). Every backend calls it before sending a command.
func (req ExecRequest) Normalize() (ExecRequest, error) {
	bad := func(format string, args ...any) (ExecRequest, error) {
		return ExecRequest{}, fmt.Errorf("%w: exec: %s", ErrInvalidRequest, fmt.Sprintf(format, args...))
	}
	if req.Command == "" {
		return bad("command is empty")
	}
	if len(req.Args) > MaxExecArgs {
		return bad("%d args, the limit is MaxExecArgs=%d", len(req.Args), MaxExecArgs)
	}
	if len(req.Env) > MaxExecEnv {
		return bad("%d env entries, the limit is MaxExecEnv=%d", len(req.Env), MaxExecEnv)
	}
	total := len(req.Command)
	if strings.IndexByte(req.Command, 0) >= 0 {
		return bad("command contains a NUL byte")
	}
	for i, a := range req.Args {
		if strings.IndexByte(a, 0) >= 0 {
			return bad("args[%d] contains a NUL byte", i)
		}
		total += len(a) + 1
	}
	for i, e := range req.Env {
		k, _, ok := strings.Cut(e, "=")
		if !ok || k == "" {
			return bad("env[%d]=%q is not KEY=VALUE", i, truncateForError(e))
		}
		if strings.IndexByte(e, 0) >= 0 {
			return bad("env[%d] contains a NUL byte", i)
		}
		total += len(e) + 1
	}
	if total > MaxExecArgBytes {
		return bad("command, args and env take %d bytes, the limit is MaxExecArgBytes=%d", total, MaxExecArgBytes)
	}
	if req.Dir == "" {
		req.Dir = "/"
	} else if err := CheckGuestPath(req.Dir); err != nil {
		return bad("dir: %v", err)
	}
	if len(req.Stdin) > MaxExecStdinBytes {
		return bad("stdin is %d bytes, the limit is MaxExecStdinBytes=%d", len(req.Stdin), MaxExecStdinBytes)
	}
	switch {
	case req.Timeout < 0:
		return bad("timeout %s is negative", req.Timeout)
	case req.Timeout == 0:
		req.Timeout = DefaultExecTimeout
	case req.Timeout > MaxExecTimeout:
		return bad("timeout %s exceeds MaxExecTimeout=%s", req.Timeout, MaxExecTimeout)
	}
	switch {
	case req.MaxOutputBytes < 0:
		return bad("max output bytes %d is negative", req.MaxOutputBytes)
	case req.MaxOutputBytes == 0:
		req.MaxOutputBytes = DefaultExecOutputBytes
	case req.MaxOutputBytes > MaxExecOutputBytes:
		return bad("max output bytes %d exceeds MaxExecOutputBytes=%d", req.MaxOutputBytes, MaxExecOutputBytes)
	}
	return req, nil
}

// CheckGuestPath reports whether p is an acceptable guest path: absolute,
// clean (no "." or ".." elements, no trailing slash), without NUL bytes, at
// most MaxPathBytes.
func CheckGuestPath(p string) error {
	switch {
	case p == "":
		return errors.New("path is empty")
	case len(p) > MaxPathBytes:
		return fmt.Errorf("path is %d bytes, the limit is MaxPathBytes=%d", len(p), MaxPathBytes)
	case strings.IndexByte(p, 0) >= 0:
		return errors.New("path contains a NUL byte")
	case !strings.HasPrefix(p, "/"):
		return fmt.Errorf("path %q is not absolute", truncateForError(p))
	case path.Clean(p) != p:
		return fmt.Errorf("path %q is not clean (want %q)", truncateForError(p), path.Clean(p))
	}
	return nil
}

// CheckFileRequest validates the arguments of ReadFile/WriteFile; backends
// call it first. data may be nil for reads.
func CheckFileRequest(p string, data []byte) error {
	if err := CheckGuestPath(p); err != nil {
		return fmt.Errorf("%w: file: %v", ErrInvalidRequest, err)
	}
	if p == "/" {
		return fmt.Errorf("%w: file: path %q is a directory", ErrInvalidRequest, p)
	}
	if len(data) > MaxFileBytes {
		return fmt.Errorf("%w: file %s: %d bytes, the limit is MaxFileBytes=%d", ErrInvalidRequest, p, len(data), MaxFileBytes)
	}
	return nil
}

// maxErrorQuote bounds how much of a bad input an error message quotes.
const maxErrorQuote = 64

func truncateForError(s string) string {
	if len(s) > maxErrorQuote {
		return s[:maxErrorQuote] + "…"
	}
	return s
}

// CappedBuffer is an io.Writer that keeps the first Max bytes written to it
// and counts the rest as dropped; writes never fail, so a command's output
// beyond the cap is drained rather than blocking it.
type CappedBuffer struct {
	Max     int
	buf     []byte
	dropped int64
}

// Write keeps what fits under the cap and drops the rest.
func (b *CappedBuffer) Write(p []byte) (int, error) {
	room := b.Max - len(b.buf)
	if room < 0 {
		room = 0
	}
	if len(p) <= room {
		b.buf = append(b.buf, p...)
	} else {
		b.buf = append(b.buf, p[:room]...)
		b.dropped += int64(len(p) - room)
	}
	return len(p), nil
}

// Bytes returns what was kept.
func (b *CappedBuffer) Bytes() []byte { return b.buf }

// Truncated reports whether anything was dropped.
func (b *CappedBuffer) Truncated() bool { return b.dropped > 0 }

// Dropped is how many bytes were dropped.
func (b *CappedBuffer) Dropped() int64 { return b.dropped }
