package simnet

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

func TestSimPing(t *testing.T)      { sim.RunScenario(t, scenario(t, "simnet-ping")) }
func TestSimPartition(t *testing.T) { sim.RunScenario(t, scenario(t, "simnet-partition")) }
func TestSimChaos(t *testing.T)     { sim.RunScenario(t, scenario(t, "simnet-chaos")) }

func TestScenariosAreWellFormed(t *testing.T) {
	seen := map[string]bool{}
	for _, sc := range Scenarios {
		if sc.Name == "" || sc.Doc == "" || sc.Run == nil || seen[sc.Name] {
			t.Errorf("scenario %+v: want a unique name, a doc and a Run", sc.Name)
		}
		seen[sc.Name] = true
	}
}
