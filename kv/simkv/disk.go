package simkv

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sync"
	"time"

	"github.com/kelpie-go/kelpie/kv"
	"github.com/kelpie-go/kelpie/kv/internal/occ"
	"github.com/kelpie-go/kelpie/sim"
)

// Fault kinds of the simulated store. Each is consulted at one decision
// point, named in its doc.
var (
	FaultReadError = sim.DeclareFault("kv.read_error",
		"a transaction read (Get, GetRange) fails with kv.ErrIO; the transaction function sees the error")
	FaultWriteError = sim.DeclareFault("kv.write_error",
		"appending a commit record to the log fails; nothing is written and the commit fails with kv.ErrCommitFailed")
	FaultCommitError = sim.DeclareFault("kv.commit_error",
		"after its record is written and before fsync the commit is aborted; the store truncates the record away and the commit fails with kv.ErrCommitFailed")
	FaultFsyncError = sim.DeclareFault("kv.fsync_error",
		"fsync of the log fails; the store drops everything written since the last good sync (it never retries an fsync) and the commit fails with kv.ErrCommitFailed")
	FaultTornWrite = sim.DeclareFault("kv.torn_write",
		"when the node is killed with a written but unsynced log record, part of it reaches the disk (a prefix, its last bytes possibly garbled); reopening detects it by length and checksum and discards the torn tail")
	FaultLatency = sim.DeclareFault("kv.latency",
		"adds Fault.Delay to a read, write or fsync of the store")
)

// Bounds of the simulated disk.
const (
	// DiskLimit bounds the log's bytes; a commit that would pass it fails
	// with kv.ErrCommitFailed ("disk full"). The log is never compacted, so
	// this also bounds how much one simulation may write to one node.
	DiskLimit = 256 << 20
	// recordHeader is the bytes before each record's payload: the payload
	// length and its CRC-32C, four bytes each, little-endian.
	recordHeader = 8
	// maxRecordPayload bounds one record's payload: a transaction at
	// kv.TransactionLimit plus per-mutation framing.
	maxRecordPayload = 2 * kv.TransactionLimit
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Latency is a range [Min, Max] from which each I/O draws its duration.
type Latency struct{ Min, Max time.Duration }

// DiskOptions configure a Disk.
type DiskOptions struct {
	// Faults is the simulation's fault set (nil: no faults).
	Faults *sim.Faults
	// Node names the node for faults and the trace.
	Node string
	// Rand draws I/O latencies and torn-write shapes. Nil means a stream
	// seeded with 1.
	Rand *sim.Stream
	// Record, if set, receives trace events.
	Record func(format string, args ...any)
	// Read, Write and Sync are the base latencies of each kind of I/O.
	Read, Write, Sync Latency
}

// NodeLatencies are the base latencies of a node's store (OpenNode): every
// I/O takes a seeded time, so seeds explore different interleavings.
var NodeLatencies = struct{ Read, Write, Sync Latency }{
	Read:  Latency{0, 20 * time.Microsecond},
	Write: Latency{10 * time.Microsecond, 100 * time.Microsecond},
	Sync:  Latency{100 * time.Microsecond, 2 * time.Millisecond},
}

// Disk is the simulated durable medium of one store: an append-only log of
// commit records. Bytes are first written (pending, as in the page cache)
// and become durable only when synced. Crash drops what is pending, or with
// kv.torn_write keeps a torn part of it. A Disk outlives the DB handles
// opened on it, as a node's disk outlives its processes; each crash or close
// starts a new generation, and handles of an older generation fail with
// kv.ErrClosed.
type Disk struct {
	opts DiskOptions
	rand *sim.Stream

	mu      sync.Mutex
	durable []byte
	pending []byte
	gen     uint64
	open    bool
	stats   DiskStats
}

// DiskStats counts what happened to a disk.
type DiskStats struct {
	Crashes      int // Crash calls
	DroppedBytes int // pending bytes lost to crashes and failed syncs
	TornWrites   int // crashes that left a torn record
	TornRepairs  int // reopens that discarded a torn tail
	Syncs        int // successful syncs
}

var _ sim.Crasher = (*Disk)(nil)

// NewDisk returns an empty disk.
func NewDisk(opts DiskOptions) *Disk {
	r := opts.Rand
	if r == nil {
		r = sim.NewStream(1, "simkv")
	}
	return &Disk{opts: opts, rand: r}
}

// Stats returns the disk's counters.
func (d *Disk) Stats() DiskStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stats
}

// Pending is how many bytes are written but not yet synced: non-zero only
// while a commit is between its write and its sync.
func (d *Disk) Pending() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.pending)
}

// Size is the durable length of the log in bytes.
func (d *Disk) Size() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.durable)
}

func (d *Disk) record(format string, args ...any) {
	if d.opts.Record != nil {
		d.opts.Record(format, args...)
	}
}

// Crash implements sim.Crasher: it is called when the node is killed. The
// open handle (if any) dies; pending bytes are lost, unless kv.torn_write
// fires, in which case a prefix of them reaches the disk.
func (d *Disk) Crash() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stats.Crashes++
	d.gen++
	d.open = false
	if len(d.pending) == 0 {
		d.record("kv crash: nothing unsynced")
		return
	}
	n := len(d.pending)
	if d.opts.Faults.Fires(FaultTornWrite, d.opts.Node) {
		// A record is always longer than its header, so n > 1, and keep
		// is in [1, n-1]: part of the write, never all of it.
		keep := 1 + d.rand.IntN(n-1)
		torn := append([]byte(nil), d.pending[:keep]...)
		// Half the time the last sector written is garbage: bytes after
		// the header are replaced, as a partially written sector would be.
		garbled := 0
		if keep > recordHeader && d.rand.Chance(0.5) {
			from := recordHeader + d.rand.IntN(keep-recordHeader)
			junk := make([]byte, keep-from)
			d.rand.Bytes(junk)
			copy(torn[from:], junk)
			garbled = keep - from
		}
		d.durable = append(d.durable, torn...)
		d.stats.TornWrites++
		d.stats.DroppedBytes += n - keep
		d.record("kv crash: torn write, %d of %d unsynced bytes reached the disk (%d garbled)", keep, n, garbled)
	} else {
		d.stats.DroppedBytes += n
		d.record("kv crash: %d unsynced bytes lost", n)
	}
	d.pending = nil
}

// errDead is returned by I/O of a handle whose generation has ended.
var errDead = fmt.Errorf("%w: the store was closed or its node was killed", kv.ErrClosed)

func (d *Disk) alive(gen uint64) bool { return d.open && d.gen == gen }

// io sleeps for one I/O of the given base latency, plus kv.latency's delay
// when that fault fires.
func (d *Disk) io(base Latency) {
	delay := d.rand.Duration(base.Min, base.Max)
	if f, ok := d.opts.Faults.Fire(FaultLatency, d.opts.Node); ok {
		delay += f.Delay
	}
	if delay > 0 {
		time.Sleep(delay)
	}
}

// read is one read I/O by the handle of generation gen.
func (d *Disk) read(gen uint64) error {
	d.io(d.opts.Read)
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.alive(gen) {
		return errDead
	}
	if d.opts.Faults.Fires(FaultReadError, d.opts.Node) {
		return fmt.Errorf("simkv: %w: injected read error (kv.read_error)", kv.ErrIO)
	}
	return nil
}

// commit appends the record of the commit at version v and syncs it. It
// returns nil only once the record is durable.
func (d *Disk) commit(gen uint64, v kv.Version, muts []occ.Mutation) error {
	rec, err := encodeRecord(v, muts)
	if err != nil {
		return err
	}
	d.io(d.opts.Write)
	d.mu.Lock()
	if !d.alive(gen) {
		d.mu.Unlock()
		return errDead
	}
	if d.opts.Faults.Fires(FaultWriteError, d.opts.Node) {
		d.mu.Unlock()
		return fmt.Errorf("simkv: %w: %w: injected write error (kv.write_error) at version %d", kv.ErrCommitFailed, kv.ErrIO, v)
	}
	if len(d.durable)+len(d.pending)+len(rec) > DiskLimit {
		d.mu.Unlock()
		return fmt.Errorf("simkv: %w: disk full: the log would be %d bytes, the limit is %d (simkv.DiskLimit)", kv.ErrCommitFailed, len(d.durable)+len(d.pending)+len(rec), DiskLimit)
	}
	d.pending = append(d.pending, rec...)
	if d.opts.Faults.Fires(FaultCommitError, d.opts.Node) {
		d.pending = d.pending[:len(d.pending)-len(rec)]
		d.mu.Unlock()
		return fmt.Errorf("simkv: %w: injected commit failure (kv.commit_error) at version %d; its record was removed", kv.ErrCommitFailed, v)
	}
	d.mu.Unlock()

	d.io(d.opts.Sync)
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.alive(gen) {
		// Killed while syncing: Crash already dropped or tore the record.
		return errDead
	}
	if d.opts.Faults.Fires(FaultFsyncError, d.opts.Node) {
		// After a failed fsync the kernel may have dropped the dirty pages
		// and cleared the error, so a retried fsync can "succeed" without
		// the data. Never retry: discard everything since the last good
		// sync and fail the commit.
		d.stats.DroppedBytes += len(d.pending)
		d.pending = nil
		return fmt.Errorf("simkv: %w: %w: injected fsync failure (kv.fsync_error) at version %d; unsynced log truncated", kv.ErrCommitFailed, kv.ErrIO, v)
	}
	d.durable = append(d.durable, d.pending...)
	d.pending = nil
	d.stats.Syncs++
	return nil
}

// Recovery reports what opening a disk found.
type Recovery struct {
	Records   int        // commit records replayed
	Version   kv.Version // the version after replay
	TornBytes int        // bytes of a torn tail discarded (0 if none)
}

// openLog starts a new generation and replays the durable log through
// apply. A torn tail (a last record that is short or fails its checksum)
// is discarded and the log truncated to the last whole record; a bad
// record followed by more data is corruption and fails with kv.ErrCorrupt.
func (d *Disk) openLog(apply func(v kv.Version, muts []occ.Mutation)) (uint64, Recovery, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.open {
		return 0, Recovery{}, errors.New("simkv: the disk is already open by another handle")
	}
	if n := len(d.pending); n > 0 {
		// Written by a handle that was closed mid-commit and never synced:
		// that commit was not acknowledged, so it is dropped.
		d.stats.DroppedBytes += n
		d.pending = nil
		d.record("kv open: dropped %d unsynced bytes of the previous handle", n)
	}
	var rec Recovery
	off := 0
	for off < len(d.durable) {
		rest := d.durable[off:]
		payload, n, err := readRecord(rest)
		if err != nil {
			if n < 0 || off+n >= len(d.durable) {
				// The bad record runs to the end of the log: a torn write.
				rec.TornBytes = len(rest)
				d.durable = d.durable[:off]
				d.stats.TornRepairs++
				d.record("kv reopen: discarded a torn tail of %d bytes at offset %d: %v", rec.TornBytes, off, err)
				break
			}
			return 0, rec, fmt.Errorf("simkv: %w: record at offset %d of %d: %v", kv.ErrCorrupt, off, len(d.durable), err)
		}
		v, muts, err := decodePayload(payload)
		if err != nil {
			return 0, rec, fmt.Errorf("simkv: %w: record at offset %d: %v", kv.ErrCorrupt, off, err)
		}
		if v <= rec.Version {
			return 0, rec, fmt.Errorf("simkv: %w: record at offset %d has version %d after version %d", kv.ErrCorrupt, off, v, rec.Version)
		}
		apply(v, muts)
		rec.Version = v
		rec.Records++
		off += n
	}
	d.gen++
	d.open = true
	d.record("kv open: replayed %d records to version %d", rec.Records, rec.Version)
	return d.gen, rec, nil
}

// close ends generation gen. Bytes an in-flight commit has written stay
// pending: a kill that follows (Node.Kill runs stop hooks, which close the
// store, before it crashes the disk) still finds them.
func (d *Disk) close(gen uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.alive(gen) {
		return
	}
	d.gen++
	d.open = false
}

// readRecord splits one record off the front of b. n is its length, or -1
// when the header itself is incomplete.
func readRecord(b []byte) (payload []byte, n int, err error) {
	if len(b) < recordHeader {
		return nil, -1, fmt.Errorf("%d bytes, shorter than a record header", len(b))
	}
	size := int(binary.LittleEndian.Uint32(b[0:4]))
	sum := binary.LittleEndian.Uint32(b[4:8])
	if size > maxRecordPayload {
		return nil, len(b), fmt.Errorf("payload length %d is past the limit %d", size, maxRecordPayload)
	}
	if len(b) < recordHeader+size {
		return nil, len(b), fmt.Errorf("payload of %d bytes is cut short at %d", size, len(b)-recordHeader)
	}
	payload = b[recordHeader : recordHeader+size]
	if got := crc32.Checksum(payload, castagnoli); got != sum {
		return nil, recordHeader + size, fmt.Errorf("checksum %08x, want %08x", got, sum)
	}
	return payload, recordHeader + size, nil
}

func encodeRecord(v kv.Version, muts []occ.Mutation) ([]byte, error) {
	p := binary.LittleEndian.AppendUint64(nil, uint64(v))
	p = binary.AppendUvarint(p, uint64(len(muts)))
	for _, m := range muts {
		p = append(p, byte(m.Op))
		p = binary.AppendUvarint(p, uint64(len(m.Key)))
		p = append(p, m.Key...)
		switch m.Op {
		case occ.OpSet:
			p = binary.AppendUvarint(p, uint64(len(m.Value)))
			p = append(p, m.Value...)
		case occ.OpClearRange:
			p = binary.AppendUvarint(p, uint64(len(m.End)))
			p = append(p, m.End...)
		}
	}
	if len(p) > maxRecordPayload {
		return nil, fmt.Errorf("simkv: %w: record of %d bytes is past the limit %d", kv.ErrCommitFailed, len(p), maxRecordPayload)
	}
	out := make([]byte, recordHeader, recordHeader+len(p))
	binary.LittleEndian.PutUint32(out[0:4], uint32(len(p)))
	binary.LittleEndian.PutUint32(out[4:8], crc32.Checksum(p, castagnoli))
	return append(out, p...), nil
}

// decodePayload parses a record payload, checking every length against
// what remains and against the kv limits.
func decodePayload(p []byte) (kv.Version, []occ.Mutation, error) {
	if len(p) < 8 {
		return 0, nil, fmt.Errorf("payload of %d bytes has no version", len(p))
	}
	v := kv.Version(binary.LittleEndian.Uint64(p))
	p = p[8:]
	count, n := binary.Uvarint(p)
	if n <= 0 {
		return 0, nil, errors.New("bad mutation count")
	}
	p = p[n:]
	// Each mutation takes at least two bytes, so a count past that is a lie.
	if count > uint64(len(p)/2) {
		return 0, nil, fmt.Errorf("mutation count %d does not fit in %d bytes", count, len(p))
	}
	muts := make([]occ.Mutation, 0, count)
	field := func(limit int, what string) ([]byte, error) {
		l, n := binary.Uvarint(p)
		if n <= 0 {
			return nil, fmt.Errorf("bad %s length", what)
		}
		if l > uint64(limit) || l > uint64(len(p)-n) {
			return nil, fmt.Errorf("%s length %d is past the limit %d or the %d bytes left", what, l, limit, len(p)-n)
		}
		out := p[n : n+int(l)]
		p = p[n+int(l):]
		return out, nil
	}
	for i := uint64(0); i < count; i++ {
		if len(p) == 0 {
			return 0, nil, fmt.Errorf("mutation %d missing", i)
		}
		m := occ.Mutation{Op: occ.Op(p[0])}
		p = p[1:]
		var err error
		if m.Key, err = field(kv.KeyLimit+1, "key"); err != nil {
			return 0, nil, err
		}
		switch m.Op {
		case occ.OpSet:
			m.Value, err = field(kv.ValueLimit, "value")
		case occ.OpClearRange:
			m.End, err = field(kv.KeyLimit+1, "range end")
		case occ.OpClear:
		default:
			err = fmt.Errorf("unknown mutation op %d", m.Op)
		}
		if err != nil {
			return 0, nil, err
		}
		muts = append(muts, m)
	}
	if len(p) != 0 {
		return 0, nil, fmt.Errorf("%d bytes after the last mutation", len(p))
	}
	return v, muts, nil
}
