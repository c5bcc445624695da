#!/usr/bin/env bash
# kiln's per-job VM overhead: a whole kiln VM job (`true` as the script:
# prepare, launch, QMP, boot, modules, disks, overlays, job, output capture,
# teardown) against a bare `qemu-system-x86_64 -M microvm` boot of the same
# kernel and initramfs whose init powers off at once. Both under the
# accelerator kiln picks on this machine. Then kiln's own clock for boot to
# first command and teardown.
#
#   bash benches/vm.sh            # RUNS=10 by default
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-10}
for tool in hyperfine qemu-system-x86_64 busybox mke2fs xz; do
  command -v "$tool" >/dev/null || { echo "missing: $tool (see scripts/test.sh)" >&2; exit 1; }
done

cargo build -q --example vm_job
runner=target/debug/examples/vm_job
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/image/bin"
cp /bin/busybox "$work/image/bin/"
ln -s busybox "$work/image/bin/sh"
cache=$work/cache

# Warm every cache (initramfs, image disk, PVH vmlinux, accelerator verdict).
"$runner" "$work/image" "$cache" true 2>"$work/warm.txt" >"$work/warm.log"
accel=$(sed -n 's/.* accel=\([a-z]*\) .*/\1/p' "$work/warm.txt")
kernel=$(ls "$cache"/kernels/*.vmlinux 2>/dev/null | head -1 || true)
kernel=${kernel:-$(ls /boot/vmlinuz-* | sort -V | tail -1)}
initramfs=$(ls "$cache"/initramfs/*.cpio.gz)
append="console=ttyS0 reboot=t panic=-1 edd=off rdinit=/init kiln.probe=1"
cpu=host
if [ "$accel" = tcg ]; then
  cpu=max
  khz=$(awk -F: '/^cpu MHz/ {printf "%d", $2 * 1000; exit}' /proc/cpuinfo)
  append="$append tsc_early_khz=$khz tsc=reliable"
fi
bare="qemu-system-x86_64 -M microvm -accel $accel -cpu $cpu -m 512 -smp 1 -nodefaults -no-user-config \
-nographic -no-reboot -kernel $kernel -initrd $initramfs -serial file:/dev/null -append '$append'"

echo "accelerator: $accel; kernel: $kernel"
hyperfine --warmup 1 --runs "$runs" --export-markdown "$work/hyperfine.md" \
  -n "bare microvm boot + power-off" "$bare" \
  -n "kiln VM job (true)" "$runner $work/image $cache true"
cat "$work/hyperfine.md"

echo
echo "kiln's clock, $runs jobs (ms): boot = launch to first command, guest_boot = guest uptime then"
for _ in $(seq "$runs"); do
  "$runner" "$work/image" "$cache" true 2>&1 >/dev/null | grep -o 'prepare_ms.*'
done | awk '{
  for (i = 1; i <= NF; i++) { split($i, kv, "="); sum[kv[1]] += kv[2]; n[kv[1]]++ }
} END {
  for (k in sum) printf "  mean %s = %.0f\n", k, sum[k] / n[k]
}' | sort
