// Command kelpie-lint runs Kelpie's simulation-boundary checker
// (internal/lint/boundary) over packages:
//
//	go run ./cmd/kelpie-lint ./...
//	go vet -vettool=$(pwd)/bin/kelpie-lint ./...
//
// It exits non-zero when a package outside the allow-list opens a real
// socket, uses the default HTTP client, starts a process, makes raw
// syscalls or loads a plugin. Three more invocations print the policy
// instead of checking code, each on its own:
//
//	kelpie-lint -rules      the rules and what simulated code does instead
//	kelpie-lint -allowlist  the allow-list: pattern, rules, host-only, why
//	kelpie-lint -hostonly   the host-only patterns, one per line, for
//	                        scripts/check-wasip1.sh
package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/kelpie-go/kelpie/internal/lint/boundary"
	"golang.org/x/tools/go/analysis/singlechecker"
)

func main() {
	// The policy queries are handled before singlechecker sees the
	// arguments: they are not analyzer flags (go vet must never pass them
	// on), and they print the allow-list rather than check packages.
	if len(os.Args) == 2 {
		if show, ok := policy[strings.TrimLeft(os.Args[1], "-")]; ok && strings.HasPrefix(os.Args[1], "-") {
			show(os.Stdout)
			return
		}
	}
	singlechecker.Main(boundary.Analyzer)
}

// policy maps each query flag (without dashes) to what it prints.
var policy = map[string]func(io.Writer){
	"rules":     printRules,
	"allowlist": printAllowList,
	"hostonly":  printHostOnly,
}

func printRules(w io.Writer) {
	for _, r := range boundary.Rules {
		fmt.Fprintf(w, "%-13s %s\n", r, boundary.Advice(r))
	}
}

func printAllowList(w io.Writer) {
	for _, e := range boundary.AllowList {
		rules := make([]string, len(e.Allow))
		for i, r := range e.Allow {
			rules[i] = string(r)
		}
		allow := strings.Join(rules, ",")
		if allow == "" {
			allow = "-"
		}
		host := ""
		if e.HostOnly {
			host = "host-only"
		}
		fmt.Fprintf(w, "%-18s %-33s %-9s %s\n", e.Pattern, allow, host, e.Why)
	}
	rules := make([]string, len(boundary.TestFileAllow))
	for i, r := range boundary.TestFileAllow {
		rules[i] = string(r)
	}
	fmt.Fprintf(w, "%-18s %-33s %-9s %s\n", "*_test.go", strings.Join(rules, ","), "", "integration tests run real components over loopback; not inside "+boundary.SimTestPrefix+"* functions")
}

func printHostOnly(w io.Writer) {
	for _, p := range boundary.HostOnlyPatterns() {
		fmt.Fprintln(w, p)
	}
}
