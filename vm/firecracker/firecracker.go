// Package firecracker is the Firecracker backend of package vm: each VM is
// one firecracker process, configured and driven through its REST API on a
// Unix socket (machine config, boot source, drives, vsock, instance start,
// pause and resume, snapshot create and load), with the Kelpie guest agent
// (package vm/guest) reached over the guest's first serial port — which
// Firecracker connects to the process's stdin and stdout — or over vsock
// with Firecracker's "CONNECT <port>" handshake.
//
// Snapshots are Firecracker full snapshots: the vmstate and memory files are
// read back into a vm/snapshot blob (sections "vmstate" and "memory") whose
// metadata records the Firecracker version, architecture and CPU model,
// because Firecracker restores only on the same CPU model, host kernel and
// Firecracker version. Restore writes the two files into a fresh process's
// directory and loads them paused, as the vm restore contract requires; the
// guest agent session is re-established at Resume. Paths that Firecracker
// records inside its snapshot (the vsock socket, the snapshot files) are
// relative to the process's working directory, so a snapshot restores into
// any VM directory; a root disk is recorded by its absolute host path and
// must exist at that path on the restoring host.
//
// The backend runs firecracker directly, not under the jailer, and does not
// create TAP devices, so VMConfig.Network is refused.
package firecracker

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/kelpie-go/kelpie/vm"
	"github.com/kelpie-go/kelpie/vm/guest"
)

// Name is the backend's registry name.
const Name = "firecracker"

// Channel names how the host reaches the guest agent.
type Channel string

// The channels.
const (
	// ChannelSerial uses the guest's ttyS0, which Firecracker connects to
	// the firecracker process's stdin and stdout. It needs nothing from the
	// guest kernel beyond the 8250 driver.
	ChannelSerial Channel = "serial"
	// ChannelVsock uses a virtio-vsock stream; the guest kernel needs
	// virtio_vsock built in and the agent must listen on Options.VsockPort
	// (Kelpie's agent listens on guest.DefaultVsockPort unless the kernel
	// command line says kelpie.vsock_port=).
	ChannelVsock Channel = "vsock"
)

// Defaults and limits.
const (
	// DefaultVsockPort is the guest port the agent listens on with vsock:
	// the agent's own default, shared through package guest so the two
	// cannot drift apart.
	DefaultVsockPort = guest.DefaultVsockPort
	// DefaultGuestCID is the guest's vsock context id (3 is the first one
	// that is not reserved).
	DefaultGuestCID = 3
	// DefaultBootArgs is the kernel command line when VMConfig.KernelCmdline
	// is empty: no kernel console on the agent's port, reboot on panic so a
	// dead guest ends the process.
	DefaultBootArgs = "reboot=k panic=1 pci=off quiet loglevel=1"
	// apiSocketTimeout bounds the wait for a new process's API socket.
	apiSocketTimeout = 5 * time.Second
	// apiSocketPoll is the interval between checks for the API socket.
	apiSocketPoll = 5 * time.Millisecond
	// processExitTimeout bounds the wait for a killed process to exit.
	processExitTimeout = 10 * time.Second
	// agentAttempt is how long each handshake attempt with the agent waits.
	agentAttempt = time.Second
	// vsockRetry spaces attempts to reach a guest that is not listening yet.
	vsockRetry = 50 * time.Millisecond
	// maxUnixPath is the longest Unix socket path Linux accepts.
	maxUnixPath = 107
	// maxVMStateBytes bounds a vmstate file read back from Firecracker.
	maxVMStateBytes = 64 << 20
	// logTailBytes is how much of the process's output is kept for errors.
	logTailBytes = 8 << 10
	// versionTimeout bounds `firecracker --version`.
	versionTimeout = 10 * time.Second
)

// Options configure the backend.
type Options struct {
	// Binary is the firecracker executable: a path, or a name looked up in
	// PATH. "" means "firecracker".
	Binary string
	// Dir holds one directory per VM; "" means os.TempDir(). Unix socket
	// paths must stay under 108 bytes, so keep it short.
	Dir string
	// Channel selects how the agent is reached; "" means ChannelSerial.
	Channel Channel
	// VsockPort is the agent's port with ChannelVsock; 0 means
	// DefaultVsockPort.
	VsockPort uint32
	// Env is added to the process's environment (tests use it).
	Env []string
}

// Backend creates Firecracker VMs.
type Backend struct {
	opts Options

	mu      sync.Mutex
	n       int
	version string // cached `firecracker --version`
}

// New returns a Firecracker backend.
func New(opts Options) (*Backend, error) {
	if opts.Binary == "" {
		opts.Binary = "firecracker"
	}
	if opts.Dir == "" {
		opts.Dir = os.TempDir()
	}
	if !filepath.IsAbs(opts.Dir) {
		return nil, fmt.Errorf("firecracker: Options.Dir %q: want an absolute path", opts.Dir)
	}
	switch opts.Channel {
	case "":
		opts.Channel = ChannelSerial
	case ChannelSerial, ChannelVsock:
	default:
		return nil, fmt.Errorf("firecracker: Options.Channel %q: want %q or %q", opts.Channel, ChannelSerial, ChannelVsock)
	}
	if opts.VsockPort == 0 {
		opts.VsockPort = DefaultVsockPort
	}
	return &Backend{opts: opts}, nil
}

// The backend is what a vm.Registry holds.
var _ vm.Backend = (*Backend)(nil)

// Name is "firecracker".
func (b *Backend) Name() string { return Name }

// Available reports whether firecracker can run here: Linux, the binary,
// and a /dev/kvm this process may open read-write.
func (b *Backend) Available() error {
	if runtime.GOOS != "linux" {
		return fmt.Errorf("firecracker runs only on Linux, this is %s", runtime.GOOS)
	}
	if _, err := exec.LookPath(b.opts.Binary); err != nil {
		return fmt.Errorf("the firecracker binary %q is not installed or not in PATH: %v", b.opts.Binary, err)
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("/dev/kvm is not usable (KVM is required): %v", err)
	}
	f.Close()
	return nil
}

// Version returns the firecracker binary's version ("1.7.0"), running
// `firecracker --version` once.
func (b *Backend) Version(ctx context.Context) (string, error) {
	b.mu.Lock()
	v := b.version
	b.mu.Unlock()
	if v != "" {
		return v, nil
	}
	ctx, cancel := context.WithTimeout(ctx, versionTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.opts.Binary, "--version")
	cmd.Env = append(os.Environ(), b.opts.Env...)
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("firecracker --version: %w", err)
	}
	v, err = parseVersion(string(out))
	if err != nil {
		return "", err
	}
	b.mu.Lock()
	b.version = v
	b.mu.Unlock()
	return v, nil
}

// parseVersion reads "Firecracker v1.7.0" from the first line of
// `firecracker --version`.
func parseVersion(out string) (string, error) {
	line, _, _ := strings.Cut(out, "\n")
	f := strings.Fields(line)
	if len(f) < 2 || !strings.EqualFold(f[0], "firecracker") || !strings.HasPrefix(f[1], "v") || len(f[1]) < 2 {
		return "", fmt.Errorf("firecracker --version printed %q, want \"Firecracker vX.Y.Z\"", truncate(line))
	}
	return strings.TrimPrefix(f[1], "v"), nil
}

// cpuModel is the host CPU's model name from /proc/cpuinfo, part of the
// snapshot compatibility check.
func cpuModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		// x86 says "model name"; arm64 has no model name, but "CPU part".
		if ok && (strings.TrimSpace(k) == "model name" || strings.TrimSpace(k) == "CPU part") {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// New creates a VM in StateCreated; nothing runs until Boot or Restore.
func (b *Backend) New(cfg vm.VMConfig) (vm.VMInstance, error) {
	return b.NewVM(cfg)
}

// NewVM is New with the concrete type.
func (b *Backend) NewVM(cfg vm.VMConfig) (*VM, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Network {
		return nil, &vm.ConfigError{Field: "Network", Value: true, Reason: "the firecracker backend does not create host TAP devices; run without network"}
	}
	b.mu.Lock()
	b.n++
	n := b.n
	b.mu.Unlock()
	id := cfg.ID
	if id == "" {
		id = fmt.Sprintf("fc-%d-%d", os.Getpid(), n)
	}
	dir := filepath.Join(b.opts.Dir, "kelpie-"+id)
	if len(filepath.Join(dir, apiSocketName)) > maxUnixPath {
		return nil, fmt.Errorf("firecracker: VM directory %s makes the API socket path longer than %d bytes: use a shorter Options.Dir", dir, maxUnixPath)
	}
	return &VM{b: b, id: id, cfg: cfg, dir: dir}, nil
}

// Files in a VM's directory. Those Firecracker records in a snapshot are
// relative to the process's working directory (the VM directory).
const (
	apiSocketName   = "api.sock"
	vsockName       = "v.sock"
	logName         = "firecracker.log"
	vmstateName     = "snapshot.vmstate"
	memName         = "snapshot.mem"
	snapshotVMState = "vmstate"
	snapshotMemory  = "memory"
)
