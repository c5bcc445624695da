#!/bin/sh
# Builds a minimal root filesystem for the qemu driver: a static busybox and
# a symlink per applet (on Debian: apt-get install busybox-static).
#
#   examples/vm/make-image.sh DIR && kiln image import busybox DIR
#
# The guest kernel and its modules come from the host, not from the image.
set -eu

dir=${1:?usage: make-image.sh DIR (an absent or empty directory)}
busybox=${BUSYBOX:-/bin/busybox}

if [ ! -x "$busybox" ]; then
    echo "make-image.sh: no busybox at $busybox (apt-get install busybox-static, or set BUSYBOX)" >&2
    exit 1
fi
# A dynamically linked busybox would need the host's libc in the image.
if ldd "$busybox" >/dev/null 2>&1; then
    echo "make-image.sh: $busybox is dynamically linked; a static one is needed (apt-get install busybox-static)" >&2
    exit 1
fi
if [ -e "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
    echo "make-image.sh: $dir is not empty" >&2
    exit 1
fi

mkdir -p "$dir/bin" "$dir/etc" "$dir/root" "$dir/tmp"
cp "$busybox" "$dir/bin/busybox"
chmod 755 "$dir/bin/busybox"
for applet in $("$dir/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$dir/bin/$applet"
done
echo "root:x:0:0:root:/root:/bin/sh" > "$dir/etc/passwd"
echo "root:x:0:" > "$dir/etc/group"
echo "make-image.sh: busybox root filesystem in $dir; next: kiln image import busybox $dir"
