package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/kelpie-go/kelpie/vm"
	"github.com/kelpie-go/kelpie/vm/agent"
	"github.com/kelpie-go/kelpie/vm/guest"
	"github.com/kelpie-go/kelpie/vm/snapshot"
)

// VM is one Firecracker microVM.
type VM struct {
	m   vm.Machine
	b   *Backend
	id  string
	cfg vm.VMConfig
	dir string

	mu       sync.Mutex
	proc     *process
	api      *Client
	client   *guest.Client
	version  string // Firecracker version of the running process
	agentVer string // guest agent, from the handshake
	protocol int    // guest protocol version, from the handshake
	kernel   string // guest kernel release, from the handshake
	// reconnect is set by Restore: the agent session is established at
	// Resume, because a paused guest cannot answer.
	reconnect bool
}

// ID is the VM's id.
func (v *VM) ID() string { return v.id }

// Backend is "firecracker".
func (v *VM) Backend() string { return Name }

// Config is the VM's configuration.
func (v *VM) Config() vm.VMConfig { return v.cfg }

// State is the VM's state.
func (v *VM) State() vm.State { return v.m.State() }

// Info describes a VM: what runs it and how its guest agent is reached.
type Info struct {
	ID string
	// Version is the Firecracker version of the process ("" before boot).
	Version string
	// PID is the firecracker process (0 when none runs).
	PID int
	// Dir holds the VM's API socket, log and snapshot files.
	Dir     string
	Channel Channel
	// Agent, Protocol and GuestKernel come from the guest agent's
	// handshake (a restored VM's from the snapshot until it resumes).
	Agent       string
	Protocol    int
	GuestKernel string
}

// Info describes the VM now.
func (v *VM) Info() Info {
	v.mu.Lock()
	defer v.mu.Unlock()
	i := Info{ID: v.id, Version: v.version, Dir: v.dir, Channel: v.b.opts.Channel, Agent: v.agentVer, Protocol: v.protocol, GuestKernel: v.kernel}
	if v.proc != nil {
		i.PID = v.proc.cmd.Process.Pid
	}
	return i
}

// maxBlobBytes bounds a snapshot blob of this VM: all of its memory, the
// vmstate file, and the container's own bytes. Restore refuses a larger
// blob before reading it, and Snapshot never writes one.
func (v *VM) maxBlobBytes() int64 {
	return int64(v.cfg.MemoryMiB)<<20 + maxVMStateBytes + blobOverheadBytes
}

// blobOverheadBytes is what a blob holds besides its sections' data: the
// header, section table, metadata (at most snapshot.MaxMetadataBytes) and
// checksum, with room to spare.
const blobOverheadBytes = 1 << 20

// process is a running firecracker.
type process struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser // the guest's ttyS0 input
	stdout io.ReadCloser  // the guest's ttyS0 output
	log    *lockedBuffer
	exited chan struct{}
	err    error // set before exited closes
}

// lockedBuffer keeps the first logTailBytes of the process's stderr.
type lockedBuffer struct {
	mu sync.Mutex
	b  vm.CappedBuffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.TrimSpace(string(l.b.Bytes()))
}

// describe says why the process ended, with what it printed.
func (v *VM) describe(p *process) string {
	var parts []string
	select {
	case <-p.exited:
		parts = append(parts, fmt.Sprintf("firecracker exited: %v", p.err))
	default:
	}
	if s := p.log.String(); s != "" {
		parts = append(parts, "stderr: "+truncate(s))
	}
	if data, err := os.ReadFile(filepath.Join(v.dir, logName)); err == nil && len(data) > 0 {
		s := strings.TrimSpace(string(data))
		if len(s) > maxQuote {
			s = "…" + s[len(s)-maxQuote:]
		}
		parts = append(parts, "log: "+s)
	}
	return strings.Join(parts, "; ")
}

// start creates the VM directory and starts firecracker in it, returning
// once its API socket answers.
func (v *VM) start(ctx context.Context) error {
	if err := os.RemoveAll(v.dir); err != nil {
		return fmt.Errorf("firecracker %s: clear %s: %w", v.id, v.dir, err)
	}
	if err := os.MkdirAll(v.dir, 0o700); err != nil {
		return fmt.Errorf("firecracker %s: %w", v.id, err)
	}
	// Firecracker wants the log file to exist.
	if err := os.WriteFile(filepath.Join(v.dir, logName), nil, 0o600); err != nil {
		return fmt.Errorf("firecracker %s: %w", v.id, err)
	}
	sock := filepath.Join(v.dir, apiSocketName)
	cmd := exec.Command(v.b.opts.Binary, "--api-sock", sock, "--id", instanceID(v.id), "--log-path", logName, "--level", "Warning")
	cmd.Dir = v.dir
	cmd.Env = append(os.Environ(), v.b.opts.Env...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	p := &process{cmd: cmd, stdin: stdin, stdout: stdout, log: &lockedBuffer{b: vm.CappedBuffer{Max: logTailBytes}}, exited: make(chan struct{})}
	cmd.Stderr = p.log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("firecracker %s: start %s: %w", v.id, v.b.opts.Binary, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
		v.processExited(p)
	}()
	v.mu.Lock()
	v.proc, v.api = p, NewClient(sock)
	v.mu.Unlock()
	deadline := time.NewTimer(apiSocketTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(apiSocketPoll)
	defer tick.Stop()
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("firecracker %s: the process ended before its API socket appeared: %s", v.id, v.describe(p))
		case <-deadline.C:
			return fmt.Errorf("firecracker %s: no API socket at %s after %s: %s", v.id, sock, apiSocketTimeout, v.describe(p))
		case <-ctx.Done():
			return fmt.Errorf("firecracker %s: waiting for the API socket: %w", v.id, ctx.Err())
		case <-tick.C:
		}
	}
}

// maxInstanceID is the longest instance id Firecracker accepts.
const maxInstanceID = 64

// instanceID turns a VM id into one Firecracker accepts: letters, digits
// and '-', at most maxInstanceID.
func instanceID(id string) string {
	b := []byte(id)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			b[i] = '-'
		}
	}
	if len(b) > maxInstanceID {
		b = b[:maxInstanceID]
	}
	return string(b)
}

// processExited runs when firecracker exits: unless Stop killed it, the VM
// crashed.
func (v *VM) processExited(p *process) {
	v.mu.Lock()
	current := v.proc == p
	v.mu.Unlock()
	if !current {
		return
	}
	if v.m.Fail(fmt.Errorf("%w: firecracker %s: %s", vm.ErrCrashed, v.id, v.describe(p))) {
		v.closeAgent()
	}
}

// kill ends the process and waits for it; the VM directory stays.
func (v *VM) kill() error {
	v.mu.Lock()
	p := v.proc
	api := v.api
	v.proc, v.api = nil, nil
	v.mu.Unlock()
	v.closeAgent()
	if api != nil {
		api.Close()
	}
	if p == nil {
		return nil
	}
	select {
	case <-p.exited:
		return nil
	default:
	}
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("firecracker %s: kill: %w", v.id, err)
	}
	t := time.NewTimer(processExitTimeout)
	defer t.Stop()
	select {
	case <-p.exited:
		return nil
	case <-t.C:
		return fmt.Errorf("firecracker %s: the process did not exit within %s of SIGKILL", v.id, processExitTimeout)
	}
}

func (v *VM) closeAgent() {
	v.mu.Lock()
	c := v.client
	v.client = nil
	v.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

func (v *VM) apiClient() (*Client, *process) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.api, v.proc
}

// stdio joins the process's pipes into the agent's stream.
type stdio struct {
	io.ReadCloser
	w io.WriteCloser
}

func (s stdio) Write(p []byte) (int, error) { return s.w.Write(p) }
func (s stdio) Close() error                { return errors.Join(s.ReadCloser.Close(), s.w.Close()) }

// connectAgent opens the channel to the guest agent and performs the
// handshake, retrying until ctx is done.
func (v *VM) connectAgent(ctx context.Context) error {
	v.mu.Lock()
	p := v.proc
	v.mu.Unlock()
	if p == nil {
		return errors.New("no process")
	}
	var conn io.ReadWriteCloser
	switch v.b.opts.Channel {
	case ChannelVsock:
		uds := filepath.Join(v.dir, vsockName)
		for {
			c, err := DialVsock(ctx, uds, v.b.opts.VsockPort)
			if err == nil {
				conn = c
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("vsock port %d never answered: %v", v.b.opts.VsockPort, err)
			case <-p.exited:
				return fmt.Errorf("%s", v.describe(p))
			case <-time.After(vsockRetry):
			}
		}
	default:
		conn = stdio{ReadCloser: p.stdout, w: p.stdin}
	}
	c := guest.NewClient(conn)
	hello, err := c.WaitReady(ctx, agentAttempt)
	if err != nil {
		c.Close()
		return fmt.Errorf("guest agent handshake over %s: %w", v.b.opts.Channel, err)
	}
	v.mu.Lock()
	v.client, v.agentVer, v.protocol, v.kernel = c, hello.Agent, c.Version(), hello.Kernel
	v.mu.Unlock()
	return nil
}

// bootArgs is the kernel command line: the configured one, or the default,
// with what tells the agent where the host will reach it: its port with the
// serial channel, its vsock port when that is not the agent's default.
func (v *VM) bootArgs() string {
	args := v.cfg.KernelCmdline
	if args == "" {
		args = DefaultBootArgs
	}
	if v.b.opts.Channel == ChannelSerial && !strings.Contains(args, "kelpie.port=") {
		args += " kelpie.port=/dev/ttyS0"
	}
	if v.b.opts.Channel == ChannelVsock && v.b.opts.VsockPort != guest.DefaultVsockPort && !strings.Contains(args, "kelpie.vsock_port=") {
		args += fmt.Sprintf(" kelpie.vsock_port=%d", v.b.opts.VsockPort)
	}
	return args
}

func checkFile(field, p string) error {
	if p == "" {
		return nil
	}
	st, err := os.Stat(p)
	if err != nil {
		return &vm.ConfigError{Field: field, Value: p, Reason: err.Error()}
	}
	if !st.Mode().IsRegular() && st.Mode()&fs.ModeDevice == 0 {
		return &vm.ConfigError{Field: field, Value: p, Reason: "not a regular file or block device"}
	}
	return nil
}

// Boot starts firecracker, configures and starts the microVM, and waits for
// the guest agent.
func (v *VM) Boot(ctx context.Context) error {
	return v.m.Do(vm.OpBoot, func() error {
		for _, f := range []struct{ field, path string }{{"Kernel", v.cfg.Kernel}, {"Initrd", v.cfg.Initrd}, {"RootDisk", v.cfg.RootDisk}} {
			if err := checkFile(f.field, f.path); err != nil {
				return vm.Refuse(fmt.Errorf("firecracker %s: boot: %w", v.id, err))
			}
		}
		ctx, cancel := context.WithTimeout(ctx, v.cfg.EffectiveBootTimeout())
		defer cancel()
		fail := func(err error) error {
			err = fmt.Errorf("%w: firecracker %s: %v", vm.ErrBootFailed, v.id, err)
			_ = v.kill()
			return err
		}
		if err := v.start(ctx); err != nil {
			return fail(err)
		}
		api, p := v.apiClient()
		steps := []func() error{
			func() error {
				return api.PutMachineConfig(ctx, MachineConfig{VCPUCount: v.cfg.VCPUs, MemSizeMiB: v.cfg.MemoryMiB})
			},
			func() error {
				return api.PutBootSource(ctx, BootSource{KernelImagePath: v.cfg.Kernel, InitrdPath: v.cfg.Initrd, BootArgs: v.bootArgs()})
			},
			func() error {
				if v.cfg.RootDisk == "" {
					return nil
				}
				return api.PutDrive(ctx, Drive{DriveID: "rootfs", PathOnHost: v.cfg.RootDisk, IsRootDevice: true, IsReadOnly: v.cfg.RootDiskReadOnly})
			},
			func() error {
				// The vsock device is always attached, so a snapshot holds
				// it whichever channel the restoring host uses.
				return api.PutVsock(ctx, Vsock{GuestCID: DefaultGuestCID, UDSPath: vsockName})
			},
			func() error {
				ver, err := api.Version(ctx)
				v.mu.Lock()
				v.version = ver
				v.mu.Unlock()
				return err
			},
			func() error { return api.StartInstance(ctx) },
		}
		for _, step := range steps {
			if err := step(); err != nil {
				return fail(err)
			}
		}
		if err := v.connectAgent(ctx); err != nil {
			return fail(fmt.Errorf("%v (boot timeout %s); %s", err, v.cfg.EffectiveBootTimeout(), v.describe(p)))
		}
		return nil
	})
}

func (v *VM) agentClient(op vm.Op) (*guest.Client, error) {
	if err := v.m.Check(op); err != nil {
		return nil, err
	}
	v.mu.Lock()
	c := v.client
	v.mu.Unlock()
	if c == nil {
		return nil, &vm.TransitionError{Op: op, From: v.m.State(), Cause: v.m.Cause()}
	}
	return c, nil
}

// afterAgent turns a lost agent into a crash: the VM is killed, because a
// guest whose agent is gone cannot be driven any more.
func (v *VM) afterAgent(err error) error {
	if !errors.Is(err, agent.ErrAgentGone) {
		return err
	}
	switch v.m.State() {
	case vm.StateRunning:
		_, p := v.apiClient()
		detail := ""
		if p != nil {
			detail = v.describe(p)
		}
		cause := fmt.Errorf("%w: firecracker %s: %v %s", vm.ErrCrashed, v.id, err, detail)
		if v.m.Fail(cause) {
			_ = v.kill()
		}
		return cause
	case vm.StateFailed:
		// The process's exit was noticed first and failed the VM while the
		// call was under way: report that crash, not only the broken pipe.
		if cause := v.m.Cause(); cause != nil {
			return fmt.Errorf("%w (the agent call: %v)", cause, err)
		}
	}
	return err
}

// Exec runs a command through the guest agent.
func (v *VM) Exec(ctx context.Context, req vm.ExecRequest) (vm.ExecResult, error) {
	req, err := req.Normalize()
	if err != nil {
		return vm.ExecResult{}, err
	}
	c, err := v.agentClient(vm.OpExec)
	if err != nil {
		return vm.ExecResult{}, err
	}
	res, err := agent.Exec(ctx, c, req)
	return res, v.afterAgent(err)
}

// ReadFile reads a guest file through the agent.
func (v *VM) ReadFile(ctx context.Context, path string) ([]byte, error) {
	if err := vm.CheckFileRequest(path, nil); err != nil {
		return nil, err
	}
	c, err := v.agentClient(vm.OpReadFile)
	if err != nil {
		return nil, err
	}
	data, err := agent.ReadFile(ctx, c, path)
	return data, v.afterAgent(err)
}

// WriteFile writes a guest file through the agent.
func (v *VM) WriteFile(ctx context.Context, path string, data []byte, mode fs.FileMode) error {
	if err := vm.CheckFileRequest(path, data); err != nil {
		return err
	}
	c, err := v.agentClient(vm.OpWriteFile)
	if err != nil {
		return err
	}
	return v.afterAgent(agent.WriteFile(ctx, c, path, data, mode))
}

// Pause stops the vCPUs (PATCH /vm Paused).
func (v *VM) Pause(ctx context.Context) error {
	return v.m.Do(vm.OpPause, func() error {
		api, _ := v.apiClient()
		if err := api.PauseVM(ctx); err != nil {
			return fmt.Errorf("firecracker %s: pause: %w", v.id, err)
		}
		return nil
	})
}

// Resume restarts the vCPUs (PATCH /vm Resumed); after a restore it also
// re-establishes the agent session. Either failing within
// vm.ResumeTimeout fails the VM.
func (v *VM) Resume(ctx context.Context) error {
	return v.m.Do(vm.OpResume, func() error {
		ctx, cancel := context.WithTimeout(ctx, vm.ResumeTimeout)
		defer cancel()
		api, p := v.apiClient()
		fail := func(err error) error {
			_ = v.kill()
			return fmt.Errorf("%w: firecracker %s: %v", vm.ErrResumeTimeout, v.id, err)
		}
		if err := api.ResumeVM(ctx); err != nil {
			return fail(err)
		}
		v.mu.Lock()
		reconnect := v.reconnect
		v.mu.Unlock()
		if reconnect {
			if err := v.connectAgent(ctx); err != nil {
				return fail(fmt.Errorf("%v; %s", err, v.describe(p)))
			}
			v.mu.Lock()
			v.reconnect = false
			v.mu.Unlock()
		}
		return nil
	})
}

// Snapshot writes a full Firecracker snapshot of the paused VM and packs
// its two files into a vm/snapshot blob.
func (v *VM) Snapshot(ctx context.Context) ([]byte, error) {
	var blob []byte
	err := v.m.Do(vm.OpSnapshot, func() error {
		fail := func(err error) error {
			return fmt.Errorf("%w: firecracker %s: %v", vm.ErrSnapshotFailed, v.id, err)
		}
		api, _ := v.apiClient()
		statePath, memPath := filepath.Join(v.dir, vmstateName), filepath.Join(v.dir, memName)
		// Files of an earlier snapshot (or of the restore this VM came
		// from, which the process may still map) are replaced, not reused.
		for _, p := range []string{statePath, memPath} {
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fail(err)
			}
		}
		if err := api.CreateSnapshot(ctx, SnapshotCreate{SnapshotType: "Full", SnapshotPath: vmstateName, MemFilePath: memName}); err != nil {
			return fail(err)
		}
		defer os.Remove(statePath)
		defer os.Remove(memPath)
		v.mu.Lock()
		meta := snapshot.Metadata{
			Backend: Name, BackendVersion: v.version, Arch: runtime.GOARCH, CPUModel: cpuModel(),
			VCPUs: v.cfg.VCPUs, MemoryMiB: v.cfg.MemoryMiB,
			GuestAgentVersion: v.agentVer, GuestProtocol: v.protocol,
		}
		v.mu.Unlock()
		// The files are read straight into the blob: one allocation of
		// guest memory's size, not two.
		files := []struct {
			name, path string
			max        int64
		}{{snapshotVMState, statePath, maxVMStateBytes}, {snapshotMemory, memPath, int64(v.cfg.MemoryMiB) << 20}}
		layout := make([]snapshot.SectionSize, len(files))
		opened := make([]*os.File, len(files))
		defer func() {
			for _, f := range opened {
				if f != nil {
					f.Close()
				}
			}
		}()
		for i, f := range files {
			fh, size, err := openBounded(f.path, f.max)
			if err != nil {
				return fail(err)
			}
			opened[i] = fh
			layout[i] = snapshot.SectionSize{Name: f.name, Size: size}
		}
		bld, err := snapshot.NewBuilder(meta, layout, v.maxBlobBytes())
		if err != nil {
			return fail(err)
		}
		for i, f := range files {
			if _, err := io.ReadFull(opened[i], bld.Section(i)); err != nil {
				return fail(fmt.Errorf("%s: %w", f.path, err))
			}
		}
		b := bld.Finish()
		blob = b
		return nil
	})
	return blob, err
}

// openBounded opens a file Firecracker wrote and returns its size, refusing
// one larger than max.
func openBounded(path string, max int64) (*os.File, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if st.Size() > max {
		f.Close()
		return nil, 0, fmt.Errorf("%s is %d bytes, more than the %d expected", path, st.Size(), max)
	}
	return f, st.Size(), nil
}

// Host is what this host offers a snapshot for a VM shaped like cfg.
func (b *Backend) Host(ctx context.Context, cfg vm.VMConfig) (snapshot.Host, error) {
	ver, err := b.Version(ctx)
	if err != nil {
		return snapshot.Host{}, err
	}
	return snapshot.Host{
		Backend: Name, BackendVersion: ver, Arch: runtime.GOARCH, CPUModel: cpuModel(),
		VCPUs: cfg.VCPUs, MemoryMiB: cfg.MemoryMiB,
		MinGuestProtocol: guest.MinProtocolVersion, MaxGuestProtocol: guest.MaxProtocolVersion,
	}, nil
}

// Restore loads a snapshot blob into a fresh firecracker process, paused.
func (v *VM) Restore(ctx context.Context, blob []byte) error {
	return v.m.Do(vm.OpRestore, func() error {
		refuse := func(err error) error { return vm.Refuse(fmt.Errorf("firecracker %s: restore: %w", v.id, err)) }
		// Checked first: DecodeMetadata bounds a blob only by what the
		// largest VM may hold.
		if n, limit := int64(len(blob)), v.maxBlobBytes(); n > limit {
			return refuse(fmt.Errorf("%w: the blob is %d bytes, a snapshot of a %d MiB VM is at most %d", snapshot.ErrTooLarge, n, v.cfg.MemoryMiB, limit))
		}
		meta, err := snapshot.DecodeMetadata(blob)
		if err != nil {
			return refuse(err)
		}
		host, err := v.b.Host(ctx, v.cfg)
		if err != nil {
			return refuse(err)
		}
		if err := snapshot.Compatible(meta, host); err != nil {
			return refuse(err)
		}
		snap, err := snapshot.DecodeMax(blob, v.maxBlobBytes())
		if err != nil {
			return refuse(err)
		}
		state, ok1 := snap.Section(snapshotVMState)
		mem, ok2 := snap.Section(snapshotMemory)
		if !ok1 || !ok2 {
			return refuse(fmt.Errorf("%w: the blob lacks the %q or %q section", snapshot.ErrCorrupt, snapshotVMState, snapshotMemory))
		}
		// From here on a process exists: failures leave the VM failed.
		fail := func(err error) error {
			_ = v.kill()
			return fmt.Errorf("%w: firecracker %s: %v", vm.ErrRestoreFailed, v.id, err)
		}
		if err := v.start(ctx); err != nil {
			return fail(err)
		}
		if err := os.WriteFile(filepath.Join(v.dir, vmstateName), state, 0o600); err != nil {
			return fail(err)
		}
		// The memory file stays for the VM's life: Firecracker maps it.
		if err := os.WriteFile(filepath.Join(v.dir, memName), mem, 0o600); err != nil {
			return fail(err)
		}
		api, _ := v.apiClient()
		err = api.LoadSnapshot(ctx, SnapshotLoad{
			SnapshotPath: vmstateName,
			MemBackend:   MemBackend{BackendType: "File", BackendPath: memName},
			ResumeVM:     false,
		})
		if err != nil {
			return fail(err)
		}
		v.mu.Lock()
		v.version, v.agentVer, v.protocol, v.kernel, v.reconnect = meta.BackendVersion, meta.GuestAgentVersion, meta.GuestProtocol, "", true
		v.mu.Unlock()
		return nil
	})
}

// Stop kills firecracker and removes the VM's directory.
func (v *VM) Stop(ctx context.Context) error {
	return v.m.Do(vm.OpStop, func() error {
		err := v.kill()
		if rerr := os.RemoveAll(v.dir); rerr != nil {
			err = errors.Join(err, fmt.Errorf("firecracker %s: remove %s: %w", v.id, v.dir, rerr))
		}
		return err
	})
}
