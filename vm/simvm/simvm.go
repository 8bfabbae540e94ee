// Package simvm is the simulated VM backend: a vm.VMInstance with no
// hypervisor behind it, for the deterministic simulation and for tests that
// need a VM on any host.
//
// A simulated VM runs the real guest protocol (package vm/guest) between a
// real guest.Client on the host side and a guest.Server in the "guest",
// joined by an in-memory pipe; the guest's Handler is a small deterministic
// operating system (guestOS) with an in-memory filesystem and a fixed
// command set (echo, cat, write, ls, rm, env, pwd, sleep, exit, true,
// false, repeat, echo-err). Boot, pause, resume, snapshot and restore take
// simulated time modelled on Firecracker's published figures, with jitter
// drawn from the simulation's streams, and the snapshot is a real
// vm/snapshot blob holding the guest's files and counters, so a restored VM
// has exactly the files and state of the snapshotted one.
//
// Faults are declared under "vm." and consulted at the point where a real
// hypervisor would fail: vm.boot_fail at boot, vm.crash at every exec and
// file operation, vm.exec_timeout in the guest when a command starts,
// vm.pause_stuck at resume, vm.snapshot_create_fail, vm.snapshot_corrupt
// and vm.snapshot_too_large when a snapshot is written, vm.restore_fail
// once a restore has begun loading. A Backend without a simulation has no
// faults, no jitter and no trace.
package simvm

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"sync"
	"time"

	"github.com/kelpie-go/kelpie/sim"
	"github.com/kelpie-go/kelpie/vm"
	"github.com/kelpie-go/kelpie/vm/agent"
	"github.com/kelpie-go/kelpie/vm/guest"
	"github.com/kelpie-go/kelpie/vm/snapshot"
)

// The simulated VM's fault kinds.
var (
	FaultSnapshotCreateFail = sim.DeclareFault("vm.snapshot_create_fail", "Snapshot fails before writing anything; the VM stays paused")
	FaultRestoreFail        = sim.DeclareFault("vm.restore_fail", "Restore fails after it began loading a valid snapshot; the VM is failed")
	FaultSnapshotCorrupt    = sim.DeclareFault("vm.snapshot_corrupt", "Snapshot returns a blob with one bit flipped; restoring it is refused with snapshot.ErrCorrupt")
	FaultSnapshotTooLarge   = sim.DeclareFault("vm.snapshot_too_large", "the guest's memory grows past MaxSnapshotBytes; Snapshot fails with snapshot.ErrTooLarge")
	FaultExecTimeout        = sim.DeclareFault("vm.exec_timeout", "the command hangs in the guest until its timeout; Exec fails with vm.ErrExecTimeout")
	FaultBootFail           = sim.DeclareFault("vm.boot_fail", "the guest never reaches its agent; Boot fails with vm.ErrBootFailed and the VM is failed")
	FaultCrash              = sim.DeclareFault("vm.crash", "the VM dies at an exec or file operation; it fails with vm.ErrCrashed and the VM is failed")
	FaultPauseStuck         = sim.DeclareFault("vm.pause_stuck", "a paused VM never resumes; Resume fails with vm.ErrResumeTimeout and the VM is failed")
)

// Identity of the simulated backend, as written in snapshot metadata.
const (
	Name            = "sim"
	Version         = "1"
	DefaultArch     = "sim-x86_64"
	DefaultCPUModel = "sim-cpu-v1"
	AgentVersion    = "kelpie-simguest 1"
)

// Simulated durations. Boot is Firecracker's published ~125 ms to init; the
// others are of the order Firecracker documents for a small guest. Each is
// drawn with ±jitterPercent when the backend has a simulation.
const (
	BootTime      = 125 * time.Millisecond
	PauseTime     = 2 * time.Millisecond
	ResumeTime    = 2 * time.Millisecond
	SnapshotTime  = 20 * time.Millisecond
	RestoreTime   = 8 * time.Millisecond
	jitterPercent = 20
)

// Limits of the simulated guest.
const (
	// MaxSnapshotBytes bounds a simulated snapshot: far below
	// snapshot.MaxBlobBytes, so the too-large path costs little memory.
	MaxSnapshotBytes = 4 << 20
	// MaxGuestFSBytes bounds the bytes of all guest files together.
	MaxGuestFSBytes = 2 << 20
	// MaxGuestFiles bounds the number of guest files.
	MaxGuestFiles = 1024
	// agentStopTimeout bounds how long Stop waits for the guest server to
	// return after its pipe is closed.
	agentStopTimeout = 5 * time.Second
)

// Options configure a Backend.
type Options struct {
	// Sim is the simulation whose faults, streams and trace the VMs use;
	// nil runs without faults, jitter or trace.
	Sim *sim.Simulation
	// Node names the simulated host, for faults restricted to a node and
	// for the trace.
	Node string
	// Arch and CPUModel describe the simulated host; "" means the defaults.
	// Hosts that differ refuse each other's snapshots.
	Arch, CPUModel string
	// ResumeTimeout bounds Resume; 0 means vm.ResumeTimeout.
	ResumeTimeout time.Duration
}

// Backend creates simulated VMs. It is always available.
type Backend struct {
	opts Options
	mu   sync.Mutex
	n    int
}

// New returns a simulated backend.
func New(opts Options) *Backend {
	if opts.Arch == "" {
		opts.Arch = DefaultArch
	}
	if opts.CPUModel == "" {
		opts.CPUModel = DefaultCPUModel
	}
	if opts.ResumeTimeout <= 0 {
		opts.ResumeTimeout = vm.ResumeTimeout
	}
	return &Backend{opts: opts}
}

// Name is "sim".
func (b *Backend) Name() string { return Name }

// Available always returns nil: the simulated VM needs nothing from the host.
func (b *Backend) Available() error { return nil }

// Host describes what this backend's VMs restore, for a VM of cfg's shape.
func (b *Backend) Host(cfg vm.VMConfig) snapshot.Host {
	return snapshot.Host{
		Backend: Name, BackendVersion: Version, Arch: b.opts.Arch, CPUModel: b.opts.CPUModel,
		VCPUs: cfg.VCPUs, MemoryMiB: cfg.MemoryMiB,
		MinGuestProtocol: guest.MinProtocolVersion, MaxGuestProtocol: guest.MaxProtocolVersion,
	}
}

// New creates a VM in StateCreated. IDs are sim-1, sim-2… in creation
// order, unless cfg.ID names one.
func (b *Backend) New(cfg vm.VMConfig) (vm.VMInstance, error) {
	return b.NewVM(cfg)
}

// NewVM is New with the concrete type, for tests that reach into the guest.
func (b *Backend) NewVM(cfg vm.VMConfig) (*VM, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.n++
	n := b.n
	b.mu.Unlock()
	id := cfg.ID
	if id == "" {
		id = fmt.Sprintf("sim-%d", n)
	}
	v := &VM{b: b, id: id, cfg: cfg}
	if b.opts.Sim != nil {
		v.rand = b.opts.Sim.Rand("vm/" + b.opts.Node + "/" + id)
	}
	v.m.SetObserver(func(from, to vm.State, op vm.Op, err error) {
		if err != nil {
			v.record("%s: %s -> %s: %v", op, from, to, err)
		} else {
			v.record("%s: %s -> %s", op, from, to)
		}
	})
	return v, nil
}

// VM is one simulated VM.
type VM struct {
	m    vm.Machine
	b    *Backend
	id   string
	cfg  vm.VMConfig
	rand *sim.Stream // nil without a simulation

	mu     sync.Mutex
	os     *Guest
	client *guest.Client
	cancel context.CancelFunc
	served chan struct{}
}

// ID is the VM's id.
func (v *VM) ID() string { return v.id }

// Backend is "sim".
func (v *VM) Backend() string { return Name }

// Config is the VM's configuration.
func (v *VM) Config() vm.VMConfig { return v.cfg }

// State is the VM's state.
func (v *VM) State() vm.State { return v.m.State() }

func (v *VM) record(format string, args ...any) {
	if s := v.b.opts.Sim; s != nil {
		s.Record(v.b.opts.Node, "vm %s "+format, append([]any{v.id}, args...)...)
	}
}

func (v *VM) faults() *sim.Faults {
	if s := v.b.opts.Sim; s != nil {
		return s.Faults()
	}
	return nil
}

func (v *VM) fires(k sim.FaultKind) bool {
	return v.faults().Fires(k, v.b.opts.Node)
}

// wait sleeps d with jitter, or until ctx is done.
func (v *VM) wait(ctx context.Context, d time.Duration) error {
	if v.rand != nil {
		j := d * jitterPercent / 100
		d = v.rand.Duration(d-j, d+j)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Boot starts the guest and waits for its agent's handshake.
func (v *VM) Boot(ctx context.Context) error {
	return v.m.Do(vm.OpBoot, func() error {
		ctx, cancel := context.WithTimeout(ctx, v.cfg.EffectiveBootTimeout())
		defer cancel()
		if err := v.wait(ctx, BootTime); err != nil {
			return fmt.Errorf("%w: sim %s: %v", vm.ErrBootFailed, v.id, err)
		}
		if v.fires(FaultBootFail) {
			return fmt.Errorf("%w: sim %s: the guest did not reach its agent (injected vm.boot_fail)", vm.ErrBootFailed, v.id)
		}
		var bootID uint64 = 1
		if v.rand != nil {
			bootID = v.rand.Uint64()
		}
		return v.startAgent(ctx, NewGuest(v.id, bootID, v.fires))
	})
}

// startAgent joins a guest.Client to a guest.Server running os over an
// in-memory pipe and performs the handshake.
func (v *VM) startAgent(ctx context.Context, g *Guest) error {
	host, guestEnd := net.Pipe()
	sctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	srv := &guest.Server{Handler: g}
	go func() {
		defer close(served)
		_ = srv.Serve(sctx, guestEnd)
		guestEnd.Close()
	}()
	c := guest.NewClient(host)
	if _, err := c.Handshake(ctx); err != nil {
		c.Close()
		cancel()
		<-served
		return fmt.Errorf("%w: sim %s: agent handshake: %v", vm.ErrBootFailed, v.id, err)
	}
	v.mu.Lock()
	v.os, v.client, v.cancel, v.served = g, c, cancel, served
	v.mu.Unlock()
	return nil
}

// stopAgent ends the host-guest connection and drops the guest.
func (v *VM) stopAgent() error {
	v.mu.Lock()
	c, cancel, served := v.client, v.cancel, v.served
	v.client, v.cancel, v.served, v.os = nil, nil, nil, nil
	v.mu.Unlock()
	if c == nil {
		return nil
	}
	c.Close()
	cancel()
	t := time.NewTimer(agentStopTimeout)
	defer t.Stop()
	select {
	case <-served:
		return nil
	case <-t.C:
		return fmt.Errorf("sim %s: the guest agent did not stop within %s", v.id, agentStopTimeout)
	}
}

func (v *VM) agentClient() *guest.Client {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.client
}

// crash fails the VM: the hypervisor is gone, and with it the guest.
func (v *VM) crash(cause error) error {
	if v.m.Fail(cause) {
		_ = v.stopAgent()
	}
	return cause
}

// beginGuestOp is the common start of exec and file operations: the state
// check, and the crash fault.
func (v *VM) beginGuestOp(op vm.Op) (*guest.Client, error) {
	if err := v.m.Check(op); err != nil {
		return nil, err
	}
	if v.fires(FaultCrash) {
		return nil, v.crash(fmt.Errorf("%w: sim %s died during %s (injected vm.crash)", vm.ErrCrashed, v.id, op))
	}
	c := v.agentClient()
	if c == nil {
		// Stopped or crashed between the check and here.
		return nil, &vm.TransitionError{Op: op, From: v.m.State(), Cause: v.m.Cause()}
	}
	return c, nil
}

// endGuestOp turns a lost agent into a crash of a VM that was running.
func (v *VM) endGuestOp(err error) error {
	if errors.Is(err, agent.ErrAgentGone) && v.m.State() == vm.StateRunning {
		return v.crash(fmt.Errorf("%w: %v", vm.ErrCrashed, err))
	}
	return err
}

// Exec runs a command of the simulated guest's command set.
func (v *VM) Exec(ctx context.Context, req vm.ExecRequest) (vm.ExecResult, error) {
	req, err := req.Normalize()
	if err != nil {
		return vm.ExecResult{}, err
	}
	c, err := v.beginGuestOp(vm.OpExec)
	if err != nil {
		return vm.ExecResult{}, err
	}
	res, err := agent.Exec(ctx, c, req)
	if err != nil {
		v.record("exec %s: %v", req.Command, err)
		return res, v.endGuestOp(err)
	}
	v.record("exec %s: exit %d, %d+%d bytes", req.Command, res.ExitCode, len(res.Stdout), len(res.Stderr))
	return res, nil
}

// ReadFile reads a guest file.
func (v *VM) ReadFile(ctx context.Context, path string) ([]byte, error) {
	if err := vm.CheckFileRequest(path, nil); err != nil {
		return nil, err
	}
	c, err := v.beginGuestOp(vm.OpReadFile)
	if err != nil {
		return nil, err
	}
	data, err := agent.ReadFile(ctx, c, path)
	return data, v.endGuestOp(err)
}

// WriteFile writes a guest file.
func (v *VM) WriteFile(ctx context.Context, path string, data []byte, mode fs.FileMode) error {
	if err := vm.CheckFileRequest(path, data); err != nil {
		return err
	}
	c, err := v.beginGuestOp(vm.OpWriteFile)
	if err != nil {
		return err
	}
	return v.endGuestOp(agent.WriteFile(ctx, c, path, data, mode))
}

// Pause freezes the guest.
func (v *VM) Pause(ctx context.Context) error {
	return v.m.Do(vm.OpPause, func() error {
		if err := v.wait(ctx, PauseTime); err != nil {
			return fmt.Errorf("sim %s: pause: %w", v.id, err)
		}
		return nil
	})
}

// Resume unfreezes the guest; under vm.pause_stuck it never does, and the VM
// fails when ResumeTimeout (or ctx) runs out.
func (v *VM) Resume(ctx context.Context) error {
	return v.m.Do(vm.OpResume, func() error {
		if v.fires(FaultPauseStuck) {
			t := time.NewTimer(v.b.opts.ResumeTimeout)
			defer t.Stop()
			select {
			case <-t.C:
			case <-ctx.Done():
			}
			_ = v.stopAgent()
			return fmt.Errorf("%w: sim %s stayed paused (injected vm.pause_stuck)", vm.ErrResumeTimeout, v.id)
		}
		if err := v.wait(ctx, ResumeTime); err != nil {
			_ = v.stopAgent()
			return fmt.Errorf("%w: sim %s: %v", vm.ErrResumeTimeout, v.id, err)
		}
		return nil
	})
}

// Section names of a simulated snapshot.
const (
	sectionState  = "vmstate"
	sectionFS     = "guestfs"
	sectionMemory = "memory"
)

// Snapshot writes the paused guest's files and counters into a blob.
func (v *VM) Snapshot(ctx context.Context) ([]byte, error) {
	var blob []byte
	err := v.m.Do(vm.OpSnapshot, func() error {
		if v.fires(FaultSnapshotCreateFail) {
			return fmt.Errorf("%w: sim %s: injected vm.snapshot_create_fail", vm.ErrSnapshotFailed, v.id)
		}
		if err := v.wait(ctx, SnapshotTime); err != nil {
			return fmt.Errorf("sim %s: snapshot: %w", v.id, err)
		}
		v.mu.Lock()
		g, c := v.os, v.client
		v.mu.Unlock()
		if g == nil || c == nil {
			return fmt.Errorf("sim %s: snapshot: no guest", v.id)
		}
		state, files := g.Save()
		sections := []snapshot.Section{{Name: sectionState, Data: state}, {Name: sectionFS, Data: files}}
		if v.fires(FaultSnapshotTooLarge) {
			// The guest's memory grew past what a snapshot may hold.
			sections = append(sections, snapshot.Section{Name: sectionMemory, Data: make([]byte, MaxSnapshotBytes)})
		}
		meta := snapshot.Metadata{
			Backend: Name, BackendVersion: Version, Arch: v.b.opts.Arch, CPUModel: v.b.opts.CPUModel,
			VCPUs: v.cfg.VCPUs, MemoryMiB: v.cfg.MemoryMiB,
			GuestAgentVersion: AgentVersion, GuestProtocol: c.Version(),
		}
		b, err := snapshot.Encode(meta, sections, MaxSnapshotBytes)
		if err != nil {
			return fmt.Errorf("sim %s: snapshot: %w", v.id, err)
		}
		if v.fires(FaultSnapshotCorrupt) {
			// One bit flips after the checksum was computed, as a bad disk
			// or network would do.
			pos := snapshot.HeaderBytes
			if v.rand != nil {
				pos = snapshot.HeaderBytes + v.rand.IntN(len(b)-snapshot.HeaderBytes)
			}
			b[pos] ^= 1 << (pos % 8)
		}
		blob = b
		v.record("snapshot: %d bytes", len(b))
		return nil
	})
	return blob, err
}

// Restore loads a snapshot into a created VM (see the restore contract in
// package vm).
func (v *VM) Restore(ctx context.Context, blob []byte) error {
	return v.m.Do(vm.OpRestore, func() error {
		snap, err := snapshot.DecodeMax(blob, MaxSnapshotBytes)
		if err != nil {
			return vm.Refuse(fmt.Errorf("sim %s: restore: %w", v.id, err))
		}
		if err := snapshot.Compatible(snap.Meta, v.b.Host(v.cfg)); err != nil {
			return vm.Refuse(fmt.Errorf("sim %s: restore: %w", v.id, err))
		}
		state, ok1 := snap.Section(sectionState)
		files, ok2 := snap.Section(sectionFS)
		if !ok1 || !ok2 {
			return vm.Refuse(fmt.Errorf("sim %s: restore: %w: the blob lacks the %q or %q section", v.id, snapshot.ErrCorrupt, sectionState, sectionFS))
		}
		g, err := LoadGuest(state, files, v.fires)
		if err != nil {
			return vm.Refuse(fmt.Errorf("sim %s: restore: %w: %v", v.id, snapshot.ErrCorrupt, err))
		}
		// From here on the hypervisor is loading: failures leave it failed.
		if err := v.wait(ctx, RestoreTime); err != nil {
			return fmt.Errorf("%w: sim %s: %v", vm.ErrRestoreFailed, v.id, err)
		}
		if v.fires(FaultRestoreFail) {
			return fmt.Errorf("%w: sim %s: loading failed (injected vm.restore_fail)", vm.ErrRestoreFailed, v.id)
		}
		if err := v.startAgent(ctx, g); err != nil {
			return fmt.Errorf("%w: sim %s: %v", vm.ErrRestoreFailed, v.id, err)
		}
		return nil
	})
}

// Stop ends the VM.
func (v *VM) Stop(ctx context.Context) error {
	return v.m.Do(vm.OpStop, v.stopAgent)
}

// Counters returns the guest's boot id (drawn at boot, carried by
// snapshots) and how many commands it has run; ok is false without a guest.
func (v *VM) Counters() (bootID, execs uint64, ok bool) {
	v.mu.Lock()
	g := v.os
	v.mu.Unlock()
	if g == nil {
		return 0, 0, false
	}
	bootID, execs = g.Counters()
	return bootID, execs, true
}

// Guest returns the simulated guest's files, sorted by path, for tests that
// compare two VMs' state directly. It returns nil when the VM has no guest.
func (v *VM) Guest() map[string][]byte {
	v.mu.Lock()
	g := v.os
	v.mu.Unlock()
	if g == nil {
		return nil
	}
	return g.Files()
}
