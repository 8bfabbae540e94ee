// Package vmtest is the conformance suite every vm.VMInstance backend runs:
// the state machine and its errors, exec (exit codes, stdin, output caps,
// timeouts), guest files, and the snapshot/restore contract (a restored VM
// is paused and holds exactly the snapshotted state; corrupt, oversized or
// incompatible blobs — another backend, hypervisor version, architecture,
// CPU model, vCPU count, memory size or guest protocol — are refused and
// leave the target created). A backend's test calls Run with a function
// that creates a fresh VM and the backend's snapshot size bound for it; the
// suite knows nothing else about the backend, so one suite holds every
// backend to one contract.
package vmtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kelpie-go/kelpie/vm"
	"github.com/kelpie-go/kelpie/vm/snapshot"
)

// DefaultOpTimeout bounds each suite step against a real hypervisor.
const DefaultOpTimeout = 3 * time.Minute

// MaxPaddedBlobBytes bounds Options.MaxBlobBytes: the suite allocates a blob
// one byte larger than it, once, so test VMs must stay small.
const MaxPaddedBlobBytes = 1 << 30

// Options tell the suite how to create VMs and which guest commands to use.
// Only New is required; the command defaults are the simulated guest's
// command set, which matches coreutils/busybox for echo, cat and sleep.
type Options struct {
	// New returns a fresh VM in StateCreated. The suite stops every VM it
	// gets. Restore targets come from New too, so it must return VMs of one
	// shape (vCPUs, memory).
	New func(t *testing.T) vm.VMInstance
	// MaxBlobBytes is the largest snapshot blob the backend restores into
	// a VM from New: its bound for that VM's memory size, at most
	// MaxPaddedBlobBytes. The suite checks that the backend's own
	// snapshots fit it and that a valid blob one byte larger is refused
	// with snapshot.ErrTooLarge. Required.
	MaxBlobBytes int64
	// Echo prints its argument and a newline on stdout.
	Echo func(text string) []string
	// Exit exits with code.
	Exit func(code int) []string
	// Cat copies stdin to stdout.
	Cat []string
	// Sleep sleeps for d.
	Sleep func(d time.Duration) []string
	// Repeat prints text and a newline n times.
	Repeat func(n int, text string) []string
	// Dir is a writable guest directory for test files; "" means "/tmp".
	Dir string
	// OpTimeout bounds each step; 0 means DefaultOpTimeout.
	OpTimeout time.Duration
	// ExecTimeout is the timeout given to a command that sleeps forever, to
	// check the timeout path; 0 means 500 ms.
	ExecTimeout time.Duration
}

func (o *Options) defaults() {
	if o.Echo == nil {
		o.Echo = func(s string) []string { return []string{"echo", s} }
	}
	if o.Exit == nil {
		o.Exit = func(c int) []string { return []string{"exit", strconv.Itoa(c)} }
	}
	if o.Cat == nil {
		o.Cat = []string{"cat"}
	}
	if o.Sleep == nil {
		o.Sleep = func(d time.Duration) []string {
			return []string{"sleep", strconv.FormatFloat(d.Seconds(), 'f', -1, 64)}
		}
	}
	if o.Repeat == nil {
		o.Repeat = func(n int, s string) []string { return []string{"repeat", strconv.Itoa(n), s} }
	}
	if o.Dir == "" {
		o.Dir = "/tmp"
	}
	if o.OpTimeout == 0 {
		o.OpTimeout = DefaultOpTimeout
	}
	if o.ExecTimeout == 0 {
		o.ExecTimeout = 500 * time.Millisecond
	}
}

func argv(a []string) vm.ExecRequest { return vm.ExecRequest{Command: a[0], Args: a[1:]} }

// Run runs the whole suite.
func Run(t *testing.T, o Options) {
	if o.New == nil {
		t.Fatal("vmtest.Options.New is nil")
	}
	if o.MaxBlobBytes <= 0 || o.MaxBlobBytes > MaxPaddedBlobBytes {
		t.Fatalf("vmtest.Options.MaxBlobBytes=%d: want the backend's snapshot bound for the VMs New returns, 1..MaxPaddedBlobBytes=%d", o.MaxBlobBytes, int64(MaxPaddedBlobBytes))
	}
	o.defaults()
	s := &suite{o: o}
	t.Run("StateMachine", s.stateMachine)
	t.Run("Exec", s.exec)
	t.Run("Files", s.files)
	t.Run("SnapshotRestore", s.snapshotRestore)
	t.Run("RestoreRefusals", s.restoreRefusals)
}

type suite struct{ o Options }

func (s *suite) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), s.o.OpTimeout)
	t.Cleanup(cancel)
	return ctx
}

// newVM creates a VM that is stopped when the test ends.
func (s *suite) newVM(t *testing.T) vm.VMInstance {
	t.Helper()
	v := s.o.New(t)
	if v == nil {
		t.Fatal("Options.New returned nil")
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.o.OpTimeout)
		defer cancel()
		if err := v.Stop(ctx); err != nil {
			t.Errorf("stop %s: %v", v.ID(), err)
		}
	})
	if st := v.State(); st != vm.StateCreated {
		t.Fatalf("a new VM is %s, want created", st)
	}
	return v
}

func (s *suite) booted(t *testing.T) vm.VMInstance {
	t.Helper()
	v := s.newVM(t)
	if err := v.Boot(s.ctx(t)); err != nil {
		t.Fatalf("boot: %v", err)
	}
	return v
}

func wantState(t *testing.T, v vm.VMInstance, want vm.State) {
	t.Helper()
	if got := v.State(); got != want {
		t.Fatalf("state is %s, want %s", got, want)
	}
}

// refused asserts that err is a transition error for op in state from and
// that the VM's state did not change.
func refused(t *testing.T, v vm.VMInstance, op vm.Op, from vm.State, err error) {
	t.Helper()
	var te *vm.TransitionError
	if !errors.As(err, &te) || !errors.Is(err, vm.ErrInvalidState) {
		t.Fatalf("%s in %s: got %v, want a *vm.TransitionError", op, from, err)
	}
	if te.Op != op || te.From != from {
		t.Fatalf("%s in %s: the error names %s in %s: %v", op, from, te.Op, te.From, err)
	}
	wantState(t, v, from)
}

// tryAll applies every user operation that is illegal in v's state and
// checks that each is refused.
func (s *suite) tryIllegal(t *testing.T, v vm.VMInstance) {
	t.Helper()
	ctx := s.ctx(t)
	st := v.State()
	path := s.o.Dir + "/illegal"
	calls := map[vm.Op]func() error{
		vm.OpBoot: func() error { return v.Boot(ctx) },
		vm.OpExec: func() error {
			_, err := v.Exec(ctx, argv(s.o.Echo("x")))
			return err
		},
		vm.OpReadFile: func() error {
			_, err := v.ReadFile(ctx, path)
			return err
		},
		vm.OpWriteFile: func() error { return v.WriteFile(ctx, path, []byte("x"), 0o644) },
		vm.OpPause:     func() error { return v.Pause(ctx) },
		vm.OpResume:    func() error { return v.Resume(ctx) },
		vm.OpSnapshot: func() error {
			_, err := v.Snapshot(ctx)
			return err
		},
		vm.OpRestore: func() error { return v.Restore(ctx, []byte("not a snapshot")) },
	}
	for _, op := range vm.Ops() {
		call, ok := calls[op]
		if !ok || vm.Allowed(st, op) {
			continue
		}
		refused(t, v, op, st, call())
	}
}

func (s *suite) stateMachine(t *testing.T) {
	v := s.newVM(t)
	ctx := s.ctx(t)
	s.tryIllegal(t, v)
	if err := v.Boot(ctx); err != nil {
		t.Fatalf("boot: %v", err)
	}
	wantState(t, v, vm.StateRunning)
	s.tryIllegal(t, v)
	if err := v.Pause(ctx); err != nil {
		t.Fatalf("pause: %v", err)
	}
	wantState(t, v, vm.StatePaused)
	s.tryIllegal(t, v)
	if err := v.Resume(ctx); err != nil {
		t.Fatalf("resume: %v", err)
	}
	wantState(t, v, vm.StateRunning)
	if _, err := v.Exec(ctx, argv(s.o.Echo("after resume"))); err != nil {
		t.Fatalf("exec after resume: %v", err)
	}
	if err := v.Stop(ctx); err != nil {
		t.Fatalf("stop: %v", err)
	}
	wantState(t, v, vm.StateStopped)
	s.tryIllegal(t, v)
	if err := v.Stop(ctx); err != nil {
		t.Fatalf("a second stop: %v, want nil (stop is idempotent)", err)
	}
	wantState(t, v, vm.StateStopped)

	// A created VM can be stopped without ever booting.
	w := s.newVM(t)
	if err := w.Stop(ctx); err != nil {
		t.Fatalf("stop a created VM: %v", err)
	}
	wantState(t, w, vm.StateStopped)
}

func (s *suite) exec(t *testing.T) {
	v := s.booted(t)
	ctx := s.ctx(t)
	res, err := v.Exec(ctx, argv(s.o.Echo("hello kelpie")))
	if err != nil {
		t.Fatalf("echo: %v", err)
	}
	if string(res.Stdout) != "hello kelpie\n" || res.ExitCode != 0 || res.StdoutTruncated {
		t.Errorf("echo: %+v", res)
	}

	res, err = v.Exec(ctx, argv(s.o.Exit(3)))
	if err != nil {
		t.Fatalf("exit 3: %v (a non-zero exit is not an error)", err)
	}
	if res.ExitCode != 3 {
		t.Errorf("exit 3: exit code %d", res.ExitCode)
	}

	req := argv(s.o.Cat)
	req.Stdin = []byte("from stdin\x00with a NUL")
	res, err = v.Exec(ctx, req)
	if err != nil || !bytes.Equal(res.Stdout, req.Stdin) {
		t.Errorf("cat stdin: %q, %v", res.Stdout, err)
	}

	req = argv(s.o.Repeat(1000, "0123456789"))
	req.MaxOutputBytes = 100
	res, err = v.Exec(ctx, req)
	if err != nil {
		t.Fatalf("repeat: %v", err)
	}
	if len(res.Stdout) != 100 || !res.StdoutTruncated || string(res.Stdout[:11]) != "0123456789\n" {
		t.Errorf("output cap 100: got %d bytes, truncated=%v", len(res.Stdout), res.StdoutTruncated)
	}

	req = argv(s.o.Sleep(time.Hour))
	req.Timeout = s.o.ExecTimeout
	_, err = v.Exec(ctx, req)
	if !errors.Is(err, vm.ErrExecTimeout) {
		t.Errorf("sleep past its timeout: %v, want vm.ErrExecTimeout", err)
	}
	wantState(t, v, vm.StateRunning)
	if _, err := v.Exec(ctx, argv(s.o.Echo("still alive"))); err != nil {
		t.Errorf("exec after a timeout: %v", err)
	}

	// Commands run concurrently on one VM, each getting its own output.
	const concurrent = 8
	errs := make(chan error, concurrent)
	for i := 0; i < concurrent; i++ {
		go func(i int) {
			want := "concurrent " + strconv.Itoa(i)
			res, err := v.Exec(ctx, argv(s.o.Echo(want)))
			switch {
			case err != nil:
				errs <- err
			case string(res.Stdout) != want+"\n":
				errs <- errors.New("exec " + strconv.Itoa(i) + " got " + strconv.Quote(string(res.Stdout)))
			default:
				errs <- nil
			}
		}(i)
	}
	for i := 0; i < concurrent; i++ {
		if err := <-errs; err != nil {
			t.Errorf("concurrent exec: %v", err)
		}
	}

	for name, bad := range map[string]vm.ExecRequest{
		"empty command": {},
		"bad env":       {Command: "echo", Env: []string{"NOEQUALS"}},
		"relative dir":  {Command: "echo", Dir: "tmp"},
		"huge timeout":  {Command: "echo", Timeout: vm.MaxExecTimeout + 1},
		"huge cap":      {Command: "echo", MaxOutputBytes: vm.MaxExecOutputBytes + 1},
	} {
		if _, err := v.Exec(ctx, bad); !errors.Is(err, vm.ErrInvalidRequest) {
			t.Errorf("%s: %v, want vm.ErrInvalidRequest", name, err)
		}
	}
	wantState(t, v, vm.StateRunning)
}

func (s *suite) files(t *testing.T) {
	v := s.booted(t)
	ctx := s.ctx(t)
	p := s.o.Dir + "/kelpie-vmtest/data.bin"
	data := bytes.Repeat([]byte{0, 1, 2, 0xff}, 4096)
	if err := v.WriteFile(ctx, p, data, 0o600); err != nil {
		t.Fatalf("write: %v", err)
	}
	got, err := v.ReadFile(ctx, p)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %d bytes, %v", len(got), err)
	}
	if err := v.WriteFile(ctx, p, []byte("short"), 0o600); err != nil {
		t.Fatalf("overwrite: %v", err)
	}
	if got, err := v.ReadFile(ctx, p); err != nil || string(got) != "short" {
		t.Fatalf("read after overwrite: %q, %v", got, err)
	}
	if _, err := v.ReadFile(ctx, s.o.Dir+"/kelpie-vmtest/missing"); !errors.Is(err, vm.ErrNotFound) {
		t.Errorf("read a missing file: %v, want vm.ErrNotFound", err)
	}
	for _, bad := range []string{"", "relative", "/a/../b", "/a/"} {
		if _, err := v.ReadFile(ctx, bad); !errors.Is(err, vm.ErrInvalidRequest) {
			t.Errorf("read %q: %v, want vm.ErrInvalidRequest", bad, err)
		}
	}
	if err := v.WriteFile(ctx, p, make([]byte, vm.MaxFileBytes+1), 0o600); !errors.Is(err, vm.ErrInvalidRequest) {
		t.Errorf("write past MaxFileBytes: %v, want vm.ErrInvalidRequest", err)
	}
	// A command sees files written through WriteFile.
	res, err := v.Exec(ctx, argv(append(append([]string(nil), s.o.Cat...), p)))
	if err != nil || string(res.Stdout) != "short" {
		t.Errorf("cat %s: %q, %v", p, res.Stdout, err)
	}
}

// snapshotOf boots a VM, writes marker to a file, pauses and snapshots it.
func (s *suite) snapshotOf(t *testing.T, marker string) (vm.VMInstance, []byte, string) {
	t.Helper()
	v := s.booted(t)
	ctx := s.ctx(t)
	p := s.o.Dir + "/kelpie-vmtest/marker"
	if err := v.WriteFile(ctx, p, []byte(marker), 0o644); err != nil {
		t.Fatalf("write marker: %v", err)
	}
	if err := v.Pause(ctx); err != nil {
		t.Fatalf("pause: %v", err)
	}
	blob, err := v.Snapshot(ctx)
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	wantState(t, v, vm.StatePaused)
	return v, blob, p
}

func (s *suite) snapshotRestore(t *testing.T) {
	src, blob, p := s.snapshotOf(t, "before the snapshot")
	ctx := s.ctx(t)
	meta, err := snapshot.DecodeMetadata(blob)
	if err != nil {
		t.Fatalf("the snapshot is not a vm/snapshot blob: %v", err)
	}
	if meta.Backend != src.Backend() || meta.VCPUs != src.Config().VCPUs || meta.MemoryMiB != src.Config().MemoryMiB {
		t.Errorf("metadata %+v does not describe %s VM %s (%d vCPUs, %d MiB)", meta, src.Backend(), src.ID(), src.Config().VCPUs, src.Config().MemoryMiB)
	}
	// A backend must restore what it writes.
	if int64(len(blob)) > s.o.MaxBlobBytes {
		t.Errorf("the snapshot is %d bytes, past the backend's own bound Options.MaxBlobBytes=%d", len(blob), s.o.MaxBlobBytes)
	}
	// A second snapshot of the same paused VM is allowed.
	if _, err := src.Snapshot(ctx); err != nil {
		t.Fatalf("a second snapshot: %v", err)
	}
	// The source moves on; the snapshot must not.
	if err := src.Resume(ctx); err != nil {
		t.Fatalf("resume the source: %v", err)
	}
	if err := src.WriteFile(ctx, p, []byte("after the snapshot"), 0o644); err != nil {
		t.Fatalf("write after the snapshot: %v", err)
	}

	dst := s.newVM(t)
	if err := dst.Restore(ctx, blob); err != nil {
		t.Fatalf("restore: %v", err)
	}
	// The restore contract: a restored VM is paused.
	wantState(t, dst, vm.StatePaused)
	s.tryIllegal(t, dst)
	if err := dst.Resume(ctx); err != nil {
		t.Fatalf("resume the restored VM: %v", err)
	}
	got, err := dst.ReadFile(ctx, p)
	if err != nil || string(got) != "before the snapshot" {
		t.Fatalf("the restored VM's marker: %q, %v; want the snapshotted contents", got, err)
	}
	res, err := dst.Exec(ctx, argv(s.o.Echo("restored")))
	if err != nil || string(res.Stdout) != "restored\n" {
		t.Fatalf("exec in the restored VM: %q, %v", res.Stdout, err)
	}
	// The restored VM is a full VM: it snapshots and restores again.
	if err := dst.Pause(ctx); err != nil {
		t.Fatalf("pause the restored VM: %v", err)
	}
	blob2, err := dst.Snapshot(ctx)
	if err != nil {
		t.Fatalf("snapshot the restored VM: %v", err)
	}
	third := s.newVM(t)
	if err := third.Restore(ctx, blob2); err != nil {
		t.Fatalf("restore a snapshot of a restored VM: %v", err)
	}
	if err := third.Resume(ctx); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if got, err := third.ReadFile(ctx, p); err != nil || string(got) != "before the snapshot" {
		t.Fatalf("second-generation marker: %q, %v", got, err)
	}
	// Restore is only for created VMs.
	refused(t, src, vm.OpRestore, vm.StateRunning, src.Restore(ctx, blob))
}

func (s *suite) restoreRefusals(t *testing.T) {
	_, blob, _ := s.snapshotOf(t, "refusals")
	snap, err := snapshot.Decode(blob)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	reencode := func(edit func(m *snapshot.Metadata)) []byte {
		m := snap.Meta
		edit(&m)
		b, err := snapshot.Encode(m, snap.Sections, 0)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		return b
	}
	flipped := append([]byte(nil), blob...)
	flipped[len(flipped)/2] ^= 0x10
	cases := []struct {
		name string
		blob []byte
		want error
	}{
		{"garbage", []byte("this is not a snapshot at all, not even close....................."), snapshot.ErrCorrupt},
		{"flipped bit", flipped, snapshot.ErrCorrupt},
		{"truncated", blob[:len(blob)-1], snapshot.ErrCorrupt},
		{"trailing bytes", append(append([]byte(nil), blob...), 0), snapshot.ErrCorrupt},
		{"other backend", reencode(func(m *snapshot.Metadata) { m.Backend = "other-" + m.Backend }), snapshot.ErrIncompatible},
		{"other backend version", reencode(func(m *snapshot.Metadata) { m.BackendVersion += "-other" }), snapshot.ErrIncompatible},
		{"other CPU model", reencode(func(m *snapshot.Metadata) { m.CPUModel += "-other" }), snapshot.ErrIncompatible},
		{"other architecture", reencode(func(m *snapshot.Metadata) { m.Arch = "other-" + m.Arch }), snapshot.ErrIncompatible},
		{"other vCPU count", reencode(func(m *snapshot.Metadata) { m.VCPUs = m.VCPUs%vm.MaxVCPUs + 1 }), snapshot.ErrIncompatible},
		// One MiB off: a backend must compare the size, not its order of
		// magnitude.
		{"other memory size", reencode(func(m *snapshot.Metadata) {
			if m.MemoryMiB < vm.MaxMemoryMiB {
				m.MemoryMiB++
			} else {
				m.MemoryMiB--
			}
		}), snapshot.ErrIncompatible},
		{"other guest protocol", reencode(func(m *snapshot.Metadata) { m.GuestProtocol += 1000 }), snapshot.ErrIncompatible},
		{"section claims too much", claimsTooMuch(t, blob), snapshot.ErrTooLarge},
	}
	restore := func(t *testing.T, blob []byte, want error) {
		v := s.newVM(t)
		err := v.Restore(s.ctx(t), blob)
		if !errors.Is(err, want) {
			t.Fatalf("restore: %v, want %v", err, want)
		}
		// The restore contract: a refused blob leaves the VM created.
		wantState(t, v, vm.StateCreated)
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) { restore(t, c.blob, c.want) })
	}
	// Built only here: it is as large as the backend's bound.
	t.Run("one_byte_past_the_bound", func(t *testing.T) { restore(t, s.padded(t, snap, len(blob)), snapshot.ErrTooLarge) })
}

// claimsTooMuch returns blob with its first section's length raised past
// snapshot.MaxBlobBytes, and the checksum recomputed: a blob that declares
// more than any VM may hold must be refused before anything is read or
// allocated by that length.
func claimsTooMuch(t *testing.T, blob []byte) []byte {
	t.Helper()
	out := bytes.Clone(blob)
	if binary.LittleEndian.Uint32(out[16:]) == 0 {
		t.Fatal("the snapshot has no sections")
	}
	// The section table starts after the header: name length, name,
	// then the u64 data length.
	at := snapshot.HeaderBytes + 1 + int(out[snapshot.HeaderBytes])
	binary.LittleEndian.PutUint64(out[at:], uint64(snapshot.MaxBlobBytes)+1)
	body := len(out) - snapshot.ChecksumBytes
	sum := sha256.Sum256(out[:body])
	copy(out[body:], sum[:])
	return out
}

// paddingSection is the section the suite adds to grow a snapshot.
const paddingSection = "vmtest.padding"

// padded re-encodes snap, whose blob was have bytes, with a zero-filled
// padding section that makes it exactly one byte longer than
// Options.MaxBlobBytes: a valid blob whose only fault is its size.
func (s *suite) padded(t *testing.T, snap *snapshot.Snapshot, have int) []byte {
	t.Helper()
	want := s.o.MaxBlobBytes + 1
	// A section costs its name-length byte, its name and its u64 length
	// in the table, besides its data.
	pad := want - int64(have) - int64(1+len(paddingSection)+8)
	if pad < 0 {
		t.Fatalf("the snapshot is %d bytes, past Options.MaxBlobBytes=%d already", have, s.o.MaxBlobBytes)
	}
	layout := make([]snapshot.SectionSize, 0, len(snap.Sections)+1)
	for _, sec := range snap.Sections {
		layout = append(layout, snapshot.SectionSize{Name: sec.Name, Size: int64(len(sec.Data))})
	}
	layout = append(layout, snapshot.SectionSize{Name: paddingSection, Size: pad})
	// The builder lays the blob out in one allocation; the padding stays
	// as allocated, zero.
	b, err := snapshot.NewBuilder(snap.Meta, layout, want)
	if err != nil {
		t.Fatalf("build a %d-byte blob: %v", want, err)
	}
	for i, sec := range snap.Sections {
		copy(b.Section(i), sec.Data)
	}
	out := b.Finish()
	if int64(len(out)) != want {
		t.Fatalf("the padded blob is %d bytes, want %d", len(out), want)
	}
	if _, err := snapshot.DecodeMax(out, want); err != nil {
		t.Fatalf("the padded blob does not decode: %v", err)
	}
	return out
}
