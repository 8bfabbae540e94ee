package actorsim

import (
	"testing"

	"github.com/kelpie-go/kelpie/sim"
)

func TestSimActorCrash(t *testing.T)    { sim.RunNamed(t, Scenarios, "actor-crash") }
func TestSimActorFencing(t *testing.T)  { sim.RunNamed(t, Scenarios, "actor-fencing") }
func TestSimActorIdle(t *testing.T)     { sim.RunNamed(t, Scenarios, "actor-idle") }
func TestSimActorFlood(t *testing.T)    { sim.RunNamed(t, Scenarios, "actor-flood") }
func TestSimActorPipeline(t *testing.T) { sim.RunNamed(t, Scenarios, "actor-pipeline") }
