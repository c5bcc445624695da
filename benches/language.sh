#!/usr/bin/env bash
# Language benchmark (issue 2), kiln against the Nix evaluator on the same
# files (the kiln language is Nix-flavoured; the inputs are valid Nix):
#   1. evaluate a manifest generating 10,000 jobs with genList/map
#      (target: well under 300 ms for `kiln eval` end to end);
#   2. parse a 1 MiB manifest (target: under 50 ms).
# In-process numbers come from `cargo bench -p kiln-grammar --bench language`
# (std::time, best/median of N runs plus CPU time per run); end-to-end ones
# from hyperfine on the release `kiln` binary and `nix-instantiate`.
# The peer is optional: `apt-get install nix-bin` provides nix-instantiate.
# Usage: bash benches/language.sh [RUNS]   (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-20}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "== in process (grammar/benches/language.rs)"
KILN_BENCH_DIR="$work" KILN_BENCH_RUNS="$runs" KILN_BENCH_DUMP="$work/kiln-value.json" \
  cargo bench --quiet -p kiln-grammar --bench language

cargo build --release --quiet --bin kiln
kiln="$PWD/target/release/kiln"
jobs="$work/jobs-10000.kiln"
large="$work/large-1mib.kiln"

commands=("$kiln eval $jobs")
if "$kiln" check "$large" >/dev/null 2>&1; then
  commands+=("$kiln check $large")
fi
if command -v nix-instantiate >/dev/null 2>&1; then
  # Same value from both evaluators, or the comparison means nothing.
  nix-instantiate --eval --strict --json "$jobs" >"$work/nix-value.json" 2>/dev/null
  python3 - "$work/kiln-value.json" "$work/nix-value.json" <<'PY'
import json, sys
kiln, nix = (json.load(open(p)) for p in sys.argv[1:3])
print("kiln and nix agree on the 10,000-job value" if kiln == nix else "VALUES DIFFER")
sys.exit(0 if kiln == nix else 1)
PY
  commands+=(
    "nix-instantiate --eval --strict --json $jobs"
    "nix-instantiate --parse $large"
    "nix-instantiate --eval --strict --json $large"
  )
else
  echo "nix-instantiate not found: no peer comparison (apt-get install nix-bin)"
fi

echo "== end to end"
if command -v hyperfine >/dev/null 2>&1; then
  hyperfine --warmup 2 --runs "$runs" --output=null -N "${commands[@]}"
else
  for command in "${commands[@]}"; do
    start=$(date +%s%N)
    for _ in $(seq "$runs"); do $command >/dev/null 2>&1; done
    echo "$command: $(( ($(date +%s%N) - start) / runs / 1000000 )) ms mean"
  done
fi
