#!/usr/bin/env bash
# Prints the packages (./dir) that hold simulation tests: a test function
# named TestSim*. Those run under the executor.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -rlE --include='*_test.go' '^func TestSim[A-Za-z0-9_]*\(t \*testing\.T\)' . \
	| grep -v '/testdata/' | xargs -r -n1 dirname | sort -u | sed 's#^\./##; s#^#./#'
