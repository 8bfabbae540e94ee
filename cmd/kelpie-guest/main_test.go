//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kelpie-go/kelpie/vm/guest"
	"golang.org/x/sys/unix"
)

// agent serves the real handler over a pipe and returns a connected client:
// real processes, real files, the real protocol.
func agent(t *testing.T) (*guest.Client, context.Context) {
	t.Helper()
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("SKIP: these tests run real commands and need /bin/sh on the host")
	}
	host, g := net.Pipe()
	srv := &guest.Server{Handler: newHandler(false), Logf: t.Logf}
	go srv.Serve(context.Background(), g)
	c := guest.NewClient(host)
	t.Cleanup(func() { c.Close(); g.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	if _, err := c.Handshake(ctx); err != nil {
		t.Fatal(err)
	}
	return c, ctx
}

func sh(script string) *guest.ExecRequest {
	return &guest.ExecRequest{Argv: []string{"sh", "-c", script}, Env: []string{"PATH=/usr/bin:/bin"}}
}

func TestExec(t *testing.T) {
	c, ctx := agent(t)
	r, err := c.Exec(ctx, sh(`echo out; echo err >&2; exit 7`))
	if err != nil {
		t.Fatal(err)
	}
	if r.ExitCode != 7 || string(r.Stdout) != "out\n" || string(r.Stderr) != "err\n" {
		t.Fatalf("result %+v", r)
	}

	req := sh(`cat; echo "$FOO"; pwd`)
	req.Stdin = []byte("from stdin\n")
	req.Env = append(req.Env, "FOO=bar")
	req.Dir = t.TempDir()
	r, err = c.Exec(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if want := "from stdin\nbar\n" + req.Dir + "\n"; string(r.Stdout) != want {
		t.Fatalf("stdout %q, want %q", r.Stdout, want)
	}

	// The environment is exactly the request's: nothing of the agent's leaks.
	r, err = c.Exec(ctx, &guest.ExecRequest{Argv: []string{"env"}, Env: []string{"ONLY=1"}})
	if err != nil || string(r.Stdout) != "ONLY=1\n" {
		t.Fatalf("env: %q, %v", r.Stdout, err)
	}
}

func TestExecTimeoutKillsTheProcessGroup(t *testing.T) {
	c, ctx := agent(t)
	pidFile := filepath.Join(t.TempDir(), "pid")
	req := sh(`sleep 600 & echo $! > ` + pidFile + `; wait`)
	req.Timeout = 300 * time.Millisecond
	r, err := c.Exec(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if !r.TimedOut || r.ExitCode != -1 || r.Signal != "SIGKILL" {
		t.Fatalf("result %+v, want timed out and killed", r)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	// The background sleep was in the command's group and must be gone (or
	// a zombie awaiting its reaper, which is not us here). SIGKILL reaches
	// it asynchronously: on a loaded machine it can still be running for a
	// moment, exiting, when Exec returns, so it gets a bounded while to go.
	const exitWait = 5 * time.Second
	var st []byte
	for deadline := time.Now().Add(exitWait); ; time.Sleep(10 * time.Millisecond) {
		st, err = os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil || strings.Contains(string(st), ") Z") {
			return
		}
		if time.Now().After(deadline) {
			break
		}
	}
	t.Fatalf("background process %d survived the timeout by %s: %s", pid, exitWait, st)
}

func TestExecOutputCapAndMissingCommand(t *testing.T) {
	c, ctx := agent(t)
	req := sh(`head -c 5000 /dev/zero`)
	req.MaxOutputBytes = 1000
	r, err := c.Exec(ctx, req)
	if err != nil || len(r.Stdout) != 1000 || !r.StdoutTruncated {
		t.Fatalf("capped output: %d bytes truncated=%v err=%v", len(r.Stdout), r.StdoutTruncated, err)
	}
	_, err = c.Exec(ctx, &guest.ExecRequest{Argv: []string{"no-such-command-kelpie"}})
	if !errors.Is(err, guest.ErrNotFound) || !strings.Contains(err.Error(), "no-such-command-kelpie") {
		t.Fatalf("missing command: %v", err)
	}
	// The agent is still fine.
	if _, err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestFiles(t *testing.T) {
	c, ctx := agent(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "sub", "f.bin")
	data := bytes.Repeat([]byte("kelpie\x00\xff"), 50000)
	if err := c.WriteFile(ctx, &guest.WriteFileRequest{Path: p, Data: data}); err == nil {
		t.Fatal("write into a missing directory without MkdirAll succeeded")
	}
	if err := c.WriteFile(ctx, &guest.WriteFileRequest{Path: p, Data: data, Mode: 0o600, MkdirAll: true}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(p); !bytes.Equal(got, data) {
		t.Fatal("file on disk differs from what was written")
	}
	r, err := c.ReadFile(ctx, p)
	if err != nil || !bytes.Equal(r.Data, data) || r.Mode != 0o600 {
		t.Fatalf("read back: %d bytes mode %o err %v", len(r.Data), r.Mode, err)
	}
	ls, err := c.List(ctx, filepath.Join(dir, "sub"))
	if err != nil || len(ls.Entries) != 1 || ls.Entries[0].Name != "f.bin" || ls.Entries[0].Size != int64(len(data)) {
		t.Fatalf("list: %+v %v", ls, err)
	}
	if _, err := c.ReadFile(ctx, filepath.Join(dir, "missing")); !errors.Is(err, guest.ErrNotFound) {
		t.Fatalf("missing file: %v", err)
	}
	if _, err := c.ReadFile(ctx, dir); err == nil || !strings.Contains(err.Error(), "is a directory") {
		t.Fatalf("reading a directory: %v", err)
	}
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, make([]byte, guest.MaxFileBytes+1), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReadFile(ctx, big); !errors.Is(err, guest.ErrTooLarge) {
		t.Fatalf("over-limit file: %v", err)
	}
}

func TestReaperReapsOrphansAndKeepsExitStatus(t *testing.T) {
	// Become a subreaper so orphans come to this process as they would to
	// init, then run commands with the reaper on.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Skipf("SKIP: cannot become a child subreaper: %v", err)
	}
	startReaper()
	defer func() { theReaper = nil }()
	c, ctx := agent(t)
	pidFile := filepath.Join(t.TempDir(), "pid")
	r, err := c.Exec(ctx, sh(`(sleep 0.2; exit 0) & echo $! > `+pidFile+`; exit 5`))
	if err != nil || r.ExitCode != 5 {
		t.Fatalf("exit status through the reaper: %+v %v", r, err)
	}
	b, _ := os.ReadFile(pidFile)
	orphan := strings.TrimSpace(string(b))
	// The orphan becomes our child, exits, and must be reaped, not left a zombie.
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := os.Stat("/proc/" + orphan)
		if errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			st, _ := os.ReadFile("/proc/" + orphan + "/stat")
			t.Fatalf("orphan %s was never reaped: %s", orphan, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestStdioMode(t *testing.T) {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	var stderr bytes.Buffer
	code := make(chan int, 1)
	go func() { code <- runCommand([]string{"-stdio"}, inR, outW, &stderr) }()
	c := guest.NewClient(struct {
		io.Reader
		io.Writer
		io.Closer
	}{outR, inW, inW})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	h, err := c.Handshake(ctx)
	if err != nil || !strings.HasPrefix(h.Agent, "kelpie-guest ") || h.PID != os.Getpid() {
		t.Fatalf("hello %+v %v", h, err)
	}
	inW.Close()
	if got := <-code; got != 0 {
		t.Fatalf("exit code %d after EOF, stderr %q", got, stderr.String())
	}
}

func TestFlags(t *testing.T) {
	var out, errb bytes.Buffer
	if code := runCommand([]string{"-stdio", "-listen", "/x"}, nil, &out, &errb); code != 2 || !strings.Contains(errb.String(), "exactly one") {
		t.Fatalf("two modes: code %d, %q", code, errb.String())
	}
	if code := runCommand([]string{"-version"}, nil, &out, &errb); code != 0 || !strings.Contains(out.String(), "protocol 1..1") {
		t.Fatalf("-version: code %d, %q", code, out.String())
	}
}

func TestPortFromCmdline(t *testing.T) {
	for cmdline, want := range map[string]string{
		"console=ttyS0 quiet":                          defaultPort,
		"kelpie.port=/dev/ttyS1 kelpie.port=/dev/hvc0": "/dev/hvc0",
		"kelpie.port=relative":                         defaultPort,
	} {
		if got := portFrom(cmdline); got != want {
			t.Errorf("portFrom(%q) = %q, want %q", cmdline, got, want)
		}
	}
}

func TestListenModeServesConnectionsConcurrently(t *testing.T) {
	dir, err := os.MkdirTemp("", "kg-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "a.sock")
	go runCommand([]string{"-listen", sock}, nil, io.Discard, io.Discard)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var clients []*guest.Client
	for range 3 {
		var conn net.Conn
		for {
			if conn, err = net.Dial("unix", sock); err == nil {
				break
			}
			if ctx.Err() != nil {
				t.Fatal(err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		c := guest.NewClient(conn)
		defer c.Close()
		clients = append(clients, c)
	}
	done := make(chan error, len(clients))
	for _, c := range clients {
		go func() {
			if _, err := c.Handshake(ctx); err != nil {
				done <- err
				return
			}
			_, err := c.Ping(ctx)
			done <- err
		}()
	}
	for range clients {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}
