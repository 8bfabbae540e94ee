package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kelpie-go/kelpie/vm/image"
	"github.com/kelpie-go/kelpie/vm/qemu"
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
	common := []string{"-image", img, "-accel", "tcg", "-state", state}

	code, out, errs = run(append(append([]string{"run"}, common...), "-c", "echo hi from $(hostname); exit 4")...)
	if code != 4 || out != "hi from kelpie\n" || !strings.Contains(errs, "accelerator tcg (configured)") || !strings.Contains(errs, "over virtio-serial") {
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
	if code != 0 || !strings.Contains(out, "e2e") || !strings.Contains(out, "tcg") {
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
	if r.code != 0 || !strings.Contains(r.out, "marker\n") || !strings.Contains(r.out, "accelerator   tcg") || !strings.Contains(r.out, "wrote "+snap+".2") {
		t.Fatalf("shell: code %d\nstdout %s\nstderr %s", r.code, r.out, r.errs)
	}

	code, out, errs = run(append(append([]string{"restore", snap}, common...), "-c", "cat /root/m")...)
	if code != 0 || out != "marker\n" || !strings.Contains(errs, "restored from a tcg snapshot") {
		t.Fatalf("restore -c: code %d\nstdout %q\nstderr %s", code, out, errs)
	}
	code, out, _ = run("ls", "-state", state)
	if code != 0 || strings.Contains(out, "e2e") {
		t.Fatalf("ls after the sessions ended: %q", out)
	}
}
