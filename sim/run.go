package sim

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"testing"
)

// Run runs fn as one simulation inside test t: it takes the seed from
// DST_SEED (choosing and printing one when unset), runs fn, stops the nodes,
// checks invariants and faults, and prints the summary line
//
//	dst <TestName> seed=<N> trace=<sha256> virtual=<duration>
//
// On failure it also prints the last events of the trace and the command
// that replays the run. fn reports problems through t as any test does, or
// by returning an error.
func Run(t *testing.T, fn func(s *Simulation) error) {
	t.Helper()
	seed, chosen, err := SeedFromEnv()
	if err != nil {
		t.Fatalf("%v", err)
	}
	if chosen {
		t.Logf("%s is not set; chose seed %d", SeedEnv, seed)
	}
	pkg := callerPackage()
	s := New(t.Name(), seed)
	var fnErr error
	completed := false
	// The report runs deferred so it also runs when fn stops the test with
	// t.FailNow (runtime.Goexit) or panics.
	defer func() {
		if p := recover(); p != nil {
			buf := make([]byte, 16<<10)
			buf = buf[:runtime.Stack(buf, false)]
			fnErr = fmt.Errorf("panic: %v\n%s", p, buf)
		} else if !completed {
			fnErr = fmt.Errorf("the simulation stopped early")
		}
		res := s.finish(fnErr)
		fmt.Println(res.Line())
		if res.Err == nil && !t.Failed() {
			return
		}
		if res.Err != nil {
			t.Errorf("simulation failed: %v", res.Err)
		}
		var b strings.Builder
		fmt.Fprintf(&b, "last %d trace events:\n", len(res.Tail))
		for _, e := range res.Tail {
			fmt.Fprintf(&b, "  %s\n", e)
		}
		fmt.Fprintf(&b, "replay: %s", ReplayCommand(pkg, testRunPattern(), seed, ConfigEnv(os.Environ())...))
		t.Log(b.String())
	}()
	fnErr = fn(s)
	completed = true
}

// ReplayCommand is the command that replays a simulation run with seed in
// package pkg (a path relative to the module root, "./sim"). run is the
// -test.run pattern the process was started with: the Go runtime's random
// state and heap carry from one test to the next within a process, so a
// simulation replays exactly only with the same tests before it, and the
// command reruns the same set, in the same order. env holds the KEY=VALUE
// variables that configured the run; the command sets them again.
func ReplayCommand(pkg, run string, seed uint64, env ...string) string {
	if run == "" {
		run = "."
	}
	var vars strings.Builder
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		fmt.Fprintf(&vars, "%s='%s' ", k, strings.ReplaceAll(v, "'", `'\''`))
	}
	return fmt.Sprintf("%smake sim SEED=%d PKG=%s RUN='%s'", vars.String(), seed, pkg, strings.ReplaceAll(run, "'", `'\''`))
}

// ConfigVar reports whether the environment variable key configures a
// simulation, and so is handed to it by the executor and set again by a
// replay: DST_*, KELPIE_*, GODEBUG and GOTRACEBACK, but not the seed itself
// (DST_SEED), the executor's marker (KELPIE_DST) or the variables of the
// host tools (KELPIE_DST_CACHE, KELPIE_SCENARIOS), which a run must not
// depend on.
func ConfigVar(key string) bool {
	switch key {
	case SeedEnv, "KELPIE_DST", "KELPIE_DST_CACHE", "KELPIE_SCENARIOS":
		return false
	case "GODEBUG", "GOTRACEBACK":
		return true
	}
	return strings.HasPrefix(key, "DST_") || strings.HasPrefix(key, "KELPIE_")
}

// ConfigEnv keeps the entries of env whose variable is a ConfigVar, sorted.
func ConfigEnv(env []string) []string {
	var out []string
	for _, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); ConfigVar(k) {
			out = append(out, kv)
		}
	}
	sort.Strings(out)
	return out
}

// testRunPattern is the -test.run pattern of this test process, "" if none.
func testRunPattern() string {
	if f := flag.Lookup("test.run"); f != nil {
		return f.Value.String()
	}
	return ""
}

// modulePath is the module's import path, used when build information is
// not available.
const modulePath = "github.com/kelpie-go/kelpie"

// callerPackage returns the module-relative directory ("./simnet") of the
// first caller outside this package: the test that ran the simulation.
func callerPackage() string {
	mod := modulePath
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Path != "" {
		mod = bi.Main.Path
	}
	pcs := make([]uintptr, 16)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(2, pcs)])
	for {
		f, more := frames.Next()
		pkg := funcPackage(f.Function)
		if pkg != "" && pkg != mod+"/sim" {
			if rel, ok := strings.CutPrefix(strings.TrimSuffix(pkg, "_test"), mod); ok {
				return "." + rel
			}
			return "./..."
		}
		if !more {
			return "./..."
		}
	}
}

// funcPackage returns the import path in a function's full name, e.g.
// "github.com/kelpie-go/kelpie/simnet_test" for
// "github.com/kelpie-go/kelpie/simnet_test.TestSimX.func1".
func funcPackage(name string) string {
	slash := strings.LastIndex(name, "/")
	dot := strings.Index(name[slash+1:], ".")
	if dot < 0 {
		return ""
	}
	return name[:slash+1+dot]
}
