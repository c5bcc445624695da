#!/usr/bin/env bash
# Benchmarks of `kiln run` (docs/performance.md, "## kiln run"):
#  1. no-op run of a 1,000-job manifest, every job cached;
#  2. container job overhead: a job running `true` vs bwrap;
#  3. 100 independent trivial jobs with --jobs 2 (jobs/s).
# Usage: benches/run.sh [KILN_BINARY]   (default: target/release/kiln)
set -euo pipefail
cd "$(dirname "$0")/.."
KILN=${1:-$PWD/target/release/kiln}
for tool in hyperfine bwrap; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install hyperfine bubblewrap)" >&2; exit 1; }
done
[ -x "$KILN" ] || cargo build --release
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export TMPDIR=$WORK/tmp
mkdir -p "$TMPDIR"

# A manifest of STAGES x WIDTH jobs; each job needs one job of the stage
# before it (chains), so every job has a small, real upstream.
gen() { # gen FILE STAGES WIDTH COMMAND
  local file=$1 stages=$2 width=$3 command=$4
  {
    echo '{ driver = { type = "container"; image = "host"; };'
    echo -n '  stages = [ '
    for s in $(seq 1 "$stages"); do echo -n "\"s$s\" "; done
    echo '];'
    echo '  jobs = {'
    for s in $(seq 1 "$stages"); do
      for w in $(seq 1 "$width"); do
        if [ "$s" -gt 1 ]; then needs="needs = [ \"j$((s-1))-$w\" ];"; else needs=""; fi
        echo "    j$s-$w = { stage = \"s$s\"; $needs commands = [ \"$command\" ]; };"
      done
    done
    echo '  };'
    echo '}'
  } > "$file"
}

echo "## 1. no-op run of 1,000 cached jobs"
mkdir -p "$WORK/noop"
gen "$WORK/noop/build.kiln" 10 100 'echo \$PWD > out'
( cd "$WORK/noop" && "$KILN" --store "$WORK/store1" run --jobs 2 >/dev/null 2>&1 ) || { echo "first run failed"; exit 1; }
( cd "$WORK/noop" && hyperfine --warmup 1 --runs 10 -N "$KILN --store $WORK/store1 run" )

echo "## 2. container job overhead"
mkdir -p "$WORK/one"
gen "$WORK/one/build.kiln" 1 1 'true'
( cd "$WORK/one" && hyperfine --warmup 2 --runs 20 -N \
    "$KILN --store $WORK/store2 run --no-cache" \
    "bwrap --unshare-all --ro-bind / / true" )

echo "## 3. 100 independent trivial jobs, --jobs 2"
mkdir -p "$WORK/hundred"
gen "$WORK/hundred/build.kiln" 1 100 'true'
( cd "$WORK/hundred" && hyperfine --warmup 1 --runs 5 -N "$KILN --store $WORK/store3 run --no-cache --jobs 2" )
