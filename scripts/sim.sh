#!/usr/bin/env bash
# Runs the simulation tests under the deterministic executor.
#
#   scripts/sim.sh run   SEED [PKGS] [RUN]         one seed, one line per simulation
#   scripts/sim.sh check SEED [PKGS] [RUN] SEEDS   SEED twice (traces must match byte
#                                                  for byte), then a sweep of SEEDS
#
# PKGS defaults to every package with TestSim* tests (scripts/simpkgs.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dst=$root/bin/kelpie-dst
mode=${1:?usage: sim.sh run|check SEED [PKGS] [RUN] [SEEDS]}
seed=${2:?SEED is required}
pkgs=${3:-}
run=${4:-^TestSim}
[ -n "$pkgs" ] || pkgs=$(scripts/simpkgs.sh | tr '\n' ' ')
logs=$root/bin/sim-logs
mkdir -p "$logs"

# one_seed SEED OUT: every simulation test with SEED; the dst lines go to OUT.
one_seed() {
	local s=$1 out=$2 log=$logs/seed-$1.log status=0
	DST_SEED=$s GOOS=wasip1 GOARCH=wasm go test -count=1 -v -timeout 10m -exec "$dst" -run "$run" $pkgs >"$log" 2>&1 || status=$?
	grep '^dst ' "$log" >"$out" || true
	if [ "$status" -ne 0 ]; then
		echo "simulation failed with seed $s (full log: $log):" >&2
		grep -vE '^(=== RUN|=== PAUSE|=== CONT|dst )' "$log" | tail -n 150 >&2
		return 1
	fi
	if [ ! -s "$out" ]; then
		echo "no simulation ran (packages: $pkgs, run: $run)" >&2
		return 1
	fi
}

case $mode in
run)
	out=$(mktemp)
	trap 'rm -f "$out"' EXIT
	status=0
	one_seed "$seed" "$out" || status=$?
	cat "$out"
	exit "$status"
	;;
check)
	seeds=${5:?SEEDS is required for check}
	a=$(mktemp) b=$(mktemp) bindir=$(mktemp -d)
	trap 'rm -rf "$a" "$b" "$bindir"' EXIT
	one_seed "$seed" "$a"
	one_seed "$seed" "$b"
	echo "seed $seed, run 1:"; sed 's/^/  /' "$a"
	echo "seed $seed, run 2:"; sed 's/^/  /' "$b"
	if ! cmp -s "$a" "$b"; then
		echo "NOT DETERMINISTIC: two runs of seed $seed differ:" >&2
		diff "$a" "$b" >&2 || true
		exit 1
	fi
	echo "seed $seed: $(wc -l <"$a") simulations, traces identical byte for byte"

	echo "sweeping seeds $seeds:"
	start=$(date +%s)
	total=0
	swept=$(mktemp)
	trap 'rm -rf "$a" "$b" "$bindir" "$swept"' EXIT
	for p in $pkgs; do
		name=$(echo "${p#./}" | tr '/' '_')
		# The binary's name and arguments are inputs of the run like any
		# other: they are exactly what go test -exec gives it in one_seed,
		# so that a seed that fails here replays with make sim.
		mkdir -p "$bindir/$name"
		bin=$bindir/$name/$(basename "$p").test
		GOOS=wasip1 GOARCH=wasm go test -c -o "$bin" "$p"
		sweeplog=$logs/sweep-$name.log
		if ! (cd "$p" && "$dst" -seeds "$seeds" -q "$bin" -test.paniconexit0 -test.count=1 -test.v=true -test.timeout=10m0s -test.run="$run") >"$sweeplog" 2>&1; then
			echo "sweep of $p failed (full log: $sweeplog):" >&2
			grep -vE '^dst ' "$sweeplog" | tail -n 60 >&2
			exit 1
		fi
		grep "^dst .* seed=$seed " "$sweeplog" >>"$swept" || true
		n=$(grep -c '^dst ' "$sweeplog" || true)
		total=$((total + n))
		echo "  $p: $n simulations passed"
	done
	echo "sweep $seeds: $total simulations passed in $(( $(date +%s) - start ))s"
	# Where the sweep covered SEED, its runs must be the ones make sim replays.
	if [ -s "$swept" ] && ! cmp -s <(sort "$a") <(sort "$swept"); then
		echo "the sweep's runs of seed $seed differ from make sim's: a sweep failure would not replay" >&2
		diff <(sort "$a") <(sort "$swept") >&2 || true
		exit 1
	fi
	if [ -s "$swept" ]; then
		echo "seed $seed in the sweep: the same traces as make sim"
	fi
	;;
*)
	echo "sim.sh: unknown mode $mode (want run or check)" >&2
	exit 2
	;;
esac
