#!/usr/bin/env bash
# Container job overhead: a job running `true` in kiln's sandbox (the "host"
# view: read-only host root, workspace overlay, /proc, /dev, /tmp, loopback
# network) against `bwrap --unshare-all --ro-bind / / true`, side by side in
# one hyperfine run. Target: kiln <= 2x bwrap. Needs root (or user
# namespaces); installs bubblewrap and hyperfine from Debian when missing.
#
#   bash benches/sandbox.sh            # builds kiln --release first
#   KILN=path/to/kiln bash benches/sandbox.sh
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v hyperfine >/dev/null || missing+=(hyperfine)
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

if [ -z "${KILN:-}" ]; then
  cargo build --release --quiet --bin kiln
  KILN="$PWD/target/release/kiln"
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch"/{base,upper,work,run}
echo hello > "$scratch/base/file"
echo true > "$scratch/job.sh"
cat > "$scratch/run/spec.json" <<JSON
{
  "root": { "host": { "exclude": [] } },
  "workspace": {
    "path": "/work",
    "lower": ["$scratch/base"],
    "upper": "$scratch/upper",
    "work": "$scratch/work"
  },
  "script": "$scratch/job.sh",
  "env": [["PATH", "/usr/bin:/bin"]]
}
JSON

kiln_job="$KILN __sandbox $scratch/run/spec.json $scratch/run/status.json"
# Sanity: both really run and succeed.
$kiln_job
bwrap --unshare-all --ro-bind / / true

# As in the container driver, every kiln run gets a fresh, empty upper and
# work directory (reusing them makes overlayfs clean the old work directory
# at mount time, and on a filesystem mounted with `discard`, as here, that
# frees blocks synchronously). Preparing them is not timed.
fresh="rm -rf $scratch/upper $scratch/work $scratch/run/status.json && mkdir $scratch/upper $scratch/work"
hyperfine --warmup 20 --min-runs 300 -N \
  --export-json "$scratch/results.json" \
  --prepare "bash -c '$fresh'" --prepare "true" \
  -n "kiln sandbox (host view) true" "$kiln_job" \
  -n "bwrap --unshare-all --ro-bind / / true" "bwrap --unshare-all --ro-bind / / true"

python3 - "$scratch/results.json" <<'PY'
import json, sys
kiln, bwrap = json.load(open(sys.argv[1]))["results"]
for stat in ("mean", "median", "min"):
    print(f"{stat:>6}: kiln {kiln[stat] * 1e3:6.2f} ms, bwrap {bwrap[stat] * 1e3:6.2f} ms, "
          f"kiln / bwrap = {kiln[stat] / bwrap[stat]:.2f}x (target <= 2x)")
PY
