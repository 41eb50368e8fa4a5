#!/usr/bin/env bash
# End-to-end `explain` of several builds, alternating, so that their ratio can be quoted on a
# noisy machine (the "end to end, builds alternating" figures in BENCHMARKS.md):
#
#   benchmarks/e2e.sh ROUNDS DIR "BIN1 BIN2 ..." [EXPLAIN_ARGS...]
#
# Each round runs `BIN explain --quiet --out DIR/e2e EXPLAIN_ARGS` with every binary in turn, each
# into a new folder (removed, then `sync`, before the run, so that no run pays for the previous
# one's files), and prints one line per run: the binary, explain's own load, compute and write
# times and heatmaps/s (load excluded), and the wall time of the whole command in ms.
# Binaries of earlier revisions: benchmarks/revisions.sh "REV" 0 builds target/revisions/taylormap-REV.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: benchmarks/e2e.sh ROUNDS DIR \"BIN1 BIN2 ...\" [EXPLAIN_ARGS...]" >&2
  exit 2
fi
rounds=$1 dir=$2 bins=$3
shift 3
out="$dir/e2e"
for round in $(seq "$rounds"); do
  for bin in $bins; do
    rm -rf "$out" && sync
    start=$(date +%s%N)
    summary=$("$bin" explain --quiet --out "$out" "$@" 2>"$dir/e2e.err") || {
      cat "$dir/e2e.err" >&2
      exit 1
    }
    wall=$((($(date +%s%N) - start) / 1000000))
    line=$(echo "$summary" | grep -E "^(time|heatmaps per second)" | tr -s ' \n' ' ')
    echo "round $round $bin: $line wall $wall ms"
  done
done
rm -rf "$out" "$dir/e2e.err"
