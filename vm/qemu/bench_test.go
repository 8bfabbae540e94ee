package qemu

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/kelpie-go/kelpie/vm"
)

// Benchmarks of a 256 MiB guest, each under a sub-benchmark named after the
// accelerator (KELPIE_QEMU_ACCEL, default tcg):
//
//	go test ./vm/qemu -run XXX -bench . -benchtime 5x
//
// Wall-clock figures belong here, not in tests.

func benchBackend(b *testing.B) (testEnv, *Backend) {
	e := integration(b)
	be, err := New(Options{Accel: e.accel})
	if err != nil {
		b.Fatal(err)
	}
	return e, be
}

func bootedVM(b *testing.B, e testEnv, be *Backend) *VM {
	v, err := be.NewVM(e.config())
	if err != nil {
		b.Fatal(err)
	}
	if err := v.Boot(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { v.Stop(context.Background()) })
	return v
}

// BenchmarkBoot measures process start to guest agent handshake.
func BenchmarkBoot(b *testing.B) {
	e, be := benchBackend(b)
	b.Run(string(e.accel), func(b *testing.B) {
		for b.Loop() {
			v, err := be.NewVM(e.config())
			if err != nil {
				b.Fatal(err)
			}
			if err := v.Boot(context.Background()); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			v.Stop(context.Background())
			b.StartTimer()
		}
	})
}

// BenchmarkAgentPing is one protocol round trip over the serial channel.
func BenchmarkAgentPing(b *testing.B) {
	e, be := benchBackend(b)
	v := bootedVM(b, e, be)
	_, c := v.current()
	b.Run(string(e.accel), func(b *testing.B) {
		for b.Loop() {
			if _, err := c.Ping(context.Background()); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkExec is one command round trip: request, fork and exec of
// /bin/true in the guest, result.
func BenchmarkExec(b *testing.B) {
	e, be := benchBackend(b)
	v := bootedVM(b, e, be)
	b.Run(string(e.accel), func(b *testing.B) {
		for b.Loop() {
			res, err := v.Exec(context.Background(), vm.ExecRequest{Command: "/bin/true"})
			if err != nil || res.ExitCode != 0 {
				b.Fatalf("%+v %v", res, err)
			}
		}
	})
}

// BenchmarkWriteFile measures the channel's throughput with 1 MiB files.
func BenchmarkWriteFile(b *testing.B) {
	e, be := benchBackend(b)
	v := bootedVM(b, e, be)
	data := bytes.Repeat([]byte("kelpie-0123456789"), (1<<20)/17+1)[:1<<20]
	b.Run(string(e.accel), func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			if err := v.WriteFile(context.Background(), "/tmp/bench.bin", data, 0o644); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkReadFile measures the guest-to-host direction with 1 MiB files.
func BenchmarkReadFile(b *testing.B) {
	e, be := benchBackend(b)
	v := bootedVM(b, e, be)
	data := bytes.Repeat([]byte("kelpie-0123456789"), (1<<20)/17+1)[:1<<20]
	if err := v.WriteFile(context.Background(), "/tmp/bench.bin", data, 0o644); err != nil {
		b.Fatal(err)
	}
	b.Run(string(e.accel), func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			got, err := v.ReadFile(context.Background(), "/tmp/bench.bin")
			if err != nil || len(got) != len(data) {
				b.Fatalf("%d bytes, %v", len(got), err)
			}
		}
	})
}

// snapshotModes are the blob encodings benchmarked: the default gzip and
// the raw stream.
var snapshotModes = []struct {
	name string
	raw  bool
}{{"gzip", false}, {"raw", true}}

// BenchmarkSnapshot measures Snapshot of a paused, booted guest and reports
// the blob size.
func BenchmarkSnapshot(b *testing.B) {
	e := integration(b)
	for _, mode := range snapshotModes {
		be, err := New(Options{Accel: e.accel, UncompressedSnapshots: mode.raw})
		if err != nil {
			b.Fatal(err)
		}
		v := bootedVM(b, e, be)
		ctx := context.Background()
		b.Run(string(e.accel)+"/"+mode.name, func(b *testing.B) {
			var size int
			for b.Loop() {
				b.StopTimer()
				if err := v.Pause(ctx); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				blob, err := v.Snapshot(ctx)
				if err != nil {
					b.Fatal(err)
				}
				size = len(blob)
				b.StopTimer()
				if err := v.Resume(ctx); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(size)/(1<<20), "blob-MiB")
		})
	}
}

// BenchmarkRestore measures Restore (new QEMU process, stream loaded) and
// Resume until the agent answers again.
func BenchmarkRestore(b *testing.B) {
	e := integration(b)
	for _, mode := range snapshotModes {
		be, err := New(Options{Accel: e.accel, UncompressedSnapshots: mode.raw})
		if err != nil {
			b.Fatal(err)
		}
		src := bootedVM(b, e, be)
		ctx := context.Background()
		if err := src.Pause(ctx); err != nil {
			b.Fatal(err)
		}
		blob, err := src.Snapshot(ctx)
		if err != nil {
			b.Fatal(err)
		}
		src.Stop(ctx)
		b.Run(string(e.accel)+"/"+mode.name, func(b *testing.B) {
			var restore time.Duration
			for b.Loop() {
				v, err := be.NewVM(e.config())
				if err != nil {
					b.Fatal(err)
				}
				began := time.Now()
				if err := v.Restore(ctx, blob); err != nil {
					b.Fatal(err)
				}
				restore += time.Since(began)
				if err := v.Resume(ctx); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				v.Stop(ctx)
				b.StartTimer()
			}
			b.ReportMetric(float64(restore.Milliseconds())/float64(b.N), "restore-ms")
			b.ReportMetric(float64(len(blob))/(1<<20), "blob-MiB")
		})
	}
}
