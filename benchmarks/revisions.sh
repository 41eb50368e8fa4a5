#!/usr/bin/env bash
# Builds of several git revisions, measured in turn in one session, so that their ratios can be
# quoted on a shared, noisy machine (the "builds alternating" figures in BENCHMARKS.md):
#
#   benchmarks/revisions.sh "REV1 REV2 ..." [ROUNDS] [-- BENCH_ARGS...]
#
# Each revision is checked out as a git worktree under target/revisions/ (not .dev/, which is
# carried to the device) and built in release mode with one shared target directory (the
# dependencies build once; a revision's binary is kept as target/revisions/taylormap-SHA and
# reused by later calls; ROUNDS 0 only builds); then every round runs
# `taylormap bench --json BENCH_ARGS` with each revision's binary in turn, and prints one line per
# measurement: revision, backend, batch size, heatmaps/s and, where the backend has them, the
# forward and relevance GPU milliseconds per batch. ROUNDS defaults to 3; BENCH_ARGS to the
# llvmpipe comparison: --backend gpu --composite deep-taylor-bounded --batch-sizes 16
# --min-seconds 4. Remove the worktrees with `git worktree prune` after deleting target/revisions.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
  echo "usage: benchmarks/revisions.sh \"REV1 REV2 ...\" [ROUNDS] [-- BENCH_ARGS...]" >&2
  exit 2
fi
REVS=$1
shift
ROUNDS=3
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
  ROUNDS=$1
  shift
fi
[ "${1:-}" = "--" ] && shift
ARGS=("$@")
if [ ${#ARGS[@]} -eq 0 ]; then
  ARGS=(--backend gpu --composite deep-taylor-bounded --batch-sizes 16 --min-seconds 4)
fi
ROOT=target/revisions
mkdir -p "$ROOT"
SHAS=()
for rev in $REVS; do
  sha=$(git rev-parse --short "$rev^{commit}")
  dir=$ROOT/$sha
  if [ ! -x "$ROOT/taylormap-$sha" ]; then
    [ -d "$dir" ] || git worktree add --detach "$dir" "$sha" >/dev/null
    # The target directory is shared: cargo would call this revision fresh after building
    # another one and leave the other's binary in place, so its sources are touched first.
    find "$dir/src" "$dir/shaders" -type f -exec touch {} +
    CARGO_TARGET_DIR="$PWD/$ROOT/target" cargo build --release --quiet --manifest-path "$dir/Cargo.toml"
    cp "$ROOT/target/release/taylormap" "$ROOT/taylormap-$sha.partial"
    mv "$ROOT/taylormap-$sha.partial" "$ROOT/taylormap-$sha"
  fi
  SHAS+=("$sha")
done
for round in $(seq "$ROUNDS"); do
  for sha in "${SHAS[@]}"; do
    lines=$("$ROOT/taylormap-$sha" bench --json "${ARGS[@]}" 2>/dev/null)
    python3 - "$round" "$sha" "$lines" <<'PY'
import json, sys
round_, sha, lines = sys.argv[1:4]
for line in lines.splitlines():
    r = json.loads(line)
    st = r.get("stage_seconds")
    stages = ""
    if st:
        stages = f"  forward {st['forward'] * 1e3:.2f} ms, relevance {st['relevance'] * 1e3:.2f} ms"
    print(f"round {round_}  {sha}  {r['backend']:<9} batch {r['batch_size']:>6}  "
          f"{r['heatmaps_per_second']:>10.0f} heatmaps/s{stages}")
PY
  done
done
