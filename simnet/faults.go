package simnet

import (
	"time"

	"github.com/kelpie-go/kelpie/sim"
)

// The network's fault kinds. Each is consulted at one decision point, for the
// node named there (a Fault with Node set applies to that node only).
var (
	// FaultPartition is consulted at each dial (for the dialling node) and
	// each write (for the writing node); when it fires, the link that
	// operation uses is cut in both directions for the fault's Delay
	// (DefaultFaultPartition when zero), then heals by itself.
	FaultPartition = sim.DeclareFault("net.partition",
		"cut the link a dial or write uses, both ways, for Delay; queued bytes wait for the heal")

	// FaultReset is consulted at each Read and each Write; when it fires the
	// connection is aborted and both ends fail with ECONNRESET.
	FaultReset = sim.DeclareFault("net.reset",
		"abort the connection under a read or write; both ends fail with ECONNRESET")

	// FaultStall is consulted at each write; when it fires that direction of
	// the connection delivers nothing for Delay (DefaultFaultStall when
	// zero), then resumes in order.
	FaultStall = sim.DeclareFault("net.stall",
		"freeze one direction of a connection for Delay, then resume in order")

	// FaultLatency is consulted at each write; when it fires that write
	// arrives Delay (DefaultFaultLatency when zero) later than it would have.
	FaultLatency = sim.DeclareFault("net.latency",
		"add Delay to the delivery of one write (and, to keep order, of what follows it)")

	// FaultDialRefused is consulted at each dial; when it fires the dial fails
	// with ECONNREFUSED.
	FaultDialRefused = sim.DeclareFault("net.dial_refused",
		"refuse a dial with ECONNREFUSED")
)

// Magnitudes of the faults that take a Delay, used when the Fault leaves it
// zero.
const (
	DefaultFaultPartition = 2 * time.Second
	DefaultFaultStall     = time.Second
	DefaultFaultLatency   = 200 * time.Millisecond
)

func delayOr(f sim.Fault, def time.Duration) time.Duration {
	if f.Delay > 0 {
		return f.Delay
	}
	return def
}
