#!/usr/bin/env bash
# Manifest benchmarks, end to end through the release binary:
#   1. `kiln eval` of a manifest that generates 10,000 jobs with genList/map
#      (target: under 300 ms wall);
#   2. `kiln check` of a 1 MiB kiln manifest (target: parse under 50 ms);
#   3. `kiln check` of a 1 MiB Djinn YAML manifest, for comparison.
# Uses hyperfine when installed, else a loop timed with `date +%s%N`.
# Usage: bash benches/manifest.sh [RUNS]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10}"

cargo build --release --quiet --bin kiln
kiln="$PWD/target/release/kiln"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# 1. 10,000 generated jobs: 9,999 in "build", one "test" job that needs them all.
cat >"$work/jobs10k.kiln" <<'KILN'
let
  count = 10000;
  job = n: {
    stage = if n == 0 then "test" else "build";
    name = "job-${toString n}";
    commands = [ "echo ${toString n}" "make -C part-${toString n}" ];
    artifacts = [ "out/${toString n}.o" ];
  };
in {
  driver = { type = "container"; image = "host"; };
  env = { CC = "gcc"; };
  stages = [ "build" "test" ];
  jobs = map job (genList (n: n) count);
}
KILN

# 2. A 1 MiB manifest of literal jobs (what a big hand-written file looks like).
awk 'BEGIN {
  print "{"
  print "  driver = { type = \"container\"; image = \"host\"; };"
  print "  stages = [ \"build\" ];"
  print "  jobs = {"
  for (n = 0; size < 1048576; n++) {
    line = sprintf("    job%d = { stage = \"build\"; commands = [ \"cc -O2 -c src/file%d.c -o out/file%d.o\" \"strip out/file%d.o\" ]; artifacts = [ \"out/file%d.o => objects/file%d.o\" ]; env = { SHARD = \"%d\"; }; };", n, n, n, n, n, n, n)
    print line
    size += length(line) + 1
  }
  print "  };"
  print "}"
}' >"$work/big.kiln"

# 3. A 1 MiB Djinn YAML manifest of similar jobs.
awk 'BEGIN {
  print "driver: {type: docker, image: golang, workspace: /go}"
  print "stages: [build]"
  print "jobs:"
  for (n = 0; size < 1048576; n++) {
    job = sprintf("- stage: build\n  name: job%d\n  commands:\n  - cc -O2 -c src/file%d.c -o out/file%d.o\n  - strip out/file%d.o\n  artifacts:\n  - out/file%d.o => objects/file%d.o", n, n, n, n, n, n)
    print job
    size += length(job) + 1
  }
}' >"$work/big.yml"

echo "inputs: $(wc -c <"$work/jobs10k.kiln") B generator, $(wc -c <"$work/big.kiln") B kiln, $(wc -c <"$work/big.yml") B yaml"
"$kiln" eval "$work/jobs10k.kiln" >"$work/jobs10k.json"
echo "jobs10k: $(grep -c '"stage"' "$work/jobs10k.json") jobs, $(wc -c <"$work/jobs10k.json") B of JSON"
"$kiln" check "$work/big.kiln" "$work/big.yml"

commands=(
  "$kiln eval $work/jobs10k.kiln"
  "$kiln check $work/big.kiln"
  "$kiln check $work/big.yml"
)
if command -v hyperfine >/dev/null 2>&1; then
  hyperfine --warmup 2 --runs "$runs" --output=null -N "${commands[@]}"
else
  for command in "${commands[@]}"; do
    total=0
    for _ in $(seq "$runs"); do
      start=$(date +%s%N)
      $command >/dev/null
      total=$((total + $(date +%s%N) - start))
    done
    echo "$command: mean $((total / runs / 1000000)) ms over $runs runs"
  done
fi
