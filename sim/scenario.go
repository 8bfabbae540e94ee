package sim

import (
	"fmt"
	"testing"
)

// Scenario is a named simulation that can run from a test (TestSim*) and from
// the kelpie binary (kelpie sim --scenario NAME). Packages that own a
// simulated feature export their scenarios; internal/scenarios lists them.
type Scenario struct {
	Name string // lower-case, dash-separated: "simnet-partition"
	Doc  string // one line: what it does and what it checks
	Run  func(s *Simulation) error
}

// RunScenario runs sc as a simulation inside test t (see Run).
func RunScenario(t *testing.T, sc Scenario) {
	t.Helper()
	Run(t, sc.Run)
}

// FindScenario returns the scenario called name in scs.
func FindScenario(scs []Scenario, name string) (Scenario, error) {
	for _, sc := range scs {
		if sc.Name == name {
			return sc, nil
		}
	}
	return Scenario{}, fmt.Errorf("unknown scenario %q", name)
}

// RunNamed runs the scenario called name in scs as a simulation inside t.
func RunNamed(t *testing.T, scs []Scenario, name string) {
	t.Helper()
	sc, err := FindScenario(scs, name)
	if err != nil {
		t.Fatal(err)
	}
	RunScenario(t, sc)
}
