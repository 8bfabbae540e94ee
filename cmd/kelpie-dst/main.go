// Command kelpie-dst runs Go test binaries (and other wasip1 programs)
// deterministically: a seeded runtime, a virtual clock and a controlled
// environment and filesystem (see internal/executor). It is used as the
// -exec program of go test:
//
//	go build -o bin/kelpie-dst ./cmd/kelpie-dst
//	DST_SEED=42 GOOS=wasip1 GOARCH=wasm go test -exec bin/kelpie-dst ./sim
//
// With DST_SEED unset it chooses a seed and prints it. On failure it prints
// the seed and the command that replays the run.
//
// It also sweeps: kelpie-dst -seeds 1-200 [-repeat 2] prog.wasm args...
// runs the program once per seed (twice with -repeat 2, comparing the
// "dst ..." summary lines of both runs byte for byte) and prints every
// summary line, a progress count on standard error, and the failures.
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/kelpie-go/kelpie/internal/executor"
	"github.com/kelpie-go/kelpie/sim"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("kelpie-dst", flag.ContinueOnError)
	fs.SetOutput(stderr)
	seeds := fs.String("seeds", "", "sweep this range of seeds (A-B), running the program once per seed")
	repeat := fs.Int("repeat", 1, "with -seeds: run each seed this many times and require identical summary lines")
	jobs := fs.Int("j", runtime.NumCPU(), "with -seeds: runs in parallel")
	quiet := fs.Bool("q", false, "with -seeds: print only the summary lines and failures, not the program's output")
	timeout := fs.Duration("real-timeout", executor.DefaultRealTimeout, "real-time limit for one run")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: kelpie-dst [-seeds A-B [-repeat N] [-j N] [-q]] program.wasm [args...]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "kelpie-dst: no program given (usage: kelpie-dst [flags] program.wasm [args...])")
		return 2
	}
	prog, progArgs := fs.Arg(0), fs.Args()[1:]
	if *jobs < 1 || *jobs > maxJobs {
		fmt.Fprintf(stderr, "kelpie-dst: -j %d: want 1 to %d\n", *jobs, maxJobs)
		return 2
	}
	if *repeat < 1 || *repeat > maxRepeat {
		fmt.Fprintf(stderr, "kelpie-dst: -repeat %d: want 1 to %d\n", *repeat, maxRepeat)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	runner, err := executor.NewRunner(ctx, executor.DefaultCacheDir())
	if err != nil {
		fmt.Fprintf(stderr, "kelpie-dst: %v\n", err)
		return 1
	}
	defer runner.Close(context.Background())
	mod, err := runner.Compile(ctx, prog)
	if err != nil {
		fmt.Fprintf(stderr, "kelpie-dst: %v\n", err)
		return 2
	}
	progArgs, testTimeout := virtualTestTimeout(progArgs)
	if testTimeout > 0 && testTimeout < *timeout {
		*timeout = testTimeout
	}
	wd, _ := os.Getwd()
	env := executor.GuestEnv(os.Environ())
	base := executor.Config{
		Args:        progArgs,
		Env:         env,
		Dir:         wd,
		RealTimeout: *timeout,
	}

	if *seeds == "" {
		seed, chosen, err := sim.SeedFromEnv()
		if err != nil {
			fmt.Fprintf(stderr, "kelpie-dst: %v\n", err)
			return 2
		}
		if chosen {
			fmt.Fprintf(stderr, "kelpie-dst: %s not set; using seed %d\n", sim.SeedEnv, seed)
		}
		cfg := base
		cfg.Seed, cfg.Stdout, cfg.Stderr = seed, stdout, stderr
		res, err := runner.Run(ctx, mod, cfg)
		if err != nil {
			fmt.Fprintf(stderr, "kelpie-dst: %v\nkelpie-dst: seed=%d; replay: %s\n", err, seed, replay(wd, seed, env, prog, progArgs))
			return 1
		}
		if res.ExitCode != 0 {
			fmt.Fprintf(stderr, "kelpie-dst: exit status %d with seed=%d (virtual %s, real %s)\nkelpie-dst: replay: %s\n",
				res.ExitCode, seed, res.Virtual, res.Real.Round(time.Millisecond), replay(wd, seed, env, prog, progArgs))
		}
		return int(res.ExitCode)
	}

	rng, err := sim.ParseSeedRange(*seeds)
	if err != nil {
		fmt.Fprintf(stderr, "kelpie-dst: -seeds: %v\n", err)
		return 2
	}
	return sweep(ctx, runner, mod, base, rng, *repeat, *jobs, *quiet, wd, prog, progArgs, stdout, stderr)
}

// VirtualTimeoutScale converts go test's -timeout into virtual time. The
// timeout a user gives go test is a bound on real time, and the executor
// enforces it as one; inside the simulation the test binary's own timer
// runs on the virtual clock, where an hour can pass in a second, so it gets
// this many times more.
const VirtualTimeoutScale = 100

// virtualTestTimeout rewrites a -test.timeout argument into virtual time and
// returns the real-time bound it stood for (0 if there was none).
func virtualTestTimeout(args []string) ([]string, time.Duration) {
	out := make([]string, len(args))
	copy(out, args)
	for i, a := range out {
		v, ok := strings.CutPrefix(a, "-test.timeout=")
		if !ok {
			continue
		}
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			continue
		}
		out[i] = "-test.timeout=" + (d * VirtualTimeoutScale).String()
		return out, d
	}
	return out, 0
}

// maxJobs bounds -j.
const maxJobs = 64

// maxRepeat bounds -repeat.
const maxRepeat = 10

// sweep runs every seed in rng, repeat times each, on jobs workers, and
// compares the summary lines of the repeats. Output is printed in seed
// order whatever order the runs finish in.
func sweep(ctx context.Context, runner *executor.Runner, mod *executor.Module, base executor.Config,
	rng sim.SeedRange, repeat, jobs int, quiet bool, wd, prog string, progArgs []string, stdout, stderr io.Writer) int {
	type outcome struct {
		out      []byte
		failures []string
	}
	runSeed := func(seed uint64) outcome {
		var o outcome
		var first []string
		for r := 0; r < repeat && ctx.Err() == nil; r++ {
			var out bytes.Buffer
			cfg := base
			cfg.Seed, cfg.Stdout, cfg.Stderr = seed, &out, &out
			res, err := runner.Run(ctx, mod, cfg)
			lines := summaryLines(out.Bytes())
			again := replay(wd, seed, base.Env, prog, progArgs)
			switch {
			case err != nil:
				o.failures = append(o.failures, fmt.Sprintf("seed=%d: %v; replay: %s", seed, err, again))
			case res.ExitCode != 0:
				if !quiet {
					o.out = append(o.out, out.Bytes()...)
				}
				o.failures = append(o.failures, fmt.Sprintf("seed=%d: exit status %d; replay: %s", seed, res.ExitCode, again))
			case r == 0:
				first = lines
				if quiet {
					for _, l := range lines {
						o.out = append(o.out, l+"\n"...)
					}
				} else {
					o.out = append(o.out, out.Bytes()...)
				}
			default:
				if d := diffLines(first, lines); d != "" {
					o.failures = append(o.failures, fmt.Sprintf("seed=%d: run %d differs from run 1 (not deterministic): %s; replay: %s", seed, r+1, d, again))
				}
			}
		}
		return o
	}

	n := rng.Len()
	outcomes := make([]outcome, n)
	done := make([]chan struct{}, n)
	for i := range done {
		done[i] = make(chan struct{})
	}
	next := make(chan int)
	for w := 0; w < jobs; w++ {
		go func() {
			for i := range next {
				outcomes[i] = runSeed(rng.First + uint64(i))
				close(done[i])
			}
		}()
	}
	go func() {
		defer close(next)
		for i := 0; i < n; i++ {
			select {
			case next <- i:
			case <-ctx.Done():
				return
			}
		}
	}()

	var failures []string
	start := time.Now()
	for i := 0; i < n; i++ {
		select {
		case <-done[i]:
		case <-ctx.Done():
			fmt.Fprintln(stderr, "kelpie-dst: interrupted")
			return 1
		}
		stdout.Write(outcomes[i].out)
		failures = append(failures, outcomes[i].failures...)
		outcomes[i] = outcome{}
		if (i+1)%progressEvery == 0 || i+1 == n {
			fmt.Fprintf(stderr, "kelpie-dst: %d/%d seeds, %d failed, %s\n", i+1, n, len(failures), time.Since(start).Round(time.Millisecond))
		}
	}
	if ctx.Err() != nil {
		fmt.Fprintln(stderr, "kelpie-dst: interrupted")
		return 1
	}
	if len(failures) > 0 {
		fmt.Fprintf(stderr, "kelpie-dst: %d failure(s) in seeds %d-%d:\n", len(failures), rng.First, rng.Last)
		for _, f := range failures {
			fmt.Fprintf(stderr, "  %s\n", f)
		}
		return 1
	}
	return 0
}

// progressEvery is how many seeds pass between progress lines.
const progressEvery = 25

// summaryLines returns the "dst ..." lines of a run's output.
func summaryLines(out []byte) []string {
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if l := sc.Text(); strings.HasPrefix(l, "dst ") {
			lines = append(lines, l)
		}
	}
	return lines
}

func diffLines(a, b []string) string {
	if len(a) != len(b) {
		return fmt.Sprintf("%d summary lines, then %d", len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			return fmt.Sprintf("%q then %q", a[i], b[i])
		}
	}
	return ""
}

// replay is the command that reruns this program with seed and the host
// variables that reached it (env, from executor.GuestEnv): a go test
// command when the program is a test binary run from a package directory
// inside a module, else a kelpie-dst command.
func replay(wd string, seed uint64, env []string, prog string, args []string) string {
	self, err := os.Executable()
	if err != nil {
		self = "kelpie-dst"
	}
	var testArgs []string
	isTest := false
	for _, a := range args {
		isTest = isTest || strings.HasPrefix(a, "-test.")
		if v, ok := strings.CutPrefix(a, "-test.run="); ok {
			testArgs = append(testArgs, "-run", shellQuote(v))
		}
	}
	vars := fmt.Sprintf("DST_SEED=%d", seed)
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		vars += " " + k + "=" + shellQuote(v)
	}
	root, rel, ok := moduleDir(wd)
	if !ok || !isTest {
		quoted := make([]string, len(args))
		for i, a := range args {
			quoted[i] = shellQuote(a)
		}
		return strings.TrimSpace(fmt.Sprintf("%s %s %s %s", vars, shellQuote(self), shellQuote(prog), strings.Join(quoted, " ")))
	}
	return fmt.Sprintf("cd %s && %s GOOS=wasip1 GOARCH=wasm go test -count=1 -v -exec %s %s ./%s",
		shellQuote(root), vars, shellQuote(self), strings.Join(testArgs, " "), filepath.ToSlash(rel))
}

// moduleDir finds the module root above dir and dir's path relative to it.
func moduleDir(dir string) (root, rel string, ok bool) {
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			r, err := filepath.Rel(d, dir)
			if err != nil {
				return "", "", false
			}
			return d, r, true
		}
		if filepath.Dir(d) == d {
			return "", "", false
		}
	}
}

func shellQuote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\n'\"\\$`*?[]{}()<>|&;!#~") {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
