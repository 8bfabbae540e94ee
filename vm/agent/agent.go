// Package agent is the host side of a VM's guest agent for backends: it
// carries VMInstance's Exec, ReadFile and WriteFile over a guest.Client
// (package vm/guest), converting requests and results and mapping the
// protocol's errors onto package vm's, so every backend that talks to the
// Kelpie guest agent — Firecracker over vsock, the simulated VM over an
// in-memory pipe — behaves the same at the VMInstance boundary.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/kelpie-go/kelpie/vm"
	"github.com/kelpie-go/kelpie/vm/guest"
)

// Grace is how much longer than a command's own timeout the host waits for
// the guest's answer before deciding the agent is gone: the guest kills the
// command at its timeout and needs a moment to report it.
const Grace = 5 * time.Second

// FileTimeout bounds one file read or write through the agent.
const FileTimeout = 60 * time.Second

// Exec runs req (already normalized with vm.ExecRequest.Normalize) through
// c. A command killed at its timeout returns an error matching
// vm.ErrExecTimeout; output beyond req.MaxOutputBytes is cut and flagged.
func Exec(ctx context.Context, c *guest.Client, req vm.ExecRequest) (vm.ExecResult, error) {
	argv := append([]string{req.Command}, req.Args...)
	gr := &guest.ExecRequest{
		Argv:           argv,
		Env:            req.Env,
		Dir:            req.Dir,
		Stdin:          req.Stdin,
		Timeout:        req.Timeout,
		MaxOutputBytes: req.MaxOutputBytes,
	}
	cctx, cancel := context.WithTimeout(ctx, req.Timeout+Grace)
	defer cancel()
	r, err := c.Exec(cctx, gr)
	if err != nil {
		return vm.ExecResult{}, mapError("exec "+req.Command, err, ctx)
	}
	if r.TimedOut {
		return vm.ExecResult{}, fmt.Errorf("%w: %s after %s", vm.ErrExecTimeout, req.Command, req.Timeout)
	}
	res := vm.ExecResult{
		ExitCode:        r.ExitCode,
		Stdout:          r.Stdout,
		Stderr:          r.Stderr,
		StdoutTruncated: r.StdoutTruncated,
		StderrTruncated: r.StderrTruncated,
	}
	// The guest applies the cap too; cutting again here keeps the promise
	// even with an agent that ignores it.
	if len(res.Stdout) > req.MaxOutputBytes {
		res.Stdout, res.StdoutTruncated = res.Stdout[:req.MaxOutputBytes], true
	}
	if len(res.Stderr) > req.MaxOutputBytes {
		res.Stderr, res.StderrTruncated = res.Stderr[:req.MaxOutputBytes], true
	}
	return res, nil
}

// ReadFile reads a guest file through c; the path is checked first.
func ReadFile(ctx context.Context, c *guest.Client, path string) ([]byte, error) {
	if err := vm.CheckFileRequest(path, nil); err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, FileTimeout)
	defer cancel()
	r, err := c.ReadFile(cctx, path)
	if err != nil {
		return nil, mapError("read "+path, err, ctx)
	}
	if len(r.Data) > vm.MaxFileBytes {
		return nil, fmt.Errorf("read %s: the guest sent %d bytes, the limit is vm.MaxFileBytes=%d", path, len(r.Data), vm.MaxFileBytes)
	}
	return r.Data, nil
}

// WriteFile writes a guest file through c, creating missing parent
// directories, as VMInstance.WriteFile promises.
func WriteFile(ctx context.Context, c *guest.Client, path string, data []byte, mode fs.FileMode) error {
	if err := vm.CheckFileRequest(path, data); err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, FileTimeout)
	defer cancel()
	err := c.WriteFile(cctx, &guest.WriteFileRequest{Path: path, Data: data, Mode: uint32(mode.Perm()), MkdirAll: true})
	if err != nil {
		return mapError("write "+path, err, ctx)
	}
	return nil
}

// ErrAgentGone matches errors where the guest agent stopped answering: the
// connection closed, or the host's deadline passed while the caller's did
// not. Backends treat it as a crash.
var ErrAgentGone = errors.New("guest agent stopped answering")

func mapError(op string, err error, callerCtx context.Context) error {
	switch {
	case errors.Is(err, guest.ErrNotFound):
		return fmt.Errorf("%s: %w: %v", op, vm.ErrNotFound, err)
	case errors.Is(err, guest.ErrBadRequest), errors.Is(err, guest.ErrTooLarge):
		return fmt.Errorf("%s: %w: %v", op, vm.ErrInvalidRequest, err)
	case callerCtx.Err() != nil:
		return fmt.Errorf("%s: %w", op, callerCtx.Err())
	case errors.Is(err, guest.ErrClosed), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: %w: %v", op, ErrAgentGone, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}
