package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func scenariosWasm(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), scenariosModule)
	cmd := exec.Command("go", "build", "-o", p, "../kelpie-scenarios")
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build scenarios: %v\n%s", err, out)
	}
	return p
}

func TestKelpieSimSweep(t *testing.T) {
	wasm := scenariosWasm(t)
	var out, errOut bytes.Buffer
	code := run([]string{"sim", "--wasm", wasm, "--seeds", "1-12", "--scenario", "sim-canary", "-j", "2"}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, out.String(), errOut.String())
	}
	if !strings.Contains(out.String(), "12 runs (1 scenarios x 12 seeds): 12 passed, 0 failed") {
		t.Fatalf("summary missing:\n%s", out.String())
	}
	if !strings.Contains(errOut.String(), "[12/12] 100%") {
		t.Fatalf("no progress display:\n%s", errOut.String())
	}

	// One seed prints its summary line, and the same seed gives the same one.
	var a, b bytes.Buffer
	run([]string{"sim", "--wasm", wasm, "--seed", "4", "--scenario", "sim-canary"}, &a, &errOut)
	run([]string{"sim", "--wasm", wasm, "--seed", "4", "--scenario", "sim-canary"}, &b, &errOut)
	lineA, _, _ := strings.Cut(a.String(), "\n")
	lineB, _, _ := strings.Cut(b.String(), "\n")
	if !strings.HasPrefix(lineA, "dst sim-canary seed=4 trace=") || lineA != lineB {
		t.Fatalf("seed 4 twice:\n%s\n%s", a.String(), b.String())
	}
}

func TestKelpieSimBadInput(t *testing.T) {
	wasm := scenariosWasm(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"sim", "--wasm", wasm, "--seed", "x1"}, `--seed: seed "x1"`},
		{[]string{"sim", "--wasm", wasm, "--seeds", "3-1"}, "end 1 is before start 3"},
		{[]string{"sim", "--wasm", wasm, "--seed", "1", "--scenario", "no-such"}, `unknown scenario "no-such"`},
		{[]string{"sim", "--wasm", filepath.Join(t.TempDir(), "missing.wasm"), "--seed", "1"}, "no such file"},
		{[]string{"sim", "--seed", "1", "--seeds", "1-2"}, "not both"},
		{[]string{"sim", "-j", "0"}, "-j 0"},
		{[]string{"nosuchcommand"}, `unknown command "nosuchcommand"`},
	} {
		var out, errOut bytes.Buffer
		code := run(tc.args, &out, &errOut)
		msg := strings.TrimSpace(errOut.String())
		if code != 2 || !strings.Contains(msg, tc.want) || strings.Contains(msg, "\n") {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 and one line with %q", tc.args, code, msg, tc.want)
		}
	}
}
