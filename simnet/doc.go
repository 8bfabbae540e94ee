// Package simnet is Kelpie's simulated network: in-memory implementations of
// net.Listener and net.Conn over which real net/http servers and clients, and
// any node-to-node protocol, run unchanged inside a simulation.
//
// A Network belongs to one sim.Simulation. Its hosts are the simulation's
// nodes, addressed "node:port". A node listens with Listen and dials with
// Dial (or hands Dialer to an http.Transport). Every connection is two
// one-way pipes. A write is cut into segments that each carry a delivery
// time: now plus the link's latency plus seeded jitter, drawn from the
// stream "simnet/link/<from>-><to>", and never earlier than the segment
// before it, so bytes arrive in order. A pipe holds at most ConnBufferBytes
// in flight and unread; a writer past that blocks until the reader drains
// it (backpressure). Reads and writes honour deadlines with
// os.ErrDeadlineExceeded, Close gives the peer io.EOF after the data already
// sent, and CloseWrite half-closes like a TCP FIN.
//
// Faults live at the "net." boundary. Partitions are explicit (Partition,
// PartitionOneWay, Heal) or injected (net.partition, which cuts the link a
// dial or write is using, both ways, for the fault's Delay). A partitioned
// direction delivers nothing: dials that need it wait for a heal until their
// context or DialTimeout ends, and bytes already written stay queued, in
// order, until the link heals or the connection is reset — the choice TCP
// makes by retransmitting. net.reset aborts the connection under a read or a
// write, and both ends then fail with ECONNRESET; net.stall freezes one
// direction of a connection for Delay; net.latency adds Delay to one write;
// net.dial_refused refuses a dial. When a node stops (killed or shut down)
// its listeners close and its connections are reset: the peer learns at
// once, even across a partition, rather than through its own timeouts. Dial,
// accept, close, reset, partition and heal are written to the simulation's
// trace, in the order the program performs them.
//
// Two simplifications are deliberate. Closing a connection with unread
// bytes is a plain close (TCP would send a reset), and a reset — injected,
// or from a stopped node — reaches the peer at once rather than after the
// peer's next retransmission. Both keep failures prompt and deterministic
// without changing what a correct protocol must handle.
package simnet
