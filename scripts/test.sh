#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need
# when it is missing, then checks formatting, lints and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use, as "command:package".
required=(git:git zstd:zstd unshare:util-linux script:bsdutils mkfifo:coreutils mknod:coreutils setfattr:attr
          busybox:busybox-static cc:gcc hostname:hostname umoci:umoci
          qemu-system-x86_64:qemu-system-x86 mke2fs:e2fsprogs xz:xz-utils chromium:chromium)
missing=()
for pair in "${required[@]}"; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
# The qemu driver's guest kernel is a file, not a command.
compgen -G '/boot/vmlinuz-*' >/dev/null || missing+=(linux-image-amd64)
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # Wait for another apt or dpkg run to let go of its lock instead of failing.
  lock=(-o DPkg::Lock::Timeout=900)
  $sudo apt-get "${lock[@]}" update -qq
  # Some images carry a newer qemu-utils (from backports) that conflicts with
  # Debian's qemu-system-x86; take both from the release.
  extra=()
  if [[ " ${missing[*]} " == *" qemu-system-x86 "* ]] && dpkg -s qemu-utils >/dev/null 2>&1; then
    extra=(--allow-downgrades "qemu-utils/$(. /etc/os-release && echo "$VERSION_CODENAME")")
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get "${lock[@]}" install -y -qq --no-install-recommends "${missing[@]}" "${extra[@]}"
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
