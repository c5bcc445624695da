#!/usr/bin/env bash
# Store benchmark: kiln store vs tar + zstd on the same ~1 GiB tree, side by
# side in one run. Usage: benches/store.sh [WORKDIR] [SCALE]
# Needs: a Rust toolchain, python3, tar, zstd. Writes a summary table to
# stdout (and WORKDIR/results.md).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/kiln-bench-store}
scale=${2:-1}

cargo build --release --quiet --bin kiln
kiln=$PWD/target/release/kiln
gen=$PWD/benches/gen_tree.py

rm -rf "$work"
mkdir -p "$work"
tree=$work/tree
echo "generating the tree (scale $scale)..." >&2
python3 "$gen" "$tree" --scale "$scale"
sync
files=$(find "$tree" -type f | wc -l)
bytes=$(du -sb "$tree" | cut -f1)

now() { date +%s.%N; }
elapsed() { echo "$(now) - $1" | bc; }
ratio() { echo "scale=2; $1 / $2" | bc; }

# Warm the page cache so both sides read from memory.
tar -cf - -C "$tree" . > /dev/null

t=$(now); tar -cf - -C "$tree" . | zstd -1 -T0 -q -o "$work/tree.tar.zst"; tar_time=$(elapsed "$t")
t=$(now); sync "$work/tree.tar.zst"; tar_sync_time=$(echo "$tar_time + $(elapsed "$t")" | bc)
tar_size=$(stat -c %s "$work/tree.tar.zst")

store=$work/store
t=$(now); digest=$("$kiln" --store "$store" store add "$tree" --name v1 2>/dev/null); add_time=$(elapsed "$t")
t=$(now); "$kiln" --store "$store" store add "$tree" --name v1 >/dev/null 2>&1; readd_time=$(elapsed "$t")
stored_one=$("$kiln" --store "$store" store stats --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["stored_bytes"])')

# Restore, both into fresh directories.
mkdir "$work/untar"
t=$(now); zstd -dc -q "$work/tree.tar.zst" | tar -xf - -C "$work/untar"; untar_time=$(elapsed "$t")
t=$(now); "$kiln" --store "$store" store restore "$digest" "$work/restored" 2>/dev/null; restore_time=$(elapsed "$t")
diff -r "$tree" "$work/restored" > /dev/null || { echo "restored tree differs!" >&2; exit 1; }
rm -rf "$work/untar" "$work/restored"

# Ten versions, each with ~1% of the files changed.
for v in 2 3 4 5 6 7 8 9 10; do
  python3 "$gen" "$tree" --mutate "$v"
  "$kiln" --store "$store" store add "$tree" --name "v$v" >/dev/null 2>&1
done
stored_ten=$("$kiln" --store "$store" store stats --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["stored_bytes"])')

# gc over 100,000 objects: 50,000 tiny files (a blob and a chunk each).
gcstore=$work/gcstore
python3 "$gen" "$work/tiny" --tiny 50000
tiny_digest=$("$kiln" --store "$gcstore" store add "$work/tiny" --name tiny 2>/dev/null)
objects=$("$kiln" --store "$gcstore" store stats --json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["chunks"]+s["blobs"]+s["trees"])')
t=$(now); "$kiln" --store "$gcstore" store gc >/dev/null; gc_live_time=$(elapsed "$t")
t=$(now); "$kiln" --store "$gcstore" store gc --full >/dev/null; gc_full_time=$(elapsed "$t")
"$kiln" --store "$gcstore" store unroot "object/tiny"
t=$(now); "$kiln" --store "$gcstore" store gc >/dev/null; gc_sweep_time=$(elapsed "$t")
: "$tiny_digest"

{
  echo "tree: $files files, $bytes bytes; kiln $(git rev-parse --short HEAD 2>/dev/null || echo '?'); $(nproc) cores"
  echo
  echo "| measurement | kiln | peer | ratio (kiln/peer) | goal |"
  echo "|---|---|---|---|---|"
  echo "| add vs \`tar -cf - \| zstd -1 -T0\` | ${add_time}s | ${tar_time}s (${tar_sync_time}s with fsync) | $(ratio "$add_time" "$tar_time") ($(ratio "$add_time" "$tar_sync_time")) | ≤ 1.0 |"
  echo "| second add vs first add | ${readd_time}s | ${add_time}s | $(ratio "$add_time" "$readd_time")× faster | ≥ 3× |"
  echo "| stored bytes, 1 version | $stored_one | tar.zst $tar_size | $(ratio "$stored_one" "$tar_size") | |"
  echo "| stored bytes, 10 versions (~1% files changed each) | $stored_ten | 1 version $stored_one | $(ratio "$stored_ten" "$stored_one") | ≤ 1.3 |"
  echo "| restore vs \`zstd -dc \| tar -xf -\` | ${restore_time}s | ${untar_time}s | $(ratio "$restore_time" "$untar_time") | ≤ 1.0 |"
  echo "| gc, $objects objects, all live | ${gc_live_time}s | | | < 2 s |"
  echo "| gc --full (mark and sweep), $objects objects | ${gc_full_time}s | | | |"
  echo "| gc sweeping all $objects objects | ${gc_sweep_time}s | | | < 2 s |"
} | tee "$work/results.md"
