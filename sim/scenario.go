package sim

import "testing"

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
