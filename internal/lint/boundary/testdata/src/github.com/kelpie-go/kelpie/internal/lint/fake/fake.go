// Package fake is under internal/lint/..., which is host-only but breaks no
// rule: host-only exempts a package from the wasip1 build check, nothing else.
package fake

import "os/exec" // want `import "os/exec" starts real processes`

func run() { exec.Command("go").Run() }
