package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kelpie-go/kelpie/vm"
	"github.com/kelpie-go/kelpie/vm/firecracker"
	"github.com/kelpie-go/kelpie/vm/image"
	"github.com/kelpie-go/kelpie/vm/qemu"
	"github.com/kelpie-go/kelpie/vm/snapshot"
)

func TestVMUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{}, 2, "usage: kelpie vm"},
		{[]string{"frob"}, 2, `unknown subcommand "frob"`},
		{[]string{"image"}, 2, "the subcommand is 'build'"},
		{[]string{"restore"}, 2, "give the snapshot file first"},
		{[]string{"snapshot", "x"}, 2, "usage: kelpie vm snapshot ID -o FILE"},
		{[]string{"run", "-accel", "warp", "-kernel", "/k"}, 1, `accelerator "warp"`},
		{[]string{"run", "-backend", "vz", "-kernel", "/k"}, 1, `kelpie vm run: unknown backend "vz": want auto, firecracker, qemu` + "\n"},
		// The simulated backend is the simulation's, not offered here.
		{[]string{"restore", "/nonexistent/snap", "-backend", "sim"}, 1, `kelpie vm restore: unknown backend "sim": want auto, firecracker, qemu` + "\n"},
		{[]string{"run", "-kernel", "/k", "-image", "/nonexistent/img"}, 1, "build it with: kelpie vm image build"},
		{[]string{"snapshot", "nope", "-o", "/tmp/x", "-state", "/nonexistent"}, 1, `no VM "nope" here`},
	} {
		var out, errb bytes.Buffer
		code := runVMCommand(tc.args, &out, &errb)
		if code != tc.code || !strings.Contains(out.String()+errb.String(), tc.want) {
			t.Errorf("kelpie vm %q: code %d, output %q%q; want code %d mentioning %q", tc.args, code, out.String(), errb.String(), tc.code, tc.want)
		}
	}
}

// fakeVMBackend is a vm.Backend whose availability the test sets.
type fakeVMBackend struct {
	name  string
	avail error
}

func (f *fakeVMBackend) Name() string     { return f.name }
func (f *fakeVMBackend) Available() error { return f.avail }
func (f *fakeVMBackend) New(vm.VMConfig) (vm.VMInstance, error) {
	return nil, errors.New("fake backend")
}

func TestPickVMBackend(t *testing.T) {
	fc := &fakeVMBackend{name: firecracker.Name, avail: errors.New("/dev/kvm: permission denied")}
	q := &fakeVMBackend{name: qemu.BackendName}
	r, err := vm.NewRegistry(fc, q)
	if err != nil {
		t.Fatal(err)
	}
	pick := func(name, snapBackend string) string {
		t.Helper()
		b, err := pickVMBackend(r, name, snapBackend)
		if err != nil {
			return "error: " + err.Error()
		}
		return b.Name()
	}
	for _, tc := range []struct {
		name, snap string
		fcUp       bool
		want       string
	}{
		{"auto", "", false, "qemu"},
		{"", "", false, "qemu"},
		{"auto", "", true, "firecracker"},
		{"qemu", "", true, "qemu"},
		{"firecracker", "", true, "firecracker"},
		{"firecracker", "", false, "error: VM backend not available on this host: firecracker: /dev/kvm: permission denied"},
		// A restore's auto follows the snapshot, whatever the host prefers.
		{"auto", "qemu", true, "qemu"},
		{"auto", "firecracker", false, "error: VM backend not available on this host: firecracker: /dev/kvm: permission denied"},
		{"auto", "sim", true, `error: the snapshot is from the "sim" backend, which kelpie vm does not run (it runs firecracker, qemu)`},
		// A name given is taken, even for another backend's snapshot: the
		// restore refuses it with the reason.
		{"qemu", "firecracker", true, "qemu"},
		{"vz", "", true, `error: unknown backend "vz": want auto, firecracker, qemu`},
		{"vz", "qemu", true, `error: unknown backend "vz": want auto, firecracker, qemu`},
	} {
		fc.avail = errors.New("/dev/kvm: permission denied")
		if tc.fcUp {
			fc.avail = nil
		}
		if got := pick(tc.name, tc.snap); got != tc.want {
			t.Errorf("pick %q (snapshot from %q, firecracker available %v): %s, want %s", tc.name, tc.snap, tc.fcUp, got, tc.want)
		}
	}

	// The real registry: Firecracker first, QEMU second, nothing else.
	real, err := vmRegistry(vmBackendOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(real.Names(), ","); got != "firecracker,qemu" {
		t.Errorf("kelpie vm's backends: %s, want firecracker,qemu", got)
	}
}

// TestVMBackendFlag runs kelpie vm with fake hypervisor binaries on PATH:
// -backend names a backend the host lacks, auto prefers firecracker where
// its binary and /dev/kvm are, a restore's auto follows the snapshot, and
// qemu's -accel is refused for firecracker.
func TestVMBackendFlag(t *testing.T) {
	bin := t.TempDir()
	t.Setenv("PATH", bin)
	t.Setenv(vmAccelEnv, "")
	img := filepath.Join(t.TempDir(), "initramfs.cpio.gz")
	if err := os.WriteFile(img, []byte("not really an image"), 0o644); err != nil {
		t.Fatal(err)
	}
	snap := filepath.Join(t.TempDir(), "qemu.snap")
	blob, err := snapshot.Encode(snapshot.Metadata{Backend: qemu.BackendName, BackendVersion: "8.2.2", Arch: "amd64", VCPUs: 1, MemoryMiB: 256}, []snapshot.Section{{Name: "qemu.config", Data: []byte("{}")}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(snap, blob, 0o644); err != nil {
		t.Fatal(err)
	}
	check := func(want string, args ...string) {
		t.Helper()
		var out, errb bytes.Buffer
		code := runVMCommand(args, &out, &errb)
		if code != 1 || !strings.Contains(errb.String(), want) {
			t.Errorf("kelpie vm %q: code %d, stderr %q; want code 1 mentioning %q", args, code, errb.String(), want)
		}
	}
	check(`kelpie vm run: VM backend not available on this host: firecracker: the firecracker binary "firecracker" is not installed`, "run", "-backend", "firecracker", "-image", img)
	check("kelpie vm run: VM backend not available on this host: none of the backends can run here: firecracker: ", "run", "-image", img)

	fake := "#!/bin/sh\necho Firecracker v1.7.0\n"
	if err := os.WriteFile(filepath.Join(bin, "firecracker"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	kvm, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		// Without KVM the binary is not enough.
		check("kelpie vm run: VM backend not available on this host: firecracker: /dev/kvm is not usable", "run", "-backend", "firecracker", "-image", img)
	} else {
		kvm.Close()
		check("kelpie vm run: the firecracker backend boots an uncompressed vmlinux", "run", "-image", img)
		check("kelpie vm run: -accel tcg (or $KELPIE_VM_ACCEL) is a qemu option, and the firecracker backend was chosen; give -backend qemu to use it", "run", "-accel", "tcg", "-image", img)
	}
	// Whatever the host prefers, a QEMU snapshot asks for QEMU, which is
	// not on PATH.
	check("kelpie vm restore: VM backend not available on this host: qemu: ", "restore", snap, "-image", img)
}

// TestVMCommandEndToEnd drives the subcommands as a user would: build the
// image, run a command, use the shell with a snapshot taken from another
// "terminal" through the control socket, list, and restore.
func TestVMCommandEndToEnd(t *testing.T) {
	if _, err := qemu.DiscoverKernel(); err != nil {
		t.Skipf("SKIP: kelpie vm end-to-end needs a kernel (CI: apt-get install linux-image-cloud-amd64): %v", err)
	}
	b, _ := qemu.New(qemu.Options{Accel: qemu.AccelTCG})
	if err := b.Available(); err != nil {
		t.Skipf("SKIP: kelpie vm end-to-end needs QEMU (CI: apt-get install qemu-system-x86): %v", err)
	}
	haveBusybox := false
	for _, p := range image.BusyboxCandidates {
		if _, err := os.Stat(p); err == nil {
			haveBusybox = true
		}
	}
	if !haveBusybox {
		t.Skip("SKIP: kelpie vm end-to-end needs busybox-static for the guest's shell (CI: apt-get install busybox-static)")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "initramfs.cpio.gz")
	state, err := os.MkdirTemp("", "kvs-") // short: it holds unix sockets
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(state)
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := runVMCommand(args, &out, &errb)
		return code, out.String(), errb.String()
	}

	code, out, errs := run("image", "build", "-o", img)
	if code != 0 || !strings.Contains(out, "busybox from") || !strings.Contains(out, "virtio-serial channel") || !strings.Contains(errs, "building the guest agent") {
		t.Fatalf("image build: %d\n%s\n%s", code, out, errs)
	}
	// run names its backend; restore leaves it to auto, which follows the
	// snapshot.
	restoreFlags := []string{"-image", img, "-accel", "tcg", "-state", state}
	common := append([]string{"-backend", "qemu"}, restoreFlags...)

	code, out, errs = run(append(append([]string{"run"}, common...), "-c", "echo hi from $(hostname); exit 4")...)
	if code != 4 || out != "hi from kelpie\n" || !strings.Contains(errs, " on qemu (") || !strings.Contains(errs, "accelerator tcg (configured)") || !strings.Contains(errs, "over virtio-serial") {
		t.Fatalf("run -c: code %d\nstdout %q\nstderr %s", code, out, errs)
	}

	// The shell, with a snapshot requested from outside while it runs.
	inR, inW := io.Pipe()
	vmStdin = inR
	defer func() { vmStdin = os.Stdin }()
	type result struct {
		code      int
		out, errs string
	}
	done := make(chan result, 1)
	go func() {
		c, o, e := run(append(append([]string{"run"}, common...), "-name", "e2e")...)
		done <- result{c, o, e}
	}()
	io.WriteString(inW, "echo marker > /root/m\n")
	sock := filepath.Join(state, "e2e.sock")
	for deadline := time.Now().Add(3 * time.Minute); ; {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the run session never opened its control socket")
		}
		time.Sleep(100 * time.Millisecond)
	}
	code, out, _ = run("ls", "-state", state)
	if code != 0 || !regexp.MustCompile(`(?m)^e2e +qemu +running +tcg +256 MiB `).MatchString(out) {
		t.Fatalf("ls: %d %q", code, out)
	}
	snap := filepath.Join(dir, "e2e.snap")
	// The marker line may still be in flight; the snapshot is taken after
	// the shell ran it only if it ran already, so check it in the shell too.
	io.WriteString(inW, "cat /root/m\n")
	time.Sleep(2 * time.Second)
	code, out, errs = run("snapshot", "e2e", "-o", snap, "-state", state)
	if code != 0 || !strings.Contains(out, "wrote "+snap) || !strings.Contains(errs, "taking the snapshot") {
		t.Fatalf("snapshot: %d\n%s\n%s", code, out, errs)
	}
	io.WriteString(inW, ":info\n:snapshot "+snap+".2\n:quit\n")
	r := <-done
	inW.Close()
	if r.code != 0 || !strings.Contains(r.out, "marker\n") || !strings.Contains(r.out, "accelerator   tcg") || !regexp.MustCompile(`(?m)^backend +qemu$`).MatchString(r.out) || !strings.Contains(r.out, "wrote "+snap+".2") {
		t.Fatalf("shell: code %d\nstdout %s\nstderr %s", r.code, r.out, r.errs)
	}

	code, out, errs = run(append(append([]string{"restore", snap}, restoreFlags...), "-c", "cat /root/m")...)
	if code != 0 || out != "marker\n" || !strings.Contains(errs, " on qemu from ") || !strings.Contains(errs, "restored from a tcg snapshot") {
		t.Fatalf("restore -c: code %d\nstdout %q\nstderr %s", code, out, errs)
	}
	code, out, _ = run("ls", "-state", state)
	if code != 0 || strings.Contains(out, "e2e") {
		t.Fatalf("ls after the sessions ended: %q", out)
	}
}
