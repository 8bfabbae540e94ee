//go:build !wasip1

// Benchmarks (figures, not assertions). bbolt does not build for wasip1,
// hence the constraint.

package actor

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kelpie-go/kelpie/actor/placement"
	"github.com/kelpie-go/kelpie/kv"
	"github.com/kelpie-go/kelpie/kv/boltkv"
	"github.com/kelpie-go/kelpie/kv/memkv"
)

// benchCounter is a minimal actor: a decimal count, saved into one reused
// buffer.
type benchCounter struct {
	n   int64
	buf []byte
}

func (c *benchCounter) Load(state []byte) error {
	if state == nil {
		c.n = 0
		return nil
	}
	n, err := strconv.ParseInt(string(state), 10, 64)
	c.n = n
	return err
}
func (c *benchCounter) Save() ([]byte, error) {
	c.buf = strconv.AppendInt(c.buf[:0], c.n, 10)
	return c.buf, nil
}
func (c *benchCounter) Receive(call *Call) ([]byte, error) {
	if call.Method() == "add" {
		c.n++
	}
	return nil, nil
}

func benchRuntime(b *testing.B, db kv.DB, mod func(*Config)) *Runtime {
	b.Helper()
	pl, err := placement.NewLocal(context.Background(), db, "bench")
	if err != nil {
		b.Fatal(err)
	}
	cfg := Config{DB: db, Placement: pl, MaxActive: 2_000_000, IdleTimeout: time.Hour}
	if mod != nil {
		mod(&cfg)
	}
	rt, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	if err := rt.Register("c", func(ID) Actor { return &benchCounter{} }); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = rt.Close() })
	return rt
}

func ids(n int) []ID {
	out := make([]ID, n)
	for i := range out {
		out[i] = ID{Namespace: "c", Key: strconv.Itoa(i)}
	}
	return out
}

// BenchmarkInvokeHotActor: every goroutine invokes one actor (state change,
// in-memory store). Turns of one actor are serial, so this is the latency of
// a turn, not parallel throughput.
func BenchmarkInvokeHotActor(b *testing.B) {
	rt := benchRuntime(b, memkv.New(), func(c *Config) { c.MailboxSize = MaxMailboxSize })
	id := ID{Namespace: "c", Key: "hot"}
	ctx := context.Background()
	b.ReportAllocs()
	before := rt.Stats()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := rt.Invoke(ctx, id, "add", nil); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "invocations/s")
	st := rt.Stats()
	b.ReportMetric(float64(st.Turns-before.Turns)/float64(max(st.Batches-before.Batches, 1)), "turns/commit")
}

// BenchmarkInvokeSpread: invocations (state changes, in-memory store)
// spread at random over 10,000 active actors, from 64 client goroutines
// (the figure the target is for) and from 256 (more invocations in
// flight: larger group commits).
func BenchmarkInvokeSpread(b *testing.B) {
	for _, clients := range []int{64, 256} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) { spread(b, memkv.New(), clients) })
	}
}

// BenchmarkInvokeSpreadBolt is BenchmarkInvokeSpread on bbolt, durable at
// every commit: what the group commit gathers while the store syncs.
func BenchmarkInvokeSpreadBolt(b *testing.B) { spread(b, openBolt(b), 64) }

// spread runs invocations over 10,000 actors from clients goroutines.
func spread(b *testing.B, db kv.DB, clients int) {
	const actors = 10_000
	rt := benchRuntime(b, db, nil)
	all := ids(actors)
	ctx := context.Background()
	for _, id := range all {
		if _, err := rt.Invoke(ctx, id, "get", nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.SetParallelism(max(1, clients/runtime.GOMAXPROCS(0)))
	var seed atomic.Uint64
	before := rt.Stats()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		r := rand.New(rand.NewPCG(seed.Add(1), 7))
		for pb.Next() {
			if _, err := rt.Invoke(ctx, all[r.IntN(actors)], "add", nil); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "invocations/s")
	st := rt.Stats()
	b.ReportMetric(float64(st.Turns-before.Turns)/float64(max(st.Batches-before.Batches, 1)), "turns/commit")
}

// seed writes n actors' committed state (as commits by the runtime leave
// it) straight into db, in batches.
func seed(b *testing.B, db kv.DB, all []ID) {
	b.Helper()
	const batch = 20_000
	rec := appendRecord(nil, meta{epoch: 0, seq: 1}, []byte("41"))
	for i := 0; i < len(all); i += batch {
		end := min(i+batch, len(all))
		err := db.Transact(context.Background(), func(tx kv.Tx) error {
			for _, id := range all[i:end] {
				if err := tx.Set(keysFor(id).record, rec); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

func openBolt(b *testing.B) *boltkv.DB {
	b.Helper()
	db, err := boltkv.Open(filepath.Join(b.TempDir(), "kelpie.db"), boltkv.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = db.Close() })
	return db
}

// BenchmarkColdActivationBolt: the latency of the first invocation of an
// actor whose state is in bbolt (lease, load, one read-only turn), with
// p50 and p99 over b.N activations.
func BenchmarkColdActivationBolt(b *testing.B) {
	const stored = 100_000
	db := openBolt(b)
	all := ids(stored)
	seed(b, db, all)
	rt := benchRuntime(b, db, nil)
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		id := all[i%stored]
		if i >= stored && i%stored == 0 {
			b.StopTimer()
			_ = rt.Close()
			rt = benchRuntime(b, db, nil)
			b.StartTimer()
		}
		start := time.Now()
		out, err := rt.Invoke(ctx, id, "get", nil)
		lat = append(lat, time.Since(start))
		if err != nil || out != nil {
			b.Fatal(out, err)
		}
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

func heapInUse() uint64 {
	h, s := memSplit()
	return h + s
}

// memSplit returns heap and goroutine-stack bytes in use after collecting.
func memSplit() (heap, stack uint64) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse, ms.StackInuse
}

// BenchmarkMemoryPerActor: heap and stack bytes per idle-but-active actor
// (goroutine, mailbox, activation, loaded state) and what stays in memory
// per actor once deactivated, over 100,000 actors stored in bbolt.
func BenchmarkMemoryPerActor(b *testing.B) {
	const n = 100_000
	db := openBolt(b)
	all := ids(n)
	seed(b, db, all)
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		rt := benchRuntime(b, db, nil)
		baseHeap, baseStack := memSplit()
		base := baseHeap + baseStack
		for _, id := range all {
			if _, err := rt.Invoke(ctx, id, "get", nil); err != nil {
				b.Fatal(err)
			}
		}
		activeHeap, activeStack := memSplit()
		active := activeHeap + activeStack
		b.ReportMetric(float64(int64(activeStack)-int64(baseStack))/n, "stack-bytes/active-actor")
		if rt.NumActive() != n {
			b.Fatalf("%d active, want %d", rt.NumActive(), n)
		}
		if err := rt.Close(); err != nil {
			b.Fatal(err)
		}
		after := heapInUse()
		b.ReportMetric(float64(int64(active)-int64(base))/n, "bytes/active-actor")
		b.ReportMetric(float64(int64(after)-int64(base))/n, "bytes/deactivated-actor")
	}
}

// BenchmarkMillionRegistered: 1,000,000 actors with committed state in
// bbolt, every one invoked once by a node that keeps at most 10,000 active:
// only those are in memory.
func BenchmarkMillionRegistered(b *testing.B) {
	const (
		registered = 1_000_000
		maxActive  = 10_000
		clients    = 8
	)
	db := openBolt(b)
	all := ids(registered)
	seed(b, db, all)
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		rt := benchRuntime(b, db, func(c *Config) { c.MaxActive = maxActive })
		base := heapInUse()
		start := time.Now()
		var next atomic.Int64
		errs := make(chan error, clients)
		for c := 0; c < clients; c++ {
			go func() {
				for {
					j := int(next.Add(1)) - 1
					if j >= registered {
						errs <- nil
						return
					}
					if _, err := rt.Invoke(ctx, all[j], "get", nil); err != nil {
						errs <- fmt.Errorf("actor %d: %w", j, err)
						return
					}
				}
			}()
		}
		for c := 0; c < clients; c++ {
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
		}
		took := time.Since(start)
		if n := rt.NumActive(); n > maxActive {
			b.Fatalf("%d active, over MaxActive %d", n, maxActive)
		}
		b.ReportMetric(float64(registered)/took.Seconds(), "activations/s")
		heap, stack := memSplit()
		b.ReportMetric(float64(int64(heap+stack)-int64(base))/(1<<20), "MiB-in-memory")
		b.ReportMetric(float64(stack)/(1<<20), "MiB-stacks")
		b.ReportMetric(float64(rt.NumActive()), "active")
		_ = rt.Close()
		heap, stack = memSplit()
		b.ReportMetric(float64(int64(heap+stack)-int64(base))/(1<<20), "MiB-after-close")
	}
}

// BenchmarkStoreOnly is the floor under the runtime's figures: the KV
// transaction an invocation runs (read the record, write the record) on
// the in-memory store, without the runtime, spread over 10,000 actors.
func BenchmarkStoreOnly(b *testing.B) {
	const actors = 10_000
	db := memkv.New()
	all := ids(actors)
	ks := make([]keys, actors)
	for i, id := range all {
		ks[i] = keysFor(id)
	}
	ctx := context.Background()
	var seed atomic.Uint64
	b.ReportAllocs()
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		r := rand.New(rand.NewPCG(seed.Add(1), 7))
		rec := appendRecord(nil, meta{epoch: 1, seq: 1}, []byte("42"))
		for pb.Next() {
			k := ks[r.IntN(actors)]
			err := db.Transact(ctx, func(tx kv.Tx) error {
				if _, _, err := tx.Get(k.record); err != nil {
					return err
				}
				return tx.Set(k.record, rec)
			})
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "transactions/s")
}
