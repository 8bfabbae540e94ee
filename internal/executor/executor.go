// Package executor runs Go programs compiled for GOOS=wasip1 GOARCH=wasm
// deterministically. It is the engine behind cmd/kelpie-dst (the go test
// -exec program) and kelpie sim.
//
// A wasip1 Go program runs on one thread with cooperative scheduling, so the
// Go scheduler is a pure function of its inputs. The executor controls every
// one of them:
//
//   - randomness: random_get is a ChaCha8 stream seeded from the seed, which
//     seeds the Go runtime (map order, select, math/rand, crypto/rand);
//   - time: nanotime and walltime read a virtual clock that starts at a fixed
//     instant and moves only when the program sleeps (poll_oneoff with a
//     clock subscription advances it by the full timeout, at once) plus a tiny
//     fixed step per reading, so a loop that polls the clock still
//     progresses;
//   - arguments and environment: exactly what the caller passes (the
//     environment sorted; GuestEnv picks a host's variables), plus DST_SEED,
//     KELPIE_DST=1, PWD, TMPDIR and HOME;
//   - the filesystem: the working directory, read-only at /src (a fixed path,
//     so a run does not depend on where the checkout lives), and a fresh
//     empty directory as /tmp; nothing else of the host is visible.
//
// Compiled modules are cached on disk (wazero's compilation cache), so a
// second run of the same binary starts without compiling.
package executor

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kelpie-go/kelpie/sim"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"
)

// Epoch is the virtual wall-clock time at which every run starts.
var Epoch = time.Date(2026, time.January, 1, 0, 0, 0, 0, time.UTC)

// ClockStep is how far the virtual monotonic clock moves on each reading.
// Without it a goroutine that spins until time passes would spin forever;
// with it virtual time also measures (deterministically) how much the
// program looked at the clock.
const ClockStep = 100 * time.Nanosecond

// MaxModuleBytes bounds the size of a module the executor will load.
const MaxModuleBytes = 1 << 30

// DefaultRealTimeout bounds the real time one run may take. A simulation
// that computes without ever sleeping cannot reach its virtual deadline, so
// this is the backstop.
const DefaultRealTimeout = 30 * time.Minute

// guestTmp is where the fresh temporary directory appears in the guest.
const guestTmp = "/tmp"

// GuestWorkDir is where the working directory appears in the guest. It is
// fixed because the program sees its working directory (PWD, os.Getwd),
// and a path that varied with the host would change the run.
const GuestWorkDir = "/src"

// Runner compiles and runs modules. It is safe for concurrent use: each
// Run instantiates a fresh module with its own memory and clock.
type Runner struct {
	rt    wazero.Runtime
	cache wazero.CompilationCache

	mu       sync.Mutex
	compiled map[string]*Module
}

// Module is a compiled program ready to run.
type Module struct {
	Path     string
	compiled wazero.CompiledModule
}

// NewRunner returns a Runner whose compiled code is cached in cacheDir ("" for
// no disk cache).
func NewRunner(ctx context.Context, cacheDir string) (*Runner, error) {
	cfg := wazero.NewRuntimeConfig().WithCloseOnContextDone(true)
	var cache wazero.CompilationCache
	if cacheDir != "" {
		c, err := wazero.NewCompilationCacheWithDir(cacheDir)
		if err != nil {
			return nil, fmt.Errorf("compilation cache %s: %w", cacheDir, err)
		}
		cache = c
		cfg = cfg.WithCompilationCache(c)
	}
	rt := wazero.NewRuntimeWithConfig(ctx, cfg)
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, rt); err != nil {
		rt.Close(ctx)
		return nil, fmt.Errorf("wasi: %w", err)
	}
	return &Runner{rt: rt, cache: cache, compiled: map[string]*Module{}}, nil
}

// GuestEnv picks from a host environment the variables a simulation may be
// configured by (sim.ConfigVar: DST_*, KELPIE_*, GODEBUG, GOTRACEBACK, less
// the seed, the executor's marker and the host tools' own settings).
// Everything handed to the guest is an input: even a variable it never reads
// shifts its heap and so its trace, which is why a cache path must not reach
// it.
func GuestEnv(host []string) []string { return sim.ConfigEnv(host) }

// DefaultCacheDir is where compiled modules are cached: $KELPIE_DST_CACHE,
// or kelpie-dst under the user's cache directory.
func DefaultCacheDir() string {
	if d := os.Getenv("KELPIE_DST_CACHE"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "kelpie-dst")
	}
	return filepath.Join(os.TempDir(), "kelpie-dst-cache")
}

// Close releases the runtime.
func (r *Runner) Close(ctx context.Context) error {
	err := r.rt.Close(ctx)
	if r.cache != nil {
		err = errors.Join(err, r.cache.Close(ctx))
	}
	return err
}

// Compile loads and compiles the module at path, once per Runner.
func (r *Runner) Compile(ctx context.Context, path string) (*Module, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if m, ok := r.compiled[path]; ok {
		return m, nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("program %s: %w", path, unwrapPathError(err))
	}
	if fi.IsDir() {
		return nil, fmt.Errorf("program %s: is a directory, not a wasm module", path)
	}
	if fi.Size() > MaxModuleBytes {
		return nil, fmt.Errorf("program %s: %d bytes, the limit is %d", path, fi.Size(), MaxModuleBytes)
	}
	bin, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("program %s: %w", path, unwrapPathError(err))
	}
	if len(bin) < 4 || string(bin[:4]) != "\x00asm" {
		return nil, fmt.Errorf("program %s: not a WebAssembly module (build it with GOOS=wasip1 GOARCH=wasm)", path)
	}
	c, err := r.rt.CompileModule(ctx, bin)
	if err != nil {
		return nil, fmt.Errorf("program %s: compile: %w", path, err)
	}
	m := &Module{Path: path, compiled: c}
	r.compiled[path] = m
	return m, nil
}

func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// Config is one run's inputs.
type Config struct {
	Seed uint64
	// Args are the program's arguments after argv[0]; argv[0] is the base
	// name of the module's path, so temporary build paths do not leak in.
	Args []string
	// Env holds extra KEY=VALUE pairs. DST_SEED, KELPIE_DST, PWD and TMPDIR
	// are always set by the executor and cannot be overridden.
	Env []string
	// Dir is the host working directory, visible read-only at GuestWorkDir
	// and used as the program's working directory ("" for none).
	Dir            string
	Stdout, Stderr io.Writer
	// RealTimeout bounds the run in real time (0 means DefaultRealTimeout).
	RealTimeout time.Duration
}

// Result is what a run did.
type Result struct {
	ExitCode uint32
	Virtual  time.Duration // virtual time at exit
	Real     time.Duration // real time the run took
}

// Run runs m once with cfg. A non-zero exit status is a Result, not an
// error; errors are failures to run at all (or a real-time timeout).
func (r *Runner) Run(ctx context.Context, m *Module, cfg Config) (Result, error) {
	timeout := cfg.RealTimeout
	if timeout <= 0 {
		timeout = DefaultRealTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	tmp, err := os.MkdirTemp("", "kelpie-dst-")
	if err != nil {
		return Result{}, fmt.Errorf("temporary directory: %w", err)
	}
	defer os.RemoveAll(tmp)

	clk := &clock{}
	mc := wazero.NewModuleConfig().
		WithName("").
		WithArgs(append([]string{filepath.Base(m.Path)}, cfg.Args...)...).
		WithStdin(strings.NewReader("")).
		WithStdout(orDiscard(cfg.Stdout)).
		WithStderr(orDiscard(cfg.Stderr)).
		WithRandSource(seededReader(cfg.Seed)).
		WithNanotime(clk.nanotime, 1).
		WithWalltime(clk.walltime, 1).
		WithNanosleep(clk.nanosleep).
		WithOsyield(func() {})

	fsc := wazero.NewFSConfig().WithDirMount(tmp, guestTmp)
	if cfg.Dir != "" {
		dir, err := filepath.Abs(cfg.Dir)
		if err != nil {
			return Result{}, fmt.Errorf("working directory %s: %w", cfg.Dir, err)
		}
		fsc = fsc.WithReadOnlyDirMount(dir, GuestWorkDir)
		mc = mc.WithEnv("PWD", GuestWorkDir)
	}
	mc = mc.WithFSConfig(fsc)

	// Sorted, so that the order the caller collected them in (the host's
	// environment order) does not reach the guest's memory.
	env := slices.Clone(cfg.Env)
	slices.Sort(env)
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return Result{}, fmt.Errorf("environment entry %q: want KEY=VALUE", kv)
		}
		switch k {
		case "DST_SEED", "KELPIE_DST", "PWD", "TMPDIR":
			continue
		}
		mc = mc.WithEnv(k, v)
	}
	mc = mc.WithEnv("DST_SEED", fmt.Sprint(cfg.Seed)).
		WithEnv("KELPIE_DST", "1").
		WithEnv("TMPDIR", guestTmp).
		WithEnv("HOME", guestTmp)

	start := time.Now()
	mod, err := r.rt.InstantiateModule(ctx, m.compiled, mc)
	res := Result{Virtual: time.Duration(clk.now), Real: time.Since(start)}
	if mod != nil {
		mod.Close(ctx)
	}
	if err != nil {
		var exit *sys.ExitError
		if errors.As(err, &exit) {
			if ctx.Err() != nil {
				return res, fmt.Errorf("run exceeded the real-time limit of %s (virtual time reached %s)", timeout, res.Virtual)
			}
			res.ExitCode = exit.ExitCode()
			return res, nil
		}
		return res, fmt.Errorf("run: %w", err)
	}
	return res, nil
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

// clock is one run's virtual clock. A module runs on one goroutine of the
// host, so the clock needs no lock.
type clock struct{ now int64 }

func (c *clock) nanotime() int64 {
	c.now += int64(ClockStep)
	return c.now
}

func (c *clock) walltime() (sec int64, nsec int32) {
	t := Epoch.Add(time.Duration(c.now))
	return t.Unix(), int32(t.Nanosecond())
}

func (c *clock) nanosleep(ns int64) {
	if ns > 0 {
		c.now += ns
	}
}

// seededReader is the program's only source of randomness.
func seededReader(seed uint64) io.Reader {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], seed)
	key := sha256.Sum256(append([]byte("kelpie-dst runtime "), b[:]...))
	return rand.NewChaCha8(key)
}
