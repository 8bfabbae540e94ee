package qemu

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kelpie-go/kelpie/vm"
	"github.com/kelpie-go/kelpie/vm/agent"
	"github.com/kelpie-go/kelpie/vm/guest"
	"github.com/kelpie-go/kelpie/vm/snapshot"
)

// Snapshot sections written by this backend.
const (
	sectionConfig    = "qemu.config"
	sectionMigration = "qemu.migration"
	// sectionMigrationGz is the migration stream gzip-compressed (the
	// default: a booted guest's stream shrinks to about a quarter).
	sectionMigrationGz = "qemu.migration.gz"
	// agentPort is the guest device of the agent's channel (the second
	// UART; the first is the console).
	agentPort = "/dev/ttyS1"
	// baseCmdline precedes VMConfig.KernelCmdline. panic=-1 with
	// -no-reboot turns a guest panic into a QEMU exit the backend sees.
	baseCmdline = "console=ttyS0 panic=-1 quiet init_on_free=1 kelpie.port=" + agentPort
	// pingTimeout bounds the check that decides whether a silent agent
	// means a dead VM.
	pingTimeout = 5 * time.Second
)

// Info describes a VM: what it runs under and where its files are.
type Info struct {
	ID      string
	Backend string
	// Accel is the accelerator the VM runs under ("" before boot).
	Accel Accel
	// AccelNote says why: "configured", "auto", or why auto fell back.
	AccelNote   string
	QEMUVersion string
	Machine     string
	CPU         string
	VCPUs       int
	MemoryMiB   int
	PID         int
	// RunDir holds the VM's sockets; ConsoleLog is the kernel console.
	RunDir     string
	ConsoleLog string
	// Channel is the agent channel in use: ChannelVirtio or ChannelSerial.
	Channel string
	// Agent, Protocol and GuestKernel come from the guest agent's handshake.
	Agent       string
	Protocol    int
	GuestKernel string
	// BootTime is how long the last boot took to reach the agent.
	BootTime time.Duration
}

// deviceConfig is the part of the device model a restore must reproduce;
// it travels in the snapshot's qemu.config section.
type deviceConfig struct {
	Accel        Accel  `json:"accel"`
	Machine      string `json:"machine"`
	CPU          string `json:"cpu"`
	KernelSHA256 string `json:"kernel_sha256"`
	InitrdSHA256 string `json:"initrd_sha256"`
	Cmdline      string `json:"cmdline"`
	Agent        string `json:"agent"`
	GuestKernel  string `json:"guest_kernel,omitempty"`
	// compressed is set on restore when the stream section is gzipped.
	compressed bool
}

// process is one running QEMU.
type process struct {
	cmd      *exec.Cmd
	dir      string
	accel    Accel
	qmp      *QMP
	exited   chan struct{}
	waitErr  error
	stderr   *tail
	stopping bool // set under VM.mu before a deliberate quit
}

func (p *process) console() string { return filepath.Join(p.dir, "console.log") }

func (p *process) agentSocket() string { return filepath.Join(p.dir, "agent.sock") }

func (p *process) virtioSocket() string { return filepath.Join(p.dir, "vagent.sock") }

func (p *process) qmpSocket() string { return filepath.Join(p.dir, "qmp.sock") }

// diagnostics is what a failed operation reports about the process.
func (p *process) diagnostics() string {
	var parts []string
	select {
	case <-p.exited:
		parts = append(parts, fmt.Sprintf("qemu exited: %v", p.waitErr))
	default:
	}
	if s := p.stderr.String(); s != "" {
		parts = append(parts, "qemu stderr: "+s)
	}
	if s := fileTail(p.console()); s != "" {
		parts = append(parts, "console: "+lastLines(s, 8))
	}
	if len(parts) == 0 {
		return "no output from qemu or the guest console"
	}
	return strings.Join(parts, "; ")
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// VM is one QEMU virtual machine.
type VM struct {
	b   *Backend
	cfg vm.VMConfig
	id  string
	m   vm.Machine

	mu    sync.Mutex
	proc  *process
	agent *guest.Client
	hello helloInfo
	info  Info
	// lastSnapshot is the blob of the current pause, if one was taken.
	// QEMU refuses to migrate a VM twice without running it in between
	// ("paused due to previous migration"); the guest has not changed
	// since, so a second Snapshot returns the same state.
	lastSnapshot []byte
}

// ID is the VM's identifier.
func (v *VM) ID() string { return v.id }

// Backend is "qemu".
func (v *VM) Backend() string { return BackendName }

// Config is the VM's configuration.
func (v *VM) Config() vm.VMConfig { return v.cfg }

// State is the VM's state.
func (v *VM) State() vm.State { return v.m.State() }

// Info describes the VM now.
func (v *VM) Info() Info {
	v.mu.Lock()
	defer v.mu.Unlock()
	i := v.info
	i.ID, i.Backend, i.VCPUs, i.MemoryMiB = v.id, BackendName, v.cfg.VCPUs, v.cfg.MemoryMiB
	if v.proc != nil {
		i.PID = v.proc.cmd.Process.Pid
		i.RunDir, i.ConsoleLog = v.proc.dir, v.proc.console()
	}
	return i
}

// cmdline is the kernel command line.
func (v *VM) cmdline() string {
	if v.cfg.KernelCmdline == "" {
		return baseCmdline
	}
	return baseCmdline + " " + v.cfg.KernelCmdline
}

// checkFiles makes sure the kernel and initramfs can be read.
func (v *VM) checkFiles() error {
	for _, f := range []struct{ field, path string }{{"Kernel", v.cfg.Kernel}, {"Initrd", v.cfg.Initrd}} {
		fh, err := os.Open(f.path)
		if err != nil {
			return fmt.Errorf("qemu: VMConfig.%s: %w", f.field, err)
		}
		fh.Close()
	}
	return nil
}

// start launches QEMU under accel and connects QMP. With incoming set,
// QEMU waits, paused, for a migration stream instead of booting.
func (v *VM) start(ctx context.Context, accel Accel, incoming bool) (*process, error) {
	bin, err := v.b.qemuBinary()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(v.b.opts.RunDir, 0o755); err != nil {
		return nil, fmt.Errorf("qemu: run directory: %w", err)
	}
	dir, err := os.MkdirTemp(v.b.opts.RunDir, "kq-")
	if err != nil {
		return nil, fmt.Errorf("qemu: run directory: %w", err)
	}
	p := &process{dir: dir, accel: accel, exited: make(chan struct{}), stderr: &tail{}}
	if n := len(p.agentSocket()); n > maxSocketPath {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("qemu: socket path %s is %d bytes, over the %d a unix socket allows; use a shorter RunDir", p.agentSocket(), n, maxSocketPath)
	}
	args := []string{
		"-name", "kelpie-" + v.id,
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-machine", machineType + ",accel=" + string(accel),
		"-cpu", cpuModel(accel),
		"-smp", strconv.Itoa(v.cfg.VCPUs),
		"-m", strconv.Itoa(v.cfg.MemoryMiB),
		"-kernel", v.cfg.Kernel,
		"-initrd", v.cfg.Initrd,
		"-append", v.cmdline(),
		"-chardev", "file,id=console,path=" + p.console(),
		"-serial", "chardev:console",
		"-chardev", "socket,id=agent,path=" + p.agentSocket() + ",server=on,wait=off",
		"-serial", "chardev:agent",
		// The fast channel, used when the guest loads the virtio modules.
		"-device", "virtio-serial-pci,id=vser",
		"-chardev", "socket,id=vagent,path=" + p.virtioSocket() + ",server=on,wait=off",
		"-device", "virtserialport,bus=vser.0,chardev=vagent,name=org.kelpie.agent",
		"-qmp", "unix:" + p.qmpSocket() + ",server=on,wait=off",
	}
	if incoming {
		// -S keeps the VM paused after the stream is loaded.
		args = append(args, "-S", "-incoming", "defer")
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = p.stderr
	cmd.Stderr = p.stderr
	cmd.SysProcAttr = processAttr()
	v.b.progress(v.id, "starting qemu (accelerator %s)", accel)
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("qemu: starting %s: %w", bin, err)
	}
	p.cmd = cmd
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()

	qctx, cancel := context.WithTimeout(ctx, qmpConnectTimeout)
	defer cancel()
	for {
		if _, err := os.Stat(p.qmpSocket()); err == nil {
			if p.qmp, err = DialQMP(qctx, p.qmpSocket()); err == nil {
				break
			}
		}
		select {
		case <-p.exited:
			err := fmt.Errorf("qemu (accelerator %s) exited at start: %s", accel, p.diagnostics())
			p.cleanup()
			return nil, err
		case <-qctx.Done():
			err := fmt.Errorf("qemu (accelerator %s): no QMP socket within %s: %s", accel, qmpConnectTimeout, p.diagnostics())
			p.kill()
			return nil, err
		case <-time.After(10 * time.Millisecond):
		}
	}
	// Drain events so the bounded buffer never holds stale ones; the
	// process exit is what the backend watches.
	go func() {
		for {
			select {
			case <-p.qmp.Events():
			case <-p.qmp.Done():
				return
			}
		}
	}()
	return p, nil
}

// kill ends the process at once and removes its directory.
func (p *process) kill() {
	if p.qmp != nil {
		p.qmp.Close()
	}
	select {
	case <-p.exited:
	default:
		p.cmd.Process.Kill()
		<-p.exited
	}
	p.cleanup()
}

func (p *process) cleanup() { os.RemoveAll(p.dir) }

// quit asks QEMU to exit, and kills it if it does not in time.
func (p *process) quit() error {
	if p.qmp != nil {
		ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		p.qmp.Execute(ctx, "quit", nil, nil)
		cancel()
	}
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
		p.cmd.Process.Kill()
		<-p.exited
	}
	if p.qmp != nil {
		p.qmp.Close()
	}
	p.cleanup()
	return nil
}

// Agent channels, fastest first.
const (
	ChannelVirtio = "virtio-serial"
	ChannelSerial = "serial"
	// virtioPreference is how long, after the serial port answered, the
	// virtio port may take to answer too and be preferred (80 times the
	// throughput).
	virtioPreference = time.Second
)

// connectAgent waits for the agent's handshake on both channels and keeps
// the first that answers: the virtio-serial port when the image has the
// virtio modules, the serial port otherwise.
func (v *VM) connectAgent(ctx context.Context, p *process) (*guest.Client, *guest.HelloReply, string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		channel string
		c       *guest.Client
		h       *guest.HelloReply
		err     error
	}
	channels := []struct{ name, sock string }{{ChannelVirtio, p.virtioSocket()}, {ChannelSerial, p.agentSocket()}}
	results := make(chan result, len(channels))
	for _, ch := range channels {
		go func() {
			var d net.Dialer
			conn, err := d.DialContext(ctx, "unix", ch.sock)
			if err != nil {
				results <- result{channel: ch.name, err: fmt.Errorf("%s socket: %w", ch.name, err)}
				return
			}
			c := guest.NewClient(conn)
			h, err := c.WaitReady(ctx, agentAttempt)
			if err != nil {
				c.Close()
				results <- result{channel: ch.name, err: err}
				return
			}
			results <- result{channel: ch.name, c: c, h: h}
		}()
	}
	var winner *result
	var errs []string
	var grace <-chan time.Time
	for received := 0; received < len(channels); {
		var r result
		select {
		case r = <-results:
			received++
		case <-grace:
			// The serial port answered and virtio did not follow: this
			// image has no virtio modules.
			grace = nil
			cancel()
			continue
		case <-p.exited:
			cancel()
			for ; received < len(channels); received++ {
				if r := <-results; r.c != nil {
					r.c.Close()
				}
			}
			if winner != nil {
				winner.c.Close()
			}
			return nil, nil, "", errors.New("qemu exited before the guest agent answered")
		}
		switch {
		case r.err != nil:
			errs = append(errs, fmt.Sprintf("%s: %v", r.channel, r.err))
		case r.channel == ChannelVirtio:
			if winner != nil {
				winner.c.Close()
			}
			winner = &r
			cancel() // the serial attempt stops
		case winner == nil:
			// The agent serves both ports; give virtio a moment to answer too.
			winner = &r
			grace = time.After(virtioPreference)
		default:
			r.c.Close()
		}
	}
	if winner == nil {
		return nil, nil, "", errors.New(strings.Join(errs, "; "))
	}
	return winner.c, winner.h, winner.channel, nil
}

// install makes p the VM's process and starts watching it for a crash.
func (v *VM) install(p *process, c *guest.Client) {
	v.mu.Lock()
	v.proc, v.agent = p, c
	v.info.Accel = p.accel
	v.info.Machine, v.info.CPU = machineType, cpuModel(p.accel)
	v.info.QEMUVersion = p.qmp.Version().String()
	v.mu.Unlock()
	go func() {
		<-p.exited
		v.mu.Lock()
		current := v.proc == p && !p.stopping
		v.mu.Unlock()
		if current {
			v.m.Fail(fmt.Errorf("%w: %s", vm.ErrCrashed, p.diagnostics()))
		}
	}()
}

// Boot starts the VM and waits for its agent, within the config's boot
// timeout; under AccelAuto a hardware boot that does not reach the agent
// within KVMProbeTimeout is abandoned for TCG.
func (v *VM) Boot(ctx context.Context) error {
	return v.m.Do(vm.OpBoot, func() error {
		if err := v.checkFiles(); err != nil {
			return fmt.Errorf("%w: %v", vm.ErrBootFailed, err)
		}
		plan, note, err := v.b.bootPlan()
		if err != nil {
			return fmt.Errorf("%w: %v", vm.ErrBootFailed, err)
		}
		timeout := v.cfg.EffectiveBootTimeout()
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		var failures []string
		for i, accel := range plan {
			limit := timeout
			if dl, ok := ctx.Deadline(); ok && i > 0 {
				limit = time.Until(dl).Truncate(100 * time.Millisecond) // what earlier attempts left
			}
			last := i == len(plan)-1
			if !last {
				limit = min(limit, v.b.opts.KVMProbeTimeout)
			}
			began := time.Now()
			c, h, channel, p, err := v.bootWith(ctx, accel, limit)
			if err == nil {
				v.install(p, c)
				v.mu.Lock()
				v.hello = fromHello(h)
				v.info.Channel = channel
				v.info.AccelNote = note
				v.info.Agent, v.info.Protocol, v.info.GuestKernel = h.Agent, h.Version, h.Kernel
				v.info.BootTime = time.Since(began)
				v.mu.Unlock()
				v.b.progress(v.id, "guest agent ready (%s over %s, accelerator %s) after %s", h.Agent, channel, accel, time.Since(began).Round(time.Millisecond))
				return nil
			}
			failures = append(failures, err.Error())
			if !last {
				v.b.mu.Lock()
				v.b.hwBroken = fmt.Sprintf("%s did not reach the guest agent within %s", accel, limit)
				v.b.mu.Unlock()
				note = fmt.Sprintf("auto: %s did not reach the guest agent within %s; fell back to tcg", accel, limit)
				v.b.progress(v.id, "%s did not reach the guest agent within %s; falling back to tcg", accel, limit)
			}
			if ctx.Err() != nil {
				break
			}
		}
		return fmt.Errorf("%w: %s", vm.ErrBootFailed, strings.Join(failures, "; then "))
	})
}

// bootWith makes one boot attempt under accel, bounded by limit.
func (v *VM) bootWith(ctx context.Context, accel Accel, limit time.Duration) (*guest.Client, *guest.HelloReply, string, *process, error) {
	actx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	p, err := v.start(actx, accel, false)
	if err != nil {
		return nil, nil, "", nil, err
	}
	v.b.progress(v.id, "waiting for the guest agent (accelerator %s, up to %s)", accel, limit)
	c, h, channel, err := v.connectAgent(actx, p)
	if err != nil {
		diag := p.diagnostics()
		p.kill()
		if actx.Err() != nil {
			return nil, nil, "", nil, fmt.Errorf("qemu boot with accelerator %s did not reach the guest agent within %s (%s)", accel, limit, diag)
		}
		return nil, nil, "", nil, fmt.Errorf("qemu boot with accelerator %s: %v (%s)", accel, err, diag)
	}
	return c, h, channel, p, nil
}

// current returns the VM's process and agent.
func (v *VM) current() (*process, *guest.Client) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.proc, v.agent
}

// status asks QEMU for its run state.
func (p *process) status(ctx context.Context) (string, error) {
	var st struct {
		Status string `json:"status"`
	}
	err := p.qmp.Execute(ctx, "query-status", nil, &st)
	return st.Status, err
}

// Pause stops the vCPUs.
func (v *VM) Pause(ctx context.Context) error {
	return v.m.Do(vm.OpPause, func() error {
		p, _ := v.current()
		if err := p.qmp.Execute(ctx, "stop", nil, nil); err != nil {
			return fmt.Errorf("qemu: pause: %w", err)
		}
		return nil
	})
}

// Resume restarts the vCPUs and, after a restore, connects to the agent.
func (v *VM) Resume(ctx context.Context) error {
	return v.m.Do(vm.OpResume, func() error {
		ctx, cancel := context.WithTimeout(ctx, vm.ResumeTimeout)
		defer cancel()
		p, c := v.current()
		v.mu.Lock()
		v.lastSnapshot = nil
		v.mu.Unlock()
		if err := p.qmp.Execute(ctx, "cont", nil, nil); err != nil {
			return fmt.Errorf("%w: qemu cont: %v", vm.ErrResumeTimeout, err)
		}
		for {
			st, err := p.status(ctx)
			if err != nil {
				return fmt.Errorf("%w: %v", vm.ErrResumeTimeout, err)
			}
			if st == "running" {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%w: still %q after %s", vm.ErrResumeTimeout, st, vm.ResumeTimeout)
			case <-time.After(migrationPoll):
			}
		}
		if c != nil {
			return nil
		}
		// A restored VM: its agent is running again; open a session.
		c, h, channel, err := v.connectAgent(ctx, p)
		if err != nil {
			return fmt.Errorf("%w: the restored guest agent did not answer: %v (%s)", vm.ErrResumeTimeout, err, p.diagnostics())
		}
		v.mu.Lock()
		v.agent = c
		v.info.Channel = channel
		v.hello = fromHello(h)
		v.info.Agent, v.info.Protocol, v.info.GuestKernel = h.Agent, h.Version, h.Kernel
		v.mu.Unlock()
		return nil
	})
}

// Snapshot migrates the paused VM into a blob. Every failure matches
// vm.ErrSnapshotFailed, and keeps its cause (snapshot.ErrTooLarge for a
// stream past the VM's bound, a context error); the VM stays paused either
// way, so the caller may retry or resume.
func (v *VM) Snapshot(ctx context.Context) ([]byte, error) {
	var blob []byte
	err := v.m.Do(vm.OpSnapshot, func() error {
		var err error
		if blob, err = v.snapshot(ctx); err != nil {
			return fmt.Errorf("%w: %w", vm.ErrSnapshotFailed, err)
		}
		return nil
	})
	return blob, err
}

// snapshot is Snapshot's work, run under the state machine.
func (v *VM) snapshot(ctx context.Context) ([]byte, error) {
	p, _ := v.current()
	v.mu.Lock()
	hello, last := v.hello, v.lastSnapshot
	v.mu.Unlock()
	if last != nil {
		return bytes.Clone(last), nil
	}
	version, err := v.b.qemuVersion()
	if err != nil {
		return nil, fmt.Errorf("qemu: snapshot: %w", err)
	}
	kh, err := v.b.hashFile(v.cfg.Kernel)
	if err != nil {
		return nil, fmt.Errorf("qemu: snapshot: hashing the kernel: %w", err)
	}
	ih, err := v.b.hashFile(v.cfg.Initrd)
	if err != nil {
		return nil, fmt.Errorf("qemu: snapshot: hashing the initramfs: %w", err)
	}
	began := time.Now()
	stream, err := v.migrateOut(ctx, p)
	if err != nil {
		return nil, err
	}
	dc, _ := json.Marshal(&deviceConfig{
		Accel: p.accel, Machine: machineType, CPU: cpuModel(p.accel),
		KernelSHA256: kh, InitrdSHA256: ih, Cmdline: v.cmdline(), Agent: hello.Agent, GuestKernel: hello.Kernel,
	})
	meta := snapshot.Metadata{
		Backend: BackendName, BackendVersion: version, Arch: runtime.GOARCH, CPUModel: snapshotCPUModel(p.accel),
		VCPUs: v.cfg.VCPUs, MemoryMiB: v.cfg.MemoryMiB, GuestAgentVersion: hello.Agent, GuestProtocol: hello.Version,
	}
	sec := snapshot.Section{Name: sectionMigration, Data: stream}
	if !v.b.opts.UncompressedSnapshots {
		if sec.Data, err = compress(stream); err != nil {
			return nil, fmt.Errorf("qemu: snapshot: compressing the stream: %w", err)
		}
		sec.Name = sectionMigrationGz
	}
	blob, err := snapshot.Encode(meta, []snapshot.Section{{Name: sectionConfig, Data: dc}, sec}, v.maxBlobBytes())
	if err != nil {
		return nil, fmt.Errorf("qemu: snapshot: %w", err)
	}
	v.mu.Lock()
	v.lastSnapshot = blob
	v.mu.Unlock()
	v.b.progress(v.id, "snapshot of %d MiB taken in %s", len(blob)>>20, time.Since(began).Round(time.Millisecond))
	return bytes.Clone(blob), nil
}

func (v *VM) maxStreamBytes() int64 { return int64(v.cfg.MemoryMiB)<<20 + migrationOverheadBytes }

func (v *VM) maxBlobBytes() int64 { return v.maxStreamBytes() + 1<<20 }

// migrationStatus is the part of query-migrate the backend reads.
type migrationStatus struct {
	Status      string `json:"status"`
	ErrorDesc   string `json:"error-desc"`
	Transferred struct {
		Transferred int64 `json:"transferred"`
	} `json:"ram"`
}

// migrateOut streams the VM's migration into memory through a pipe.
func (v *VM) migrateOut(ctx context.Context, p *process) ([]byte, error) {
	if err := p.qmp.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(migrationMaxBandwidth)}, nil); err != nil {
		return nil, fmt.Errorf("qemu: snapshot: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("qemu: snapshot: %w", err)
	}
	defer r.Close()
	const fdName = "kelpie-snapshot"
	err = p.qmp.ExecuteWithFile(ctx, "getfd", map[string]string{"fdname": fdName}, w, nil)
	w.Close() // QEMU holds its own copy now
	if err != nil {
		return nil, fmt.Errorf("qemu: snapshot: passing the pipe: %w", err)
	}
	type readResult struct {
		data []byte
		err  error
	}
	limit := v.maxStreamBytes()
	read := make(chan readResult, 1)
	go func() {
		var buf []byte
		chunk := make([]byte, 1<<20)
		for {
			n, err := r.Read(chunk)
			buf = append(buf, chunk[:n]...)
			if int64(len(buf)) > limit {
				read <- readResult{nil, fmt.Errorf("%w: the migration stream passed %d bytes (guest memory plus %d)", snapshot.ErrTooLarge, limit, migrationOverheadBytes)}
				return
			}
			if err != nil {
				read <- readResult{buf, nil}
				return
			}
		}
	}()
	if err := p.qmp.Execute(ctx, "migrate", map[string]any{"uri": "fd:" + fdName}, nil); err != nil {
		r.Close()
		<-read
		return nil, fmt.Errorf("qemu: snapshot: %w", err)
	}
	if err := v.waitMigration(ctx, p, "snapshot"); err != nil {
		p.qmp.Execute(context.Background(), "migrate_cancel", nil, nil)
		r.Close()
		<-read
		return nil, err
	}
	res := <-read
	if res.err != nil {
		return nil, fmt.Errorf("qemu: snapshot: %w", res.err)
	}
	return res.data, nil
}

// waitMigration polls query-migrate until the migration completes or fails.
func (v *VM) waitMigration(ctx context.Context, p *process, what string) error {
	lastReport := time.Now()
	for {
		var ms migrationStatus
		if err := p.qmp.Execute(ctx, "query-migrate", nil, &ms); err != nil {
			return fmt.Errorf("qemu: %s: %w (%s)", what, err, p.diagnostics())
		}
		switch ms.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("qemu: %s: migration %s: %s (%s)", what, ms.Status, ms.ErrorDesc, p.diagnostics())
		}
		if time.Since(lastReport) > time.Second {
			v.b.progress(v.id, "%s: %s, %d MiB so far", what, ms.Status, ms.Transferred.Transferred>>20)
			lastReport = time.Now()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("qemu: %s: %w (migration %q)", what, ctx.Err(), ms.Status)
		case <-p.exited:
			return fmt.Errorf("qemu: %s: %s", what, p.diagnostics())
		case <-time.After(migrationPoll):
		}
	}
}

// Restore loads a snapshot into this created VM; see the restore contract
// in package vm. Everything that can be checked without QEMU is checked
// first, and a blob that fails those checks leaves the VM created.
func (v *VM) Restore(ctx context.Context, blob []byte) error {
	return v.m.Do(vm.OpRestore, func() error {
		snap, dc, stream, err := v.checkSnapshot(blob)
		if err != nil {
			return vm.Refuse(err)
		}
		if err := v.checkFiles(); err != nil {
			return vm.Refuse(err)
		}
		// From here on QEMU is loading the snapshot, and a failure leaves
		// the VM failed. The cause is quoted rather than wrapped: a stream
		// that does not inflate reports snapshot.ErrCorrupt, which callers
		// read as "refused, the VM is still created".
		fail := func(err error) error { return fmt.Errorf("%w: %v", vm.ErrRestoreFailed, err) }
		began := time.Now()
		p, err := v.start(ctx, dc.Accel, true)
		if err != nil {
			return fail(fmt.Errorf("qemu: restore: %w", err))
		}
		if err := v.migrateIn(ctx, p, stream, dc.compressed); err != nil {
			p.kill()
			return fail(err)
		}
		v.install(p, nil)
		v.mu.Lock()
		v.hello = helloInfo{Agent: snap.Meta.GuestAgentVersion, Version: snap.Meta.GuestProtocol, Kernel: dc.GuestKernel}
		v.info.AccelNote = "restored from a " + string(dc.Accel) + " snapshot"
		v.mu.Unlock()
		v.b.progress(v.id, "restored in %s", time.Since(began).Round(time.Millisecond))
		return nil
	})
}

// checkSnapshot decodes a blob and checks it against this VM and host.
func (v *VM) checkSnapshot(blob []byte) (*snapshot.Snapshot, *deviceConfig, []byte, error) {
	snap, err := snapshot.DecodeMax(blob, v.maxBlobBytes())
	if err != nil {
		return nil, nil, nil, fmt.Errorf("qemu: restore: %w", err)
	}
	if snap.Meta.Backend != BackendName {
		return nil, nil, nil, fmt.Errorf("qemu: restore: %w: the snapshot is from backend %q", snapshot.ErrIncompatible, snap.Meta.Backend)
	}
	raw, ok := snap.Section(sectionConfig)
	if !ok {
		return nil, nil, nil, fmt.Errorf("qemu: restore: %w: no %s section", snapshot.ErrCorrupt, sectionConfig)
	}
	var dc deviceConfig
	if err := json.Unmarshal(raw, &dc); err != nil {
		return nil, nil, nil, fmt.Errorf("qemu: restore: %w: %s section: %v", snapshot.ErrCorrupt, sectionConfig, err)
	}
	stream, ok := snap.Section(sectionMigration)
	if gz, isGz := snap.Section(sectionMigrationGz); isGz {
		if ok {
			return nil, nil, nil, fmt.Errorf("qemu: restore: %w: both %s and %s sections", snapshot.ErrCorrupt, sectionMigration, sectionMigrationGz)
		}
		stream, ok = gz, true
		dc.compressed = true
	}
	if !ok || len(stream) == 0 {
		return nil, nil, nil, fmt.Errorf("qemu: restore: %w: no %s section", snapshot.ErrCorrupt, sectionMigration)
	}
	if dc.compressed {
		// The header costs nothing to check; the rest inflates while QEMU
		// loads it.
		if _, err := gzip.NewReader(bytes.NewReader(stream)); err != nil {
			return nil, nil, nil, fmt.Errorf("qemu: restore: %w: %s section: %v", snapshot.ErrCorrupt, sectionMigrationGz, err)
		}
	}
	switch dc.Accel {
	case AccelTCG:
	case AccelKVM, AccelHVF:
		usable := kvmUsable
		if dc.Accel == AccelHVF {
			usable = hvfUsable
		}
		if err := usable(); err != nil {
			return nil, nil, nil, fmt.Errorf("qemu: restore: %w: the snapshot ran under %s: %v", snapshot.ErrIncompatible, dc.Accel, err)
		}
	default:
		return nil, nil, nil, fmt.Errorf("qemu: restore: %w: unknown accelerator %q", snapshot.ErrCorrupt, dc.Accel)
	}
	version, err := v.b.qemuVersion()
	if err != nil {
		return nil, nil, nil, err
	}
	host := snapshot.Host{
		Backend: BackendName, BackendVersion: version, Arch: runtime.GOARCH, CPUModel: snapshotCPUModel(dc.Accel),
		VCPUs: v.cfg.VCPUs, MemoryMiB: v.cfg.MemoryMiB,
		MinGuestProtocol: guest.MinProtocolVersion, MaxGuestProtocol: guest.MaxProtocolVersion,
	}
	if err := snapshot.Compatible(snap.Meta, host); err != nil {
		return nil, nil, nil, fmt.Errorf("qemu: restore: %w", err)
	}
	if dc.Machine != machineType {
		return nil, nil, nil, fmt.Errorf("qemu: restore: %w: machine %q, this backend builds %q", snapshot.ErrIncompatible, dc.Machine, machineType)
	}
	for _, f := range []struct{ what, path, want string }{{"kernel", v.cfg.Kernel, dc.KernelSHA256}, {"initramfs", v.cfg.Initrd, dc.InitrdSHA256}} {
		got, err := v.b.hashFile(f.path)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("qemu: restore: the %s %s: %w", f.what, f.path, err)
		}
		if got != f.want {
			return nil, nil, nil, fmt.Errorf("qemu: restore: %w: the snapshot booted a %s with SHA-256 %.12s…, this VM's %s has %.12s…", snapshot.ErrIncompatible, f.what, f.want, f.path, got)
		}
	}
	return snap, &dc, stream, nil
}

// migrateIn feeds a migration stream to a QEMU started with -incoming,
// decompressing it on the way when it is gzipped. A stream that fails to
// inflate, or inflates to nothing, ends the wait at once: QEMU (7.2) does
// not report an incoming stream that closes before its first byte, and
// would sit in "inmigrate" until the caller's deadline.
func (v *VM) migrateIn(ctx context.Context, p *process, stream []byte, compressed bool) error {
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("qemu: restore: %w", err)
	}
	const fdName = "kelpie-restore"
	err = p.qmp.ExecuteWithFile(ctx, "getfd", map[string]string{"fdname": fdName}, r, nil)
	r.Close()
	if err != nil {
		w.Close()
		return fmt.Errorf("qemu: restore: passing the pipe: %w", err)
	}
	wctx, stopWait := context.WithCancelCause(ctx)
	defer stopWait(nil)
	type writeResult struct {
		err error
		// pipe is set when writing to QEMU failed: QEMU stopped reading,
		// and its own error says why.
		pipe bool
	}
	wrote := make(chan writeResult, 1)
	go func() {
		pw := &pipeWriter{w: w}
		var err error
		if compressed {
			err = decompressTo(pw, stream, v.maxStreamBytes())
		} else {
			_, err = pw.Write(stream)
		}
		if err == nil && pw.n == 0 {
			err = errors.New("the migration stream is empty")
		}
		w.Close()
		if err != nil && pw.err == nil {
			// The stream itself is at fault; QEMU may be waiting for
			// more of it.
			stopWait(err)
		}
		wrote <- writeResult{err: err, pipe: pw.err != nil}
	}()
	if err := p.qmp.Execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:" + fdName}, nil); err != nil {
		w.Close()
		<-wrote
		return fmt.Errorf("qemu: restore: %w", err)
	}
	werr := v.waitIncoming(wctx, p)
	if werr != nil {
		w.Close() // a writer still at work fails now, after QEMU did
	}
	if res := <-wrote; res.err != nil && (werr == nil || !res.pipe) {
		return fmt.Errorf("qemu: restore: writing the stream: %w (%s)", res.err, p.diagnostics())
	}
	return werr
}

// pipeWriter counts the bytes written to QEMU's pipe and remembers the
// pipe's own failure, to tell it from the stream's.
type pipeWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (pw *pipeWriter) Write(p []byte) (int, error) {
	n, err := pw.w.Write(p)
	pw.n += int64(n)
	if err != nil && pw.err == nil {
		pw.err = err
	}
	return n, err
}

// waitIncoming waits until QEMU has loaded the stream and sits paused.
func (v *VM) waitIncoming(ctx context.Context, p *process) error {
	for {
		st, err := p.status(ctx)
		if err != nil {
			return fmt.Errorf("qemu: restore: %w (%s)", err, p.diagnostics())
		}
		switch st {
		case "paused", "postmigrate", "prelaunch":
			var ms migrationStatus
			if err := p.qmp.Execute(ctx, "query-migrate", nil, &ms); err != nil {
				return fmt.Errorf("qemu: restore: %w", err)
			}
			if ms.Status == "failed" {
				return fmt.Errorf("qemu: restore: migration failed: %s (%s)", ms.ErrorDesc, p.diagnostics())
			}
			if ms.Status == "completed" || ms.Status == "" && st == "paused" {
				return nil
			}
		case "inmigrate":
		default:
			return fmt.Errorf("qemu: restore: unexpected run state %q (%s)", st, p.diagnostics())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("qemu: restore: %w (run state %q)", ctx.Err(), st)
		case <-p.exited:
			return fmt.Errorf("qemu: restore: %s", p.diagnostics())
		case <-time.After(migrationPoll):
		}
	}
}

// Stop ends the VM: a QMP quit, then a kill if QEMU lingers.
func (v *VM) Stop(ctx context.Context) error {
	return v.m.Do(vm.OpStop, func() error {
		v.mu.Lock()
		p, c := v.proc, v.agent
		if p != nil {
			p.stopping = true
		}
		v.agent = nil
		v.lastSnapshot = nil
		v.mu.Unlock()
		if c != nil {
			c.Close()
		}
		if p != nil {
			p.quit()
		}
		return nil
	})
}

// agentCall runs fn against the agent, and fails the VM when the agent is
// gone because QEMU is.
func (v *VM) agentCall(op vm.Op, fn func(c *guest.Client) error) error {
	if err := v.m.Check(op); err != nil {
		return err
	}
	p, c := v.current()
	if c == nil || p == nil {
		return fmt.Errorf("%w: no guest agent session", vm.ErrCrashed)
	}
	err := fn(c)
	if errors.Is(err, agent.ErrAgentGone) {
		v.agentGone(p, c, err)
	}
	return err
}

// agentGone decides whether a silent agent means a dead VM: QEMU exited,
// or a running VM's agent does not answer a ping.
func (v *VM) agentGone(p *process, c *guest.Client, cause error) {
	select {
	case <-p.exited:
		v.m.Fail(fmt.Errorf("%w: %s", vm.ErrCrashed, p.diagnostics()))
		return
	default:
	}
	if v.m.State() != vm.StateRunning {
		return // paused meanwhile: silence is expected
	}
	ctx, cancel := context.WithTimeout(context.Background(), pingTimeout)
	defer cancel()
	if _, err := c.Ping(ctx); err != nil {
		v.m.Fail(fmt.Errorf("%w: the guest agent stopped answering (%v; %v)", vm.ErrCrashed, cause, err))
	}
}

// Exec runs a command in the guest.
func (v *VM) Exec(ctx context.Context, req vm.ExecRequest) (vm.ExecResult, error) {
	if err := v.m.Check(vm.OpExec); err != nil {
		return vm.ExecResult{}, err
	}
	req, err := req.Normalize()
	if err != nil {
		return vm.ExecResult{}, err
	}
	var res vm.ExecResult
	err = v.agentCall(vm.OpExec, func(c *guest.Client) error {
		var err error
		res, err = agent.Exec(ctx, c, req)
		return err
	})
	return res, err
}

// ReadFile reads a guest file.
func (v *VM) ReadFile(ctx context.Context, path string) ([]byte, error) {
	if err := v.m.Check(vm.OpReadFile); err != nil {
		return nil, err
	}
	if err := vm.CheckFileRequest(path, nil); err != nil {
		return nil, err
	}
	var data []byte
	err := v.agentCall(vm.OpReadFile, func(c *guest.Client) error {
		var err error
		data, err = agent.ReadFile(ctx, c, path)
		return err
	})
	return data, err
}

// WriteFile writes a guest file.
func (v *VM) WriteFile(ctx context.Context, path string, data []byte, mode fs.FileMode) error {
	if err := v.m.Check(vm.OpWriteFile); err != nil {
		return err
	}
	if err := vm.CheckFileRequest(path, data); err != nil {
		return err
	}
	return v.agentCall(vm.OpWriteFile, func(c *guest.Client) error {
		return agent.WriteFile(ctx, c, path, data, mode)
	})
}

// processAttr makes QEMU die with the process that started it (Linux), so
// a crashed host process leaves no VMs behind.
func processAttr() *syscall.SysProcAttr {
	return newSysProcAttr()
}

// compress gzips a migration stream at the fastest level: most of a
// stream is the guest's kernel and page tables, which compress 3-4x even so.
func compress(stream []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(stream); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// decompressTo writes the gunzipped stream to w, refusing more than limit
// bytes (a blob's checksum proves it intact, not that it is small).
func decompressTo(w io.Writer, gz []byte, limit int64) error {
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		return fmt.Errorf("%w: migration stream: %v", snapshot.ErrCorrupt, err)
	}
	n, err := io.Copy(w, io.LimitReader(zr, limit+1))
	if err != nil {
		return err
	}
	if n > limit {
		return fmt.Errorf("%w: the migration stream inflates past %d bytes", snapshot.ErrTooLarge, limit)
	}
	return nil
}
