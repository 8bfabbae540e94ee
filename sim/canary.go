package sim

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// CanaryDuration is the simulated time the canary's goroutines sleep through.
const CanaryDuration = time.Hour

// Canary is the scenario that proves the simulation is in control. Eight
// goroutines sleep, select and iterate maps for an hour; every choice they
// make goes into the trace. Under the executor the hour passes in virtual
// time and the trace is a function of the seed alone.
var Canary = Scenario{
	Name: "sim-canary",
	Doc:  "8 goroutines sleep, select and iterate maps for an hour of virtual time; the trace must be a function of the seed",
	Run: func(s *Simulation) error {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), CanaryDuration)
		defer cancel()
		var wg sync.WaitGroup
		ticks := make(chan string, 64)
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m := map[int]int{1: 1, 2: 2, 3: 3, 4: 4, 5: 5}
				period := time.Duration(g+1) * 7 * time.Minute
				for i := 0; ; i++ {
					select {
					case <-ctx.Done():
						return
					case <-time.After(period):
					}
					// Map iteration order and the scheduler's choice of which
					// goroutine sends first are both seeded.
					order := ""
					for k := range m {
						order += fmt.Sprint(k)
						break
					}
					select {
					case ticks <- fmt.Sprintf("g%d tick %d first-key %s", g, i, order):
					case <-ctx.Done():
						return
					}
				}
			}()
		}
		go func() { wg.Wait(); close(ticks) }()
		n := 0
		for ev := range ticks {
			s.Record("", "%s", ev)
			n++
		}
		elapsed := time.Since(start)
		if elapsed < CanaryDuration {
			return fmt.Errorf("an hour of sleeping took %s of clock time: the clock is not the one that sleeps", elapsed)
		}
		if n < 8 {
			return fmt.Errorf("%d ticks in an hour, want at least 8", n)
		}
		s.Record("", "canary done: %d ticks in %s", n, elapsed.Truncate(time.Minute))
		return nil
	},
}
