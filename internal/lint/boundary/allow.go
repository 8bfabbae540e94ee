package boundary

import (
	"fmt"
	"sort"
	"strings"
)

// This file is the one place that says who may cross the simulation
// boundary. Changing it is a design decision: each line names the package,
// the rules it may break, whether it is host-only (exempt from the wasip1
// build check because it never runs inside a simulation), and why.

// Module is the import path that allow-list patterns are relative to.
const Module = "github.com/kelpie-go/kelpie"

// Entry grants rules to the packages that Pattern matches.
type Entry struct {
	// Pattern is a package directory relative to Module ("vm/qemu"), or a
	// directory followed by "/..." for it and everything below ("cmd/...").
	Pattern string
	// Allow lists the rules these packages may break.
	Allow []Rule
	// HostOnly exempts the packages from the wasip1 build check: they
	// drive the host (hypervisors, the executor, developer tools) and are
	// never part of a simulated program.
	HostOnly bool
	// Why is the one-line reason, printed by kelpie-lint -allowlist.
	Why string
}

// AllowList is the allow-list. Every other package of the module must pass
// every rule and build for wasip1. Binaries are listed one by one, not as
// cmd/...: a new binary is checked for wasip1 and held to every rule until a
// line here says why it need not be (cmd/kelpie-scenarios is itself a
// simulated wasip1 program, so it has no line).
var AllowList = []Entry{
	{Pattern: "cmd/kelpie", Allow: []Rule{Socket, Exec}, HostOnly: true, Why: "the server binary links the real adapters (QEMU, bbolt) and serves a VM session's control socket; simulations run its libraries, and kelpie sim drives the executor from the host; its tests run the built binary"},
	{Pattern: "cmd/kelpie-dst", Allow: []Rule{Exec}, HostOnly: true, Why: "the executor's command hosts simulations with wazero; it never runs inside one; its tests build and run test binaries"},
	{Pattern: "cmd/kelpie-guest", Allow: []Rule{Socket, Exec, Syscall}, HostOnly: true, Why: "the guest agent is /init inside the VM: it mounts filesystems, loads kernel modules, listens on vsock and execs tools with raw syscalls (linux only); outside a VM it serves on a unix socket"},
	{Pattern: "cmd/kelpie-lint", Allow: []Rule{Exec}, HostOnly: true, Why: "the checker is a developer tool built on golang.org/x/tools; its tests run it as go vet's -vettool"},
	{Pattern: "internal/executor", Allow: []Rule{Exec}, HostOnly: true, Why: "the executor runs test binaries under wazero on the host and builds its probes with go build"},
	{Pattern: "internal/lint/...", HostOnly: true, Why: "the checker itself: analyses source on the host, breaks no rule"},
	{Pattern: "kv/boltkv", HostOnly: true, Why: "bbolt mmaps and locks a real file and does not build for wasm; simulations store in the in-memory KV, which models crashes"},
	{Pattern: "vm/qemu", Allow: []Rule{Socket, Exec, Syscall}, HostOnly: true, Why: "starts qemu-system and speaks QMP over its Unix socket"},
	{Pattern: "vm/firecracker", Allow: []Rule{Socket, Exec, Syscall}, HostOnly: true, Why: "starts firecracker and speaks its REST API and vsock over Unix sockets"},
	{Pattern: "vm/image", Allow: []Rule{Exec}, HostOnly: true, Why: "builds the guest agent with go build and packs the initramfs"},
}

// TestFileAllow lists the rules that _test.go files may break wherever they
// are: integration tests run real components over loopback (httptest
// servers, a real etcd, a real client against a real listener), which is
// what the project's standards ask for. It is not extended to exec, syscall
// or plugin: a test that needs a process goes through a package that owns
// that boundary, so the escape stays in one audited place.
var TestFileAllow = []Rule{Socket, HTTPDefault}

// SimTestPrefix marks the test functions that do not get TestFileAllow:
// a TestSim* function runs under the executor, where the network is simnet,
// so a real socket in its body (closures included) is a bug.
const SimTestPrefix = "TestSim"

// Match reports whether pattern (allow-list syntax) matches the package
// with import path path.
func Match(pattern, path string) bool {
	rel, ok := relative(path)
	if !ok {
		return false
	}
	if dir, ok := strings.CutSuffix(pattern, "/..."); ok {
		return rel == dir || strings.HasPrefix(rel, dir+"/")
	}
	return rel == pattern
}

// relative strips Module from an import path. An external test package
// ("p_test") answers as p; a package compiled with its internal tests
// already has p's path.
func relative(path string) (string, bool) {
	path = strings.TrimSuffix(path, "_test")
	if path == Module {
		return "", true
	}
	rel, ok := strings.CutPrefix(path, Module+"/")
	return rel, ok
}

// Allowed returns the rules the package with import path path may break,
// from every allow-list entry that matches it.
func Allowed(path string) map[Rule]bool {
	allowed := map[Rule]bool{}
	for _, e := range AllowList {
		if Match(e.Pattern, path) {
			for _, r := range e.Allow {
				allowed[r] = true
			}
		}
	}
	return allowed
}

// HostOnly reports whether the package with import path path is exempt
// from the wasip1 build check.
func HostOnly(path string) bool {
	for _, e := range AllowList {
		if e.HostOnly && Match(e.Pattern, path) {
			return true
		}
	}
	return false
}

// HostOnlyPatterns returns the host-only patterns as go list patterns
// relative to the module root ("./vm/qemu", "./internal/lint/..."), sorted.
func HostOnlyPatterns() []string {
	var out []string
	for _, e := range AllowList {
		if e.HostOnly {
			out = append(out, "./"+e.Pattern)
		}
	}
	sort.Strings(out)
	return out
}

// Owners returns the allow-list patterns that may break rule, for the
// "owned by" part of a diagnostic.
func Owners(rule Rule) []string {
	var out []string
	for _, e := range AllowList {
		for _, r := range e.Allow {
			if r == rule {
				out = append(out, e.Pattern)
			}
		}
	}
	return out
}

// validate checks the allow-list's own shape, so a typo fails the checker
// instead of silently allowing nothing.
func validate(list []Entry) error {
	known := map[Rule]bool{}
	for _, r := range Rules {
		known[r] = true
	}
	seen := map[string]bool{}
	for i, e := range list {
		dir := strings.TrimSuffix(e.Pattern, "/...")
		switch {
		case dir == "" || strings.HasPrefix(dir, "/") || strings.HasPrefix(dir, ".") || strings.HasSuffix(dir, "/") || strings.Contains(dir, "..."):
			return fmt.Errorf("allow-list entry %d: pattern %q must be a module-relative directory, optionally ending in /...", i, e.Pattern)
		case seen[e.Pattern]:
			return fmt.Errorf("allow-list entry %d: pattern %q appears twice", i, e.Pattern)
		case strings.TrimSpace(e.Why) == "":
			return fmt.Errorf("allow-list entry %d (%s): Why is empty; every exemption states its reason", i, e.Pattern)
		case len(e.Allow) == 0 && !e.HostOnly:
			return fmt.Errorf("allow-list entry %d (%s): grants nothing (no rules, not host-only)", i, e.Pattern)
		}
		seen[e.Pattern] = true
		for _, r := range e.Allow {
			if !known[r] {
				return fmt.Errorf("allow-list entry %d (%s): unknown rule %q (known: %v)", i, e.Pattern, r, Rules)
			}
		}
	}
	return nil
}
