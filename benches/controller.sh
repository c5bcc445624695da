#!/usr/bin/env bash
# The cost of the build controller (docs/performance.md, "Controller"):
# kiln run through a controller and a child build process, against the
# one-process kiln run of commit 43d0494 (before the controller), in the
# same run:
#  1. no-op run of 1,000 cached jobs;
#  2. a one-job build (`true`, --no-cache): start to end.
# Usage: benches/controller.sh OLD_KILN NEW_KILN
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?usage: benches/controller.sh OLD_KILN NEW_KILN}
NEW=${2:?usage: benches/controller.sh OLD_KILN NEW_KILN}
command -v hyperfine >/dev/null || { echo "needs hyperfine (apt-get install hyperfine)" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export TMPDIR=$WORK/tmp
mkdir -p "$TMPDIR"
gen() { # gen FILE STAGES WIDTH COMMAND (as benches/run.sh)
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
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "## 1. no-op run of 1,000 cached jobs"
mkdir -p "$WORK/noop"
gen "$WORK/noop/build.kiln" 10 100 'echo \$PWD > out'
for kiln in "$OLD" "$NEW"; do
  store="$WORK/store-$(basename "$kiln")"
  ( cd "$WORK/noop" && "$kiln" --store "$store" run --jobs 2 >/dev/null 2>&1 ) || { echo "first run failed"; exit 1; }
done
( cd "$WORK/noop" && hyperfine --warmup 2 --runs 15 -N \
    -n one-process "$OLD --store $WORK/store-$(basename "$OLD") run" \
    -n controller "$NEW --store $WORK/store-$(basename "$NEW") run" )
echo "## 2. one-job build, start to end"
mkdir -p "$WORK/one"
gen "$WORK/one/build.kiln" 1 1 'true'
( cd "$WORK/one" && hyperfine --warmup 3 --runs 30 -N \
    -n one-process "$OLD --store $WORK/one-old run --no-cache" \
    -n controller "$NEW --store $WORK/one-new run --no-cache" )
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
