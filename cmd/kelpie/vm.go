package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/kelpie-go/kelpie/vm"
	"github.com/kelpie-go/kelpie/vm/firecracker"
	"github.com/kelpie-go/kelpie/vm/image"
	"github.com/kelpie-go/kelpie/vm/qemu"
	"github.com/kelpie-go/kelpie/vm/snapshot"
)

func init() {
	register(command{name: "vm", summary: "build the guest image, run, snapshot, restore and list microVMs (Firecracker or QEMU)", run: runVMCommand})
}

// vmStdin is where the exec shell reads commands; tests replace it.
var vmStdin io.Reader = os.Stdin

// Limits of the vm command.
const (
	// vmShellLineBytes bounds one line typed into the exec shell.
	vmShellLineBytes = 64 << 10
	// vmControlTimeout bounds a control request other than a snapshot.
	vmControlTimeout = 10 * time.Second
	// vmSnapshotTimeout bounds a snapshot requested over the control socket.
	vmSnapshotTimeout = 10 * time.Minute
	// vmStateEnv overrides the directory of running VMs' control sockets.
	vmStateEnv = "KELPIE_VM_STATE"
	// vmAccelEnv sets the default accelerator.
	vmAccelEnv = "KELPIE_VM_ACCEL"
)

const vmUsage = `usage: kelpie vm <subcommand> [flags]

subcommands:
  image build   build the initramfs (guest agent as /init, busybox) the VMs boot
  run           boot a VM and open an exec shell in it (or run one command with -c)
  restore FILE  restore a snapshot into a new VM and open an exec shell
  snapshot ID   snapshot a VM started by run or restore into a file (-o FILE)
  ls            list the VMs started by run or restore

run and restore take -backend: auto (the default) picks the first backend
this host supports, firecracker (its binary and /dev/kvm) before qemu (runs
anywhere, emulated without KVM); restore's auto picks the backend that wrote
the snapshot. Or name one: firecracker, qemu.

In the exec shell every line runs with sh -c in the guest; lines starting
with ':' are shell commands: :info, :snapshot FILE, :quit (or end of input).
Run 'kelpie vm <subcommand> -h' for its flags.
`

func runVMCommand(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, vmUsage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	switch args[0] {
	case "image":
		if len(args) < 2 || args[1] != "build" {
			fmt.Fprintln(stderr, "kelpie vm image: the subcommand is 'build' (kelpie vm image build -h)")
			return 2
		}
		return vmImageBuild(args[2:], stdout, stderr)
	case "run":
		return vmRun(args[1:], "", stdout, stderr)
	case "restore":
		if len(args) < 2 || strings.HasPrefix(args[1], "-") {
			fmt.Fprintln(stderr, "kelpie vm restore: give the snapshot file first: kelpie vm restore FILE [flags]")
			return 2
		}
		return vmRun(args[2:], args[1], stdout, stderr)
	case "snapshot":
		return vmSnapshot(args[1:], stdout, stderr)
	case "ls":
		return vmList(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "kelpie vm: unknown subcommand %q\n\n%s", args[0], vmUsage)
	return 2
}

// vmProgress prints timed progress lines for long steps.
type vmProgress struct {
	mu    sync.Mutex
	w     io.Writer
	start time.Time
}

func newVMProgress(w io.Writer) *vmProgress { return &vmProgress{w: w, start: time.Now()} }

func (p *vmProgress) step(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "[%6.1fs] %s\n", time.Since(p.start).Seconds(), fmt.Sprintf(format, args...))
}

func vmImageBuild(args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("kelpie vm image build", flag.ContinueOnError)
	fl.SetOutput(stderr)
	def, _ := image.DefaultPath()
	out := fl.String("o", def, "where to write the image")
	guestBin := fl.String("guest", "", "a prebuilt static kelpie-guest binary (default: go build it from -src)")
	src := fl.String("src", "", "a directory inside the kelpie source tree (default: the current directory)")
	busybox := fl.String("busybox", "", `a static busybox to include ("" finds one, "none" leaves it out)`)
	kernel := fl.String("kernel", "", "the kernel the image will boot, whose virtio modules it carries (default: Debian's cloud kernel in /boot)")
	modules := fl.String("modules", "", `the kernel's module directory ("" derives it from -kernel, "none" builds a serial-only image)`)
	if err := fl.Parse(args); err != nil {
		return 2
	}
	switch *modules {
	case "none":
		*modules = ""
	case "":
		k := *kernel
		if k == "" {
			k, _ = qemu.DiscoverKernel()
		}
		if k != "" {
			*modules = image.ModulesDirFor(k)
		}
	}
	if fl.NArg() > 0 {
		fmt.Fprintf(stderr, "kelpie vm image build: unexpected arguments %q\n", fl.Args())
		return 2
	}
	if *out == "" {
		fmt.Fprintln(stderr, "kelpie vm image build: no default image path on this system; give -o")
		return 2
	}
	pr := newVMProgress(stderr)
	res, err := image.Build(context.Background(), image.Options{
		Output: *out, GuestBinary: *guestBin, SourceDir: *src, Busybox: *busybox, Modules: *modules,
		Progress: func(s string) { pr.step("%s", s) },
	})
	if err != nil {
		fmt.Fprintf(stderr, "kelpie vm image build: %v\n", err)
		return 1
	}
	bb := "no busybox (the guest has only the agent: exec needs absolute paths of programs you add)"
	if res.Busybox != "" {
		bb = fmt.Sprintf("busybox from %s with %d applets", res.Busybox, res.Applets)
	}
	ch := "serial port only (no kernel modules found; give -kernel or -modules for the faster virtio-serial channel)"
	if len(res.Modules) > 0 {
		ch = fmt.Sprintf("virtio-serial channel (%d modules from %s) and the serial port", len(res.Modules), *modules)
	}
	pr.step("done")
	fmt.Fprintf(stdout, "%s\n  %d bytes, sha256 %s\n  %d entries: guest agent (%d bytes) as /init, %s\n  agent channels: %s\n",
		res.Path, res.Bytes, res.SHA256, res.Entries, res.GuestBytes, bb, ch)
	return 0
}

// vmFlags are the flags of run and restore.
type vmFlags struct {
	backend, kernel, image, accel, name, stateDir string
	mem, cpus                                     int
	bootTimeout, execTimeout                      time.Duration
	command                                       string
}

func parseVMFlags(name string, args []string, stderr io.Writer) (*vmFlags, error) {
	f := &vmFlags{}
	fl := flag.NewFlagSet(name, flag.ContinueOnError)
	fl.SetOutput(stderr)
	defImage, _ := image.DefaultPath()
	defAccel := os.Getenv(vmAccelEnv)
	if defAccel == "" {
		defAccel = string(qemu.AccelAuto)
	}
	fl.StringVar(&f.backend, "backend", vm.AutoBackend, "VM backend: auto (the first this host supports, firecracker then qemu; for restore, the snapshot's), firecracker or qemu")
	fl.StringVar(&f.kernel, "kernel", "", "guest kernel (default for qemu: Debian's linux-image-cloud-amd64 in /boot; firecracker needs an uncompressed vmlinux)")
	fl.StringVar(&f.image, "image", defImage, "initramfs from 'kelpie vm image build'")
	fl.StringVar(&f.accel, "accel", defAccel, "qemu's accelerator: auto, kvm, hvf or tcg (default from $"+vmAccelEnv+")")
	fl.StringVar(&f.name, "name", "", "the VM's ID (default: generated)")
	fl.StringVar(&f.stateDir, "state", defaultStateDir(), "directory of running VMs' control sockets")
	fl.IntVar(&f.mem, "mem", 256, "guest memory in MiB")
	fl.IntVar(&f.cpus, "cpus", 1, "virtual CPUs")
	fl.DurationVar(&f.bootTimeout, "boot-timeout", 2*time.Minute, "how long a boot may take to reach the guest agent")
	fl.DurationVar(&f.execTimeout, "timeout", vm.DefaultExecTimeout, "timeout of each command")
	fl.StringVar(&f.command, "c", "", "run this command (sh -c) and exit with its status, instead of the shell")
	if err := fl.Parse(args); err != nil {
		return nil, err
	}
	if fl.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected arguments %q\n", name, fl.Args())
		return nil, errors.New("usage")
	}
	return f, nil
}

func defaultStateDir() string {
	if d := os.Getenv(vmStateEnv); d != "" {
		return d
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "kelpie-vm")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("kelpie-vm-%d", os.Getuid()))
}

// vmBackendOptions configure the backends kelpie vm may run VMs on.
type vmBackendOptions struct {
	qemu        qemu.Options
	firecracker firecracker.Options
}

// vmRegistry assembles the backends kelpie vm picks from, most preferred
// first: Firecracker, the microVM monitor, where the host has its binary and
// KVM; then QEMU, which runs anywhere (emulated, under TCG, without KVM).
// The simulated backend (vm/simvm) is left out on purpose: its guest is a
// toy operating system with a fixed command set and no kernel, made for the
// deterministic simulation, and a shell into it would pass for a VM it is
// not.
func vmRegistry(o vmBackendOptions) (*vm.Registry, error) {
	r := &vm.Registry{}
	fc, err := firecracker.New(o.firecracker)
	if err != nil {
		return nil, err
	}
	qm, err := qemu.New(o.qemu)
	if err != nil {
		return nil, err
	}
	for _, b := range []vm.Backend{fc, qm} {
		if err := r.Register(b); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// checkBackendName refuses a -backend that r does not hold, naming the
// choices, without looking at the host.
func checkBackendName(r *vm.Registry, name string) error {
	if name == "" || name == vm.AutoBackend {
		return nil
	}
	if _, err := r.Get(name); err != nil {
		return fmt.Errorf("unknown backend %q: want %s", name, strings.Join(append([]string{vm.AutoBackend}, r.Names()...), ", "))
	}
	return nil
}

// pickVMBackend returns the backend -backend names if this host supports
// it; with auto, the first backend the host supports, except that a
// restore's auto (snapBackend is the backend that wrote the snapshot, ""
// when unknown) takes the only backend that can load the snapshot.
func pickVMBackend(r *vm.Registry, name, snapBackend string) (vm.Backend, error) {
	if err := checkBackendName(r, name); err != nil {
		return nil, err
	}
	if (name == "" || name == vm.AutoBackend) && snapBackend != "" {
		if _, err := r.Get(snapBackend); err != nil {
			return nil, fmt.Errorf("the snapshot is from the %q backend, which kelpie vm does not run (it runs %s)", snapBackend, strings.Join(r.Names(), ", "))
		}
		name = snapBackend
	}
	return r.Pick(name)
}

// vmDefaultKernel is the kernel a backend boots when -kernel is not given.
func vmDefaultKernel(backend string) (string, error) {
	switch backend {
	case qemu.BackendName:
		return qemu.DiscoverKernel()
	case firecracker.Name:
		return "", errors.New("the firecracker backend boots an uncompressed vmlinux, which /boot does not hold: give -kernel (see vm/firecracker/README.md)")
	}
	return "", fmt.Errorf("no default kernel for the %s backend: give -kernel", backend)
}

// vmRun boots (or, with snapFile, restores) a VM and runs the shell or -c.
func vmRun(args []string, snapFile string, stdout, stderr io.Writer) int {
	name := "kelpie vm run"
	if snapFile != "" {
		name = "kelpie vm restore"
	}
	f, err := parseVMFlags(name, args, stderr)
	if err != nil {
		return 2
	}
	// The control socket's handler reports progress while the shell
	// writes command output: both go through locks.
	stdout, stderr = &lockedWriter{w: stdout}, &lockedWriter{w: stderr}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, name+": "+format+"\n", a...)
		return 1
	}
	accel, err := qemu.ParseAccel(f.accel)
	if err != nil {
		return fail("%v", err)
	}
	pr := newVMProgress(stderr)
	reg, err := vmRegistry(vmBackendOptions{qemu: qemu.Options{Accel: accel, Progress: func(_, step string) { pr.step("%s", step) }}})
	if err != nil {
		return fail("%v", err)
	}
	if err := checkBackendName(reg, f.backend); err != nil {
		return fail("%v", err)
	}
	if f.image == "" {
		return fail("no default image path on this system; give -image")
	}
	if _, err := os.Stat(f.image); err != nil {
		return fail("no guest image at %s (build it with: kelpie vm image build): %v", f.image, err)
	}
	var blob []byte
	snapBackend := ""
	if snapFile != "" {
		if blob, err = os.ReadFile(snapFile); err != nil {
			return fail("%v", err)
		}
		// A blob that does not decode is the restore's to refuse, with
		// the reason; auto then picks by the host.
		if meta, err := snapshot.DecodeMetadata(blob); err == nil {
			snapBackend = meta.Backend
		}
	}
	b, err := pickVMBackend(reg, f.backend, snapBackend)
	if err != nil {
		return fail("%v", err)
	}
	if b.Name() != qemu.BackendName && accel != qemu.AccelAuto {
		return fail("-accel %s (or $%s) is a qemu option, and the %s backend was chosen; give -backend qemu to use it", accel, vmAccelEnv, b.Name())
	}
	if f.kernel == "" {
		if f.kernel, err = vmDefaultKernel(b.Name()); err != nil {
			return fail("%v", err)
		}
	}
	cfg := vm.VMConfig{ID: f.name, VCPUs: f.cpus, MemoryMiB: f.mem, Kernel: f.kernel, Initrd: f.image, BootTimeout: f.bootTimeout}
	v, err := b.New(cfg)
	if err != nil {
		return fail("%v", err)
	}
	ctx, stopSignals := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stopSignals()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := v.Stop(sctx); err != nil {
			fmt.Fprintf(stderr, "%s: stop: %v\n", name, err)
		}
	}()
	if snapFile == "" {
		pr.step("booting %s on %s (%d MiB, %d vCPU, kernel %s)", v.ID(), b.Name(), f.mem, f.cpus, f.kernel)
		if err := v.Boot(ctx); err != nil {
			return fail("%v", err)
		}
	} else {
		pr.step("restoring %s on %s from %s (%d MiB)", v.ID(), b.Name(), snapFile, len(blob)>>20)
		if err := v.Restore(ctx, blob); err != nil {
			return fail("%v", err)
		}
		if err := v.Resume(ctx); err != nil {
			return fail("resume: %v", err)
		}
	}
	info := describeVM(v)
	pr.step("%s running: %s", info.ID, info.summary())
	if accel == qemu.AccelAuto && info.Accel == string(qemu.AccelTCG) && strings.Contains(info.AccelNote, "fell back") {
		fmt.Fprintf(stderr, "hint: hardware acceleration does not work on this host; -accel tcg (or %s=tcg) skips the probe\n", vmAccelEnv)
	}
	ctl, err := serveControl(f.stateDir, v, pr)
	if err != nil {
		fmt.Fprintf(stderr, "%s: control socket unavailable (kelpie vm snapshot/ls will not see this VM): %v\n", name, err)
	} else {
		defer ctl.close()
	}
	if f.command != "" {
		code, err := execLine(ctx, v, f.command, f.execTimeout, stdout, stderr)
		if err != nil {
			return fail("%v", err)
		}
		return code
	}
	return shell(ctx, v, f.execTimeout, pr, stdout, stderr)
}

// execLine runs one shell line in the guest, copying its output, and
// returns its exit status.
func execLine(ctx context.Context, v vm.VMInstance, line string, timeout time.Duration, stdout, stderr io.Writer) (int, error) {
	res, err := v.Exec(ctx, vm.ExecRequest{
		Command: "sh", Args: []string{"-c", line},
		Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "TERM=dumb"},
		Dir: "/root", Timeout: timeout,
	})
	if err != nil {
		return -1, err
	}
	stdout.Write(res.Stdout)
	stderr.Write(res.Stderr)
	if res.StdoutTruncated || res.StderrTruncated {
		fmt.Fprintf(stderr, "[output cut at %d bytes per stream]\n", vm.DefaultExecOutputBytes)
	}
	return res.ExitCode, nil
}

// shell is the interactive exec loop.
func shell(ctx context.Context, v vm.VMInstance, timeout time.Duration, pr *vmProgress, stdout, stderr io.Writer) int {
	fmt.Fprintf(stdout, "exec shell in %s: each line runs with sh -c in the guest; :help for more\n", v.ID())
	sc := bufio.NewScanner(vmStdin)
	sc.Buffer(make([]byte, 4096), vmShellLineBytes)
	lines := make(chan string)
	scanErr := make(chan error, 1)
	go func() {
		for sc.Scan() {
			lines <- sc.Text()
		}
		scanErr <- sc.Err()
		close(lines)
	}()
	for {
		fmt.Fprintf(stdout, "%s$ ", v.ID())
		var line string
		var ok bool
		select {
		case <-ctx.Done():
			fmt.Fprintln(stdout)
			return 130
		case line, ok = <-lines:
		}
		if !ok {
			fmt.Fprintln(stdout)
			if err := <-scanErr; err != nil {
				fmt.Fprintf(stderr, "kelpie vm: reading input: %v (a line may hold %d bytes)\n", err, vmShellLineBytes)
				return 1
			}
			return 0
		}
		line = strings.TrimSpace(line)
		switch {
		case line == "":
			continue
		case line == ":quit" || line == ":q" || line == "exit":
			return 0
		case line == ":help":
			fmt.Fprintln(stdout, ":info            what the VM runs under\n:snapshot FILE   pause, write a snapshot to FILE, resume\n:quit            stop the VM and leave (also end of input)")
			continue
		case line == ":info":
			printInfo(stdout, describeVM(v), v.State())
			continue
		case strings.HasPrefix(line, ":snapshot"):
			path := strings.TrimSpace(strings.TrimPrefix(line, ":snapshot"))
			if path == "" {
				fmt.Fprintln(stderr, ":snapshot needs a file name")
				continue
			}
			if n, err := snapshotTo(ctx, v, path, false, pr); err != nil {
				fmt.Fprintf(stderr, "snapshot: %v\n", err)
			} else {
				fmt.Fprintf(stdout, "wrote %s (%d bytes)\n", path, n)
			}
			continue
		case strings.HasPrefix(line, ":"):
			fmt.Fprintf(stderr, "unknown shell command %q (:help)\n", line)
			continue
		}
		code, err := execLine(ctx, v, line, timeout, stdout, stderr)
		if err != nil {
			fmt.Fprintf(stderr, "exec: %v\n", err)
			if v.State() == vm.StateFailed {
				return 1
			}
			continue
		}
		if code != 0 {
			fmt.Fprintf(stderr, "[exit %d]\n", code)
		}
	}
}

// vmInfo is what the session's progress, the shell's :info and kelpie vm ls
// show of a VM, whichever backend runs it. The fields it shares with
// qemu.Info, which sessions used to send, keep their names, so ls reads the
// sessions of older binaries too.
type vmInfo struct {
	ID, Backend string
	// Hypervisor is the program and its version ("qemu 8.2.2"); Device
	// the device model where the backend has a choice ("machine pc, cpu
	// qemu64").
	Hypervisor, Device string
	// Accel and AccelNote are QEMU's accelerator and why it was chosen.
	Accel, AccelNote string
	VCPUs, MemoryMiB int
	// PID is the hypervisor process.
	PID         int
	Agent       string
	Protocol    int
	Channel     string
	GuestKernel string
	// ConsoleLog is the guest kernel's console, where the backend keeps one.
	ConsoleLog string
}

// describeVM reads what v's backend tells about it.
func describeVM(v vm.VMInstance) vmInfo {
	cfg := v.Config()
	i := vmInfo{ID: v.ID(), Backend: v.Backend(), Hypervisor: v.Backend(), VCPUs: cfg.VCPUs, MemoryMiB: cfg.MemoryMiB}
	switch v := v.(type) {
	case *qemu.VM:
		q := v.Info()
		i.Hypervisor = strings.TrimSpace("qemu " + q.QEMUVersion)
		if q.Machine != "" {
			i.Device = fmt.Sprintf("machine %s, cpu %s", q.Machine, q.CPU)
		}
		i.Accel, i.AccelNote, i.PID, i.ConsoleLog = string(q.Accel), q.AccelNote, q.PID, q.ConsoleLog
		i.Agent, i.Protocol, i.Channel, i.GuestKernel = q.Agent, q.Protocol, q.Channel, q.GuestKernel
	case *firecracker.VM:
		fc := v.Info()
		i.Hypervisor = strings.TrimSpace("firecracker " + fc.Version)
		i.PID = fc.PID
		i.Agent, i.Protocol, i.Channel, i.GuestKernel = fc.Agent, fc.Protocol, string(fc.Channel), fc.GuestKernel
	}
	return i
}

// summary is the one line the session prints once the VM runs.
func (i vmInfo) summary() string {
	parts := []string{i.Hypervisor}
	if i.Accel != "" {
		parts = append(parts, fmt.Sprintf("accelerator %s (%s)", i.Accel, i.AccelNote))
	}
	if i.Agent != "" {
		parts = append(parts, fmt.Sprintf("agent %s over %s", i.Agent, i.Channel))
	}
	if i.GuestKernel != "" {
		parts = append(parts, "guest kernel "+i.GuestKernel)
	}
	return strings.Join(parts, ", ")
}

func printInfo(w io.Writer, i vmInfo, st vm.State) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	hv := i.Hypervisor
	if i.Device != "" {
		hv += ", " + i.Device
	}
	fmt.Fprintf(tw, "id\t%s\nbackend\t%s\nstate\t%s\nhypervisor\t%s, pid %d\n", i.ID, i.Backend, st, hv, i.PID)
	if i.Accel != "" {
		fmt.Fprintf(tw, "accelerator\t%s (%s)\n", i.Accel, i.AccelNote)
	}
	fmt.Fprintf(tw, "shape\t%d vCPU, %d MiB\nagent\t%s, protocol %d, over %s\n", i.VCPUs, i.MemoryMiB, i.Agent, i.Protocol, i.Channel)
	if i.GuestKernel != "" {
		fmt.Fprintf(tw, "guest kernel\t%s\n", i.GuestKernel)
	}
	if i.ConsoleLog != "" {
		fmt.Fprintf(tw, "console log\t%s\n", i.ConsoleLog)
	}
	tw.Flush()
}

// snapshotTo pauses v, writes its snapshot to path (atomically), and
// resumes it unless stop is set.
func snapshotTo(ctx context.Context, v vm.VMInstance, path string, stop bool, pr *vmProgress) (int, error) {
	pr.step("pausing %s", v.ID())
	if err := v.Pause(ctx); err != nil {
		return 0, err
	}
	pr.step("taking the snapshot")
	blob, err := v.Snapshot(ctx)
	if err == nil {
		pr.step("writing %s (%d MiB)", path, len(blob)>>20)
		err = writeFileAtomic(path, blob)
	}
	if stop {
		if serr := v.Stop(ctx); err == nil {
			err = serr
		}
	} else if rerr := v.Resume(ctx); err == nil {
		err = rerr
	}
	if err != nil {
		return 0, err
	}
	return len(blob), nil
}

func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// The control socket: each run/restore session serves HTTP on
// <state>/<id>.sock so that other kelpie processes can list and snapshot
// its VM (QEMU's own QMP socket takes one client, the session).

type controlServer struct {
	srv  *http.Server
	path string
}

func (c *controlServer) close() {
	c.srv.Close()
	os.Remove(c.path)
}

// controlInfo is what ls shows.
type controlInfo struct {
	Info    vmInfo    `json:"info"`
	State   string    `json:"state"`
	Started time.Time `json:"started"`
	Owner   int       `json:"owner_pid"`
}

func serveControl(dir string, v vm.VMInstance, pr *vmProgress) (*controlServer, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, v.ID()+".sock")
	os.Remove(path) // a stale socket of a session that died
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	started := time.Now()
	var snapMu sync.Mutex
	mux := http.NewServeMux()
	mux.HandleFunc("GET /info", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(&controlInfo{Info: describeVM(v), State: v.State().String(), Started: started, Owner: os.Getpid()})
	})
	mux.HandleFunc("POST /snapshot", func(w http.ResponseWriter, r *http.Request) {
		path := r.URL.Query().Get("path")
		if !filepath.IsAbs(path) {
			http.Error(w, "path must be absolute", http.StatusBadRequest)
			return
		}
		snapMu.Lock()
		defer snapMu.Unlock()
		ctx, cancel := context.WithTimeout(r.Context(), vmSnapshotTimeout)
		defer cancel()
		// Progress goes to the requester line by line as well as to the
		// session's own terminal.
		fl, _ := w.(http.Flusher)
		both := &vmProgress{w: io.MultiWriter(pr.w, flushWriter{w, fl}), start: time.Now()}
		n, err := snapshotTo(ctx, v, path, r.URL.Query().Get("stop") == "1", both)
		if err != nil {
			fmt.Fprintf(w, "error: %v\n", err)
			return
		}
		fmt.Fprintf(w, "done %d\n", n)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: vmControlTimeout}
	go srv.Serve(ln)
	return &controlServer{srv: srv, path: path}, nil
}

// lockedWriter serialises writes from the shell and the control handler.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

type flushWriter struct {
	w  io.Writer
	fl http.Flusher
}

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if f.fl != nil {
		f.fl.Flush()
	}
	return n, err
}

func controlClient(sock string, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}
}

func vmSnapshot(args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("kelpie vm snapshot", flag.ContinueOnError)
	fl.SetOutput(stderr)
	out := fl.String("o", "", "the snapshot file to write (required)")
	stop := fl.Bool("stop", false, "stop the VM after the snapshot instead of resuming it")
	state := fl.String("state", defaultStateDir(), "directory of running VMs' control sockets")
	id := ""
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		id, args = args[0], args[1:]
	}
	if err := fl.Parse(args); err != nil {
		return 2
	}
	if id == "" || *out == "" || fl.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: kelpie vm snapshot ID -o FILE [-stop]   (IDs: kelpie vm ls)")
		return 2
	}
	path, err := filepath.Abs(*out)
	if err != nil {
		fmt.Fprintf(stderr, "kelpie vm snapshot: %v\n", err)
		return 1
	}
	sock := filepath.Join(*state, id+".sock")
	if _, err := os.Stat(sock); err != nil {
		fmt.Fprintf(stderr, "kelpie vm snapshot: no VM %q here (kelpie vm ls lists them): %v\n", id, err)
		return 1
	}
	q := "path=" + url.QueryEscape(path)
	if *stop {
		q += "&stop=1"
	}
	resp, err := controlClient(sock, vmSnapshotTimeout).Post("http://vm/snapshot?"+q, "text/plain", nil)
	if err != nil {
		fmt.Fprintf(stderr, "kelpie vm snapshot: %s: %v\n", id, err)
		return 1
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		fmt.Fprintf(stderr, "kelpie vm snapshot: %s: %s", id, b)
		return 1
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "done "):
			fmt.Fprintf(stdout, "wrote %s (%s bytes)\n", path, strings.TrimPrefix(line, "done "))
			return 0
		case strings.HasPrefix(line, "error: "):
			fmt.Fprintf(stderr, "kelpie vm snapshot: %s: %s\n", id, strings.TrimPrefix(line, "error: "))
			return 1
		default:
			fmt.Fprintln(stderr, line)
		}
	}
	fmt.Fprintf(stderr, "kelpie vm snapshot: %s: the session ended without an answer (%v)\n", id, sc.Err())
	return 1
}

func vmList(args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("kelpie vm ls", flag.ContinueOnError)
	fl.SetOutput(stderr)
	state := fl.String("state", defaultStateDir(), "directory of running VMs' control sockets")
	if err := fl.Parse(args); err != nil {
		return 2
	}
	socks, _ := filepath.Glob(filepath.Join(*state, "*.sock"))
	sort.Strings(socks)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tBACKEND\tSTATE\tACCEL\tMEMORY\tPID\tSESSION PID\tUP")
	for _, sock := range socks {
		id := strings.TrimSuffix(filepath.Base(sock), ".sock")
		resp, err := controlClient(sock, vmControlTimeout).Get("http://vm/info")
		if err != nil {
			// The session that owned it is gone.
			fmt.Fprintf(tw, "%s\t-\tgone\t-\t-\t-\t-\t-\n", id)
			continue
		}
		var ci controlInfo
		err = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&ci)
		resp.Body.Close()
		if err != nil {
			fmt.Fprintf(tw, "%s\t-\tunreadable\t-\t-\t-\t-\t-\n", id)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d MiB\t%d\t%d\t%s\n", id, orDash(ci.Info.Backend), ci.State, orDash(ci.Info.Accel), ci.Info.MemoryMiB, ci.Info.PID, ci.Owner, time.Since(ci.Started).Round(time.Second))
	}
	tw.Flush()
	return 0
}

// orDash shows an empty column as "-".
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
