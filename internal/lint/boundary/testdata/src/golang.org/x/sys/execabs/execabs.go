// Package execabs is a test fixture standing in for
// golang.org/x/sys/execabs, matched by import path only.
package execabs

// Command stands for execabs.Command.
func Command(name string, arg ...string) {}
