package executor_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kelpie-go/kelpie/internal/executor"
)

// The programs these tests run are built once, for wasip1, from testdata.
var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

func program(t testing.TB, name string) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "kelpie-executor-test-")
		if buildErr != nil {
			return
		}
		for _, p := range []string{"probe"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(buildDir, p+".wasm"), "./testdata/"+p)
			cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = &buildError{p, string(out), err}
				return
			}
		}
		// The scenarios module, for the canary benchmark.
		cmd := exec.Command("go", "build", "-o", filepath.Join(buildDir, "scenarios.wasm"), "github.com/kelpie-go/kelpie/cmd/kelpie-scenarios")
		cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = &buildError{"scenarios", string(out), err}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(buildDir, name+".wasm")
}

type buildError struct {
	name, out string
	err       error
}

func (e *buildError) Error() string { return "build " + e.name + ": " + e.err.Error() + "\n" + e.out }

func runProbe(t *testing.T, r *executor.Runner, seed uint64, args ...string) (string, executor.Result) {
	t.Helper()
	ctx := context.Background()
	m, err := r.Compile(ctx, program(t, "probe"))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	wd, _ := os.Getwd()
	res, err := r.Run(ctx, m, executor.Config{Seed: seed, Args: args, Dir: wd, Stdout: &out, Stderr: &out,
		Env: []string{"KELPIE_EXTRA=x", "DST_SEED=999"}})
	if err != nil {
		t.Fatal(err)
	}
	return out.String(), res
}

func TestDeterministicPerSeed(t *testing.T) {
	r, err := executor.NewRunner(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(context.Background())
	a, resA := runProbe(t, r, 1)
	b, _ := runProbe(t, r, 1)
	c, _ := runProbe(t, r, 2)
	if a != b {
		t.Fatalf("two runs of seed 1 differ:\n%s\n---\n%s", a, b)
	}
	if a == c {
		t.Fatalf("seeds 1 and 2 gave the same output:\n%s", a)
	}
	for _, want := range []string{
		"seed=1",               // DST_SEED is the executor's, not the caller's
		"extra=x",              // KELPIE_* variables pass
		"home=",                // and nothing else leaks: checked below
		"slept=1h0m0s",         // an hour of sleep
		"wall=2026-01-01T01:0", // virtual wall clock from the epoch
		"tmp-write=ok",
		"testdata-read=ok",
	} {
		if !strings.Contains(a, want) {
			t.Errorf("probe output lacks %q:\n%s", want, a)
		}
	}
	if strings.Contains(a, "PATH=") {
		t.Errorf("host PATH leaked into the program:\n%s", a)
	}
	if resA.Virtual < time.Hour {
		t.Errorf("virtual time %s, want at least the hour slept", resA.Virtual)
	}
}

func TestExitCodeAndBadPrograms(t *testing.T) {
	r, err := executor.NewRunner(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(context.Background())
	_, res := runProbe(t, r, 1, "-exit", "3")
	if res.ExitCode != 3 {
		t.Fatalf("exit code %d, want 3", res.ExitCode)
	}
	dir := t.TempDir()
	notWasm := filepath.Join(dir, "x.wasm")
	os.WriteFile(notWasm, []byte("#!/bin/sh\n"), 0o644)
	for path, want := range map[string]string{
		filepath.Join(dir, "missing.wasm"): "no such file",
		notWasm:                            "not a WebAssembly module",
		dir:                                "is a directory",
	} {
		if _, err := r.Compile(context.Background(), path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Compile(%s) = %v, want %q", path, err, want)
		}
	}
}

func TestRealTimeout(t *testing.T) {
	r, err := executor.NewRunner(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(context.Background())
	m, err := r.Compile(context.Background(), program(t, "probe"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Run(context.Background(), m, executor.Config{Seed: 1, Args: []string{"-spin"}, RealTimeout: 200 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "real-time limit") {
		t.Fatalf("a program that spins forever: err = %v, want the real-time limit", err)
	}
}

var summary = regexp.MustCompile(`(?m)^dst sim-canary seed=(\d+) trace=([0-9a-f]{64}) virtual=(\S+)$`)

// BenchmarkCanary reports how much virtual time the canary scenario covers
// per second of real time.
func BenchmarkCanary(b *testing.B) {
	benchScenario(b, "sim-canary")
}

// BenchmarkSimnet does the same for the simulated-network scenarios: real
// net/http servers and clients on several nodes over simnet, under faults.
func BenchmarkSimnet(b *testing.B) {
	for _, name := range []string{"simnet-ping", "simnet-partition", "simnet-chaos"} {
		b.Run(name, func(b *testing.B) { benchScenario(b, name) })
	}
}

func benchScenario(b *testing.B, name string) {
	ctx := context.Background()
	r, err := executor.NewRunner(ctx, b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close(ctx)
	m, err := r.Compile(ctx, program(b, "scenarios"))
	if err != nil {
		b.Fatal(err)
	}
	var virtual, real time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var out bytes.Buffer
		res, err := r.Run(ctx, m, executor.Config{Seed: uint64(i + 1), Args: []string{"-scenario", name}, Stdout: &out, Stderr: &out})
		if err != nil || res.ExitCode != 0 {
			b.Fatalf("%s seed %d: %v exit %d\n%s", name, i+1, err, res.ExitCode, out.String())
		}
		virtual += res.Virtual
		real += res.Real
	}
	b.ReportMetric(float64(virtual)/float64(real), "virtual/real")
	b.ReportMetric(virtual.Seconds()/float64(b.N), "virtual-s/op")
}

// BenchmarkStartup measures starting a program: compiling it with an empty
// cache, compiling it from the on-disk cache, and instantiating a module
// already compiled in this process.
func BenchmarkStartup(b *testing.B) {
	ctx := context.Background()
	path := program(b, "probe")
	run := func(b *testing.B, r *executor.Runner) {
		m, err := r.Compile(ctx, path)
		if err != nil {
			b.Fatal(err)
		}
		res, err := r.Run(ctx, m, executor.Config{Seed: 1, Args: []string{"-exit", "0"}})
		if err != nil || res.ExitCode != 0 {
			b.Fatalf("%v %d", err, res.ExitCode)
		}
	}
	b.Run("cold", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			r, err := executor.NewRunner(ctx, b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			run(b, r)
			r.Close(ctx)
		}
	})
	b.Run("disk-cache", func(b *testing.B) {
		dir := b.TempDir()
		warm, _ := executor.NewRunner(ctx, dir)
		run(b, warm)
		warm.Close(ctx)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			r, err := executor.NewRunner(ctx, dir)
			if err != nil {
				b.Fatal(err)
			}
			run(b, r)
			r.Close(ctx)
		}
	})
	b.Run("in-process", func(b *testing.B) {
		r, _ := executor.NewRunner(ctx, "")
		defer r.Close(ctx)
		run(b, r)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			run(b, r)
		}
	})
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// TestRunDoesNotDependOnCheckoutPath: the same program and seed in two
// different host directories see the same world and print the same output.
func TestRunDoesNotDependOnCheckoutPath(t *testing.T) {
	r, err := executor.NewRunner(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(context.Background())
	m, err := r.Compile(context.Background(), program(t, "probe"))
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("testdata/probe/main.go")
	if err != nil {
		t.Fatal(err)
	}
	var outs []string
	for _, name := range []string{"a", "a-much-longer-checkout-path"} {
		dir := filepath.Join(t.TempDir(), name)
		if err := os.MkdirAll(filepath.Join(dir, "testdata", "probe"), 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, "testdata", "probe", "main.go"), src, 0o644)
		var out bytes.Buffer
		if _, err := r.Run(context.Background(), m, executor.Config{Seed: 3, Dir: dir, Stdout: &out, Stderr: &out}); err != nil {
			t.Fatal(err)
		}
		outs = append(outs, out.String())
	}
	if outs[0] != outs[1] {
		t.Fatalf("output depends on the host directory:\n%s\n---\n%s", outs[0], outs[1])
	}
	if !strings.Contains(outs[0], "PWD="+executor.GuestWorkDir) || !strings.Contains(outs[0], "testdata-read=ok") {
		t.Fatalf("probe output:\n%s", outs[0])
	}
}
