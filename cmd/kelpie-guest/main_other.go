//go:build !linux

// Command kelpie-guest is the agent inside a Kelpie microVM; it runs on
// Linux only (the guest kernel). On other systems it says so and exits.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "kelpie-guest: runs inside a Linux guest; build it with GOOS=linux")
	os.Exit(1)
}
