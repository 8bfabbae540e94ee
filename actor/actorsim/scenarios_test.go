package actorsim

import (
	"testing"

	"github.com/kelpie-go/kelpie/sim"
)

func scenario(t *testing.T, name string) sim.Scenario {
	t.Helper()
	for _, sc := range Scenarios {
		if sc.Name == name {
			return sc
		}
	}
	t.Fatalf("no scenario %q", name)
	return sim.Scenario{}
}

func TestSimActorCrash(t *testing.T)   { sim.RunScenario(t, scenario(t, "actor-crash")) }
func TestSimActorFencing(t *testing.T) { sim.RunScenario(t, scenario(t, "actor-fencing")) }
func TestSimActorIdle(t *testing.T)    { sim.RunScenario(t, scenario(t, "actor-idle")) }
func TestSimActorFlood(t *testing.T)   { sim.RunScenario(t, scenario(t, "actor-flood")) }
