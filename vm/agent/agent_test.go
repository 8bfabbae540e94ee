package agent_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/kelpie-go/kelpie/vm"
	"github.com/kelpie-go/kelpie/vm/agent"
	"github.com/kelpie-go/kelpie/vm/guest"
	"github.com/kelpie-go/kelpie/vm/simvm"
)

// rudeGuest ignores the output cap and never answers "hang".
type rudeGuest struct{ *simvm.Guest }

func (g rudeGuest) Exec(ctx context.Context, r *guest.ExecRequest) (*guest.ExecResult, error) {
	switch r.Argv[0] {
	case "flood":
		return &guest.ExecResult{Stdout: make([]byte, 1000), Stderr: make([]byte, 1000)}, nil
	case "hang":
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return g.Guest.Exec(ctx, r)
}

func connect(t *testing.T, h guest.Handler) (*guest.Client, func()) {
	t.Helper()
	host, g := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		(&guest.Server{Handler: h}).Serve(ctx, g)
		g.Close()
	}()
	c := guest.NewClient(host)
	if _, err := c.Handshake(ctx); err != nil {
		t.Fatal(err)
	}
	return c, func() { c.Close(); cancel(); <-done }
}

func norm(t *testing.T, r vm.ExecRequest) vm.ExecRequest {
	t.Helper()
	r, err := r.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestExecMapping(t *testing.T) {
	c, stop := connect(t, rudeGuest{simvm.NewGuest("t", 1, nil)})
	defer stop()
	ctx := context.Background()

	res, err := agent.Exec(ctx, c, norm(t, vm.ExecRequest{Command: "exit", Args: []string{"7"}}))
	if err != nil || res.ExitCode != 7 {
		t.Errorf("exit 7: %+v, %v", res, err)
	}
	res, err = agent.Exec(ctx, c, norm(t, vm.ExecRequest{Command: "flood", MaxOutputBytes: 10}))
	if err != nil || len(res.Stdout) != 10 || len(res.Stderr) != 10 || !res.StdoutTruncated || !res.StderrTruncated {
		t.Errorf("a guest that ignores the cap: %d/%d bytes, truncated %v/%v, %v", len(res.Stdout), len(res.Stderr), res.StdoutTruncated, res.StderrTruncated, err)
	}
	_, err = agent.Exec(ctx, c, norm(t, vm.ExecRequest{Command: "sleep", Args: []string{"10"}, Timeout: 50 * time.Millisecond}))
	if !errors.Is(err, vm.ErrExecTimeout) {
		t.Errorf("timed out command: %v", err)
	}
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err = agent.Exec(cctx, c, norm(t, vm.ExecRequest{Command: "hang"}))
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, agent.ErrAgentGone) {
		t.Errorf("the caller's deadline: %v, want the caller's context error, not ErrAgentGone", err)
	}
}

func TestFiles(t *testing.T) {
	c, stop := connect(t, simvm.NewGuest("t", 1, nil))
	defer stop()
	ctx := context.Background()
	if err := agent.WriteFile(ctx, c, "/a/b", []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := agent.ReadFile(ctx, c, "/a/b"); err != nil || string(got) != "data" {
		t.Errorf("read back %q, %v", got, err)
	}
	if _, err := agent.ReadFile(ctx, c, "/missing"); !errors.Is(err, vm.ErrNotFound) {
		t.Errorf("missing file: %v", err)
	}
	if _, err := agent.ReadFile(ctx, c, "relative"); !errors.Is(err, vm.ErrInvalidRequest) {
		t.Errorf("bad path: %v", err)
	}
}

func TestAgentGone(t *testing.T) {
	c, stop := connect(t, simvm.NewGuest("t", 1, nil))
	stop()
	_, err := agent.Exec(context.Background(), c, norm(t, vm.ExecRequest{Command: "true"}))
	if !errors.Is(err, agent.ErrAgentGone) {
		t.Errorf("exec over a closed channel: %v, want ErrAgentGone", err)
	}
}
