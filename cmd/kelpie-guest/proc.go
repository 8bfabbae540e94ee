//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kelpie-go/kelpie/vm/guest"
	"golang.org/x/sys/unix"
)

// outputDrainGrace is how long Exec keeps reading a command's output after
// the command exited: a background process it left behind may hold the
// pipes open forever.
const outputDrainGrace = 2 * time.Second

// reaper is init's child reaper. As PID 1 the agent inherits every orphan
// in the VM and must wait for them, but a blanket wait would also steal the
// exit status of the commands it runs itself. So the reaper is the only
// caller of wait: it hands the status of a tracked command to its Exec and
// discards the rest.
type reaper struct {
	mu      sync.Mutex
	tracked map[int]chan unix.WaitStatus
}

// theReaper is set when the agent is init; otherwise commands are waited
// for directly.
var theReaper *reaper

func startReaper() {
	r := &reaper{tracked: map[int]chan unix.WaitStatus{}}
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, syscall.SIGCHLD)
	go func() {
		for range sigchld {
			r.reapAll()
		}
	}()
	theReaper = r
}

func (r *reaper) reapAll() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
		r.mu.Lock()
		ch := r.tracked[pid]
		delete(r.tracked, pid)
		r.mu.Unlock()
		if ch != nil {
			ch <- ws
		}
	}
}

// start runs the process with the reaper's lock held, so that its exit
// cannot be reaped before it is tracked.
func (r *reaper) start(argv0 string, argv []string, attr *os.ProcAttr) (*os.Process, <-chan unix.WaitStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, err := os.StartProcess(argv0, argv, attr)
	if err != nil {
		return nil, nil, err
	}
	ch := make(chan unix.WaitStatus, 1)
	r.tracked[p.Pid] = ch
	return p, ch, nil
}

// capped keeps the first max bytes written and counts the rest.
type capped struct {
	max     int
	buf     []byte
	dropped bool
}

func (c *capped) Write(p []byte) (int, error) {
	room := c.max - len(c.buf)
	if len(p) > room {
		c.buf = append(c.buf, p[:max(room, 0)]...)
		c.dropped = true
	} else {
		c.buf = append(c.buf, p...)
	}
	return len(p), nil
}

// lookPath finds argv0 in the agent's PATH the way a shell would.
func lookPath(argv0 string) (string, error) {
	if strings.Contains(argv0, "/") {
		return argv0, nil
	}
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, argv0)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%q not found in PATH %s: %w", argv0, os.Getenv("PATH"), fs.ErrNotExist)
}

// runCommand runs req to completion, its timeout, or ctx's end.
func runProcess(ctx context.Context, req *guest.ExecRequest) (*guest.ExecResult, error) {
	timeout := req.Timeout
	if timeout == 0 {
		timeout = guest.DefaultExecTimeout
	}
	outMax := req.MaxOutputBytes
	if outMax == 0 {
		outMax = guest.DefaultExecOutputBytes
	}
	path, err := lookPath(req.Argv[0])
	if err != nil {
		return nil, err
	}
	dir := req.Dir
	if dir == "" {
		dir = "/"
	}
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	stdoutR, stdoutW, err := os.Pipe()
	if err != nil {
		stdinR.Close()
		stdinW.Close()
		return nil, err
	}
	stderrR, stderrW, err := os.Pipe()
	if err != nil {
		stdinR.Close()
		stdinW.Close()
		stdoutR.Close()
		stdoutW.Close()
		return nil, err
	}
	attr := &os.ProcAttr{
		Dir:   dir,
		Env:   req.Env,
		Files: []*os.File{stdinR, stdoutW, stderrW},
		// Its own process group, so a timeout kills what it started too.
		Sys: &syscall.SysProcAttr{Setpgid: true},
	}
	started := time.Now()
	var proc *os.Process
	var status <-chan unix.WaitStatus
	if theReaper != nil {
		proc, status, err = theReaper.start(path, req.Argv, attr)
	} else {
		proc, err = os.StartProcess(path, req.Argv, attr)
		if err == nil {
			ch := make(chan unix.WaitStatus, 1)
			status = ch
			go func() {
				st, werr := proc.Wait()
				if werr != nil {
					ch <- unix.WaitStatus(0xff00) // exit status 255
					return
				}
				ch <- unix.WaitStatus(st.Sys().(syscall.WaitStatus))
			}()
		}
	}
	// The child has its copies; ours must go so that EOFs arrive.
	stdinR.Close()
	stdoutW.Close()
	stderrW.Close()
	if err != nil {
		stdinW.Close()
		stdoutR.Close()
		stderrR.Close()
		return nil, fmt.Errorf("starting %s: %w", path, err)
	}

	go func() {
		stdinW.Write(req.Stdin) // a command that ignores stdin closes it: EPIPE is fine
		stdinW.Close()
	}()
	stdout := &capped{max: outMax}
	stderr := &capped{max: outMax}
	var drained sync.WaitGroup
	for _, p := range []struct {
		r *os.File
		w io.Writer
	}{{stdoutR, stdout}, {stderrR, stderr}} {
		drained.Add(1)
		go func() {
			defer drained.Done()
			io.Copy(p.w, p.r)
		}()
	}

	tctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var ws unix.WaitStatus
	timedOut := false
	select {
	case ws = <-status:
	case <-tctx.Done():
		timedOut = errors.Is(tctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil
		unix.Kill(-proc.Pid, unix.SIGKILL)
		ws = <-status
	}
	// Kill anything the command left in its group, then stop reading.
	unix.Kill(-proc.Pid, unix.SIGKILL)
	done := make(chan struct{})
	go func() { drained.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(outputDrainGrace):
		stdoutR.SetReadDeadline(time.Now())
		stderrR.SetReadDeadline(time.Now())
		<-done
	}
	stdoutR.Close()
	stderrR.Close()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	res := &guest.ExecResult{
		Stdout: stdout.buf, Stderr: stderr.buf,
		StdoutTruncated: stdout.dropped, StderrTruncated: stderr.dropped,
		TimedOut: timedOut,
		Duration: time.Since(started),
	}
	switch {
	case ws.Exited():
		res.ExitCode = ws.ExitStatus()
	case ws.Signaled():
		res.ExitCode = -1
		res.Signal = unix.SignalName(ws.Signal())
	}
	return res, nil
}
