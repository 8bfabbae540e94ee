package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kelpie-go/kelpie/vm"
	"github.com/kelpie-go/kelpie/vm/image"
	"github.com/kelpie-go/kelpie/vm/snapshot"
	"github.com/kelpie-go/kelpie/vm/vmtest"
)

// The integration tests boot real VMs. They need qemu-system-x86_64, a
// kernel (Debian: linux-image-cloud-amd64) and a static busybox for the
// guest's commands (Debian: busybox-static). CI installs all three; a
// developer machine without them skips, loudly.
//
// KELPIE_QEMU_ACCEL picks the accelerator (default tcg: it works
// everywhere, and on nested-virtualization hosts KVM can hang at boot).

// testMemoryMiB is the guest size of the tests and benchmarks.
const testMemoryMiB = 256

type testEnv struct {
	kernel, initrd string
	accel          Accel
	skip           string
}

var (
	envOnce sync.Once
	env     testEnv
	envDir  string
)

// TestMain removes the shared image after the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if envDir != "" {
		os.RemoveAll(envDir)
	}
	os.Exit(code)
}

// integration returns the shared kernel and image (built once for all
// tests), or skips the test saying what is missing.
func integration(t testing.TB) testEnv {
	t.Helper()
	envOnce.Do(func() {
		if _, err := (&Backend{opts: Options{}, hashCache: map[string]fileHash{}}).qemuVersion(); err != nil {
			env.skip = fmt.Sprintf("%v", err)
			return
		}
		k, err := DiscoverKernel()
		if err != nil {
			env.skip = err.Error()
			return
		}
		env.kernel = k
		a, err := ParseAccel(os.Getenv("KELPIE_QEMU_ACCEL"))
		if err != nil {
			env.skip = "KELPIE_QEMU_ACCEL: " + err.Error()
			return
		}
		if os.Getenv("KELPIE_QEMU_ACCEL") == "" {
			a = AccelTCG
		}
		env.accel = a
		found := false
		for _, p := range image.BusyboxCandidates {
			if _, err := os.Stat(p); err == nil {
				found = true
			}
		}
		if !found {
			env.skip = "no busybox for the guest's commands (Debian: apt-get install busybox-static)"
			return
		}
		envDir, err = os.MkdirTemp("", "kelpie-qemu-test-")
		if err != nil {
			env.skip = err.Error()
			return
		}
		res, err := image.Build(context.Background(), image.Options{Output: filepath.Join(envDir, "initramfs.cpio.gz"), SourceDir: ".", Modules: image.ModulesDirFor(k)})
		if err != nil {
			env.skip = "building the image: " + err.Error()
			return
		}
		if res.Busybox == "" {
			env.skip = "the busybox found is not static (Debian: apt-get install busybox-static)"
			return
		}
		env.initrd = res.Path
	})
	if env.skip != "" {
		t.Skipf("SKIP: QEMU integration tests need qemu-system-x86_64, a kernel and busybox-static "+
			"(CI: apt-get install qemu-system-x86 linux-image-cloud-amd64 busybox-static): %s", env.skip)
	}
	return env
}

func newBackend(t testing.TB, accel Accel) *Backend {
	t.Helper()
	b, err := New(Options{Accel: accel, Progress: func(id, step string) {
		if testing.Verbose() {
			t.Logf("%s: %s", id, step)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Available(); err != nil {
		t.Fatal(err)
	}
	return b
}

func (e testEnv) config() vm.VMConfig {
	return vm.VMConfig{VCPUs: 1, MemoryMiB: testMemoryMiB, Kernel: e.kernel, Initrd: e.initrd, BootTimeout: 2 * time.Minute}
}

func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func stopAtEnd(t testing.TB, v vm.VMInstance) {
	t.Cleanup(func() {
		if err := v.Stop(context.Background()); err != nil {
			t.Errorf("stop %s: %v", v.ID(), err)
		}
	})
}

func sh(script string) vm.ExecRequest {
	return vm.ExecRequest{Command: "sh", Args: []string{"-c", script}, Env: []string{"PATH=/bin:/usr/bin:/sbin:/usr/sbin"}}
}

// TestIntegrationBootExecSnapshotRestore is the end-to-end path: boot a
// real VM, exec in it, write a file, snapshot, restore into a new QEMU
// process, and read the file back.
func TestIntegrationBootExecSnapshotRestore(t *testing.T) {
	e := integration(t)
	b := newBackend(t, e.accel)
	ctx := ctxFor(t, 5*time.Minute)

	src, err := b.NewVM(e.config())
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, src)
	if err := src.Boot(ctx); err != nil {
		t.Fatalf("boot: %v", err)
	}
	info := src.Info()
	t.Logf("booted %s: qemu %s, accelerator %s (%s), agent %q protocol %d over %s, guest kernel %s, pid %d, boot %s",
		info.ID, info.QEMUVersion, info.Accel, info.AccelNote, info.Agent, info.Protocol, info.Channel, info.GuestKernel, info.PID, info.BootTime.Round(time.Millisecond))
	if info.Accel == "" || info.Protocol != 1 || !strings.HasPrefix(info.Agent, "kelpie-guest") || info.Channel != ChannelVirtio {
		t.Fatalf("info %+v", info)
	}

	res, err := src.Exec(ctx, sh(`uname -r; echo pid1=$(cat /proc/1/comm); mount | grep -c ' /proc '`))
	if err != nil {
		t.Fatalf("exec: %v", err)
	}
	t.Logf("exec uname/proc: exit %d, stdout %q", res.ExitCode, res.Stdout)
	lines := strings.Split(strings.TrimSpace(string(res.Stdout)), "\n")
	if res.ExitCode != 0 || len(lines) != 3 || lines[0] != info.GuestKernel || lines[1] != "pid1=init" || lines[2] != "1" {
		t.Fatalf("exec in the guest: %+v", res)
	}

	// Several requests at once: each command waits until all have started,
	// so an agent that ran them one by one would time every one out.
	const n = 4
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := sh(fmt.Sprintf(`mkdir -p /tmp/barrier; touch /tmp/barrier/%d; while [ $(ls /tmp/barrier | wc -l) -lt %d ]; do sleep 0.05; done; echo %d`, i, n, i))
			req.Timeout = time.Minute
			r, err := src.Exec(ctx, req)
			if err == nil && string(r.Stdout) != fmt.Sprintf("%d\n", i) {
				err = fmt.Errorf("stdout %q", r.Stdout)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("concurrent exec %d: %v", i, err)
		}
	}
	t.Logf("%d concurrent execs met at a barrier inside the guest", n)

	const path = "/root/teleport/hello.txt"
	content := []byte("written before the snapshot at " + time.Now().UTC().Format(time.RFC3339Nano))
	if err := src.WriteFile(ctx, path, content, 0o640); err != nil {
		t.Fatalf("write: %v", err)
	}
	// A running process's memory must survive too, not only tmpfs files.
	// setsid takes it out of the exec's process group, which the agent
	// kills when the command returns.
	// The command waits until the sleeper leads its own session, so that
	// the group kill cannot catch it half-way.
	if _, err := src.Exec(ctx, sh(`setsid sleep 100000 </dev/null >/dev/null 2>&1 & pid=$!; echo $pid > /root/sleeper.pid
i=0; while [ "$(cut -d' ' -f6 /proc/$pid/stat)" != "$pid" ] && [ $i -lt 500 ]; do i=$((i+1)); sleep 0.01; done`)); err != nil {
		t.Fatalf("start a background process: %v", err)
	}
	pidb, err := src.ReadFile(ctx, "/root/sleeper.pid")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s (%d bytes); background sleeper pid %s", path, len(content), strings.TrimSpace(string(pidb)))

	if err := src.Pause(ctx); err != nil {
		t.Fatalf("pause: %v", err)
	}
	began := time.Now()
	blob, err := src.Snapshot(ctx)
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	t.Logf("snapshot: %d bytes (%.1f MiB) of a %d MiB guest in %s", len(blob), float64(len(blob))/(1<<20), testMemoryMiB, time.Since(began).Round(time.Millisecond))
	srcPID := src.Info().PID
	if err := src.Stop(ctx); err != nil {
		t.Fatalf("stop the source: %v", err)
	}

	dst, err := b.NewVM(e.config())
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, dst)
	began = time.Now()
	if err := dst.Restore(ctx, blob); err != nil {
		t.Fatalf("restore: %v", err)
	}
	if st := dst.State(); st != vm.StatePaused {
		t.Fatalf("restored VM is %s, want paused", st)
	}
	if err := dst.Resume(ctx); err != nil {
		t.Fatalf("resume: %v", err)
	}
	dinfo := dst.Info()
	t.Logf("restored into %s: new qemu pid %d (source was %d), accelerator %s, agent over %s, restore+resume %s", dinfo.ID, dinfo.PID, srcPID, dinfo.Accel, dinfo.Channel, time.Since(began).Round(time.Millisecond))
	if dinfo.PID == srcPID || dinfo.PID == 0 {
		t.Fatalf("restore did not run a new QEMU process (pid %d)", dinfo.PID)
	}
	got, err := dst.ReadFile(ctx, path)
	if err != nil || string(got) != string(content) {
		t.Fatalf("file after restore: %q, %v; want %q", got, err, content)
	}
	t.Logf("read back %s after restore: %q", path, got)
	res, err = dst.Exec(ctx, sh(`kill -0 $(cat /root/sleeper.pid) && echo sleeper alive; stat -c %a `+path))
	if err != nil || string(res.Stdout) != "sleeper alive\n640\n" {
		t.Fatalf("after restore: %+v, %v", res, err)
	}
	t.Logf("exec after restore: %q", res.Stdout)
}

// TestConformance holds the QEMU backend to the vm contract.
func TestConformance(t *testing.T) {
	e := integration(t)
	b := newBackend(t, e.accel)
	vmtest.Run(t, vmtest.Options{
		New: func(t *testing.T) vm.VMInstance {
			v, err := b.New(e.config())
			if err != nil {
				t.Fatal(err)
			}
			return v
		},
		MaxBlobBytes: (&VM{cfg: e.config()}).maxBlobBytes(),
		Exit:         func(code int) []string { return []string{"sh", "-c", "exit " + strconv.Itoa(code)} },
		Repeat: func(n int, text string) []string {
			return []string{"sh", "-c", fmt.Sprintf(`i=0; while [ $i -lt %d ]; do echo '%s'; i=$((i+1)); done`, n, text)}
		},
		OpTimeout: 4 * time.Minute,
	})
}

// TestBootDeadlineNamesTheAccelerator: a guest whose agent never answers
// (here init is busybox's sleep instead of the agent) makes Boot fail at
// its deadline with an error naming the accelerator, and the VM failed.
func TestBootDeadlineNamesTheAccelerator(t *testing.T) {
	e := integration(t)
	b := newBackend(t, e.accel)
	cfg := e.config()
	cfg.KernelCmdline = "rdinit=/bin/sleep -- 3600"
	cfg.BootTimeout = 5 * time.Second
	v, err := b.NewVM(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, v)
	err = v.Boot(ctxFor(t, time.Minute))
	want := fmt.Sprintf("accelerator %s did not reach the guest agent within 5s", e.accel)
	if !errors.Is(err, vm.ErrBootFailed) || !strings.Contains(err.Error(), want) {
		t.Fatalf("boot: %v\nwant vm.ErrBootFailed mentioning %q", err, want)
	}
	if v.State() != vm.StateFailed {
		t.Fatalf("state %s after a failed boot", v.State())
	}
	t.Logf("boot error: %.300s", err)
}

// TestGuestPowerOffIsACrash: QEMU exiting under a running VM fails it.
func TestGuestPowerOffIsACrash(t *testing.T) {
	e := integration(t)
	b := newBackend(t, e.accel)
	v, err := b.NewVM(e.config())
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, v)
	ctx := ctxFor(t, 3*time.Minute)
	if err := v.Boot(ctx); err != nil {
		t.Fatal(err)
	}
	// The command never returns: the VM is gone before the agent answers.
	_, err = v.Exec(ctx, sh(`poweroff -f`))
	if err == nil {
		t.Fatal("exec of poweroff returned normally")
	}
	deadline := time.Now().Add(time.Minute)
	for v.State() != vm.StateFailed {
		if time.Now().After(deadline) {
			t.Fatalf("state %s after the guest powered off", v.State())
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, err = v.Exec(ctx, sh("true"))
	if !errors.Is(err, vm.ErrInvalidState) || !errors.Is(err, vm.ErrCrashed) {
		t.Fatalf("exec on a crashed VM: %v", err)
	}
}

// TestAutoAccelerator boots with "auto" and a short KVM probe. On a host
// where KVM works the VM runs under KVM; where /dev/kvm is missing or a
// KVM guest hangs (nested virtualization), it runs under TCG and its info
// says why.
func TestAutoAccelerator(t *testing.T) {
	e := integration(t)
	b, err := New(Options{Accel: AccelAuto, KVMProbeTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	v, err := b.NewVM(e.config())
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, v)
	if err := v.Boot(ctxFor(t, 3*time.Minute)); err != nil {
		t.Fatalf("auto boot: %v", err)
	}
	info := v.Info()
	t.Logf("auto chose %s: %s (boot %s)", info.Accel, info.AccelNote, info.BootTime.Round(time.Millisecond))
	hw, hwErr := hardwareAccel()
	switch {
	case info.Accel == AccelTCG && hwErr != nil:
		if !strings.Contains(info.AccelNote, "auto:") {
			t.Fatalf("tcg without a hardware accelerator, note %q", info.AccelNote)
		}
	case info.Accel == AccelTCG:
		if !strings.Contains(info.AccelNote, string(hw)+" did not reach the guest agent within 10s; fell back to tcg") {
			t.Fatalf("fell back to tcg with note %q", info.AccelNote)
		}
		// The backend remembers: the next boot goes straight to TCG.
		w, _ := b.NewVM(e.config())
		stopAtEnd(t, w)
		if err := w.Boot(ctxFor(t, 3*time.Minute)); err != nil {
			t.Fatal(err)
		}
		if wi := w.Info(); wi.Accel != AccelTCG || !strings.Contains(wi.AccelNote, "failed earlier") {
			t.Fatalf("second auto boot: %s (%s)", wi.Accel, wi.AccelNote)
		}
	case info.Accel != hw:
		t.Fatalf("auto chose %s on a host whose accelerator is %s", info.Accel, hw)
	}
	if _, err := v.Exec(ctxFor(t, time.Minute), sh("true")); err != nil {
		t.Fatal(err)
	}
}

// TestRestoreRefusesOtherImage: a snapshot restores only onto the kernel
// and initramfs it booted from.
func TestRestoreRefusesOtherImage(t *testing.T) {
	e := integration(t)
	b := newBackend(t, e.accel)
	ctx := ctxFor(t, 3*time.Minute)
	src, err := b.NewVM(e.config())
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, src)
	if err := src.Boot(ctx); err != nil {
		t.Fatal(err)
	}
	if err := src.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	blob, err := src.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(t.TempDir(), "other.cpio.gz")
	data, err := os.ReadFile(e.initrd)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(other, append(data, 0), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := e.config()
	cfg.Initrd = other
	dst, err := b.NewVM(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, dst)
	err = dst.Restore(ctx, blob)
	if err == nil || !strings.Contains(err.Error(), "initramfs with SHA-256") || dst.State() != vm.StateCreated {
		t.Fatalf("restore onto another initramfs: %v (state %s)", err, dst.State())
	}
}

// TestFailureSentinels holds real failures to the errors package vm
// documents. A snapshot that cannot be written — the initramfs it records
// is gone, or the deadline has passed when QEMU is asked to migrate —
// matches vm.ErrSnapshotFailed and leaves the VM paused, so a retry works.
// A valid, compatible blob whose migration stream QEMU cannot load, or a
// restore whose QEMU cannot start, matches vm.ErrRestoreFailed (and not the
// snapshot package's refusals), fails on its own rather than at the
// caller's deadline, and leaves the VM failed; a stream section that is
// not gzip at all is refused before QEMU starts.
func TestFailureSentinels(t *testing.T) {
	e := integration(t)
	b := newBackend(t, e.accel)
	ctx := ctxFor(t, 4*time.Minute)
	// The source boots from a copy of the image, so the test can take it
	// away.
	data, err := os.ReadFile(e.initrd)
	if err != nil {
		t.Fatal(err)
	}
	cfg := e.config()
	cfg.Initrd = filepath.Join(t.TempDir(), "initramfs.cpio.gz")
	if err := os.WriteFile(cfg.Initrd, data, 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := b.NewVM(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, src)
	if err := src.Boot(ctx); err != nil {
		t.Fatal(err)
	}
	if err := src.Pause(ctx); err != nil {
		t.Fatal(err)
	}

	snapshotFails := func(what string, ctx context.Context, also error) {
		t.Helper()
		_, err := src.Snapshot(ctx)
		if !errors.Is(err, vm.ErrSnapshotFailed) || also != nil && !errors.Is(err, also) {
			t.Fatalf("snapshot with %s: %v; want vm.ErrSnapshotFailed (and %v)", what, err, also)
		}
		if st := src.State(); st != vm.StatePaused {
			t.Fatalf("state %s after a failed snapshot, want paused", st)
		}
		t.Logf("snapshot with %s: %v", what, err)
	}
	away := cfg.Initrd + ".away"
	if err := os.Rename(cfg.Initrd, away); err != nil {
		t.Fatal(err)
	}
	snapshotFails("the initramfs gone", ctx, fs.ErrNotExist)
	if err := os.Rename(away, cfg.Initrd); err != nil {
		t.Fatal(err)
	}
	// A deadline already past fails the first QMP write before anything
	// reaches QEMU, so the VM is untouched.
	past, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
	defer cancel()
	snapshotFails("a deadline already past", past, os.ErrDeadlineExceeded)
	blob, err := src.Snapshot(ctx)
	if err != nil {
		t.Fatalf("snapshot after the failures: %v", err)
	}

	// Blobs that pass every check before loading, with a stream QEMU
	// cannot load.
	snap, err := snapshot.Decode(blob)
	if err != nil {
		t.Fatal(err)
	}
	gz, ok := snap.Section(sectionMigrationGz)
	if !ok {
		t.Fatalf("the snapshot has no %s section", sectionMigrationGz)
	}
	var stream bytes.Buffer
	if err := decompressTo(&stream, gz, (&VM{cfg: cfg}).maxStreamBytes()); err != nil {
		t.Fatal(err)
	}
	withStream := func(gz []byte) []byte {
		t.Helper()
		secs := make([]snapshot.Section, len(snap.Sections))
		for i, sec := range snap.Sections {
			if sec.Name == sectionMigrationGz {
				sec.Data = gz
			}
			secs[i] = sec
		}
		out, err := snapshot.Encode(snap.Meta, secs, 0)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	gzipped := func(data []byte) []byte {
		t.Helper()
		out, err := compress(data)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	restore := func(what string, b *Backend, blob []byte) (vm.VMInstance, error) {
		t.Helper()
		dst, err := b.NewVM(cfg)
		if err != nil {
			t.Fatal(err)
		}
		stopAtEnd(t, dst)
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		err = dst.Restore(rctx, blob)
		if rctx.Err() != nil {
			t.Fatalf("restore of %s ran into its deadline: %v", what, err)
		}
		t.Logf("restore of %s: %.300s", what, err)
		return dst, err
	}
	restoreFails := func(what string, b *Backend, blob []byte) error {
		t.Helper()
		dst, err := restore(what, b, blob)
		if !errors.Is(err, vm.ErrRestoreFailed) || errors.Is(err, snapshot.ErrCorrupt) || !strings.Contains(err.Error(), "qemu: restore:") {
			t.Fatalf("restore of %s: %v; want vm.ErrRestoreFailed from qemu: restore:, not snapshot.ErrCorrupt", what, err)
		}
		if st := dst.State(); st != vm.StateFailed {
			t.Fatalf("state %s after restoring %s, want failed", st, what)
		}
		return err
	}
	full := gzipped(stream.Bytes())
	restoreFails("a stream cut in half", b, withStream(gzipped(stream.Bytes()[:stream.Len()/2])))
	restoreFails("gzip data cut in half", b, withStream(full[:len(full)/2]))
	restoreFails("a stream that is not QEMU's", b, withStream(gzipped([]byte("this is not a QEMU migration stream"))))
	restoreFails("an empty stream", b, withStream(gzipped(nil)))
	// QEMU gives up at the first bytes of this one while most of it is
	// still to be written: QEMU's reason is the one to report, not the
	// writer's broken pipe.
	err = restoreFails("a long stream that is not QEMU's", b, withStream(gzipped(bytes.Repeat([]byte("not a QEMU migration stream "), 1<<20))))
	if strings.Contains(err.Error(), "writing the stream") {
		t.Fatalf("restore of a long stream that is not QEMU's blames the writer: %v", err)
	}

	dst, err := restore("a stream that is not gzip", b, withStream([]byte("this is not gzip")))
	if !errors.Is(err, snapshot.ErrCorrupt) || dst.State() != vm.StateCreated {
		t.Fatalf("restore of a stream that is not gzip: %v (state %s); want snapshot.ErrCorrupt and created", err, dst.State())
	}

	// A run directory too long for a unix socket: QEMU cannot start.
	long, err := New(Options{Accel: e.accel, RunDir: filepath.Join(t.TempDir(), strings.Repeat("d", maxSocketPath))})
	if err != nil {
		t.Fatal(err)
	}
	restoreFails("a valid blob with no room for QEMU's sockets", long, blob)
}

// TestSerialOnlyImage: an image without the virtio modules (a kernel whose
// modules are not at hand) still works, over the serial port.
func TestSerialOnlyImage(t *testing.T) {
	e := integration(t)
	res, err := image.Build(context.Background(), image.Options{Output: filepath.Join(t.TempDir(), "serial.cpio.gz"), SourceDir: "."})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Modules) != 0 {
		t.Fatalf("image built without Modules has %q", res.Modules)
	}
	b := newBackend(t, e.accel)
	cfg := e.config()
	cfg.Initrd = res.Path
	v, err := b.NewVM(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, v)
	ctx := ctxFor(t, 3*time.Minute)
	if err := v.Boot(ctx); err != nil {
		t.Fatal(err)
	}
	if ch := v.Info().Channel; ch != ChannelSerial {
		t.Fatalf("channel %q, want %q", ch, ChannelSerial)
	}
	r, err := v.Exec(ctx, sh("echo over the serial port"))
	if err != nil || string(r.Stdout) != "over the serial port\n" {
		t.Fatalf("exec: %+v %v", r, err)
	}
}

// TestRawSnapshotRoundTrip covers UncompressedSnapshots: the stream is
// stored as QEMU wrote it and restores the same way.
func TestRawSnapshotRoundTrip(t *testing.T) {
	e := integration(t)
	b, err := New(Options{Accel: e.accel, UncompressedSnapshots: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t, 3*time.Minute)
	src, err := b.NewVM(e.config())
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, src)
	if err := src.Boot(ctx); err != nil {
		t.Fatal(err)
	}
	if err := src.WriteFile(ctx, "/tmp/raw", []byte("raw stream"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := src.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	blob, err := src.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := snapshot.Decode(blob)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := snap.Section(sectionMigration); !ok {
		t.Fatalf("raw snapshot has no %s section", sectionMigration)
	}
	dst, err := b.NewVM(e.config())
	if err != nil {
		t.Fatal(err)
	}
	stopAtEnd(t, dst)
	if err := dst.Restore(ctx, blob); err != nil {
		t.Fatal(err)
	}
	if err := dst.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := dst.ReadFile(ctx, "/tmp/raw"); err != nil || string(got) != "raw stream" {
		t.Fatalf("after restore: %q %v", got, err)
	}
}

func TestDecompressLimit(t *testing.T) {
	stream := bytes.Repeat([]byte{0}, 1<<20)
	gz, err := compress(stream)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := decompressTo(&out, gz, 1<<20); err != nil || !bytes.Equal(out.Bytes(), stream) {
		t.Fatalf("round trip: %d bytes, %v", out.Len(), err)
	}
	if err := decompressTo(io.Discard, gz, 1<<19); !errors.Is(err, snapshot.ErrTooLarge) {
		t.Fatalf("inflating past the limit: %v", err)
	}
	if err := decompressTo(io.Discard, []byte("not gzip"), 1<<20); !errors.Is(err, snapshot.ErrCorrupt) {
		t.Fatalf("not gzip: %v", err)
	}
}
