package simnet

import (
	"testing"

	"github.com/kelpie-go/kelpie/sim"
)

func TestSimPing(t *testing.T)      { sim.RunNamed(t, Scenarios, "simnet-ping") }
func TestSimPartition(t *testing.T) { sim.RunNamed(t, Scenarios, "simnet-partition") }
func TestSimChaos(t *testing.T)     { sim.RunNamed(t, Scenarios, "simnet-chaos") }

func TestScenariosAreWellFormed(t *testing.T) {
	seen := map[string]bool{}
	for _, sc := range Scenarios {
		if sc.Name == "" || sc.Doc == "" || sc.Run == nil || seen[sc.Name] {
			t.Errorf("scenario %+v: want a unique name, a doc and a Run", sc.Name)
		}
		seen[sc.Name] = true
	}
}
