package vm

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestTransitionTable pins the whole table: every (state, op) pair is either
// listed here with its success and failure states or refused.
func TestTransitionTable(t *testing.T) {
	type pair struct {
		s  State
		op Op
	}
	allowed := map[pair][2]State{
		{StateCreated, OpBoot}:      {StateRunning, StateFailed},
		{StateCreated, OpRestore}:   {StatePaused, StateFailed},
		{StateCreated, OpStop}:      {StateStopped, StateStopped},
		{StateRunning, OpExec}:      {StateRunning, StateRunning},
		{StateRunning, OpReadFile}:  {StateRunning, StateRunning},
		{StateRunning, OpWriteFile}: {StateRunning, StateRunning},
		{StateRunning, OpPause}:     {StatePaused, StateRunning},
		{StateRunning, OpStop}:      {StateStopped, StateStopped},
		{StateRunning, OpCrash}:     {StateFailed, StateFailed},
		{StatePaused, OpResume}:     {StateRunning, StateFailed},
		{StatePaused, OpSnapshot}:   {StatePaused, StatePaused},
		{StatePaused, OpStop}:       {StateStopped, StateStopped},
		{StatePaused, OpCrash}:      {StateFailed, StateFailed},
		{StateStopped, OpStop}:      {StateStopped, StateStopped},
		{StateFailed, OpStop}:       {StateStopped, StateStopped},
	}
	for _, s := range States() {
		for _, op := range Ops() {
			want, ok := allowed[pair{s, op}]
			got, err := Next(s, op)
			if !ok {
				var te *TransitionError
				if err == nil || !errors.As(err, &te) || !errors.Is(err, ErrInvalidState) || got != s {
					t.Errorf("%s in %s: got %s, %v; want a refusal", op, s, got, err)
				}
				if AfterFailure(s, op) != s {
					t.Errorf("AfterFailure(%s, %s) changes the state of a refused op", s, op)
				}
				continue
			}
			if err != nil || got != want[0] {
				t.Errorf("%s in %s: got %s, %v; want %s", op, s, got, err, want[0])
			}
			if f := AfterFailure(s, op); f != want[1] {
				t.Errorf("failed %s in %s: got %s, want %s", op, s, f, want[1])
			}
		}
	}
	// Out-of-range values are refused, not a panic.
	if _, err := Next(State(200), OpBoot); err == nil {
		t.Error("Next accepted an unknown state")
	}
	if _, err := Next(StateCreated, Op(200)); err == nil {
		t.Error("Next accepted an unknown op")
	}
	if State(200).String() != "state(200)" || Op(200).String() != "op(200)" {
		t.Error("unknown states and ops do not print their number")
	}
}

func TestTransitionErrorMessage(t *testing.T) {
	err := &TransitionError{Op: OpPause, From: StateCreated}
	if got := err.Error(); got != "vm: cannot pause a created VM (pause is allowed only when running)" {
		t.Errorf("message: %s", got)
	}
	crashed := fmt.Errorf("%w: qemu exited", ErrCrashed)
	err = &TransitionError{Op: OpExec, From: StateFailed, Cause: crashed}
	if !errors.Is(err, ErrCrashed) || !errors.Is(err, ErrInvalidState) || !strings.Contains(err.Error(), "qemu exited") {
		t.Errorf("a refusal after a crash: %v", err)
	}
}

func TestMachine(t *testing.T) {
	var m Machine
	var seen []string
	m.SetObserver(func(from, to State, op Op, err error) { seen = append(seen, fmt.Sprintf("%s:%s->%s", op, from, to)) })
	if m.State() != StateCreated {
		t.Fatalf("zero Machine is %s", m.State())
	}
	if err := m.Do(OpPause, func() error { t.Fatal("fn ran for a refused op"); return nil }); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("pause a created VM: %v", err)
	}
	// A refusal inside fn keeps the state.
	bad := errors.New("incompatible")
	if err := m.Do(OpRestore, func() error { return Refuse(bad) }); err != bad {
		t.Fatalf("refused restore returned %v, want the underlying error", err)
	}
	if m.State() != StateCreated {
		t.Fatalf("after a refused restore: %s", m.State())
	}
	if err := m.Do(OpBoot, func() error { return nil }); err != nil || m.State() != StateRunning {
		t.Fatalf("boot: %v, %s", err, m.State())
	}
	if err := m.Check(OpExec); err != nil {
		t.Fatalf("exec on running: %v", err)
	}
	if !m.Fail(ErrCrashed) || m.State() != StateFailed || m.Cause() != ErrCrashed {
		t.Fatalf("crash: %s, %v", m.State(), m.Cause())
	}
	if m.Fail(ErrCrashed) {
		t.Error("a failed VM crashed again")
	}
	if err := m.Check(OpExec); !errors.Is(err, ErrCrashed) {
		t.Errorf("exec after a crash: %v, want the crash as cause", err)
	}
	if err := m.Do(OpStop, func() error { return errors.New("cleanup trouble") }); err == nil || m.State() != StateStopped {
		t.Errorf("stop with a cleanup error: %v, %s (stop always ends stopped)", err, m.State())
	}
	want := "restore:created->created boot:created->running crash:running->failed stop:failed->stopped"
	if got := strings.Join(seen, " "); got != want {
		t.Errorf("observed %s\nwant     %s", got, want)
	}
}

// TestMachineCrashDuringOp checks that a crash reported while a
// state-changing operation runs wins over the operation's success.
func TestMachineCrashDuringOp(t *testing.T) {
	var m Machine
	_ = m.Do(OpBoot, func() error { return nil })
	_ = m.Do(OpPause, func() error { return nil })
	err := m.Do(OpResume, func() error {
		m.Fail(ErrCrashed)
		return nil
	})
	if err != nil || m.State() != StateFailed {
		t.Fatalf("resume that crashed: %v, %s; want failed", err, m.State())
	}
}

// TestMachineSerializes runs state-changing operations from many goroutines
// and checks that no two ever overlap.
func TestMachineSerializes(t *testing.T) {
	var m Machine
	_ = m.Do(OpBoot, func() error { return nil })
	var mu sync.Mutex
	inside := 0
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			op := OpPause
			if i%2 == 1 {
				op = OpResume
			}
			_ = m.Do(op, func() error {
				mu.Lock()
				inside++
				n := inside
				mu.Unlock()
				if n != 1 {
					t.Errorf("%d operations inside Do at once", n)
				}
				time.Sleep(time.Millisecond)
				mu.Lock()
				inside--
				mu.Unlock()
				return nil
			})
		}(i)
	}
	wg.Wait()
}

func validConfig() VMConfig {
	return VMConfig{VCPUs: 2, MemoryMiB: 256, Kernel: "/boot/vmlinuz", Initrd: "/tmp/initrd"}
}

func TestConfigValidate(t *testing.T) {
	if err := validConfig().Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	if validConfig().Network {
		t.Error("network is on by default")
	}
	cases := map[string]func(c *VMConfig){
		"VCPUs":            func(c *VMConfig) { c.VCPUs = 0 },
		"MemoryMiB":        func(c *VMConfig) { c.MemoryMiB = MaxMemoryMiB + 1 },
		"Kernel":           func(c *VMConfig) { c.Kernel = "" },
		"Initrd":           func(c *VMConfig) { c.Initrd = "relative/initrd" },
		"RootDisk":         func(c *VMConfig) { c.RootDisk = "/a\x00b" },
		"RootDiskReadOnly": func(c *VMConfig) { c.RootDiskReadOnly = true },
		"KernelCmdline":    func(c *VMConfig) { c.KernelCmdline = strings.Repeat("x", MaxKernelCmdlineBytes+1) },
		"BootTimeout":      func(c *VMConfig) { c.BootTimeout = MaxBootTimeout + 1 },
		"ID":               func(c *VMConfig) { c.ID = "has space" },
	}
	for field, edit := range cases {
		c := validConfig()
		edit(&c)
		err := c.Validate()
		var ce *ConfigError
		if !errors.As(err, &ce) || !errors.Is(err, ErrInvalidConfig) || ce.Field != field {
			t.Errorf("%s: %v, want a *ConfigError for the field", field, err)
		}
	}
	// All problems are reported at once.
	err := VMConfig{}.Validate()
	for _, f := range []string{"VCPUs", "MemoryMiB", "Kernel"} {
		if err == nil || !strings.Contains(err.Error(), f+"=") {
			t.Errorf("zero config: %v does not name %s", err, f)
		}
	}
	// Limits are named in the message.
	c := validConfig()
	c.MemoryMiB = 1
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "MinMemoryMiB") {
		t.Errorf("message does not name the limit: %v", err)
	}
	if c := validConfig(); c.EffectiveBootTimeout() != DefaultBootTimeout {
		t.Errorf("default boot timeout %s", c.EffectiveBootTimeout())
	}
}

func TestExecNormalize(t *testing.T) {
	req, err := ExecRequest{Command: "echo"}.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	if req.Dir != "/" || req.Timeout != DefaultExecTimeout || req.MaxOutputBytes != DefaultExecOutputBytes {
		t.Errorf("defaults: %+v", req)
	}
	bad := map[string]ExecRequest{
		"command is empty":   {},
		"MaxExecArgs":        {Command: "x", Args: make([]string, MaxExecArgs+1)},
		"MaxExecEnv":         {Command: "x", Env: make([]string, MaxExecEnv+1)},
		"MaxExecArgBytes":    {Command: "x", Args: []string{strings.Repeat("a", MaxExecArgBytes)}},
		"not KEY=VALUE":      {Command: "x", Env: []string{"=v"}},
		"NUL":                {Command: "x", Args: []string{"a\x00"}},
		"not absolute":       {Command: "x", Dir: "rel"},
		"not clean":          {Command: "x", Dir: "/a/./b"},
		"MaxExecStdinBytes":  {Command: "x", Stdin: make([]byte, MaxExecStdinBytes+1)},
		"negative":           {Command: "x", Timeout: -1},
		"MaxExecTimeout":     {Command: "x", Timeout: MaxExecTimeout + 1},
		"MaxExecOutputBytes": {Command: "x", MaxOutputBytes: MaxExecOutputBytes + 1},
	}
	for want, r := range bad {
		_, err := r.Normalize()
		if !errors.Is(err, ErrInvalidRequest) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v", want, err)
		}
	}
}

func TestCheckFileRequest(t *testing.T) {
	if err := CheckFileRequest("/tmp/x", []byte("x")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"", "x", "/", "/a/", "/a/../b", strings.Repeat("/a", MaxPathBytes)} {
		if err := CheckFileRequest(p, nil); !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("path %.20q: %v", p, err)
		}
	}
	if err := CheckFileRequest("/x", make([]byte, MaxFileBytes+1)); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("oversized data: %v", err)
	}
}

func TestCappedBuffer(t *testing.T) {
	b := &CappedBuffer{Max: 5}
	for _, s := range []string{"ab", "cde", "fgh"} {
		if n, err := b.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("write %q: %d, %v", s, n, err)
		}
	}
	if string(b.Bytes()) != "abcde" || !b.Truncated() || b.Dropped() != 3 {
		t.Errorf("got %q truncated=%v dropped=%d", b.Bytes(), b.Truncated(), b.Dropped())
	}
}

// fakeBackend is a Backend whose availability a test sets. Its VMs are not
// needed: New only records that it was asked.
type fakeBackend struct {
	name  string
	avail error
	made  int
}

func (f *fakeBackend) Name() string     { return f.name }
func (f *fakeBackend) Available() error { return f.avail }
func (f *fakeBackend) New(cfg VMConfig) (VMInstance, error) {
	f.made++
	return nil, nil
}

func TestRegistry(t *testing.T) {
	fc := &fakeBackend{name: "firecracker", avail: errors.New("/dev/kvm: no such file or directory")}
	qemu := &fakeBackend{name: "qemu"}
	r, err := NewRegistry(fc, qemu)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(r.Names(), ","); got != "firecracker,qemu" {
		t.Errorf("names %s", got)
	}
	if err := r.Register(&fakeBackend{name: "qemu"}); err == nil {
		t.Error("registered qemu twice")
	}
	if err := r.Register(&fakeBackend{name: "auto"}); err == nil {
		t.Error("registered a backend called auto")
	}
	b, err := r.Pick(AutoBackend)
	if err != nil || b.Name() != "qemu" {
		t.Errorf("auto picked %v, %v; want qemu (firecracker is unavailable)", b, err)
	}
	_, err = r.Pick("firecracker")
	if !errors.Is(err, ErrBackendUnavailable) || !strings.Contains(err.Error(), "/dev/kvm") {
		t.Errorf("pick firecracker: %v", err)
	}
	if _, err := r.Pick("vz"); !errors.Is(err, ErrUnknownBackend) || !strings.Contains(err.Error(), "firecracker, qemu") {
		t.Errorf("pick vz: %v", err)
	}
	qemu.avail = errors.New("qemu-system-x86_64 not in PATH")
	_, err = r.Pick("")
	if !errors.Is(err, ErrBackendUnavailable) || !strings.Contains(err.Error(), "kvm") || !strings.Contains(err.Error(), "PATH") {
		t.Errorf("nothing available: %v, want every reason", err)
	}
	qemu.avail = nil
	if _, err := r.New("qemu", VMConfig{}); !errors.Is(err, ErrInvalidConfig) || qemu.made != 0 {
		t.Errorf("factory with a bad config: %v (made %d)", err, qemu.made)
	}
	if _, err := r.New("", validConfig()); err != nil || qemu.made != 1 {
		t.Errorf("factory: %v (made %d)", err, qemu.made)
	}
	var empty Registry
	if _, err := empty.Pick(""); !errors.Is(err, ErrBackendUnavailable) {
		t.Errorf("empty registry: %v", err)
	}
}
