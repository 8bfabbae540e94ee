package simvm

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/kelpie-go/kelpie/sim"
	"github.com/kelpie-go/kelpie/vm"
	"github.com/kelpie-go/kelpie/vm/snapshot"
	"github.com/kelpie-go/kelpie/vm/vmtest"
)

// TestConformance holds the simulated VM to the contract every backend
// shares.
func TestConformance(t *testing.T) {
	b := New(Options{})
	vmtest.Run(t, vmtest.Options{
		New: func(t *testing.T) vm.VMInstance {
			v, err := b.New(scenarioConfig)
			if err != nil {
				t.Fatal(err)
			}
			return v
		},
		MaxBlobBytes: MaxSnapshotBytes,
		OpTimeout:    time.Minute,
	})
}

// TestSimConformance runs the same suite inside a simulation, with jitter
// and a trace, so the suite itself runs under the deterministic executor.
func TestSimConformance(t *testing.T) {
	sim.Run(t, func(s *sim.Simulation) error {
		b := New(Options{Sim: s, Node: "host"})
		vmtest.Run(t, vmtest.Options{
			New: func(t *testing.T) vm.VMInstance {
				v, err := b.New(scenarioConfig)
				if err != nil {
					t.Fatal(err)
				}
				return v
			},
			MaxBlobBytes: MaxSnapshotBytes,
			OpTimeout:    time.Minute,
		})
		return nil
	})
}

func TestSimSnapshotRestore(t *testing.T) { sim.RunScenario(t, Scenarios[0]) }

func TestSimSnapshotRestoreFaults(t *testing.T) { sim.RunScenario(t, Scenarios[1]) }

func TestScenarioNames(t *testing.T) {
	seen := map[string]bool{}
	for _, sc := range Scenarios {
		if sc.Name == "" || sc.Doc == "" || sc.Run == nil || seen[sc.Name] {
			t.Errorf("scenario %q is incomplete or duplicated", sc.Name)
		}
		seen[sc.Name] = true
	}
}

// faultEnv is one simulation with a single fault kind that always fires.
type faultEnv struct {
	s   *sim.Simulation
	b   *Backend
	ctx context.Context
}

func withFault(t *testing.T, kind sim.FaultKind, fn func(e faultEnv) error) {
	t.Helper()
	withFaults(t, sim.Fault{Kind: kind, P: 1}, fn)
}

func withFaults(t *testing.T, f sim.Fault, fn func(e faultEnv) error) {
	t.Helper()
	sim.Run(t, func(s *sim.Simulation) error {
		s.Faults().MustInject(f)
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		if err := fn(faultEnv{s: s, b: New(Options{Sim: s, Node: "host", ResumeTimeout: 200 * time.Millisecond}), ctx: ctx}); err != nil {
			return err
		}
		for _, st := range s.Faults().Stats() {
			if st.Fired == 0 {
				t.Errorf("fault %s was consulted %d times and never fired", st.Fault.Kind, st.Consulted)
			}
		}
		return nil
	})
}

// pausedVM boots a VM with a file, pauses it, and returns it. Faults that
// apply to boot or guest operations must not be injected with it.
func pausedVM(t *testing.T, e faultEnv) *VM {
	t.Helper()
	v, err := e.b.NewVM(scenarioConfig)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Stop(context.Background()) })
	if err := v.Boot(e.ctx); err != nil {
		t.Fatalf("boot: %v", err)
	}
	if err := v.WriteFile(e.ctx, "/work/x", []byte("x"), 0o644); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := v.Pause(e.ctx); err != nil {
		t.Fatalf("pause: %v", err)
	}
	return v
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: %v, want %v", what, err, want)
	}
}

func wantState(t *testing.T, v vm.VMInstance, want vm.State) {
	t.Helper()
	if st := v.State(); st != want {
		t.Fatalf("state %s, want %s", st, want)
	}
}

func TestSimFaultBootFail(t *testing.T) {
	withFault(t, FaultBootFail, func(e faultEnv) error {
		v, _ := e.b.NewVM(scenarioConfig)
		wantErr(t, "boot", v.Boot(e.ctx), vm.ErrBootFailed)
		wantState(t, v, vm.StateFailed)
		// A failed VM accepts only stop.
		_, err := v.Exec(e.ctx, vm.ExecRequest{Command: "echo"})
		wantErr(t, "exec on a failed VM", err, vm.ErrInvalidState)
		wantErr(t, "the refusal carries the cause", err, vm.ErrBootFailed)
		return v.Stop(e.ctx)
	})
}

func TestSimFaultCrash(t *testing.T) {
	withFault(t, FaultCrash, func(e faultEnv) error {
		v, _ := e.b.NewVM(scenarioConfig)
		if err := v.Boot(e.ctx); err != nil {
			return err
		}
		_, err := v.Exec(e.ctx, vm.ExecRequest{Command: "echo", Args: []string{"hi"}})
		wantErr(t, "exec", err, vm.ErrCrashed)
		wantState(t, v, vm.StateFailed)
		if v.Guest() != nil {
			t.Error("a crashed VM still has a guest")
		}
		wantErr(t, "pause after the crash", v.Pause(e.ctx), vm.ErrInvalidState)
		return v.Stop(e.ctx)
	})
}

func TestSimFaultExecTimeout(t *testing.T) {
	// The fault fires once: the same command then runs normally, so the
	// timeout came from the fault and not from the command.
	withFaults(t, sim.Fault{Kind: FaultExecTimeout, P: 1, Max: 1}, func(e faultEnv) error {
		v, _ := e.b.NewVM(scenarioConfig)
		if err := v.Boot(e.ctx); err != nil {
			return err
		}
		req := vm.ExecRequest{Command: "echo", Args: []string{"hi"}, Timeout: 200 * time.Millisecond}
		_, err := v.Exec(e.ctx, req)
		wantErr(t, "exec", err, vm.ErrExecTimeout)
		wantState(t, v, vm.StateRunning)
		res, err := v.Exec(e.ctx, req)
		if err != nil || string(res.Stdout) != "hi\n" {
			t.Fatalf("the same command without the fault: %q, %v", res.Stdout, err)
		}
		return v.Stop(e.ctx)
	})
}

func TestSimFaultPauseStuck(t *testing.T) {
	withFault(t, FaultPauseStuck, func(e faultEnv) error {
		v := pausedVM(t, e)
		wantErr(t, "resume", v.Resume(e.ctx), vm.ErrResumeTimeout)
		wantState(t, v, vm.StateFailed)
		return v.Stop(e.ctx)
	})
}

func TestSimFaultSnapshotCreateFail(t *testing.T) {
	withFault(t, FaultSnapshotCreateFail, func(e faultEnv) error {
		v := pausedVM(t, e)
		blob, err := v.Snapshot(e.ctx)
		wantErr(t, "snapshot", err, vm.ErrSnapshotFailed)
		if blob != nil {
			t.Error("a failed snapshot returned a blob")
		}
		// The VM is untouched: still paused, and it resumes.
		wantState(t, v, vm.StatePaused)
		if err := v.Resume(e.ctx); err != nil {
			t.Fatalf("resume after a failed snapshot: %v", err)
		}
		return v.Stop(e.ctx)
	})
}

func TestSimFaultSnapshotCorrupt(t *testing.T) {
	withFault(t, FaultSnapshotCorrupt, func(e faultEnv) error {
		v := pausedVM(t, e)
		blob, err := v.Snapshot(e.ctx)
		if err != nil {
			t.Fatalf("snapshot: %v (corruption is silent at snapshot time)", err)
		}
		_, err = snapshot.Decode(blob)
		wantErr(t, "decode", err, snapshot.ErrCorrupt)
		w, _ := e.b.NewVM(scenarioConfig)
		wantErr(t, "restore", w.Restore(e.ctx, blob), snapshot.ErrCorrupt)
		wantState(t, w, vm.StateCreated)
		return errors.Join(v.Stop(e.ctx), w.Stop(e.ctx))
	})
}

func TestSimFaultSnapshotTooLarge(t *testing.T) {
	withFault(t, FaultSnapshotTooLarge, func(e faultEnv) error {
		v := pausedVM(t, e)
		_, err := v.Snapshot(e.ctx)
		wantErr(t, "snapshot", err, snapshot.ErrTooLarge)
		wantState(t, v, vm.StatePaused)
		return v.Stop(e.ctx)
	})
}

func TestSimFaultRestoreFail(t *testing.T) {
	withFault(t, FaultRestoreFail, func(e faultEnv) error {
		v := pausedVM(t, e)
		blob, err := v.Snapshot(e.ctx)
		if err != nil {
			return err
		}
		w, _ := e.b.NewVM(scenarioConfig)
		wantErr(t, "restore", w.Restore(e.ctx, blob), vm.ErrRestoreFailed)
		wantState(t, w, vm.StateFailed)
		return errors.Join(v.Stop(e.ctx), w.Stop(e.ctx))
	})
}

// TestEveryFaultHasATest fails when a vm.* fault is declared without its
// TestSimFault* test above.
func TestEveryFaultHasATest(t *testing.T) {
	tested := map[string]bool{
		"vm.boot_fail": true, "vm.crash": true, "vm.exec_timeout": true, "vm.pause_stuck": true,
		"vm.snapshot_create_fail": true, "vm.snapshot_corrupt": true, "vm.snapshot_too_large": true, "vm.restore_fail": true,
	}
	n := 0
	for _, f := range sim.DeclaredFaults() {
		if f.Kind.Boundary() != "vm" {
			continue
		}
		n++
		if !tested[f.Kind.Name()] {
			t.Errorf("fault %s has no TestSimFault test", f.Kind)
		}
	}
	if n != len(tested) {
		t.Errorf("%d vm faults declared, %d tested", n, len(tested))
	}
}

// TestGuestCommands covers the simulated command set beyond the
// conformance suite.
func TestGuestCommands(t *testing.T) {
	ctx := context.Background()
	v, err := New(Options{}).NewVM(scenarioConfig)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Stop(ctx)
	if err := v.Boot(ctx); err != nil {
		t.Fatal(err)
	}
	run := func(req vm.ExecRequest) vm.ExecResult {
		t.Helper()
		res, err := v.Exec(ctx, req)
		if err != nil {
			t.Fatalf("%s: %v", req.Command, err)
		}
		return res
	}
	run(vm.ExecRequest{Command: "write", Args: []string{"/d/a"}, Stdin: []byte("A")})
	run(vm.ExecRequest{Command: "/bin/write", Args: []string{"b"}, Dir: "/d", Stdin: []byte("B")})
	if r := run(vm.ExecRequest{Command: "ls", Args: []string{"/d"}}); string(r.Stdout) != "a\nb\n" {
		t.Errorf("ls /d = %q", r.Stdout)
	}
	if r := run(vm.ExecRequest{Command: "cat", Args: []string{"a", "b", "nope"}, Dir: "/d"}); string(r.Stdout) != "AB" || r.ExitCode != 1 {
		t.Errorf("cat a b nope = %q exit %d", r.Stdout, r.ExitCode)
	}
	if r := run(vm.ExecRequest{Command: "env", Env: []string{"A=1", "B=2"}}); string(r.Stdout) != "A=1\nB=2\n" {
		t.Errorf("env = %q", r.Stdout)
	}
	if r := run(vm.ExecRequest{Command: "pwd", Dir: "/d"}); string(r.Stdout) != "/d\n" {
		t.Errorf("pwd = %q", r.Stdout)
	}
	if r := run(vm.ExecRequest{Command: "rm", Args: []string{"/d/a"}}); r.ExitCode != 0 {
		t.Errorf("rm exit %d", r.ExitCode)
	}
	if _, err := v.ReadFile(ctx, "/d/a"); !errors.Is(err, vm.ErrNotFound) {
		t.Errorf("read a removed file: %v", err)
	}
	if r := run(vm.ExecRequest{Command: "no-such-thing"}); r.ExitCode != 127 {
		t.Errorf("unknown command exit %d, want 127", r.ExitCode)
	}
	if r := run(vm.ExecRequest{Command: "echo-err", Args: []string{"oops"}, MaxOutputBytes: 2}); string(r.Stderr) != "oo" || !r.StderrTruncated {
		t.Errorf("echo-err capped = %q truncated=%v", r.Stderr, r.StderrTruncated)
	}
	if r := run(vm.ExecRequest{Command: "exit", Args: []string{"300"}}); r.ExitCode != 1 {
		t.Errorf("exit 300 exit %d, want 1 (bad code)", r.ExitCode)
	}
	if err := v.WriteFile(ctx, "/d/b/c", []byte("x"), 0o644); err == nil {
		t.Error("wrote a file under a file")
	}
	if err := v.WriteFile(ctx, "/big", make([]byte, MaxGuestFSBytes+1), 0o644); err == nil {
		t.Error("wrote past MaxGuestFSBytes")
	}
}

// BenchmarkSnapshotRestore measures a simulated snapshot and restore of a
// small guest in real time, waits included (they are the modelled
// Firecracker figures).
func BenchmarkSnapshotRestore(b *testing.B) {
	ctx := context.Background()
	be := New(Options{})
	v, err := be.NewVM(scenarioConfig)
	if err != nil {
		b.Fatal(err)
	}
	defer v.Stop(ctx)
	if err := v.Boot(ctx); err != nil {
		b.Fatal(err)
	}
	if err := v.WriteFile(ctx, "/work/data", make([]byte, 64<<10), 0o644); err != nil {
		b.Fatal(err)
	}
	if err := v.Pause(ctx); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		blob, err := v.Snapshot(ctx)
		if err != nil {
			b.Fatal(err)
		}
		w, _ := be.NewVM(scenarioConfig)
		if err := w.Restore(ctx, blob); err != nil {
			b.Fatal(err)
		}
		w.Stop(ctx)
	}
}
