package simnet

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/kelpie-go/kelpie/sim"
)

// BenchmarkThroughput streams 32 KiB writes over one connection and reports
// bytes per second of real time.
func BenchmarkThroughput(b *testing.B) {
	for _, bc := range []struct {
		name string
		link Link
	}{
		{"latency=0", Link{}},
		{"latency=default", Link{Latency: DefaultLatency, Jitter: DefaultJitter}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := sim.New(b.Name(), 1)
			nw := New(s)
			if err := nw.SetDefaultLink(bc.link); err != nil {
				b.Fatal(err)
			}
			a, _ := s.AddNode("a", nil)
			bn, _ := s.AddNode("b", nil)
			l, err := nw.Listen(bn, ":80")
			if err != nil {
				b.Fatal(err)
			}
			c, err := nw.Dial(context.Background(), a, "b:80")
			if err != nil {
				b.Fatal(err)
			}
			srv, err := l.Accept()
			if err != nil {
				b.Fatal(err)
			}
			const chunk = 32 << 10
			buf := make([]byte, chunk)
			b.SetBytes(chunk)
			b.ResetTimer()
			done := make(chan error, 1)
			go func() {
				_, err := io.Copy(io.Discard, srv)
				done <- err
			}()
			for range b.N {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			c.Close()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			srv.Close()
			l.Close()
		})
	}
}

// BenchmarkScenario runs each scenario and reports how much virtual time it
// simulates per second of real time. Natively the clock is real, so the
// ratio is about 1 and measures overhead. Under the deterministic executor
// the program cannot see real time at all (time.Since is virtual), so there
// the ratio is not reported; time the executor from outside instead:
//
//	GOOS=wasip1 GOARCH=wasm go test -c -o /tmp/simnet.wasm ./simnet
//	time DST_SEED=1 bin/kelpie-dst /tmp/simnet.wasm -test.run TestSimChaos
func BenchmarkScenario(b *testing.B) {
	for _, sc := range Scenarios {
		b.Run(sc.Name, func(b *testing.B) {
			var virtual, real time.Duration
			for i := range b.N {
				start := time.Now()
				res := sim.Execute(sc.Name, uint64(i+1), sc.Run)
				real += time.Since(start)
				virtual += res.Virtual
				if res.Err != nil {
					b.Fatalf("%s: %v", res.Line(), res.Err)
				}
			}
			if !sim.UnderExecutor() {
				b.ReportMetric(virtual.Seconds()/real.Seconds(), "virtual/real")
			}
			b.ReportMetric(virtual.Seconds()/float64(b.N), "virtual-s/op")
		})
	}
}
