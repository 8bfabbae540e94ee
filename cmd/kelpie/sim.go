package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/kelpie-go/kelpie/internal/executor"
	"github.com/kelpie-go/kelpie/sim"
)

func init() {
	register(command{name: "sim", summary: "run simulation scenarios deterministically (one seed or a sweep)", run: runSim})
}

// scenariosModule is the file name of the compiled scenarios program that
// kelpie sim looks for next to its own executable.
const scenariosModule = "kelpie-scenarios.wasm"

// maxSimWorkers bounds -j.
const maxSimWorkers = 64

// maxFailureReport bounds how many failures the summary lists in full.
const maxFailureReport = 50

func runSim(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("kelpie sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	seed := fs.String("seed", "", "run with this seed (default: a random seed, printed)")
	seeds := fs.String("seeds", "", "sweep this range of seeds, A-B")
	var names multiFlag
	fs.Var(&names, "scenario", "run only this scenario (repeatable; default: all)")
	list := fs.Bool("list", false, "list the scenarios and exit")
	wasm := fs.String("wasm", "", "the scenarios module (default: $KELPIE_SCENARIOS, or "+scenariosModule+" next to this binary)")
	jobs := fs.Int("j", runtime.NumCPU(), "runs in parallel")
	verbose := fs.Bool("v", false, "print each run's summary line during a sweep")
	timeout := fs.Duration("real-timeout", 5*time.Minute, "real-time limit for one run")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: kelpie sim [--seed N | --seeds A-B] [--scenario NAME]... [--list] [-j N] [-v]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "kelpie sim: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *seed != "" && *seeds != "" {
		fmt.Fprintln(stderr, "kelpie sim: give --seed or --seeds, not both")
		return 2
	}
	if *jobs < 1 || *jobs > maxSimWorkers {
		fmt.Fprintf(stderr, "kelpie sim: -j %d: want 1 to %d\n", *jobs, maxSimWorkers)
		return 2
	}
	rng := sim.SeedRange{}
	switch {
	case *seeds != "":
		r, err := sim.ParseSeedRange(*seeds)
		if err != nil {
			fmt.Fprintf(stderr, "kelpie sim: --seeds: %v\n", err)
			return 2
		}
		rng = r
	case *seed != "":
		n, err := sim.ParseSeed(*seed)
		if err != nil {
			fmt.Fprintf(stderr, "kelpie sim: --seed: %v\n", err)
			return 2
		}
		rng = sim.SeedRange{First: n, Last: n}
	}

	path, err := findScenarios(*wasm)
	if err != nil {
		fmt.Fprintf(stderr, "kelpie sim: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	runner, err := executor.NewRunner(ctx, executor.DefaultCacheDir())
	if err != nil {
		fmt.Fprintf(stderr, "kelpie sim: %v\n", err)
		return 1
	}
	defer runner.Close(context.Background())
	mod, err := runner.Compile(ctx, path)
	if err != nil {
		fmt.Fprintf(stderr, "kelpie sim: %v\n", err)
		return 2
	}
	known, err := listScenarios(ctx, runner, mod)
	if err != nil {
		fmt.Fprintf(stderr, "kelpie sim: %v\n", err)
		return 1
	}
	if *list {
		for _, sc := range known {
			fmt.Fprintf(stdout, "%-24s %s\n", sc[0], sc[1])
		}
		return 0
	}
	selected, err := selectScenarios(known, names)
	if err != nil {
		fmt.Fprintf(stderr, "kelpie sim: %v\n", err)
		return 2
	}
	if *seed == "" && *seeds == "" {
		n := sim.RandomSeed()
		fmt.Fprintf(stderr, "kelpie sim: no seed given; using seed %d\n", n)
		rng = sim.SeedRange{First: n, Last: n}
	}

	s := &sweep{
		runner: runner, mod: mod, rng: rng, scenarios: selected, jobs: *jobs,
		timeout: *timeout, verbose: *verbose || rng.Len() == 1, stdout: stdout, stderr: stderr,
		progress: newProgress(stderr, rng.Len()*len(selected)),
	}
	return s.run(ctx)
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// findScenarios locates the scenarios module.
func findScenarios(flagPath string) (string, error) {
	if flagPath != "" {
		return flagPath, nil
	}
	if env := os.Getenv("KELPIE_SCENARIOS"); env != "" {
		return env, nil
	}
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("cannot find the scenarios module: %v (give --wasm)", err)
	}
	p := filepath.Join(filepath.Dir(self), scenariosModule)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("scenarios module %s not found: build it with 'make build' (or give --wasm)", p)
	}
	return p, nil
}

// listScenarios asks the module for its scenarios: [name, doc] pairs.
func listScenarios(ctx context.Context, runner *executor.Runner, mod *executor.Module) ([][2]string, error) {
	var out, errOut bytes.Buffer
	res, err := runner.Run(ctx, mod, executor.Config{Args: []string{"-list"}, Stdout: &out, Stderr: &errOut})
	if err != nil {
		return nil, fmt.Errorf("listing scenarios: %w", err)
	}
	if res.ExitCode != 0 {
		return nil, fmt.Errorf("listing scenarios: exit status %d: %s", res.ExitCode, strings.TrimSpace(errOut.String()))
	}
	var known [][2]string
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		name, doc, _ := strings.Cut(sc.Text(), "\t")
		if name != "" {
			known = append(known, [2]string{name, doc})
		}
	}
	if len(known) == 0 {
		return nil, errors.New("the scenarios module lists no scenarios")
	}
	return known, nil
}

func selectScenarios(known [][2]string, names []string) ([]string, error) {
	if len(names) == 0 {
		all := make([]string, len(known))
		for i, k := range known {
			all[i] = k[0]
		}
		return all, nil
	}
	var out []string
	for _, n := range names {
		found := false
		for _, k := range known {
			found = found || k[0] == n
		}
		if !found {
			return nil, fmt.Errorf("unknown scenario %q (kelpie sim --list shows them)", n)
		}
		out = append(out, n)
	}
	return out, nil
}

type sweep struct {
	runner    *executor.Runner
	mod       *executor.Module
	rng       sim.SeedRange
	scenarios []string
	jobs      int
	timeout   time.Duration
	verbose   bool
	stdout    io.Writer
	stderr    io.Writer
	progress  *progress

	mu       sync.Mutex
	failures []string
	passed   int
	virtual  time.Duration
}

type simJob struct {
	seed     uint64
	scenario string
}

func (s *sweep) run(ctx context.Context) int {
	start := time.Now()
	jobs := make(chan simJob)
	var wg sync.WaitGroup
	for w := 0; w < s.jobs; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				s.one(ctx, j)
			}
		}()
	}
feed:
	for i := 0; i < s.rng.Len(); i++ {
		for _, name := range s.scenarios {
			select {
			case jobs <- simJob{seed: s.rng.First + uint64(i), scenario: name}:
			case <-ctx.Done():
				break feed
			}
		}
	}
	close(jobs)
	wg.Wait()
	s.progress.done()

	total := s.rng.Len() * len(s.scenarios)
	fmt.Fprintf(s.stdout, "%d runs (%d scenarios x %d seeds): %d passed, %d failed; %s virtual in %s real\n",
		total, len(s.scenarios), s.rng.Len(), s.passed, len(s.failures), s.virtual.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	if ctx.Err() != nil {
		fmt.Fprintln(s.stderr, "kelpie sim: interrupted")
		return 1
	}
	if len(s.failures) == 0 {
		return 0
	}
	fmt.Fprintln(s.stdout, "failures:")
	for i, f := range s.failures {
		if i == maxFailureReport {
			fmt.Fprintf(s.stdout, "  ... and %d more\n", len(s.failures)-maxFailureReport)
			break
		}
		fmt.Fprintf(s.stdout, "  %s\n", f)
	}
	return 1
}

func (s *sweep) one(ctx context.Context, j simJob) {
	var out, errOut bytes.Buffer
	res, err := s.runner.Run(ctx, s.mod, executor.Config{
		Seed: j.seed, Args: []string{"-scenario", j.scenario}, Stdout: &out, Stderr: &errOut, RealTimeout: s.timeout,
	})
	line := strings.TrimSpace(out.String())
	replay := fmt.Sprintf("kelpie sim --seed %d --scenario %s", j.seed, j.scenario)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.virtual += res.Virtual
	switch {
	case ctx.Err() != nil:
		return
	case err != nil:
		s.failures = append(s.failures, fmt.Sprintf("%s seed=%d: %v; replay: %s", j.scenario, j.seed, err, replay))
	case res.ExitCode != 0:
		msg, _, _ := strings.Cut(strings.TrimSpace(errOut.String()), "\n")
		s.failures = append(s.failures, fmt.Sprintf("%s seed=%d: %s; replay: %s", j.scenario, j.seed, msg, replay))
		if s.verbose {
			s.progress.clear()
			fmt.Fprintf(s.stdout, "%s\n%s", line, errOut.String())
		}
	default:
		s.passed++
		if s.verbose {
			s.progress.clear()
			fmt.Fprintln(s.stdout, line)
		}
	}
	s.progress.step(len(s.failures))
}

// progress draws a one-line progress display on a terminal, and a line every
// tenth of the way otherwise.
type progress struct {
	w     io.Writer
	total int
	n     int
	tty   bool
	start time.Time
	last  int
}

func newProgress(w io.Writer, total int) *progress {
	tty := false
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return &progress{w: w, total: total, tty: tty, start: time.Now()}
}

func (p *progress) step(failed int) {
	p.n++
	if p.total < 10 {
		return
	}
	elapsed := time.Since(p.start)
	eta := time.Duration(float64(elapsed) / float64(p.n) * float64(p.total-p.n)).Round(time.Second)
	msg := fmt.Sprintf("[%d/%d] %d%%  %d failed  eta %s", p.n, p.total, p.n*100/p.total, failed, eta)
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s", msg)
		return
	}
	if tenth := p.n * 10 / p.total; tenth > p.last {
		p.last = tenth
		fmt.Fprintln(p.w, msg)
	}
}

func (p *progress) clear() {
	if p.tty && p.total >= 10 {
		fmt.Fprint(p.w, "\r\033[K")
	}
}

func (p *progress) done() {
	if p.tty && p.total >= 10 {
		fmt.Fprintln(p.w)
	}
}
