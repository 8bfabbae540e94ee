#!/usr/bin/env bash
# Checks that every package that can run under simulation builds for
# GOOS=wasip1 GOARCH=wasm, with its tests: the executor runs simulations as
# wasip1 programs, so a package that does not build there cannot be
# simulated, and the failure belongs at build time, not in a sweep.
#
# "Every package" is `go list ./...` minus the host-only packages of the
# boundary allow-list (internal/lint/boundary/allow.go, printed by
# `kelpie-lint -hostonly`): hypervisor drivers, the executor, the guest
# agent, developer tools. That list lives only there.
#
#   scripts/check-wasip1.sh            check the module
#   scripts/check-wasip1.sh -v         also list the packages in each set
#
# Exits 1 naming each offending package with its compiler errors.
set -euo pipefail
cd "$(dirname "$0")/.."
verbose=false
[ "${1:-}" = -v ] && verbose=true

# Host-only patterns, from the allow-list. bin/kelpie-lint is not required:
# make runs this before building it.
patterns=$(go run ./cmd/kelpie-lint -hostonly)

all=$(go list -e ./...)
host=""
for p in $patterns; do
	matched=$(go list -e -f '{{if not .Error}}{{.ImportPath}}{{end}}' "$p" 2>/dev/null || true)
	if [ -z "$matched" ]; then
		echo "note: host-only pattern $p matches no package (stale entry in internal/lint/boundary/allow.go, or not written yet)" >&2
	fi
	host+="$matched"$'\n'
done
host=$(printf '%s' "$host" | sed '/^$/d' | sort -u)
sim=$(comm -23 <(printf '%s\n' "$all" | sort -u) <(printf '%s\n' "$host"))

nsim=$(printf '%s\n' "$sim" | sed '/^$/d' | wc -l)
nhost=$(printf '%s\n' "$host" | sed '/^$/d' | wc -l)
if $verbose; then
	echo "host-only ($nhost):"; printf '%s\n' "$host" | sed 's/^/  /'
	echo "must build for wasip1 ($nsim):"; printf '%s\n' "$sim" | sed 's/^/  /'
fi
if [ "$nsim" -eq 0 ]; then
	echo "check-wasip1: no package to check; the host-only list covers the whole module?" >&2
	exit 1
fi

# One pass over everything first; it is all cached after the first run.
# go build compiles the packages themselves (-o /dev/null: a main package
# built alone would otherwise leave its binary in the working directory).
# go vet type-checks them with their _test.go files (simulations are
# tests), with only the asmdecl analyzer enabled so that vet findings, which
# `make vet` reports natively, do not mix in: what fails here is the wasip1
# build. A package with no non-test file for wasip1 is left to go vet alone:
# go build refuses it, and go vet still reports "build constraints exclude
# all Go files" when the test files are excluded too.
export GOOS=wasip1 GOARCH=wasm
# shellcheck disable=SC2086 # package lists are word-split on purpose
built=$(go list -e -f '{{if .GoFiles}}{{.ImportPath}}{{end}}' $sim)
# buildable P: whether P has non-test files for wasip1, i.e. go build applies.
buildable() { printf '%s\n' "$built" | grep -qxF "$1"; }
# shellcheck disable=SC2086
if { [ -z "$built" ] || go build -o /dev/null $built >/dev/null 2>&1; } && go vet -asmdecl $sim >/dev/null 2>&1; then
	echo "check-wasip1: $nsim packages build for wasip1 with their tests ($nhost host-only packages exempt)"
	exit 0
fi

# Something failed: check package by package to name the offenders, each
# with its own errors.
offenders=()
for p in $sim; do
	if ! out=$( { ! buildable "$p" || go build -o /dev/null "$p"; } 2>&1 && go vet -asmdecl "$p" 2>&1); then
		offenders+=("$p")
		echo "FAIL $p does not build for GOOS=wasip1 GOARCH=wasm:" >&2
		printf '%s\n' "$out" | grep -v '^#' | head -n 20 | sed 's/^/    /' >&2
	fi
done
if [ "${#offenders[@]}" -eq 0 ]; then
	# The batch failed but no single package does: report the batch.
	echo "check-wasip1: the combined build failed, though every package builds alone:" >&2
	# shellcheck disable=SC2086
	{ go build -o /dev/null $built && go vet -asmdecl $sim; } 2>&1 | head -n 40 >&2 || true
	exit 1
fi
echo >&2
echo "check-wasip1: ${#offenders[@]} of $nsim packages that must run under simulation do not build for wasip1:" >&2
printf '  %s\n' "${offenders[@]}" >&2
echo "Fix them (simulated code uses only channels, sync, time and in-memory I/O; see 'kelpie-lint -rules'), or, if a package truly never runs simulated, mark it host-only in internal/lint/boundary/allow.go with its reason." >&2
exit 1
