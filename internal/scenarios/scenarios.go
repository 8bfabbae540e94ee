// Package scenarios lists every simulation scenario in Kelpie, for the
// scenarios module (cmd/kelpie-scenarios) that kelpie sim runs. A package
// that owns a simulated feature exports its scenarios; they are added here.
package scenarios

import (
	"fmt"
	"sort"

	"github.com/kelpie-go/kelpie/actor/actorsim"
	"github.com/kelpie-go/kelpie/kv/simkv"
	"github.com/kelpie-go/kelpie/sim"
	"github.com/kelpie-go/kelpie/simnet"
	"github.com/kelpie-go/kelpie/vm/simvm"
)

// All returns every scenario, sorted by name.
func All() []sim.Scenario {
	all := []sim.Scenario{sim.Canary}
	for _, group := range [][]sim.Scenario{simnet.Scenarios, simkv.Scenarios, actorsim.Scenarios, simvm.Scenarios} {
		all = append(all, group...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Name < all[j].Name })
	return all
}

// Lookup returns the scenario called name.
func Lookup(name string) (sim.Scenario, error) {
	sc, err := sim.FindScenario(All(), name)
	if err != nil {
		return sc, fmt.Errorf("%w (kelpie sim --list shows them)", err)
	}
	return sc, nil
}
