package sim_test

import (
	"testing"
	"testing/synctest"

	"github.com/kelpie-go/kelpie/sim"
)

// TestSimCanary runs the canary scenario (see sim.Canary). Under the
// executor the hour passes in virtual time; cmd/kelpie-dst's TestCanary runs
// it twice per seed and compares the trace hashes. Natively it runs inside a
// testing/synctest bubble, whose fake clock gives the same guarantee about
// time, so the test checks the scenario's own logic in both modes.
func TestSimCanary(t *testing.T) {
	if sim.UnderExecutor() {
		canary(t)
		return
	}
	t.Log("not under kelpie-dst: running the canary in a testing/synctest bubble")
	synctest.Test(t, canary)
}

func canary(t *testing.T) { sim.RunScenario(t, sim.Canary) }

// synctestOrDirect runs f in a synctest bubble natively, where time is fake,
// and directly under the executor, where it already is.
func synctestOrDirect(t *testing.T, f func(t *testing.T)) {
	if sim.UnderExecutor() {
		f(t)
		return
	}
	synctest.Test(t, f)
}
