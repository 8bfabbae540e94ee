package simvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/kelpie-go/kelpie/sim"
	"github.com/kelpie-go/kelpie/vm"
	"github.com/kelpie-go/kelpie/vm/snapshot"
)

// Scenarios are the simulated VM's named simulations, run by TestSim* and
// by `kelpie sim --scenario NAME`.
var Scenarios = []sim.Scenario{
	{
		Name: "vm-snapshot-restore",
		Doc:  "boot a VM on host a, fill its guest, snapshot it, restore it on host b and check every file and counter; host c (another CPU model) must refuse the snapshot",
		Run:  runSnapshotRestore,
	},
	{
		Name: "vm-snapshot-restore-faults",
		Doc:  "repeat boot/exec/snapshot/restore with every vm.* fault injected until each has been consulted; every failure must be the typed error and state the contract names, and no restore may ever return different guest state",
		Run:  runFaults,
	},
}

// scenarioConfig is the VM shape the scenarios use.
var scenarioConfig = vm.VMConfig{VCPUs: 2, MemoryMiB: 256, Kernel: "/sim/vmlinux", Initrd: "/sim/initramfs.cpio"}

// scenarioOpTimeout bounds one VM operation in a scenario (virtual time).
const scenarioOpTimeout = time.Minute

// fillGuest writes between 1 and maxFiles files of random contents drawn
// from r, and returns what it wrote.
func fillGuest(ctx context.Context, v vm.VMInstance, r *sim.Stream, maxFiles int) (map[string][]byte, error) {
	want := map[string][]byte{}
	n := 1 + r.IntN(maxFiles)
	for i := 0; i < n; i++ {
		p := fmt.Sprintf("/work/f%02d", r.IntN(100))
		data := make([]byte, r.IntN(2048))
		r.Bytes(data)
		if err := v.WriteFile(ctx, p, data, 0o644); err != nil {
			return want, err
		}
		want[p] = data
	}
	return want, nil
}

// checkGuest compares the files under /work of v with want.
func checkGuest(ctx context.Context, v vm.VMInstance, want map[string][]byte) error {
	paths := make([]string, 0, len(want))
	for p := range want {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		got, err := v.ReadFile(ctx, p)
		if err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
		if !bytes.Equal(got, want[p]) {
			return fmt.Errorf("%s: %d bytes differ from the %d snapshotted", p, len(got), len(want[p]))
		}
	}
	res, err := v.Exec(ctx, vm.ExecRequest{Command: "ls", Args: []string{"/work"}, Timeout: faultExecTimeout})
	if err != nil {
		return fmt.Errorf("ls /work: %w", err)
	}
	var names bytes.Buffer
	for _, p := range paths {
		names.WriteString(p[len("/work/"):] + "\n")
	}
	if !bytes.Equal(res.Stdout, names.Bytes()) {
		return fmt.Errorf("ls /work = %q, want %q", res.Stdout, names.Bytes())
	}
	return nil
}

func runSnapshotRestore(s *sim.Simulation) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*scenarioOpTimeout)
	defer cancel()
	a := New(Options{Sim: s, Node: "a"})
	b := New(Options{Sim: s, Node: "b"})
	c := New(Options{Sim: s, Node: "c", CPUModel: "sim-cpu-v2"})
	src, err := a.NewVM(scenarioConfig)
	if err != nil {
		return err
	}
	defer src.Stop(ctx)
	if err := src.Boot(ctx); err != nil {
		return fmt.Errorf("boot: %w", err)
	}
	want, err := fillGuest(ctx, src, s.Rand("scenario/files"), 20)
	if err != nil {
		return fmt.Errorf("fill: %w", err)
	}
	for i := 0; i < 3; i++ {
		if _, err := src.Exec(ctx, vm.ExecRequest{Command: "echo", Args: []string{"round", fmt.Sprint(i)}}); err != nil {
			return fmt.Errorf("exec: %w", err)
		}
	}
	if err := src.Pause(ctx); err != nil {
		return fmt.Errorf("pause: %w", err)
	}
	srcBoot, srcExecs, _ := src.Counters()
	blob, err := src.Snapshot(ctx)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	s.Record("a", "snapshot of %d files: %d bytes", len(want), len(blob))

	dst, err := b.NewVM(scenarioConfig)
	if err != nil {
		return err
	}
	defer dst.Stop(ctx)
	if err := dst.Restore(ctx, blob); err != nil {
		return fmt.Errorf("restore on b: %w", err)
	}
	if st := dst.State(); st != vm.StatePaused {
		return fmt.Errorf("restored VM is %s, the restore contract says paused", st)
	}
	if err := dst.Resume(ctx); err != nil {
		return fmt.Errorf("resume on b: %w", err)
	}
	if boot, execs, _ := dst.Counters(); boot != srcBoot || execs != srcExecs {
		return fmt.Errorf("restored counters boot=%d execs=%d, snapshotted boot=%d execs=%d", boot, execs, srcBoot, srcExecs)
	}
	if err := checkGuest(ctx, dst, want); err != nil {
		return fmt.Errorf("restored guest: %w", err)
	}

	other, err := c.NewVM(scenarioConfig)
	if err != nil {
		return err
	}
	defer other.Stop(ctx)
	err = other.Restore(ctx, blob)
	if !errors.Is(err, snapshot.ErrIncompatible) {
		return fmt.Errorf("restore on host c with another CPU model: %v, want snapshot.ErrIncompatible", err)
	}
	if st := other.State(); st != vm.StateCreated {
		return fmt.Errorf("after a refused restore the VM is %s, the contract says created", st)
	}
	s.Record("c", "refused: %v", err)
	return nil
}

// Fault scenario bounds.
const (
	// faultMinRounds is the least number of rounds the fault scenario runs.
	faultMinRounds = 8
	// faultMaxRounds bounds it: if some fault kind is still unconsulted by
	// then, a code path no longer reaches it and the scenario fails.
	faultMaxRounds = 400
	// faultExecTimeout is the timeout of the scenario's commands.
	faultExecTimeout = 200 * time.Millisecond
	// faultResumeTimeout is the hosts' resume timeout: short, so pause_stuck
	// costs little real time when the scenario runs natively.
	faultResumeTimeout = 300 * time.Millisecond
)

// vmFaults are every fault kind the simulated VM implements, with the
// probability the fault scenario gives each. Crash is rarer because every
// guest operation consults it.
var vmFaults = []struct {
	kind sim.FaultKind
	p    float64
}{
	{FaultBootFail, 0.1},
	{FaultCrash, 0.02},
	{FaultExecTimeout, 0.1},
	{FaultPauseStuck, 0.1},
	{FaultSnapshotCreateFail, 0.1},
	{FaultSnapshotCorrupt, 0.1},
	{FaultSnapshotTooLarge, 0.1},
	{FaultRestoreFail, 0.2},
}

// expect checks that a failed operation failed as the contract says: with
// one of the allowed errors, leaving the VM in the table's failure state.
func expect(v vm.VMInstance, op vm.Op, from vm.State, err error, allowed ...error) error {
	ok := false
	for _, a := range allowed {
		if errors.Is(err, a) {
			ok = true
		}
	}
	if !ok {
		return fmt.Errorf("%s failed with %v, which is none of %v", op, err, allowed)
	}
	want := vm.AfterFailure(from, op)
	// A refused restore leaves the VM created: that is the contract.
	if op == vm.OpRestore && (errors.Is(err, snapshot.ErrCorrupt) || errors.Is(err, snapshot.ErrTooLarge) || errors.Is(err, snapshot.ErrIncompatible)) {
		want = from
	}
	// A crash fails the VM whatever the operation.
	if errors.Is(err, vm.ErrCrashed) {
		want = vm.StateFailed
	}
	if st := v.State(); st != want {
		return fmt.Errorf("after %s failed with %v the VM is %s, the contract says %s", op, err, st, want)
	}
	return nil
}

func runFaults(s *sim.Simulation) error {
	for _, f := range vmFaults {
		s.Faults().MustInject(sim.Fault{Kind: f.kind, P: f.p})
	}
	ctx, cancel := context.WithTimeout(context.Background(), faultMaxRounds*scenarioOpTimeout)
	defer cancel()
	a := New(Options{Sim: s, Node: "a", ResumeTimeout: faultResumeTimeout})
	b := New(Options{Sim: s, Node: "b", ResumeTimeout: faultResumeTimeout})
	r := s.Rand("scenario/faults")
	restored := 0
	for round := 0; ; round++ {
		if round >= faultMinRounds && allConsulted(s) {
			s.Record("", "fault scenario: %d rounds, %d verified restores", round, restored)
			return nil
		}
		if round >= faultMaxRounds {
			return fmt.Errorf("after %d rounds some vm fault was never consulted: %v", round, s.Faults().Stats())
		}
		ok, err := faultRound(ctx, s, a, b, r)
		if err != nil {
			return fmt.Errorf("round %d: %w", round, err)
		}
		if ok {
			restored++
		}
	}
}

func allConsulted(s *sim.Simulation) bool {
	for _, st := range s.Faults().Stats() {
		if st.Consulted == 0 {
			return false
		}
	}
	return true
}

// faultRound runs one lifecycle and reports whether it got as far as a
// verified restore. An error is a broken contract, not an injected fault.
func faultRound(ctx context.Context, s *sim.Simulation, a, b *Backend, r *sim.Stream) (bool, error) {
	src, err := a.NewVM(scenarioConfig)
	if err != nil {
		return false, err
	}
	defer src.Stop(ctx)
	if err := src.Boot(ctx); err != nil {
		return false, expect(src, vm.OpBoot, vm.StateCreated, err, vm.ErrBootFailed)
	}
	want, err := fillGuest(ctx, src, r, 5)
	if err != nil {
		return false, expect(src, vm.OpWriteFile, vm.StateRunning, err, vm.ErrCrashed)
	}
	res, err := src.Exec(ctx, vm.ExecRequest{Command: "cat", Stdin: []byte("ping"), Timeout: faultExecTimeout})
	switch {
	case err != nil:
		if err := expect(src, vm.OpExec, vm.StateRunning, err, vm.ErrCrashed, vm.ErrExecTimeout); err != nil || src.State() != vm.StateRunning {
			return false, err
		}
	case string(res.Stdout) != "ping":
		return false, fmt.Errorf("cat returned %q, want %q", res.Stdout, "ping")
	}
	if err := src.Pause(ctx); err != nil {
		return false, fmt.Errorf("pause (no fault applies): %w", err)
	}
	blob, err := src.Snapshot(ctx)
	if err != nil {
		return false, expect(src, vm.OpSnapshot, vm.StatePaused, err, vm.ErrSnapshotFailed, snapshot.ErrTooLarge)
	}
	if err := src.Resume(ctx); err != nil {
		if err := expect(src, vm.OpResume, vm.StatePaused, err, vm.ErrResumeTimeout); err != nil {
			return false, err
		}
	}
	dst, err := b.NewVM(scenarioConfig)
	if err != nil {
		return false, err
	}
	defer dst.Stop(ctx)
	if err := dst.Restore(ctx, blob); err != nil {
		return false, expect(dst, vm.OpRestore, vm.StateCreated, err, snapshot.ErrCorrupt, vm.ErrRestoreFailed)
	}
	if st := dst.State(); st != vm.StatePaused {
		return false, fmt.Errorf("restored VM is %s, the restore contract says paused", st)
	}
	if err := dst.Resume(ctx); err != nil {
		return false, expect(dst, vm.OpResume, vm.StatePaused, err, vm.ErrResumeTimeout)
	}
	// The invariant that matters: a restore that succeeds returns exactly
	// the snapshotted guest, corrupted blobs included (they must never
	// restore). A crash during the check is an injected fault, not a
	// difference.
	if err := checkGuest(ctx, dst, want); err != nil {
		if errors.Is(err, vm.ErrCrashed) {
			return false, nil
		}
		if errors.Is(err, vm.ErrExecTimeout) {
			return true, nil
		}
		s.Violation("restored guest equals snapshot", err)
		return false, err
	}
	return true, nil
}
