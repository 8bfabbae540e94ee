package boltkv_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/kelpie-go/kelpie/kv"
	"github.com/kelpie-go/kelpie/kv/boltkv"
	"github.com/kelpie-go/kelpie/kv/kvtest"
)

func open(t testing.TB, opts boltkv.Options) *boltkv.DB {
	t.Helper()
	db, err := boltkv.Open(filepath.Join(t.TempDir(), "kelpie.db"), opts)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func TestConformanceBatched(t *testing.T) {
	kvtest.Run(t, func(t *testing.T) kv.DB { return open(t, boltkv.Options{}) })
}

func TestConformanceUnbatched(t *testing.T) {
	kvtest.Run(t, func(t *testing.T) kv.DB { return open(t, boltkv.Options{NoBatch: true}) })
}

// TestReopenKeepsCommits checks durability across a close and reopen, and
// that commit versions keep increasing from where they were.
func TestReopenKeepsCommits(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "kelpie.db")
	db, err := boltkv.Open(path, boltkv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var v1 kv.Version
	if err := db.Transact(ctx, func(tx kv.Tx) error {
		tx.OnCommit(func(v kv.Version) { v1 = v })
		return tx.Set([]byte("k"), []byte("v"))
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err = boltkv.Open(path, boltkv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var v2 kv.Version
	if err := db.Transact(ctx, func(tx kv.Tx) error {
		got, ok, err := tx.Get([]byte("k"))
		if err != nil {
			return err
		}
		if !ok || string(got) != "v" {
			return fmt.Errorf("after reopen k = %q, %v", got, ok)
		}
		tx.OnCommit(func(v kv.Version) { v2 = v })
		return tx.Set([]byte("k2"), []byte("v2"))
	}); err != nil {
		t.Fatal(err)
	}
	if v2 <= v1 {
		t.Fatalf("version after reopen %d is not after %d", v2, v1)
	}
}

// TestSecondOpenFailsClearly checks that a file held open elsewhere is
// reported, not waited on forever.
func TestSecondOpenFailsClearly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kelpie.db")
	db, err := boltkv.Open(path, boltkv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_, err = boltkv.Open(path, boltkv.Options{})
	if err == nil {
		t.Fatal("second open of a locked file succeeded")
	}
	t.Logf("second open: %v", err)
}

// TestGroupCommitGroups checks that concurrent commits share bbolt
// transactions when batching is on, and never when it is off.
func TestGroupCommitGroups(t *testing.T) {
	for _, c := range []struct {
		name  string
		opts  boltkv.Options
		group bool
	}{{"batched", boltkv.Options{}, true}, {"unbatched", boltkv.Options{NoBatch: true}, false}} {
		t.Run(c.name, func(t *testing.T) {
			db := open(t, c.opts)
			defer db.Close()
			const workers, each = 16, 20
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < each; i++ {
						if err := db.Transact(context.Background(), func(tx kv.Tx) error {
							return tx.Set([]byte(fmt.Sprintf("w%02d/%03d", w, i)), []byte("v"))
						}); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			st := db.Stats()
			if st.Commits != workers*each {
				t.Fatalf("stats %+v: want %d commits", st, workers*each)
			}
			if c.group && st.Batches >= st.Commits {
				t.Fatalf("stats %+v: 16 concurrent writers never shared a group commit", st)
			}
			if !c.group && st.Batches != st.Commits {
				t.Fatalf("stats %+v: unbatched commits must each have their own bbolt transaction", st)
			}
			t.Logf("%s: %d commits in %d bbolt transactions", c.name, st.Commits, st.Batches)
		})
	}
}

// TestCommitAfterCloseFails checks Close against commits in flight.
func TestCommitAfterCloseFails(t *testing.T) {
	db := open(t, boltkv.Options{})
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	err := db.Transact(context.Background(), func(tx kv.Tx) error { return tx.Set([]byte("k"), []byte("v")) })
	if !errors.Is(err, kv.ErrClosed) {
		t.Fatalf("Transact after Close = %v, want ErrClosed", err)
	}
}

// benchCommits measures commit throughput with concurrent committers, each
// transaction a read-modify-write of its own key (so there are no
// conflicts and the cost measured is the commit).
func benchCommits(b *testing.B, opts boltkv.Options) {
	db := open(b, opts)
	defer db.Close()
	ctx := context.Background()
	b.SetParallelism(8) // 8 committers per GOMAXPROCS
	var id sync.Mutex
	next := 0
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		id.Lock()
		me := next
		next++
		id.Unlock()
		key := []byte(fmt.Sprintf("bench/%04d", me))
		val := make([]byte, 100)
		for pb.Next() {
			if err := db.Transact(ctx, func(tx kv.Tx) error {
				if _, _, err := tx.Get(key); err != nil {
					return err
				}
				return tx.Set(key, val)
			}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	st := db.Stats()
	if st.Batches > 0 {
		b.ReportMetric(float64(st.Commits)/float64(st.Batches), "commits/fsync")
	}
}

func BenchmarkCommitBatched(b *testing.B)   { benchCommits(b, boltkv.Options{}) }
func BenchmarkCommitUnbatched(b *testing.B) { benchCommits(b, boltkv.Options{NoBatch: true}) }

// BenchmarkCommitSerial is one committer: batching cannot help it, and it
// shows the cost of one fsync.
func BenchmarkCommitSerial(b *testing.B) {
	db := open(b, boltkv.Options{})
	defer db.Close()
	ctx := context.Background()
	val := make([]byte, 100)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := db.Transact(ctx, func(tx kv.Tx) error { return tx.Set([]byte("k"), val) }); err != nil {
			b.Fatal(err)
		}
	}
}
