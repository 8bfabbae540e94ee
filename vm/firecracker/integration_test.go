package firecracker

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/kelpie-go/kelpie/vm"
	"github.com/kelpie-go/kelpie/vm/vmtest"
)

// Environment of the integration tests.
const (
	// envBinary names the firecracker binary (default: firecracker in PATH).
	envBinary = "KELPIE_FIRECRACKER"
	// envKernel is an uncompressed guest kernel (vmlinux) Firecracker boots.
	envKernel = "KELPIE_FC_KERNEL"
	// envInitrd is the Kelpie initramfs (kelpie vm image build).
	envInitrd = "KELPIE_FC_INITRD"
)

// realBackend returns a backend for the real firecracker, or skips the test
// saying exactly what is missing.
func realBackend(tb testing.TB) (*Backend, vm.VMConfig) {
	tb.Helper()
	bin := os.Getenv(envBinary)
	if bin == "" {
		bin = "firecracker"
	}
	b, err := New(Options{Binary: bin})
	if err != nil {
		tb.Fatal(err)
	}
	if err := b.Available(); err != nil {
		tb.Skipf("SKIPPED: Firecracker integration tests need the firecracker binary and a usable /dev/kvm: %v. "+
			"Install firecracker (github.com/firecracker-microvm/firecracker/releases) or set %s, and see vm/firecracker/README.md", err, envBinary)
	}
	kernel, initrd := os.Getenv(envKernel), os.Getenv(envInitrd)
	if kernel == "" || initrd == "" {
		tb.Skipf("SKIPPED: set %s to an uncompressed vmlinux with the 8250 serial driver built in and %s to a Kelpie initramfs (kelpie vm image build); see vm/firecracker/README.md", envKernel, envInitrd)
	}
	return b, vm.VMConfig{VCPUs: 1, MemoryMiB: 256, Kernel: kernel, Initrd: initrd, BootTimeout: time.Minute}
}

// TestIntegration runs the conformance suite against real Firecracker.
func TestIntegration(t *testing.T) {
	b, cfg := realBackend(t)
	vmtest.Run(t, vmtest.Options{
		New: func(t *testing.T) vm.VMInstance {
			v, err := b.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			return v
		},
		MaxBlobBytes: (&VM{cfg: cfg}).maxBlobBytes(),
		// The Kelpie initramfs has the agent and, when built with busybox,
		// its applets; the suite needs echo, cat and sleep from PATH.
		Exit: func(c int) []string { return []string{"sh", "-c", "exit " + strconv.Itoa(c)} },
		Repeat: func(n int, s string) []string {
			return []string{"sh", "-c", "i=0; while [ $i -lt " + strconv.Itoa(n) + " ]; do echo " + s + "; i=$((i+1)); done"}
		},
	})
}

// BenchmarkBoot measures boot to a guest agent handshake on real
// Firecracker (Firecracker publishes ~125 ms to init for a minimal guest).
func BenchmarkBoot(b *testing.B) {
	be, cfg := realBackend(b)
	ctx := context.Background()
	for b.Loop() {
		v, err := be.New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		if err := v.Boot(ctx); err != nil {
			b.Fatal(err)
		}
		v.Stop(ctx)
	}
}

// BenchmarkRestore measures restore plus resume plus the agent handshake
// of a snapshot blob on real Firecracker.
func BenchmarkRestore(b *testing.B) {
	be, cfg := realBackend(b)
	ctx := context.Background()
	src, err := be.New(cfg)
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
	blob, err := src.Snapshot(ctx)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		v, _ := be.New(cfg)
		if err := v.Restore(ctx, blob); err != nil {
			b.Fatal(err)
		}
		if err := v.Resume(ctx); err != nil {
			b.Fatal(err)
		}
		v.Stop(ctx)
	}
}
