// Package image builds the initramfs Kelpie's microVMs boot: a gzipped newc
// cpio archive, written in pure Go, whose /init is the static guest agent
// (cmd/kelpie-guest). The kernel unpacks it into a tmpfs root and runs
// /init, which mounts the rest and serves the host. The archive also holds
// the directories and device nodes init needs before devtmpfs is mounted
// (/dev/console for its output), minimal /etc files, and optionally a static
// busybox with its applet links, so that commands the host execs (sh, ls,
// cat) exist in the guest.
//
// The agent is built here with `go build` (CGO_ENABLED=0, for the guest's
// architecture) from the module's source, or taken prebuilt; either way it
// must be a static ELF, since the image has no dynamic loader. Builds are
// reproducible: fixed timestamps, owners and order give the same bytes for
// the same inputs, and Result.SHA256 identifies the image.
package image

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

// Limits and defaults.
const (
	// MaxBinaryBytes bounds a binary put into the image (the agent, busybox).
	MaxBinaryBytes = 256 << 20
	// GuestBuildTimeout bounds `go build` of the agent.
	GuestBuildTimeout = 5 * time.Minute
	// BusyboxListTimeout bounds `busybox --list-full`.
	BusyboxListTimeout = 30 * time.Second
	// ModulePath is the module that holds cmd/kelpie-guest.
	ModulePath = "github.com/kelpie-go/kelpie"
	// GuestPackage is the agent's package within the module.
	GuestPackage = "./cmd/kelpie-guest"
	// maxModuleSearchDepth bounds the walk up from a directory to go.mod.
	maxModuleSearchDepth = 64
)

// BusyboxCandidates are where Debian's busybox-static and other distributions
// put a busybox binary.
var BusyboxCandidates = []string{"/bin/busybox", "/usr/bin/busybox", "/sbin/busybox", "/usr/sbin/busybox"}

// binDirs are the directories the image has for programs.
var binDirs = map[string]bool{"bin": true, "sbin": true, "usr/bin": true, "usr/sbin": true}

// NoBusybox, as Options.Busybox, builds an image with the agent only.
const NoBusybox = "none"

// Options says what goes into an image.
type Options struct {
	// Output is the path of the .cpio.gz to write (required). It is
	// written to a temporary file and renamed, so a failed build leaves
	// no partial image.
	Output string
	// GuestBinary is a prebuilt static agent. When empty the agent is
	// built from SourceDir.
	GuestBinary string
	// SourceDir is a directory inside the kelpie module; "" means the
	// current directory. Only used when GuestBinary is empty.
	SourceDir string
	// GOARCH is the guest's architecture; "" means the host's.
	GOARCH string
	// Busybox is a static busybox binary to include; "" means the first
	// static one in BusyboxCandidates, if any; NoBusybox means none.
	Busybox string
	// Modules is a kernel's module directory (/lib/modules/RELEASE) to
	// take VirtioModules from, giving the agent the fast virtio-serial
	// channel, and VsockModules when that kernel has them; "" builds a
	// serial-only image. The image then boots that kernel release only for
	// virtio and vsock (other kernels fall back to serial).
	Modules string
	// Progress, when set, is told each step as it starts.
	Progress func(step string)
}

// VirtioModules are the modules the agent loads for its virtio-serial
// channel (distribution kernels build virtio as modules); their
// dependencies come from modules.dep.
var VirtioModules = []string{"virtio_pci", "virtio_console"}

// VsockModules are the modules the agent needs to listen on vsock when the
// hypervisor offers a virtio-vsock device (Firecracker, QEMU's
// vhost-vsock-pci): the virtio transport, which brings the vsock core and
// the common transport code through modules.dep. Unlike VirtioModules they
// are optional: a kernel with vsock built in, or without it, has none to
// add, and the image is still useful over virtio-serial.
var VsockModules = []string{"vmw_vsock_virtio_transport"}

// ModuleListPath is where the image lists the modules to load, in order,
// one path per line; the agent reads it at boot.
const ModuleListPath = "etc/kelpie/modules"

// maxModuleBytes bounds one kernel module put into the image.
const maxModuleBytes = 16 << 20

// ModulesDirFor returns the module directory matching a kernel image named
// like Debian's (/boot/vmlinuz-RELEASE), or "" if there is none.
func ModulesDirFor(kernel string) string {
	rel, ok := strings.CutPrefix(filepath.Base(kernel), "vmlinuz-")
	if !ok || rel == "" {
		return ""
	}
	dir := filepath.Join("/lib/modules", rel)
	if _, err := os.Stat(filepath.Join(dir, "modules.dep")); err != nil {
		return ""
	}
	return dir
}

// Result describes a built image.
type Result struct {
	Path string
	// Bytes is the compressed size.
	Bytes int64
	// SHA256 is the hex digest of the image file.
	SHA256 string
	// Entries is the number of archive entries.
	Entries int
	// GuestBytes is the agent binary's size.
	GuestBytes int
	// Busybox is the busybox included ("" for none) and Applets its links.
	Busybox string
	Applets int
	// Modules lists the kernel modules included, in load order.
	Modules []string
}

// DefaultPath is where `kelpie vm image build` writes and the QEMU backend
// looks for the image: the user's cache directory.
func DefaultPath() (string, error) {
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("image: no cache directory for the default image path (set -o): %w", err)
	}
	return filepath.Join(dir, "kelpie", "vm", "initramfs-"+runtime.GOARCH+".cpio.gz"), nil
}

// Build builds an image as opts says.
func Build(ctx context.Context, opts Options) (*Result, error) {
	if opts.Output == "" {
		return nil, errors.New("image: Options.Output is empty")
	}
	progress := opts.Progress
	if progress == nil {
		progress = func(string) {}
	}
	arch := opts.GOARCH
	if arch == "" {
		arch = runtime.GOARCH
	}

	guestPath := opts.GuestBinary
	if guestPath == "" {
		dir, err := os.MkdirTemp("", "kelpie-image-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		guestPath = filepath.Join(dir, "kelpie-guest")
		progress(fmt.Sprintf("building the guest agent (go build %s, GOOS=linux GOARCH=%s CGO_ENABLED=0)", GuestPackage, arch))
		if err := BuildGuest(ctx, opts.SourceDir, arch, guestPath); err != nil {
			return nil, err
		}
	}
	guestBin, err := readStatic(guestPath, "guest agent", arch)
	if err != nil {
		return nil, err
	}

	var busybox []byte
	var applets []string
	bbPath := opts.Busybox
	switch bbPath {
	case NoBusybox:
		bbPath = ""
	case "":
		bbPath = findBusybox(arch)
	}
	if bbPath != "" {
		progress("adding busybox from " + bbPath)
		if busybox, err = readStatic(bbPath, "busybox", arch); err != nil {
			return nil, err
		}
		if applets, err = busyboxApplets(ctx, bbPath); err != nil {
			return nil, err
		}
	}

	var mods []module
	if opts.Modules != "" {
		progress("adding virtio and vsock modules from " + opts.Modules)
		if mods, err = loadModules(opts.Modules, VirtioModules, VsockModules); err != nil {
			return nil, err
		}
	}

	progress("writing " + opts.Output)
	if err := os.MkdirAll(filepath.Dir(opts.Output), 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(opts.Output), "."+filepath.Base(opts.Output)+".tmp-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name()) // after the rename this removes nothing
	h := sha256.New()
	bw := bufio.NewWriter(io.MultiWriter(tmp, h))
	entries, err := writeImage(bw, guestBin, busybox, applets, mods)
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), opts.Output)
	}
	if err != nil {
		return nil, fmt.Errorf("image: writing %s: %w", opts.Output, err)
	}
	fi, err := os.Stat(opts.Output)
	if err != nil {
		return nil, err
	}
	res := &Result{
		Path: opts.Output, Bytes: fi.Size(), SHA256: hex.EncodeToString(h.Sum(nil)), Entries: entries,
		GuestBytes: len(guestBin), Busybox: bbPath, Applets: len(applets),
	}
	for _, m := range mods {
		res.Modules = append(res.Modules, m.path)
	}
	return res, nil
}

// writeImage writes the gzipped archive and returns its entry count.
func writeImage(w io.Writer, guestBin, busybox []byte, applets []string, mods []module) (int, error) {
	// A zero gzip header (no name, no time) keeps builds reproducible.
	zw, err := gzip.NewWriterLevel(w, gzip.BestCompression)
	if err != nil {
		return 0, err
	}
	cw := NewCpioWriter(zw)
	n := 0
	add := func(err error) error {
		if err == nil {
			n++
		}
		return err
	}
	dirs := []string{"bin", "dev", "etc", "proc", "root", "run", "sbin", "sys", "tmp", "usr", "usr/bin", "usr/sbin", "var", "var/tmp"}
	for _, d := range dirs {
		perm := os.FileMode(0o755)
		if d == "tmp" || d == "var/tmp" {
			perm = 0o777 // the sticky bit is set when /tmp is mounted
		}
		if err := add(cw.Dir(d, perm)); err != nil {
			return n, err
		}
	}
	// init's stdio is /dev/console, opened by the kernel before devtmpfs
	// is mounted, so the node must be in the archive.
	for _, dev := range []struct {
		name         string
		major, minor uint32
	}{{"dev/console", 5, 1}, {"dev/null", 1, 3}} {
		if err := add(cw.CharDev(dev.name, 0o600, dev.major, dev.minor)); err != nil {
			return n, err
		}
	}
	etc := []struct{ name, data string }{
		{"etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"},
		{"etc/group", "root:x:0:\n"},
		{"etc/hostname", "kelpie\n"},
		{"etc/hosts", "127.0.0.1 localhost kelpie\n"},
	}
	for _, f := range etc {
		if err := add(cw.File(f.name, 0o644, []byte(f.data))); err != nil {
			return n, err
		}
	}
	if err := add(cw.File("init", 0o755, guestBin)); err != nil {
		return n, err
	}
	if busybox != nil {
		if err := add(cw.File("bin/busybox", 0o755, busybox)); err != nil {
			return n, err
		}
		for _, a := range applets {
			// Links are absolute so they work from any directory.
			if err := add(cw.Symlink(a, "/bin/busybox")); err != nil {
				return n, err
			}
		}
	}
	if len(mods) > 0 {
		dirs := map[string]bool{}
		var list strings.Builder
		for _, m := range mods {
			for _, d := range parents(m.path) {
				if !dirs[d] {
					dirs[d] = true
					if err := add(cw.Dir(d, 0o755)); err != nil {
						return n, err
					}
				}
			}
			if err := add(cw.File(m.path, 0o644, m.data)); err != nil {
				return n, err
			}
			list.WriteString("/" + m.path + "\n")
		}
		if err := add(cw.Dir("etc/kelpie", 0o755)); err != nil {
			return n, err
		}
		if err := add(cw.File(ModuleListPath, 0o644, []byte(list.String()))); err != nil {
			return n, err
		}
	}
	if err := cw.Close(); err != nil {
		return n, err
	}
	return n, zw.Close()
}

// parents lists the directories above an archive path, outermost first.
func parents(p string) []string {
	var out []string
	for d := filepath.Dir(p); d != "." && d != "/"; d = filepath.Dir(d) {
		out = append([]string{d}, out...)
	}
	return out
}

// module is a kernel module for the image: its archive path
// (lib/modules/RELEASE/kernel/...) and contents.
type module struct {
	path string
	data []byte
}

// loadModules resolves the required and optional modules and their
// dependencies from modules.dep in dir, in load order (dependencies first).
// A required module missing from modules.dep is an error; an optional one
// is left out (built into that kernel, or not configured in it).
func loadModules(dir string, required, optional []string) ([]module, error) {
	depFile := filepath.Join(dir, "modules.dep")
	b, err := os.ReadFile(depFile)
	if err != nil {
		return nil, fmt.Errorf("image: kernel modules: %w", err)
	}
	deps := map[string][]string{}
	byName := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		mod, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		deps[mod] = strings.Fields(rest)
		name := strings.TrimSuffix(filepath.Base(mod), ".ko")
		byName[strings.ReplaceAll(name, "-", "_")] = mod
	}
	var order []string
	seen := map[string]bool{}
	var visit func(m string, depth int) error
	visit = func(m string, depth int) error {
		if seen[m] {
			return nil
		}
		if depth > len(deps) {
			return fmt.Errorf("image: %s: dependency cycle at %s", depFile, m)
		}
		seen[m] = true
		ds := deps[m]
		// modules.dep lists the whole closure, nearest first: load the
		// farthest first.
		for i := len(ds) - 1; i >= 0; i-- {
			if err := visit(ds[i], depth+1); err != nil {
				return err
			}
		}
		order = append(order, m)
		return nil
	}
	for _, w := range required {
		m, ok := byName[w]
		if !ok {
			return nil, fmt.Errorf("image: module %s is not in %s (built into this kernel, or another kernel's directory?)", w, depFile)
		}
		if err := visit(m, 0); err != nil {
			return nil, err
		}
	}
	for _, w := range optional {
		if m, ok := byName[w]; ok {
			if err := visit(m, 0); err != nil {
				return nil, err
			}
		}
	}
	rel := filepath.Base(dir)
	var out []module
	for _, m := range order {
		if !strings.HasSuffix(m, ".ko") {
			return nil, fmt.Errorf("image: module %s is compressed; the agent loads plain .ko files", m)
		}
		full := filepath.Join(dir, m)
		fi, err := os.Stat(full)
		if err != nil {
			return nil, fmt.Errorf("image: kernel module: %w", err)
		}
		if fi.Size() > maxModuleBytes {
			return nil, fmt.Errorf("image: module %s is %d bytes, the limit is %d", full, fi.Size(), maxModuleBytes)
		}
		data, err := os.ReadFile(full)
		if err != nil {
			return nil, fmt.Errorf("image: kernel module: %w", err)
		}
		out = append(out, module{path: filepath.ToSlash(filepath.Join("lib/modules", rel, m)), data: data})
	}
	return out, nil
}

// BuildGuest builds the guest agent from the kelpie module that contains
// dir ("" for the current directory) into out, statically, for GOOS=linux
// and arch.
func BuildGuest(ctx context.Context, dir, arch, out string) error {
	root, err := findModule(dir)
	if err != nil {
		return err
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
			goBin = p
		} else {
			return fmt.Errorf("image: building the guest agent needs the go command: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, GuestBuildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-ldflags=-s -w", "-o", out, GuestPackage)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("image: go build of the guest agent did not finish within %s", GuestBuildTimeout)
		}
		return fmt.Errorf("image: go build %s in %s: %v\n%s", GuestPackage, root, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// findModule walks up from dir to the go.mod of ModulePath.
func findModule(dir string) (string, error) {
	if dir == "" {
		var err error
		if dir, err = os.Getwd(); err != nil {
			return "", err
		}
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	start := dir
	for range maxModuleSearchDepth {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil {
			first, _, _ := strings.Cut(string(b), "\n")
			if strings.TrimSpace(first) == "module "+ModulePath {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return "", fmt.Errorf("image: %s is not inside the %s module; building the guest agent needs its source (or pass a prebuilt agent)", start, ModulePath)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// goarchMachine maps GOARCH to the ELF machine a binary for it has.
var goarchMachine = map[string]elf.Machine{
	"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64, "386": elf.EM_386, "riscv64": elf.EM_RISCV,
}

// readStatic reads a binary and checks that it is a static ELF for arch:
// the image has no dynamic loader or libraries.
func readStatic(path, what, arch string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("image: %s: %w", what, err)
	}
	if fi.Size() > MaxBinaryBytes {
		return nil, fmt.Errorf("image: %s %s is %d bytes, the limit is MaxBinaryBytes=%d", what, path, fi.Size(), MaxBinaryBytes)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("image: %s: %w", what, err)
	}
	if err := checkStatic(data, arch); err != nil {
		return nil, fmt.Errorf("image: %s %s: %w", what, path, err)
	}
	return data, nil
}

func checkStatic(data []byte, arch string) error {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("not an ELF binary: %v", err)
	}
	defer f.Close()
	if want, ok := goarchMachine[arch]; ok && f.Machine != want {
		return fmt.Errorf("built for %v, the guest is %s (%v)", f.Machine, arch, want)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("dynamically linked (it asks for a program interpreter); the image needs a static binary (CGO_ENABLED=0, busybox-static)")
		}
	}
	return nil
}

// findBusybox returns the first static busybox for arch among the
// candidates, or "".
func findBusybox(arch string) string {
	for _, p := range BusyboxCandidates {
		if fi, err := os.Stat(p); err != nil || fi.Size() > MaxBinaryBytes {
			continue
		}
		data, err := os.ReadFile(p)
		if err == nil && checkStatic(data, arch) == nil {
			return p
		}
	}
	return ""
}

// busyboxApplets asks busybox for its applets' install paths ("bin/sh").
// It runs the host's busybox, so the image's busybox must be the host's
// architecture; a cross-architecture build uses NoBusybox.
func busyboxApplets(ctx context.Context, path string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, BusyboxListTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("image: %s --list-full: %v", path, err)
	}
	seen := map[string]bool{}
	var applets []string
	for _, line := range strings.Split(string(out), "\n") {
		a := strings.TrimSpace(line)
		name := filepath.Base(a)
		// /init is the agent; busybox's init and linuxrc would only confuse.
		// Applets outside the image's bin directories are left out.
		if a == "" || name == "init" || name == "linuxrc" || a == "bin/busybox" || seen[a] || !binDirs[filepath.Dir(a)] {
			continue
		}
		if _, err := cleanName(a); err != nil || strings.HasPrefix(a, "/") {
			return nil, fmt.Errorf("image: %s --list-full gave an odd path %q", path, a)
		}
		seen[a] = true
		applets = append(applets, a)
	}
	if len(applets) == 0 {
		return nil, fmt.Errorf("image: %s --list-full listed no applets", path)
	}
	sort.Strings(applets)
	return applets, nil
}
