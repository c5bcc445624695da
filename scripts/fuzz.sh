#!/usr/bin/env bash
# Builds kiln's fuzz targets (fuzz/, see docs/fuzzing.md) and runs each for a
# bounded time, then reports what they found.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default 60); TARGETs default to every target. Needs
# cargo-fuzz (`cargo install cargo-fuzz`); works on stable Rust through
# RUSTC_BOOTSTRAP=1. Not part of scripts/test.sh: too slow for CI.
#
# Environment: KILN_FUZZ_TARGET_DIR (cargo's target dir, default
# fuzz/target), KILN_FUZZ_ARGS (extra libFuzzer flags, e.g. "-jobs=2").
# The corpus grows in fuzz/corpus/TARGET, findings land in
# fuzz/artifacts/TARGET (both ignored by git). Exit 1 if anything was found.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-60}
shift || true
target_dir=${KILN_FUZZ_TARGET_DIR:-$root/fuzz/target}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version > /dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is missing: cargo install cargo-fuzz" >&2
    exit 2
fi

cd "$root/fuzz"
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# Release build with debug assertions (overflow checks) and no sanitizer:
# kiln's own code has no unsafe in these paths, and ASan would double the
# build and halve the speed on two cores.
build=(-O -a -s none --codegen-units 16 --target-dir "$target_dir")
echo "== building the fuzz targets"
cargo fuzz build "${build[@]}"

# Seeds from the repository, by target (read-only corpus directories).
seeds() {
    local dirs=("$root/fuzz/seeds/$1")
    case $1 in
        grammar_parse | kiln_load)
            dirs+=("$root/grammar/tests/ok/lang" "$root/grammar/tests/err/lang"
                "$root/grammar/tests/ok/manifest" "$root/grammar/tests/err/manifest"
                "$root/examples/hello") ;;
        djinn_load)
            dirs+=("$root/grammar/tests/corpus/djinn" "$root/grammar/tests/ok/manifest"
                "$root/grammar/tests/err/manifest") ;;
    esac
    for dir in "${dirs[@]}"; do
        [ -d "$dir" ] && echo "$dir"
    done
}

dict() {
    case $1 in
        grammar_parse | kiln_load) echo "-dict=$root/fuzz/dict/kiln.dict" ;;
        djinn_load) echo "-dict=$root/fuzz/dict/djinn.dict" ;;
    esac
}

found=0
summary=()
for target in "${targets[@]}"; do
    corpus=$root/fuzz/corpus/$target
    artifacts=$root/fuzz/artifacts/$target
    mkdir -p "$corpus" "$artifacts"
    mapfile -t seed_dirs < <(seeds "$target")
    log=$artifacts/last-run.log
    echo "== $target: ${seconds}s (log: $log)"
    stamp=$(mktemp)
    status=0
    # shellcheck disable=SC2046,SC2086
    cargo fuzz run "${build[@]}" "$target" "$corpus" "${seed_dirs[@]}" -- \
        -max_total_time="$seconds" -timeout=20 -rss_limit_mb=3072 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 \
        $(dict "$target") ${KILN_FUZZ_ARGS:-} > "$log" 2>&1 || status=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    mapfile -t findings < <(find "$artifacts" -maxdepth 1 -type f \
        \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) -newer "$stamp" 2> /dev/null)
    rm -f "$stamp"
    if [ "$status" -ne 0 ] || [ ${#findings[@]} -gt 0 ]; then
        found=1
        summary+=("$target: FOUND (exit $status, $execs runs): ${findings[*]:-see $log}")
        grep -m 5 -E "panicked|ERROR: libFuzzer|SUMMARY" "$log" | sed 's/^/    /' || true
    else
        summary+=("$target: nothing found in $execs runs")
    fi
done

echo
echo "== summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
exit "$found"
