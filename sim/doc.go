// Package sim is Kelpie's deterministic simulation library.
//
// A simulation is an ordinary Go test that runs production code — real
// net/http servers, the real actor runtime, the real storage engine — over
// simulated boundaries: an in-memory network (package simnet), simulated
// storage, simulated VMs. Determinism does not come from this package. It
// comes from the executor (cmd/kelpie-dst), which runs the test binary as
// WebAssembly on one thread, seeds every source of randomness the Go runtime
// has from DST_SEED, and gives it a virtual clock that only moves when the
// program sleeps. Inside that world the Go scheduler, map iteration, select,
// timers and context deadlines are all a function of the seed.
//
// What this package adds on top is the structure a simulation needs:
//
//   - Run, which reads the seed, runs one simulation, checks its invariants,
//     and prints "dst <Test> seed=<N> trace=<sha256> virtual=<d>";
//   - named random streams (Simulation.Rand), so each component draws from
//     its own sequence and adding a component never shifts another's draws;
//   - nodes that start, are killed (their goroutines are told to stop, their
//     connections are torn down, their unsynced storage is lost) and restart;
//   - typed faults (Fault, FaultKind) with probabilities and time windows, and
//     an error when a fault that was asked for is never consulted;
//   - a trace of (virtual time, node, event) whose SHA-256 must be identical
//     across two runs of one seed;
//   - invariant, liveness and linearizability helpers that check the state
//     and histories of the production code.
//
// The same tests pass natively (go test ./...): there the scheduler and the
// clock are real, so traces differ between runs, but every invariant holds.
package sim
