//go:build linux

package main

import (
	"errors"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// mounts are what processes in the guest expect to find.
var mounts = []struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "mode=0620,ptmxmode=0666"},
	{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
}

// baseEnv is the agent's own environment; commands get the one they ask for.
var baseEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "TERM=linux"}

// setupInit prepares the VM as init must: file systems, environment,
// hostname, signals, and the reaper for orphaned processes. Failures are
// logged, not fatal: a guest missing /sys still serves exec.
func setupInit() {
	for _, m := range mounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			log.Printf("mkdir %s: %v", m.target, err)
			continue
		}
		if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			log.Printf("mount %s on %s: %v", m.fstype, m.target, err)
		}
	}
	for _, d := range []string{"/root", "/var/tmp"} {
		os.MkdirAll(d, 0o755)
	}
	os.Symlink("/proc/self/fd", "/dev/fd")
	os.Symlink("/proc/self/fd/0", "/dev/stdin")
	os.Symlink("/proc/self/fd/1", "/dev/stdout")
	os.Symlink("/proc/self/fd/2", "/dev/stderr")
	os.Clearenv()
	for _, kv := range baseEnv {
		k, v, _ := splitEnv(kv)
		os.Setenv(k, v)
	}
	if err := unix.Sethostname([]byte("kelpie")); err != nil {
		log.Printf("sethostname: %v", err)
	}
	// The kernel does not deliver signals to init unless it handles them;
	// Go installs handlers, so a stray kill in the guest would end init and
	// panic the kernel. Log them instead.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2)
	go func() {
		for s := range sigs {
			log.Printf("ignoring signal %v: init does not exit", s)
		}
	}()
	startReaper()
}

func splitEnv(kv string) (k, v string, ok bool) {
	for i := 0; i < len(kv); i++ {
		if kv[i] == '=' {
			return kv[:i], kv[i+1:], true
		}
	}
	return kv, "", false
}

// powerOff ends the VM. With QEMU's -no-reboot the hypervisor exits, which
// the host sees at once.
func powerOff() {
	unix.Sync()
	for {
		if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
			log.Printf("power off: %v", err)
		}
		time.Sleep(time.Second)
	}
}

// openChannel opens the agent's channel device. A terminal (a serial port)
// is put in raw mode: no echo, no line editing, no CR/LF translation, no
// flow-control characters, 8 bits — the protocol is binary. A virtio port
// is not a terminal and needs nothing.
func openChannel(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, err
	}
	fd := int(f.Fd())
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if errors.Is(err, unix.ENOTTY) {
		return f, nil
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: reading terminal settings: %w", path, err)
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON | unix.IXOFF | unix.IXANY
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB | unix.CRTSCTS | unix.CBAUD
	t.Cflag |= unix.CS8 | unix.CREAD | unix.CLOCAL | unix.B115200
	t.Cc[unix.VMIN] = 1
	t.Cc[unix.VTIME] = 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, t); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: setting raw mode: %w", path, err)
	}
	// Bytes that arrived before raw mode were seen through echo and line
	// editing; drop them (the host repeats its hello until answered).
	unix.IoctlSetInt(fd, unix.TCFLSH, unix.TCIFLUSH)
	return f, nil
}

// Kernel modules (for the virtio-serial and vsock channels) and the
// virtio-serial channel.
const (
	// moduleList is where the image lists kernel modules to load
	// (vm/image.ModuleListPath).
	moduleList = "/etc/kelpie/modules"
	// virtioPortName is the name the host gives the agent's port.
	virtioPortName = "org.kelpie.agent"
	// virtioPortWait bounds the wait for the port's device node after the
	// modules are loaded.
	virtioPortWait = 5 * time.Second
	// maxModules bounds the module list.
	maxModules = 64
)

// loadModules loads the kernel modules listed in the file list (the
// image's moduleList), in order, and returns how many the list has and how
// many loaded. A module that fails is reported in err and the rest are
// still tried: the list holds the modules of independent channels
// (virtio-serial, vsock), and one channel's broken module must not cost the
// other. Its dependents fail with it and say so. No list (a serial-only
// image) is listed == 0 and no error.
func loadModules(list string) (listed, loaded int, err error) {
	b, err := os.ReadFile(list)
	if errors.Is(err, os.ErrNotExist) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	mods := strings.Fields(string(b))
	if len(mods) > maxModules {
		return len(mods), 0, fmt.Errorf("%s lists %d modules, the limit is %d", list, len(mods), maxModules)
	}
	var errs []error
	for _, m := range mods {
		if err := loadModule(m); err != nil {
			errs = append(errs, err)
			continue
		}
		loaded++
	}
	return len(mods), loaded, errors.Join(errs...)
}

// waitVirtioPort returns the device of the agent's virtio port once its
// node exists, waiting at most virtioPortWait after the modules loaded.
func waitVirtioPort() (string, error) {
	deadline := time.Now().Add(virtioPortWait)
	for {
		if dev := findVirtioPort(); dev != "" {
			if _, err := os.Stat(dev); err == nil {
				return dev, nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no virtio port named %s within %s (is the VM's virtserialport configured?)", virtioPortName, virtioPortWait)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("module %s: %w", path, err)
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("loading module %s: %w", path, err)
	}
	return nil
}

// findVirtioPort looks the port up by name in sysfs (there is no udev to
// make /dev/virtio-ports links).
func findVirtioPort() string {
	names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err == nil && strings.TrimSpace(string(b)) == virtioPortName {
			return "/dev/" + filepath.Base(filepath.Dir(n))
		}
	}
	return ""
}
