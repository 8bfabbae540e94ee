package simkv_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/kelpie-go/kelpie/kv"
	"github.com/kelpie-go/kelpie/kv/kvtest"
	"github.com/kelpie-go/kelpie/kv/simkv"
	"github.com/kelpie-go/kelpie/sim"
)

func TestConformance(t *testing.T) {
	kvtest.Run(t, func(t *testing.T) kv.DB {
		db, err := simkv.Open(simkv.NewDisk(simkv.DiskOptions{}))
		if err != nil {
			t.Fatal(err)
		}
		return db
	})
}

// TestConformanceWithLatency runs the suite with every I/O taking time, so
// commits overlap reads and each other.
func TestConformanceWithLatency(t *testing.T) {
	kvtest.Run(t, func(t *testing.T) kv.DB {
		db, err := simkv.Open(simkv.NewDisk(simkv.DiskOptions{
			Write: simkv.Latency{Min: time.Microsecond, Max: 20 * time.Microsecond},
			Sync:  simkv.Latency{Min: 10 * time.Microsecond, Max: 200 * time.Microsecond},
		}))
		if err != nil {
			t.Fatal(err)
		}
		return db
	})
}

func TestSimCrash(t *testing.T)     { sim.RunScenario(t, scenario(t, "kv-crash")) }
func TestSimFaults(t *testing.T)    { sim.RunScenario(t, scenario(t, "kv-faults")) }
func TestSimTornWrite(t *testing.T) { sim.RunScenario(t, scenario(t, "kv-torn-write")) }

func scenario(t *testing.T, name string) sim.Scenario {
	for _, sc := range simkv.Scenarios {
		if sc.Name == name {
			return sc
		}
	}
	t.Fatalf("no scenario %q", name)
	return sim.Scenario{}
}

var ctx = context.Background()

// node starts node "n" with a store and returns a function giving the
// store of its current incarnation.
func node(t *testing.T, s *sim.Simulation) (*sim.Node, func() *simkv.DB) {
	t.Helper()
	var db *simkv.DB
	n, err := s.AddNode("n", func(n *sim.Node) error {
		var err error
		db, err = simkv.OpenNode(n)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n, func() *simkv.DB { return db }
}

func put(db kv.DB, k, v string) error {
	return db.Transact(ctx, func(tx kv.Tx) error { return tx.Set([]byte(k), []byte(v)) })
}

func lookup(t *testing.T, db kv.DB, k string) (string, bool) {
	t.Helper()
	var v []byte
	var ok bool
	if err := db.ReadTransact(ctx, func(tx kv.ReadTx) error {
		var err error
		v, ok, err = tx.Get([]byte(k))
		return err
	}); err != nil {
		t.Fatalf("read %q: %v", k, err)
	}
	return string(v), ok
}

func fired(s *sim.Simulation, kind sim.FaultKind) int {
	n := 0
	for _, st := range s.Faults().Stats() {
		if st.Fault.Kind == kind {
			n += st.Fired
		}
	}
	return n
}

// restart kills and restarts the node, as a power loss would.
func restart(t *testing.T, n *sim.Node) {
	t.Helper()
	if err := n.Restart(); err != nil {
		t.Fatal(err)
	}
}

// TestSimFaultReadError: kv.read_error fails a read with kv.ErrIO and the
// transaction with it.
func TestSimFaultReadError(t *testing.T) {
	sim.Run(t, func(s *sim.Simulation) error {
		_, db := node(t, s)
		if err := put(db(), "k", "v"); err != nil {
			return err
		}
		s.Faults().MustInject(sim.Fault{Kind: simkv.FaultReadError, P: 1, Max: 1})
		err := db().Transact(ctx, func(tx kv.Tx) error {
			if _, _, err := tx.Get([]byte("k")); err != nil {
				return err
			}
			return tx.Set([]byte("after-read"), []byte("x"))
		})
		if !errors.Is(err, kv.ErrIO) {
			t.Fatalf("transaction with a failed read = %v, want kv.ErrIO", err)
		}
		if fired(s, simkv.FaultReadError) != 1 {
			t.Fatal("kv.read_error did not fire")
		}
		if _, ok := lookup(t, db(), "after-read"); ok {
			t.Fatal("a transaction whose read failed committed")
		}
		if v, ok := lookup(t, db(), "k"); !ok || v != "v" {
			t.Fatalf("k = %q, %v after the fault passed", v, ok)
		}
		return nil
	})
}

// commitFaultTest checks that a commit fault fails the commit with
// kv.ErrCommitFailed, that the commit is invisible now and after a kill,
// and that the durable log did not grow.
func commitFaultTest(t *testing.T, kind sim.FaultKind) {
	sim.Run(t, func(s *sim.Simulation) error {
		n, db := node(t, s)
		if err := put(db(), "before", "1"); err != nil {
			return err
		}
		size := db().Disk().Size()
		s.Faults().MustInject(sim.Fault{Kind: kind, P: 1, Max: 1})
		err := put(db(), "failed", "1")
		if !errors.Is(err, kv.ErrCommitFailed) {
			t.Fatalf("commit under %s = %v, want kv.ErrCommitFailed", kind, err)
		}
		if fired(s, kind) != 1 {
			t.Fatalf("%s did not fire", kind)
		}
		if got := db().Disk().Size(); got != size {
			t.Fatalf("durable log grew from %d to %d bytes for a failed commit", size, got)
		}
		if db().Disk().Pending() != 0 {
			t.Fatalf("a failed commit left %d unsynced bytes", db().Disk().Pending())
		}
		if _, ok := lookup(t, db(), "failed"); ok {
			t.Fatal("a failed commit is visible")
		}
		if err := put(db(), "after", "1"); err != nil {
			t.Fatalf("commit after the fault: %v", err)
		}
		restart(t, n)
		if _, ok := lookup(t, db(), "failed"); ok {
			t.Fatal("a failed commit is visible after a restart")
		}
		for _, k := range []string{"before", "after"} {
			if _, ok := lookup(t, db(), k); !ok {
				t.Fatalf("acknowledged %q lost in a restart", k)
			}
		}
		return nil
	})
}

// TestSimFaultWriteError: kv.write_error fails the log append.
func TestSimFaultWriteError(t *testing.T) { commitFaultTest(t, simkv.FaultWriteError) }

// TestSimFaultCommitError: kv.commit_error aborts a written commit, whose
// record is removed.
func TestSimFaultCommitError(t *testing.T) { commitFaultTest(t, simkv.FaultCommitError) }

// TestSimFaultFsyncError: kv.fsync_error fails the sync; the unsynced log
// is dropped.
func TestSimFaultFsyncError(t *testing.T) { commitFaultTest(t, simkv.FaultFsyncError) }

// TestSimFaultLatency: kv.latency delays a commit by its Delay.
func TestSimFaultLatency(t *testing.T) {
	sim.Run(t, func(s *sim.Simulation) error {
		_, db := node(t, s)
		const delay = 500 * time.Millisecond
		s.Faults().MustInject(sim.Fault{Kind: simkv.FaultLatency, P: 1, Max: 1, Delay: delay})
		start := time.Now()
		if err := put(db(), "k", "v"); err != nil {
			return err
		}
		if took := time.Since(start); took < delay {
			t.Fatalf("commit took %s under kv.latency of %s", took, delay)
		}
		if fired(s, simkv.FaultLatency) != 1 {
			t.Fatal("kv.latency did not fire")
		}
		return nil
	})
}

// TestSimFaultTornWrite: a kill between a commit's write and its sync, with
// kv.torn_write, leaves part of the record on disk; reopening discards it,
// keeps what was acknowledged, and the interrupted commit is not visible.
func TestSimFaultTornWrite(t *testing.T) {
	sim.Run(t, func(s *sim.Simulation) error {
		n, db := node(t, s)
		if err := put(db(), "acked", "1"); err != nil {
			return err
		}
		size := db().Disk().Size()
		s.Faults().MustInject(sim.Fault{Kind: simkv.FaultTornWrite, P: 1})
		// Slow I/O keeps the next commit between write and sync long
		// enough to kill the node there.
		s.Faults().MustInject(sim.Fault{Kind: simkv.FaultLatency, P: 1, Delay: 300 * time.Millisecond})
		result := make(chan error, 1)
		if err := n.Go(func(context.Context) { result <- put(db(), "torn", "1") }); err != nil {
			return err
		}
		disk := db().Disk()
		if err := sim.Eventually(ctx, 10*time.Second, 100*time.Microsecond, func() error {
			if disk.Pending() == 0 {
				return errors.New("commit not yet written")
			}
			return nil
		}); err != nil {
			return err
		}
		if err := n.Kill(); err != nil {
			return err
		}
		if err := <-result; !errors.Is(err, kv.ErrClosed) {
			t.Fatalf("commit interrupted by the kill = %v, want kv.ErrClosed", err)
		}
		if fired(s, simkv.FaultTornWrite) != 1 {
			t.Fatal("kv.torn_write did not fire")
		}
		if got := disk.Size(); got <= size {
			t.Fatalf("log is %d bytes after the torn write, want more than %d: nothing of the write reached the disk", got, size)
		}
		if err := n.Restart(); err != nil {
			return err
		}
		rec := db().Recovery()
		if rec.TornBytes == 0 || disk.Stats().TornRepairs != 1 {
			t.Fatalf("recovery %+v: the torn tail was not detected", rec)
		}
		if disk.Size() != size {
			t.Fatalf("log is %d bytes after repair, want it truncated to %d", disk.Size(), size)
		}
		if _, ok := lookup(t, db(), "torn"); ok {
			t.Fatal("the torn commit is visible")
		}
		if _, ok := lookup(t, db(), "acked"); !ok {
			t.Fatal("an acknowledged commit was lost with the torn tail")
		}
		if err := put(db(), "after", "1"); err != nil {
			t.Fatalf("commit after repair: %v", err)
		}
		return nil
	})
}

// TestSimKillLosesUnsynced: without tearing, a kill mid-commit loses the
// unsynced record entirely, and a clean shutdown keeps everything.
func TestSimKillLosesUnsynced(t *testing.T) {
	sim.Run(t, func(s *sim.Simulation) error {
		n, db := node(t, s)
		if err := put(db(), "a", "1"); err != nil {
			return err
		}
		s.Faults().MustInject(sim.Fault{Kind: simkv.FaultLatency, P: 1, Delay: 300 * time.Millisecond})
		result := make(chan error, 1)
		if err := n.Go(func(context.Context) { result <- put(db(), "b", "1") }); err != nil {
			return err
		}
		disk := db().Disk()
		if err := sim.Eventually(ctx, 10*time.Second, 100*time.Microsecond, func() error {
			if disk.Pending() == 0 {
				return errors.New("commit not yet written")
			}
			return nil
		}); err != nil {
			return err
		}
		restart(t, n)
		<-result
		if _, ok := lookup(t, db(), "b"); ok {
			t.Fatal("an unsynced commit survived a kill")
		}
		if disk.Stats().DroppedBytes == 0 {
			t.Fatal("the kill dropped no bytes")
		}
		if err := n.Shutdown(); err != nil {
			return err
		}
		if err := n.Restart(); err != nil {
			return err
		}
		if _, ok := lookup(t, db(), "a"); !ok {
			t.Fatal("acknowledged commit lost")
		}
		return nil
	})
}

// TestStaleHandleFails: a handle from before a kill fails with
// kv.ErrClosed, so an old incarnation cannot write.
func TestSimStaleHandleFails(t *testing.T) {
	sim.Run(t, func(s *sim.Simulation) error {
		n, db := node(t, s)
		old := db()
		restart(t, n)
		if err := put(old, "k", "v"); !errors.Is(err, kv.ErrClosed) {
			t.Fatalf("write through a killed incarnation's handle = %v, want kv.ErrClosed", err)
		}
		if _, ok := lookup(t, db(), "k"); ok {
			t.Fatal("a stale handle's write is visible")
		}
		return nil
	})
}

func TestSimCrashModel(t *testing.T) { sim.RunScenario(t, scenario(t, "kv-crash-model")) }
