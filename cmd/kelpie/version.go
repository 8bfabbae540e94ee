package main

import (
	"fmt"
	"io"
	"runtime"

	"github.com/kelpie-go/kelpie/internal/version"
)

func init() {
	register(command{name: "version", summary: "print the version", run: func(args []string, stdout, stderr io.Writer) int {
		if len(args) > 0 {
			fmt.Fprintf(stderr, "kelpie version: takes no arguments, got %q\n", args)
			return 2
		}
		fmt.Fprintf(stdout, "kelpie %s %s/%s %s\n", version.String(), runtime.GOOS, runtime.GOARCH, runtime.Version())
		return 0
	}})
}
