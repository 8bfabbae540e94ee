#!/usr/bin/env bash
# Runs every test natively with the race detector, prints one line per
# package, fails on any failure and on any skip that .ci/allowed-skips does
# not explain, and ends with "N passed, N failed, N skipped".
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p bin
log=bin/test.log
status=0
go test -race -count=1 -v -timeout 20m ./... >"$log" 2>&1 || status=$?

grep -E '^(ok|FAIL|\?|panic:)' "$log" | grep -v 'no test files' || true
passed=$(grep -cE '^\s*--- PASS' "$log" || true)
failed=$(grep -cE '^\s*--- FAIL' "$log" || true)
skipped=$(grep -cE '^\s*--- SKIP' "$log" || true)

if [ "$status" -ne 0 ]; then
	echo
	echo "failures (full log: $log):"
	grep -E -B2 -A30 '^\s*--- FAIL|^panic:|^FAIL\s' "$log" | head -n 300
fi

# Every skip must match a line of .ci/allowed-skips: "TestName<TAB>why".
unexpected=0
while IFS= read -r line; do
	name=$(sed -E 's/^\s*--- SKIP: ([^ ]+).*/\1/' <<<"$line")
	if ! cut -f1 .ci/allowed-skips 2>/dev/null | grep -qxF "$name"; then
		echo "unexpected skip: $name (add it to .ci/allowed-skips with the reason, or make it run)"
		grep -A1 -F -- "--- SKIP: $name " "$log" | sed 's/^/    /'
		unexpected=$((unexpected + 1))
	fi
done < <(grep -E '^\s*--- SKIP' "$log" || true)
if [ "$skipped" -gt 0 ]; then
	echo "skipped tests (allowed):"
	grep -E -A1 '^\s*--- SKIP' "$log" | sed 's/^/    /' | head -n 40
fi

echo "$passed passed, $failed failed, $skipped skipped"
if [ "$status" -ne 0 ] || [ "$unexpected" -ne 0 ]; then
	exit 1
fi
