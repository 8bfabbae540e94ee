// Command kelpie-scenarios is the simulation scenarios compiled as one
// wasip1 program. kelpie sim runs it under the deterministic executor; it is
// not meant to be run by hand, but it can be:
//
//	GOOS=wasip1 GOARCH=wasm go build -o bin/kelpie-scenarios.wasm ./cmd/kelpie-scenarios
//	DST_SEED=7 bin/kelpie-dst bin/kelpie-scenarios.wasm -scenario sim-canary
//
// With -list it prints "name<TAB>doc" per scenario. With -scenario NAME it
// runs that scenario with the seed in DST_SEED, prints the summary line
// "dst NAME seed=N trace=... virtual=...", and on failure the error and the
// last events of the trace, exiting 1.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/kelpie-go/kelpie/internal/scenarios"
	"github.com/kelpie-go/kelpie/sim"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("kelpie-scenarios", flag.ContinueOnError)
	fs.SetOutput(stderr)
	list := fs.Bool("list", false, "list the scenarios")
	name := fs.String("scenario", "", "run the scenario called `name`")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *list {
		for _, sc := range scenarios.All() {
			fmt.Fprintf(stdout, "%s\t%s\n", sc.Name, sc.Doc)
		}
		return 0
	}
	if *name == "" {
		fmt.Fprintln(stderr, "kelpie-scenarios: give -list or -scenario NAME")
		return 2
	}
	sc, err := scenarios.Lookup(*name)
	if err != nil {
		fmt.Fprintf(stderr, "kelpie-scenarios: %v\n", err)
		return 2
	}
	seed, _, err := sim.SeedFromEnv()
	if err != nil {
		fmt.Fprintf(stderr, "kelpie-scenarios: %v\n", err)
		return 2
	}
	res := sim.Execute(sc.Name, seed, sc.Run)
	fmt.Fprintln(stdout, res.Line())
	if res.Err != nil {
		fmt.Fprintf(stderr, "FAIL %s seed=%d: %v\n", sc.Name, seed, res.Err)
		for _, e := range res.Tail {
			fmt.Fprintf(stderr, "  %s\n", e)
		}
		return 1
	}
	return 0
}
