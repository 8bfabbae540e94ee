package firecracker

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kelpie-go/kelpie/vm"
	"github.com/kelpie-go/kelpie/vm/snapshot"
	"github.com/kelpie-go/kelpie/vm/vmtest"
)

// fakeBackend returns a backend whose "firecracker" is this test binary in
// fake mode, with extra environment env, and a config whose kernel and
// initrd exist.
func fakeBackend(t testing.TB, channel Channel, env ...string) (*Backend, vm.VMConfig) {
	t.Helper()
	// Unix socket paths are short: t.TempDir() under a long test name is not.
	dir, err := os.MkdirTemp("", "kfc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, f := range []string{"vmlinux", "initrd"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("not really a "+f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := New(Options{Binary: os.Args[0], Dir: dir, Channel: channel, Env: append([]string{fakeEnv + "=1"}, env...)})
	if err != nil {
		t.Fatal(err)
	}
	cfg := vm.VMConfig{VCPUs: 1, MemoryMiB: 128, Kernel: filepath.Join(dir, "vmlinux"), Initrd: filepath.Join(dir, "initrd"), BootTimeout: 30 * time.Second}
	return b, cfg
}

// TestConformanceFake runs the backend conformance suite against the fake
// firecracker, over the serial channel and over vsock.
func TestConformanceFake(t *testing.T) {
	for _, ch := range []Channel{ChannelSerial, ChannelVsock} {
		t.Run(string(ch), func(t *testing.T) {
			b, cfg := fakeBackend(t, ch)
			vmtest.Run(t, vmtest.Options{
				New: func(t *testing.T) vm.VMInstance {
					v, err := b.New(cfg)
					if err != nil {
						t.Fatal(err)
					}
					return v
				},
				MaxBlobBytes: (&VM{cfg: cfg}).maxBlobBytes(),
				OpTimeout:    time.Minute,
			})
		})
	}
}

func TestSnapshotMetadata(t *testing.T) {
	b, cfg := fakeBackend(t, ChannelSerial)
	ctx := context.Background()
	v, _ := b.NewVM(cfg)
	defer v.Stop(ctx)
	if err := v.Boot(ctx); err != nil {
		t.Fatal(err)
	}
	_, p := v.apiClient()
	if i := v.Info(); i.ID != v.ID() || i.Version != fakeVersion || i.PID != p.cmd.Process.Pid || i.Dir != v.dir || i.Channel != ChannelSerial || i.Agent != "kelpie-guest fake" || i.Protocol < 1 {
		t.Errorf("info of a booted VM: %+v", i)
	}
	if err := v.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	blob, err := v.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := snapshot.Decode(blob)
	if err != nil {
		t.Fatal(err)
	}
	m := snap.Meta
	if m.Backend != Name || m.BackendVersion != fakeVersion || m.CPUModel != cpuModel() || m.VCPUs != 1 || m.MemoryMiB != 128 || m.GuestAgentVersion != "kelpie-guest fake" || m.GuestProtocol < 1 {
		t.Errorf("metadata %+v", m)
	}
	if mem, ok := snap.Section(snapshotMemory); !ok || len(mem) == 0 {
		t.Error("no memory section")
	}
	// The snapshot files do not stay behind in the VM directory.
	for _, f := range []string{vmstateName, memName} {
		if _, err := os.Stat(filepath.Join(v.dir, f)); err == nil {
			t.Errorf("%s left in the VM directory", f)
		}
	}
	if err := v.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if i := v.Info(); i.PID != 0 {
		t.Errorf("a stopped VM's info names pid %d", i.PID)
	}
}

func TestCrashDetected(t *testing.T) {
	b, cfg := fakeBackend(t, ChannelSerial)
	ctx := context.Background()
	v, _ := b.NewVM(cfg)
	defer v.Stop(ctx)
	if err := v.Boot(ctx); err != nil {
		t.Fatal(err)
	}
	_, p := v.apiClient()
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	// processExited runs right after exited closes; Exec either sees the
	// failed state or the agent's broken pipe, and both end failed.
	_, err := v.Exec(ctx, vm.ExecRequest{Command: "echo"})
	if !errors.Is(err, vm.ErrCrashed) {
		t.Fatalf("exec after the process died: %v, want vm.ErrCrashed", err)
	}
	if st := v.State(); st != vm.StateFailed {
		t.Fatalf("state %s, want failed", st)
	}
	if err := v.Stop(ctx); err != nil || v.State() != vm.StateStopped {
		t.Fatalf("stop a crashed VM: %v, %s", err, v.State())
	}
	if _, err := os.Stat(v.dir); !os.IsNotExist(err) {
		t.Errorf("the VM directory %s survived Stop: %v", v.dir, err)
	}
}

// TestAPIFailures makes one API call fail at a time and checks that the
// VM operation fails with the typed error and the state the contract names.
func TestAPIFailures(t *testing.T) {
	ctx := context.Background()
	boot := func(t *testing.T, fail string) (*VM, error) {
		b, cfg := fakeBackend(t, ChannelSerial, fakeFailEnv+"="+fail)
		v, _ := b.NewVM(cfg)
		t.Cleanup(func() { v.Stop(ctx) })
		return v, v.Boot(ctx)
	}
	for _, call := range []string{"PUT /machine-config", "PUT /boot-source", "PUT /vsock", "GET /version", "PUT /actions"} {
		t.Run(call, func(t *testing.T) {
			v, err := boot(t, call)
			// Callers branch on vm.ErrBootFailed; the message carries the
			// call, its status and Firecracker's fault message.
			if !errors.Is(err, vm.ErrBootFailed) || !strings.Contains(err.Error(), "HTTP 400") || !strings.Contains(err.Error(), "injected failure of "+call) {
				t.Fatalf("boot: %v", err)
			}
			if v.State() != vm.StateFailed {
				t.Fatalf("state %s, want failed", v.State())
			}
			if _, p := v.apiClient(); p != nil {
				t.Error("the process of a failed boot was not killed")
			}
		})
	}
	t.Run("PATCH /vm", func(t *testing.T) {
		v, err := boot(t, "PATCH /vm")
		if err != nil {
			t.Fatal(err)
		}
		if err := v.Pause(ctx); err == nil || !strings.Contains(err.Error(), "HTTP 400") {
			t.Fatalf("pause: %v", err)
		}
		if v.State() != vm.StateRunning {
			t.Fatalf("after a failed pause: %s, want running", v.State())
		}
	})
	t.Run("PUT /snapshot/create", func(t *testing.T) {
		v, err := boot(t, "PUT /snapshot/create")
		if err != nil {
			t.Fatal(err)
		}
		if err := v.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := v.Snapshot(ctx); !errors.Is(err, vm.ErrSnapshotFailed) || !strings.Contains(err.Error(), "HTTP 400") {
			t.Fatalf("snapshot: %v", err)
		}
		if v.State() != vm.StatePaused {
			t.Fatalf("after a failed snapshot: %s, want paused", v.State())
		}
		if err := v.Resume(ctx); err != nil {
			t.Fatalf("resume after a failed snapshot: %v", err)
		}
	})
	t.Run("PUT /snapshot/load", func(t *testing.T) {
		src, err := boot(t, "")
		if err != nil {
			t.Fatal(err)
		}
		src.Pause(ctx)
		blob, err := src.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		b, cfg := fakeBackend(t, ChannelSerial, fakeFailEnv+"=PUT /snapshot/load")
		dst, _ := b.NewVM(cfg)
		defer dst.Stop(ctx)
		if err := dst.Restore(ctx, blob); !errors.Is(err, vm.ErrRestoreFailed) || !strings.Contains(err.Error(), "HTTP 400") {
			t.Fatalf("restore: %v", err)
		}
		if dst.State() != vm.StateFailed {
			t.Fatalf("after a failed load: %s, want failed", dst.State())
		}
	})
}

func TestBootRefusals(t *testing.T) {
	b, cfg := fakeBackend(t, ChannelSerial)
	ctx := context.Background()
	cfg.Kernel = filepath.Join(filepath.Dir(cfg.Kernel), "missing-vmlinux")
	v, _ := b.NewVM(cfg)
	err := v.Boot(ctx)
	var ce *vm.ConfigError
	if !errors.As(err, &ce) || ce.Field != "Kernel" {
		t.Fatalf("boot with a missing kernel: %v", err)
	}
	if v.State() != vm.StateCreated {
		t.Fatalf("a refused boot left the VM %s, want created", v.State())
	}
	cfg.Network = true
	if _, err := b.New(cfg); !errors.Is(err, vm.ErrInvalidConfig) || !strings.Contains(err.Error(), "TAP") {
		t.Errorf("network: %v", err)
	}
	if _, err := New(Options{Channel: "carrier-pigeon"}); err == nil {
		t.Error("accepted an unknown channel")
	}
	if _, err := New(Options{Dir: "relative"}); err == nil {
		t.Error("accepted a relative directory")
	}
	cfg.Network = false
	long, _ := New(Options{Dir: "/" + strings.Repeat("d", 100)})
	if _, err := long.New(cfg); err == nil || !strings.Contains(err.Error(), "longer than 107 bytes") {
		t.Errorf("a socket path past the limit: %v", err)
	}
}

func TestAvailable(t *testing.T) {
	b, _ := New(Options{Binary: "/nonexistent/firecracker"})
	if err := b.Available(); err == nil || !strings.Contains(err.Error(), "not installed") {
		t.Errorf("missing binary: %v", err)
	}
}

// BenchmarkSnapshotRestoreOverhead measures what this backend adds to
// Firecracker's own snapshot and restore for a 256 MiB guest: reading the
// memory file back, packing and checksumming the blob, and on restore
// verifying it and writing the memory file out again. The fake firecracker
// writes and loads its files at the speed of the page cache, so the figure
// is the backend's share, not Firecracker's.
func BenchmarkSnapshotRestoreOverhead(b *testing.B) {
	be, cfg := fakeBackend(b, ChannelSerial, fakeFullMemEnv+"=1")
	cfg.MemoryMiB = 256
	ctx := context.Background()
	src, err := be.NewVM(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Stop(ctx)
	if err := src.Boot(ctx); err != nil {
		b.Fatal(err)
	}
	if err := src.Pause(ctx); err != nil {
		b.Fatal(err)
	}
	b.Run("snapshot", func(b *testing.B) {
		for b.Loop() {
			if _, err := src.Snapshot(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	blob, err := src.Snapshot(ctx)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("restore", func(b *testing.B) {
		for b.Loop() {
			v, _ := be.NewVM(cfg)
			if err := v.Restore(ctx, blob); err != nil {
				b.Fatal(err)
			}
			v.Stop(ctx)
		}
	})
}

// TestBootArgsTellTheAgentItsChannel: the command line carries the serial
// port, or a vsock port other than the agent's default, unless the
// configured command line already names one.
func TestBootArgsTellTheAgentItsChannel(t *testing.T) {
	for _, tc := range []struct {
		opts    Options
		cmdline string
		want    string
	}{
		{Options{Channel: ChannelSerial}, "", DefaultBootArgs + " kelpie.port=/dev/ttyS0"},
		{Options{Channel: ChannelSerial}, "quiet kelpie.port=/dev/ttyS1", "quiet kelpie.port=/dev/ttyS1"},
		{Options{Channel: ChannelVsock, VsockPort: DefaultVsockPort}, "quiet", "quiet"},
		{Options{Channel: ChannelVsock, VsockPort: 2000}, "quiet", "quiet kelpie.vsock_port=2000"},
		{Options{Channel: ChannelVsock, VsockPort: 2000}, "kelpie.vsock_port=3000", "kelpie.vsock_port=3000"},
	} {
		v := &VM{b: &Backend{opts: tc.opts}, cfg: vm.VMConfig{KernelCmdline: tc.cmdline}}
		if got := v.bootArgs(); got != tc.want {
			t.Errorf("%s port %d, cmdline %q: boot args %q, want %q", tc.opts.Channel, tc.opts.VsockPort, tc.cmdline, got, tc.want)
		}
	}
}
