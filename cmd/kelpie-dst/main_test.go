package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// build compiles kelpie-dst and the sim package's tests (for wasip1) into a
// temporary directory.
func build(t *testing.T) (dst, simTest string) {
	t.Helper()
	dir := t.TempDir()
	dst = filepath.Join(dir, "kelpie-dst")
	if out, err := exec.Command("go", "build", "-o", dst, ".").CombinedOutput(); err != nil {
		t.Fatalf("build kelpie-dst: %v\n%s", err, out)
	}
	simTest = filepath.Join(dir, "sim.test")
	cmd := exec.Command("go", "test", "-c", "-o", simTest, "../../sim")
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build sim tests for wasip1: %v\n%s", err, out)
	}
	return dst, simTest
}

var canaryLine = regexp.MustCompile(`(?m)^dst TestSimCanary seed=(\d+) trace=([0-9a-f]{64}) virtual=(\S+)$`)

func runCanary(t *testing.T, dst, simTest, seed string, env ...string) (line, trace, virtual string) {
	t.Helper()
	cmd := exec.Command(dst, simTest, "-test.run=^TestSimCanary$", "-test.v=true", "-test.timeout=10m")
	cmd.Dir = "../../sim"
	cmd.Env = append(append(os.Environ(), env...), "DST_SEED="+seed)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("canary seed %s: %v\n%s", seed, err, out)
	}
	m := canaryLine.FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("canary seed %s printed no summary line:\n%s", seed, out)
	}
	return m[0], m[2], m[3]
}

// TestCanary fails unless the executor is really in control: the canary's
// hour of sleeping goroutines must finish in virtual time (were the clock
// real, this test would run for an hour and go test's 10-minute timeout
// would fail it), two runs of one seed must produce the same trace byte for
// byte, and another seed a different one.
func TestCanary(t *testing.T) {
	dst, simTest := build(t)
	a, traceA, virtual := runCanary(t, dst, simTest, "5")
	b, _, _ := runCanary(t, dst, simTest, "5")
	_, traceC, _ := runCanary(t, dst, simTest, "6")
	if a != b {
		t.Fatalf("two runs of seed 5 differ:\n%s\n%s", a, b)
	}
	if traceA == traceC {
		t.Fatalf("seeds 5 and 6 produced the same trace %s: the seed does not reach the program", traceA)
	}
	if !strings.HasPrefix(virtual, "1h0m0") {
		t.Fatalf("virtual time %s, want the canary's hour", virtual)
	}
}

func TestBadInput(t *testing.T) {
	dst, simTest := build(t)
	for _, tc := range []struct {
		name string
		args []string
		env  string
		want string
	}{
		{"no program", nil, "", "no program given"},
		{"missing binary", []string{"/nonexistent/x.test"}, "", "no such file or directory"},
		{"not wasm", []string{dst}, "", "not a WebAssembly module"},
		{"malformed seed", []string{simTest}, "DST_SEED=12abc", `DST_SEED: seed "12abc"`},
		{"bad range", []string{"-seeds", "9-1", simTest}, "", "end 1 is before start 9"},
		{"bad repeat", []string{"-seeds", "1-2", "-repeat", "0", simTest}, "", "-repeat 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(dst, tc.args...)
			cmd.Env = append(os.Environ(), tc.env)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 2 {
				t.Fatalf("exit = %v, want status 2", err)
			}
			msg := strings.TrimSpace(stderr.String())
			if strings.Count(msg, "\n") > 0 && tc.name != "no program" {
				t.Errorf("want a one-line error, got:\n%s", msg)
			}
			if !strings.Contains(msg, tc.want) || strings.Contains(msg, "panic") {
				t.Errorf("stderr = %q, want %q", msg, tc.want)
			}
		})
	}
}

// TestFailurePrintsReplay: a failing run prints its seed and the command
// that replays it.
func TestFailurePrintsReplay(t *testing.T) {
	dst, simTest := build(t)
	cmd := exec.Command(dst, simTest, "-test.run=^TestNoSuchTestButFailOnPurpose$", "-test.badflag")
	cmd.Dir = "../../sim"
	cmd.Env = append(os.Environ(), "DST_SEED=77")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("a bad test flag succeeded:\n%s", out)
	}
	if !strings.Contains(string(out), "seed=77") || !strings.Contains(string(out), "DST_SEED=77") || !strings.Contains(string(out), "go test") {
		t.Fatalf("no seed and replay command in:\n%s", out)
	}
}

// TestTraceIgnoresHostOnlyVariables: the host tools' own settings (where
// the compilation cache lives) do not reach the guest, so they cannot change
// a trace; a variable that does reach it is named in the replay command.
func TestTraceIgnoresHostOnlyVariables(t *testing.T) {
	dst, simTest := build(t)
	cacheA, cacheB := filepath.Join(t.TempDir(), "c"), filepath.Join(t.TempDir(), "a-much-longer-cache-directory-name")
	a, _, _ := runCanary(t, dst, simTest, "9", "KELPIE_DST_CACHE="+cacheA, "KELPIE_SCENARIOS=/x.wasm")
	b, _, _ := runCanary(t, dst, simTest, "9", "KELPIE_DST_CACHE="+cacheB)
	if a != b {
		t.Fatalf("the cache directory changed the trace:\n%s\n%s", a, b)
	}

	cmd := exec.Command(dst, simTest, "-test.run=^TestNoSuchTestButFailOnPurpose$", "-test.badflag")
	cmd.Dir = "../../sim"
	cmd.Env = append(os.Environ(), "DST_SEED=78", "DST_EXTRA=a b", "KELPIE_DST_CACHE="+cacheA)
	out, _ := cmd.CombinedOutput()
	if !strings.Contains(string(out), "DST_SEED=78 DST_EXTRA='a b' ") {
		t.Errorf("the replay does not carry the variable that reached the guest:\n%s", out)
	}
	if strings.Contains(string(out), "KELPIE_DST_CACHE") {
		t.Errorf("the replay carries a host-only variable:\n%s", out)
	}
}

func TestSweepRepeatIsDeterministic(t *testing.T) {
	dst, simTest := build(t)
	cmd := exec.Command(dst, "-seeds", "1-3", "-repeat", "2", "-q", simTest, "-test.run=^TestSimCanary$", "-test.v=true")
	cmd.Dir = "../../sim"
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("sweep: %v\n%s", err, out)
	}
	if n := len(canaryLine.FindAllString(string(out), -1)); n != 3 {
		t.Fatalf("%d summary lines for 3 seeds:\n%s", n, out)
	}
}
