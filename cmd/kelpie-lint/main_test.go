package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kelpie-go/kelpie/internal/lint/boundary"
)

// The fixture is a tiny module with Kelpie's module path, so the real
// allow-list applies: kv/bad is a simulated package that dials, cmd/kelpie is a
// binary that may listen, vm/image may exec, and kv/good uses only what
// simulation offers.
var fixture = map[string]string{
	"go.mod": "module " + boundary.Module + "\n\ngo 1.26\n",
	"kv/bad/bad.go": `package bad

import "net"

// Dial escapes the simulation.
func Dial() (net.Conn, error) {
	return net.Dial("tcp", "127.0.0.1:1")
}
`,
	"kv/bad/bad_test.go": `package bad

import (
	"os/exec"
	"testing"
)

func TestExec(t *testing.T) { _ = exec.Command("true") }
`,
	"kv/good/good.go": `package good

import "net"

// Pipe stays inside it.
func Pipe() (net.Conn, net.Conn) { return net.Pipe() }
`,
	// Test files: the external test package is "p_test" and must still
	// match the allow-list as p; the test-file socket exemption applies.
	"kv/good/good_test.go": `package good

import (
	"net"
	"testing"
)

func TestLoopback(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
}
`,
	// vm/image is allowed exec by an exact pattern, so only the folding
	// of test variants into the package lets these files pass.
	"vm/image/image.go": `package image

import "os/exec"

// Build runs go build.
func Build() error { return exec.Command("go", "version").Run() }
`,
	"vm/image/image_test.go": `package image

import (
	"os/exec"
	"testing"
)

func TestExec(t *testing.T) { _ = exec.Command("true") }
`,
	"vm/image/ext_test.go": `package image_test

import (
	"os/exec"
	"testing"
)

func TestExecExternal(t *testing.T) { _ = exec.Command("true") }
`,
	"cmd/kelpie/main.go": `package main

import "net"

func main() {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err == nil {
		l.Close()
	}
}
`,
}

// build compiles kelpie-lint and writes the fixture module, returning the
// binary and the module directory.
func build(t *testing.T) (bin, dir string) {
	t.Helper()
	bin = filepath.Join(t.TempDir(), "kelpie-lint")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	dir = t.TempDir()
	for name, src := range fixture {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return bin, dir
}

// run runs name with args in dir, offline, and returns its combined output
// and exit code.
func run(t *testing.T, dir, name string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOPROXY=off", "GOWORK=off", "GOFLAGS=-mod=mod")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return out.String(), 0
	case errors.As(err, &exit):
		return out.String(), exit.ExitCode()
	default:
		t.Fatalf("%s %v: %v", name, args, err)
		return "", 0
	}
}

// TestStandaloneAndVet checks both ways CI runs the checker: as a
// standalone command over ./... and as go vet's -vettool. Each must exit
// non-zero with a file:line: diagnostic for kv/bad and none for the others.
func TestStandaloneAndVet(t *testing.T) {
	bin, dir := build(t)
	wants := []string{
		filepath.Join("kv", "bad", "bad.go") + ":7:9: net.Dial opens a real socket [socket]; allowed only in cmd/kelpie,",
		// Test files are checked too (exec is not among their exemptions).
		filepath.Join("kv", "bad", "bad_test.go") + `:4:2: import "os/exec" starts real processes [exec]`,
	}
	for _, tc := range []struct {
		name string
		cmd  string
		args []string
	}{
		{"standalone", bin, []string{"./..."}},
		{"go vet -vettool", "go", []string{"vet", "-vettool=" + bin, "./..."}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := run(t, dir, tc.cmd, tc.args...)
			if code == 0 {
				t.Fatalf("exit code 0, want non-zero; output:\n%s", out)
			}
			for _, want := range wants {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
			for _, quiet := range []string{"good.go", "good_test.go", "main.go", "image.go", "image_test.go", "ext_test.go"} {
				if strings.Contains(out, quiet) {
					t.Errorf("output reports %s, which breaks no rule it is not allowed to:\n%s", quiet, out)
				}
			}
		})
	}
	// Without the offender both modes pass.
	if err := os.RemoveAll(filepath.Join(dir, "kv", "bad")); err != nil {
		t.Fatal(err)
	}
	if out, code := run(t, dir, bin, "./..."); code != 0 {
		t.Errorf("clean module: exit code %d, want 0; output:\n%s", code, out)
	}
	if out, code := run(t, dir, "go", "vet", "-vettool="+bin, "./..."); code != 0 {
		t.Errorf("clean module under go vet: exit code %d, want 0; output:\n%s", code, out)
	}
}

func TestPolicyQueries(t *testing.T) {
	var b strings.Builder
	printHostOnly(&b)
	if got, want := b.String(), strings.Join(boundary.HostOnlyPatterns(), "\n")+"\n"; got != want {
		t.Errorf("-hostonly printed %q, want %q", got, want)
	}
	b.Reset()
	printAllowList(&b)
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	if len(lines) != len(boundary.AllowList)+1 {
		t.Fatalf("-allowlist printed %d lines, want one per entry plus the test-file policy (%d):\n%s", len(lines), len(boundary.AllowList)+1, b.String())
	}
	for i, e := range boundary.AllowList {
		if !strings.HasPrefix(lines[i], e.Pattern+" ") || !strings.HasSuffix(lines[i], e.Why) {
			t.Errorf("-allowlist line %d = %q, want pattern %q and reason %q", i, lines[i], e.Pattern, e.Why)
		}
	}
	b.Reset()
	printRules(&b)
	for _, r := range boundary.Rules {
		if !strings.Contains(b.String(), string(r)+" ") {
			t.Errorf("-rules output lacks rule %s:\n%s", r, b.String())
		}
	}
}
