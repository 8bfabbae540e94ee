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
	"github.com/kelpie-go/kelpie/vm/image"
	"github.com/kelpie-go/kelpie/vm/qemu"
)

func init() {
	register(command{name: "vm", summary: "build the guest image, run, snapshot, restore and list QEMU microVMs", run: runVMCommand})
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
	kernel, image, accel, name, stateDir string
	mem, cpus                            int
	bootTimeout, execTimeout             time.Duration
	command                              string
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
	fl.StringVar(&f.kernel, "kernel", "", "guest kernel (default: Debian's linux-image-cloud-amd64 in /boot)")
	fl.StringVar(&f.image, "image", defImage, "initramfs from 'kelpie vm image build'")
	fl.StringVar(&f.accel, "accel", defAccel, "accelerator: auto, kvm, hvf or tcg (default from $"+vmAccelEnv+")")
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
	if f.kernel == "" {
		if f.kernel, err = qemu.DiscoverKernel(); err != nil {
			return fail("%v", err)
		}
	}
	if f.image == "" {
		return fail("no default image path on this system; give -image")
	}
	if _, err := os.Stat(f.image); err != nil {
		return fail("no guest image at %s (build it with: kelpie vm image build): %v", f.image, err)
	}
	var blob []byte
	if snapFile != "" {
		if blob, err = os.ReadFile(snapFile); err != nil {
			return fail("%v", err)
		}
	}
	pr := newVMProgress(stderr)
	b, err := qemu.New(qemu.Options{Accel: accel, Progress: func(_, step string) { pr.step("%s", step) }})
	if err != nil {
		return fail("%v", err)
	}
	if err := b.Available(); err != nil {
		return fail("%v", err)
	}
	cfg := vm.VMConfig{ID: f.name, VCPUs: f.cpus, MemoryMiB: f.mem, Kernel: f.kernel, Initrd: f.image, BootTimeout: f.bootTimeout}
	v, err := b.NewVM(cfg)
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
		pr.step("booting %s (%d MiB, %d vCPU, kernel %s)", v.ID(), f.mem, f.cpus, f.kernel)
		if err := v.Boot(ctx); err != nil {
			return fail("%v", err)
		}
	} else {
		pr.step("restoring %s from %s (%d MiB)", v.ID(), snapFile, len(blob)>>20)
		if err := v.Restore(ctx, blob); err != nil {
			return fail("%v", err)
		}
		if err := v.Resume(ctx); err != nil {
			return fail("resume: %v", err)
		}
	}
	info := v.Info()
	pr.step("%s running: qemu %s, accelerator %s (%s), agent %s over %s, guest kernel %s",
		info.ID, info.QEMUVersion, info.Accel, info.AccelNote, info.Agent, info.Channel, info.GuestKernel)
	if accel == qemu.AccelAuto && info.Accel == qemu.AccelTCG && strings.Contains(info.AccelNote, "fell back") {
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
func execLine(ctx context.Context, v *qemu.VM, line string, timeout time.Duration, stdout, stderr io.Writer) (int, error) {
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
func shell(ctx context.Context, v *qemu.VM, timeout time.Duration, pr *vmProgress, stdout, stderr io.Writer) int {
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
			printInfo(stdout, v.Info(), v.State())
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

func printInfo(w io.Writer, i qemu.Info, st vm.State) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "id\t%s\nstate\t%s\naccelerator\t%s (%s)\nqemu\t%s, machine %s, cpu %s, pid %d\nshape\t%d vCPU, %d MiB\nagent\t%s, protocol %d, over %s\nguest kernel\t%s\nconsole log\t%s\n",
		i.ID, st, i.Accel, i.AccelNote, i.QEMUVersion, i.Machine, i.CPU, i.PID, i.VCPUs, i.MemoryMiB, i.Agent, i.Protocol, i.Channel, i.GuestKernel, i.ConsoleLog)
	tw.Flush()
}

// snapshotTo pauses v, writes its snapshot to path (atomically), and
// resumes it unless stop is set.
func snapshotTo(ctx context.Context, v *qemu.VM, path string, stop bool, pr *vmProgress) (int, error) {
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
	Info    qemu.Info `json:"info"`
	State   string    `json:"state"`
	Started time.Time `json:"started"`
	Owner   int       `json:"owner_pid"`
}

func serveControl(dir string, v *qemu.VM, pr *vmProgress) (*controlServer, error) {
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
		json.NewEncoder(w).Encode(&controlInfo{Info: v.Info(), State: v.State().String(), Started: started, Owner: os.Getpid()})
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
	fmt.Fprintln(tw, "ID\tSTATE\tACCEL\tMEMORY\tQEMU PID\tSESSION PID\tUP")
	for _, sock := range socks {
		id := strings.TrimSuffix(filepath.Base(sock), ".sock")
		resp, err := controlClient(sock, vmControlTimeout).Get("http://vm/info")
		if err != nil {
			// The session that owned it is gone.
			fmt.Fprintf(tw, "%s\tgone\t-\t-\t-\t-\t-\n", id)
			continue
		}
		var ci controlInfo
		err = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&ci)
		resp.Body.Close()
		if err != nil {
			fmt.Fprintf(tw, "%s\tunreadable\t-\t-\t-\t-\t-\n", id)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d MiB\t%d\t%d\t%s\n", id, ci.State, ci.Info.Accel, ci.Info.MemoryMiB, ci.Info.PID, ci.Owner, time.Since(ci.Started).Round(time.Second))
	}
	tw.Flush()
	return 0
}
