// Package qemu is the QEMU backend of package vm: each VM is one
// qemu-system process, controlled over QMP (a small JSON protocol on a unix
// socket, see QMP), booting a Linux kernel with Kelpie's initramfs whose
// /init is the guest agent (vm/image, cmd/kelpie-guest).
//
// The device model is deliberately plain, so that it boots the same under
// every accelerator and on every host: the "pc" machine, no disks, no
// network, two 8250 serial ports and one virtio-serial port. The first
// UART is the kernel console (logged to a file); the second UART and the
// virtio port both carry the guest agent's protocol, each with its host end
// on a unix socket QEMU listens on. The 8250 driver is built into
// distribution kernels, so the serial channel always works; virtio is a
// module there, so the virtio channel (about 80 times faster under TCG)
// works when the image carries the kernel's virtio modules (vm/image
// Options.Modules). The backend handshakes on both and keeps virtio when
// it answers.
//
// Accelerators: KVM on Linux, HVF on macOS, TCG (emulation) anywhere. The
// accelerator is chosen per backend (Options.Accel); "auto" tries the
// hardware one first and falls back to TCG when that boot does not reach
// the guest agent within Options.KVMProbeTimeout — on hosts that are
// themselves VMs, /dev/kvm can exist while a KVM guest hangs at boot. The
// accelerator a VM runs under, and why, is in its Info.
//
// Snapshots are QEMU migration streams: a paused VM migrates into a pipe
// the backend reads, and the stream — gzipped at the fastest level unless
// Options.UncompressedSnapshots, which makes a booted 256 MiB guest's blob
// about 17 MiB instead of 57 — goes into a vm/snapshot blob with the
// device model's description. Restore starts a new QEMU process with the
// same device model and -incoming, feeds it the stream, and leaves it
// paused, as the vm restore contract requires. A snapshot restores only
// under the same QEMU version, accelerator class, CPU model, VM shape, and
// the same kernel and initramfs bytes (checked by SHA-256).
package qemu

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kelpie-go/kelpie/vm"
	"github.com/kelpie-go/kelpie/vm/guest"
)

// BackendName is the registry name of this backend.
const BackendName = "qemu"

// Timeouts and limits of the backend.
const (
	// DefaultBinary is the QEMU system emulator for x86-64 guests.
	DefaultBinary = "qemu-system-x86_64"
	// DefaultKVMProbeTimeout is how long, with Accel "auto", a hardware-
	// accelerated boot may take to reach the guest agent before the
	// backend gives up on the accelerator and boots with TCG. A working
	// KVM boot takes well under a second.
	DefaultKVMProbeTimeout = 15 * time.Second
	// qmpConnectTimeout bounds the wait for QEMU's QMP socket to appear.
	qmpConnectTimeout = 15 * time.Second
	// agentAttempt is how often a booting VM's agent is asked for a
	// handshake until it answers.
	agentAttempt = 250 * time.Millisecond
	// stopTimeout bounds a graceful quit before the process is killed.
	stopTimeout = 5 * time.Second
	// versionTimeout bounds `qemu-system-x86_64 -version`.
	versionTimeout = 10 * time.Second
	// migrationPoll is how often query-migrate is asked about progress.
	migrationPoll = 10 * time.Millisecond
	// migrationOverheadBytes is what a migration stream may carry beyond
	// guest memory (device state, ROMs, page headers).
	migrationOverheadBytes = 256 << 20
	// migrationMaxBandwidth lifts QEMU's default migration throttle
	// (128 MiB/s): the stream goes to memory, not over a network.
	migrationMaxBandwidth = 1 << 40
	// tailBytes bounds the console and stderr excerpts kept for errors.
	tailBytes = 4096
	// maxSocketPath is the portable limit of a unix socket path (macOS 104).
	maxSocketPath = 100
	// machineType is QEMU's machine model.
	machineType = "pc"
)

// Accel is a QEMU accelerator.
type Accel string

// The accelerators. AccelAuto picks the hardware one for the host and falls
// back to TCG.
const (
	AccelAuto Accel = "auto"
	AccelKVM  Accel = "kvm"
	AccelHVF  Accel = "hvf"
	AccelTCG  Accel = "tcg"
)

// ParseAccel parses an accelerator name.
func ParseAccel(s string) (Accel, error) {
	switch a := Accel(s); a {
	case AccelAuto, AccelKVM, AccelHVF, AccelTCG:
		return a, nil
	case "":
		return AccelAuto, nil
	}
	return "", fmt.Errorf("qemu: accelerator %q: want auto, kvm, hvf or tcg", s)
}

// Options configure the backend.
type Options struct {
	// Binary is the QEMU executable; "" means DefaultBinary from PATH.
	Binary string
	// Accel is the accelerator; "" means AccelAuto.
	Accel Accel
	// RunDir holds each VM's sockets and console log in a directory of
	// its own; "" means the system temporary directory. Unix socket paths
	// are short, so keep it short.
	RunDir string
	// KVMProbeTimeout bounds a hardware-accelerated boot under AccelAuto;
	// 0 means DefaultKVMProbeTimeout.
	KVMProbeTimeout time.Duration
	// UncompressedSnapshots stores the migration stream as QEMU wrote it,
	// trading a blob about four times larger for a faster snapshot.
	UncompressedSnapshots bool
	// Progress, when set, is told each step of a long operation.
	Progress func(vmID, step string)
}

// Backend is the QEMU vm.Backend.
type Backend struct {
	opts Options
	seq  atomic.Uint64

	mu        sync.Mutex
	binary    string
	version   string
	hwBroken  string // why the hardware accelerator failed under auto
	hashCache map[string]fileHash
}

type fileHash struct {
	size  int64
	mtime time.Time
	sum   string
}

// New returns a backend. It does not look at the host; Available does.
func New(opts Options) (*Backend, error) {
	a, err := ParseAccel(string(opts.Accel))
	if err != nil {
		return nil, err
	}
	opts.Accel = a
	if opts.KVMProbeTimeout < 0 || opts.KVMProbeTimeout > vm.MaxBootTimeout {
		return nil, fmt.Errorf("qemu: KVMProbeTimeout %s: want 0 (default %s) up to %s", opts.KVMProbeTimeout, DefaultKVMProbeTimeout, vm.MaxBootTimeout)
	}
	if opts.KVMProbeTimeout == 0 {
		opts.KVMProbeTimeout = DefaultKVMProbeTimeout
	}
	if opts.RunDir == "" {
		opts.RunDir = os.TempDir()
	}
	return &Backend{opts: opts, hashCache: map[string]fileHash{}}, nil
}

// The backend is what a vm.Registry holds.
var _ vm.Backend = (*Backend)(nil)

// Name is "qemu".
func (b *Backend) Name() string { return BackendName }

// Accel is the configured accelerator.
func (b *Backend) Accel() Accel { return b.opts.Accel }

// Available reports whether QEMU runs here with the configured accelerator.
func (b *Backend) Available() error {
	if _, err := b.qemuVersion(); err != nil {
		return err
	}
	switch b.opts.Accel {
	case AccelKVM:
		return kvmUsable()
	case AccelHVF:
		return hvfUsable()
	}
	return nil
}

// qemuBinary resolves the executable once.
func (b *Backend) qemuBinary() (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.binary != "" {
		return b.binary, nil
	}
	name := b.opts.Binary
	if name == "" {
		name = DefaultBinary
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("qemu: %s not found (Debian: apt-get install qemu-system-x86): %w", name, err)
	}
	b.binary = p
	return p, nil
}

var versionRE = regexp.MustCompile(`version (\d+\.\d+\.\d+)`)

// qemuVersion runs `qemu -version` once; snapshots record the version and
// restore only under the same one.
func (b *Backend) qemuVersion() (string, error) {
	bin, err := b.qemuBinary()
	if err != nil {
		return "", err
	}
	b.mu.Lock()
	v := b.version
	b.mu.Unlock()
	if v != "" {
		return v, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), versionTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "-version").Output()
	if err != nil {
		return "", fmt.Errorf("qemu: %s -version: %v", bin, err)
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("qemu: %s -version printed no version: %.200q", bin, out)
	}
	b.mu.Lock()
	b.version = string(m[1])
	b.mu.Unlock()
	return string(m[1]), nil
}

// kvmUsable reports whether /dev/kvm can be opened for a VM.
func kvmUsable() error {
	if runtime.GOOS != "linux" {
		return fmt.Errorf("qemu: kvm is Linux's accelerator; this host is %s", runtime.GOOS)
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("qemu: kvm unusable: %w", err)
	}
	f.Close()
	return nil
}

func hvfUsable() error {
	if runtime.GOOS != "darwin" || runtime.GOARCH != "amd64" {
		return fmt.Errorf("qemu: hvf runs x86-64 guests on an x86-64 Mac only; this host is %s/%s", runtime.GOOS, runtime.GOARCH)
	}
	return nil
}

// hardwareAccel is the host's hardware accelerator, if it has one.
func hardwareAccel() (Accel, error) {
	switch runtime.GOOS {
	case "linux":
		return AccelKVM, kvmUsable()
	case "darwin":
		return AccelHVF, hvfUsable()
	}
	return "", fmt.Errorf("qemu: no hardware accelerator on %s", runtime.GOOS)
}

// bootPlan lists the accelerators a boot tries, in order, with a note for
// the VM's info when the first choice was skipped.
func (b *Backend) bootPlan() ([]Accel, string, error) {
	switch b.opts.Accel {
	case AccelTCG:
		return []Accel{AccelTCG}, "configured", nil
	case AccelKVM:
		return []Accel{AccelKVM}, "configured", kvmUsable()
	case AccelHVF:
		return []Accel{AccelHVF}, "configured", hvfUsable()
	}
	hw, err := hardwareAccel()
	if err != nil {
		return []Accel{AccelTCG}, fmt.Sprintf("auto: %v", err), nil
	}
	b.mu.Lock()
	broken := b.hwBroken
	b.mu.Unlock()
	if broken != "" {
		return []Accel{AccelTCG}, fmt.Sprintf("auto: %s failed earlier in this process (%s)", hw, broken), nil
	}
	return []Accel{hw, AccelTCG}, "auto", nil
}

// cpuModel is the -cpu argument for an accelerator. TCG emulates a fixed
// model, so its snapshots do not depend on the host's CPU.
func cpuModel(a Accel) string {
	if a == AccelTCG {
		return "qemu64"
	}
	return "host"
}

// snapshotCPUModel is the CPU model recorded in, and required of, a snapshot.
func snapshotCPUModel(a Accel) string {
	if a == AccelTCG {
		return "tcg/qemu64"
	}
	return string(a) + "/host/" + hostCPUName()
}

func hostCPUName() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

// hashFile returns the SHA-256 of a file, cached by size and mtime: a
// snapshot records the kernel and initramfs it booted from.
func (b *Backend) hashFile(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	b.mu.Lock()
	h, ok := b.hashCache[path]
	b.mu.Unlock()
	if ok && h.size == fi.Size() && h.mtime.Equal(fi.ModTime()) {
		return h.sum, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	d := sha256.New()
	if _, err := io.Copy(d, f); err != nil {
		return "", err
	}
	sum := hex.EncodeToString(d.Sum(nil))
	b.mu.Lock()
	b.hashCache[path] = fileHash{size: fi.Size(), mtime: fi.ModTime(), sum: sum}
	b.mu.Unlock()
	return sum, nil
}

func (b *Backend) progress(id, format string, args ...any) {
	if b.opts.Progress != nil {
		b.opts.Progress(id, fmt.Sprintf(format, args...))
	}
}

// New creates a VM in the created state.
func (b *Backend) New(cfg vm.VMConfig) (vm.VMInstance, error) {
	return b.NewVM(cfg)
}

// NewVM is New with the concrete type, for callers that want Info.
func (b *Backend) NewVM(cfg vm.VMConfig) (*VM, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.RootDisk != "" {
		return nil, &vm.ConfigError{Field: "RootDisk", Value: cfg.RootDisk, Reason: "the qemu backend boots from the initramfs only"}
	}
	if cfg.Network {
		return nil, &vm.ConfigError{Field: "Network", Value: true, Reason: "the qemu backend gives guests no network device"}
	}
	if cfg.Initrd == "" {
		return nil, &vm.ConfigError{Field: "Initrd", Value: `""`, Reason: "the qemu backend needs Kelpie's initramfs (kelpie vm image build), whose /init is the guest agent"}
	}
	id := cfg.ID
	if id == "" {
		id = fmt.Sprintf("qemu-%d-%d", os.Getpid(), b.seq.Add(1))
	}
	return &VM{b: b, cfg: cfg, id: id}, nil
}

// DiscoverKernel finds a kernel for the guest: Debian's
// linux-image-cloud-amd64 (/boot/vmlinuz-*-cloud-amd64), newest first, or
// failing that any readable /boot/vmlinuz-*.
func DiscoverKernel() (string, error) {
	for _, pattern := range []string{"/boot/vmlinuz-*-cloud-amd64", "/boot/vmlinuz-*"} {
		matches, _ := filepath.Glob(pattern)
		sort.Slice(matches, func(i, j int) bool { return versionLess(matches[j], matches[i]) })
		for _, m := range matches {
			if f, err := os.Open(m); err == nil {
				f.Close()
				return m, nil
			}
		}
	}
	return "", errors.New("qemu: no kernel in /boot (Debian: apt-get install linux-image-cloud-amd64), or give one with -kernel")
}

var numRE = regexp.MustCompile(`\d+|\D+`)

// versionLess orders "vmlinuz-6.1.0-9" before "vmlinuz-6.1.0-10".
func versionLess(a, b string) bool {
	pa, pb := numRE.FindAllString(a, -1), numRE.FindAllString(b, -1)
	for i := 0; i < len(pa) && i < len(pb); i++ {
		if pa[i] == pb[i] {
			continue
		}
		var na, nb int
		_, ea := fmt.Sscan(pa[i], &na)
		_, eb := fmt.Sscan(pb[i], &nb)
		if ea == nil && eb == nil {
			return na < nb
		}
		return pa[i] < pb[i]
	}
	return len(pa) < len(pb)
}

// tail is a bounded buffer that keeps the last tailBytes written.
type tail struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > tailBytes {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-tailBytes:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.buf))
}

// fileTail returns the last tailBytes of a file, for errors.
func fileTail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > tailBytes {
		f.Seek(-tailBytes, io.SeekEnd)
	}
	b, _ := io.ReadAll(io.LimitReader(f, tailBytes))
	return strings.TrimSpace(string(bytes.ToValidUTF8(b, []byte("?"))))
}

// helloInfo is what a snapshot needs to know about the guest agent.
type helloInfo struct {
	Agent   string
	Version int
	Kernel  string
}

func fromHello(h *guest.HelloReply) helloInfo {
	return helloInfo{Agent: h.Agent, Version: h.Version, Kernel: h.Kernel}
}
