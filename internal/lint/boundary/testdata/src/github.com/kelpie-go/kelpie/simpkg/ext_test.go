package simpkg_test

import (
	"net"
	"os/exec" // want `import "os/exec" starts real processes \[exec\]`
	"testing"
)

// The external test package gets the same policy as the package.
func TestExternal(t *testing.T) {
	net.Dial("tcp", "127.0.0.1:1")
	exec.Command("true")
}

func TestSimExternal(t *testing.T) {
	net.Dial("tcp", "127.0.0.1:1") // want `net\.Dial opens a real socket`
}
