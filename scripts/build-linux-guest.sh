#!/usr/bin/env bash
# Builds the Linux test guest for QEMU's RISC-V `virt` machine (and
# livemig-vm --machine riscv-virt) from Debian packages only:
#   - a kernel Image from /usr/src/linux-source-6.1.tar.xz, cross-compiled
#     with gcc-riscv64-linux-gnu from tinyconfig + tests/guest/linux-virt.config;
#   - an initramfs whose /init is tests/guest/init.c (static), a memory
#     workload that checks itself and prints progress once a second.
#
# Both are cached and rebuilt only when their inputs change:
#   kernel    keyed by the config fragment, the linux-source-6.1 package
#             version, the cross compiler's version and the text of
#             build_kernel below (editing the rest of this script does not
#             cost a kernel rebuild);
#   initramfs keyed by init.c, the cross compiler's version and the text of
#             build_initramfs.
# Cache: $LIVEMIG_GUEST_CACHE, else /var/cache/livemig-guest when writable,
# else ${XDG_CACHE_HOME:-~/.cache}/livemig-guest.
#
# Usage: scripts/build-linux-guest.sh [--cached-only] [--kernel-only] [--initramfs-only] [--install-deps]
#   --cached-only   build nothing; exit 3 when the guest is not cached.
#   --kernel-only   build (or find) the kernel only.
#   --initramfs-only  build (or find) the initramfs only.
#   --install-deps  apt-get install the packages the build needs first.
# Prints, on success:
#   kernel: PATH/Image
#   initrd: PATH/initramfs.cpio.gz
# The kernel build takes long on a small machine (see docs/riscv-guest.md);
# it runs under `nice` and logs to kernel-*/build.log in the cache.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
fragment=$here/tests/guest/linux-virt.config
init_src=$here/tests/guest/init.c
tarball=/usr/src/linux-source-6.1.tar.xz
cross=riscv64-linux-gnu-
jobs=${LIVEMIG_GUEST_JOBS:-$(nproc)}

cached_only=0
kernel_only=0
initramfs_only=0
for arg in "$@"; do
    case $arg in
    --cached-only) cached_only=1 ;;
    --kernel-only) kernel_only=1 ;;
    --initramfs-only) initramfs_only=1 ;;
    --install-deps)
        # shellcheck source=deps.sh
        source "$here/scripts/deps.sh"
        LIVEMIG_PACKAGES=("${LIVEMIG_GUEST_PACKAGES[@]}")
        livemig_install_deps
        ;;
    *) echo "usage: $0 [--cached-only] [--kernel-only] [--initramfs-only] [--install-deps]" >&2; exit 2 ;;
    esac
done

if [ -n "${LIVEMIG_GUEST_CACHE:-}" ]; then
    cache=$LIVEMIG_GUEST_CACHE
elif mkdir -p /var/cache/livemig-guest 2>/dev/null && [ -w /var/cache/livemig-guest ]; then
    cache=/var/cache/livemig-guest
else
    cache=${XDG_CACHE_HOME:-$HOME/.cache}/livemig-guest
fi
mkdir -p "$cache"

need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "build-linux-guest: $1 not found (package $2; scripts/deps.sh lists" \
             "LIVEMIG_GUEST_PACKAGES, or pass --install-deps)" >&2
        exit 3
    fi
}

pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo none; }

# Builds the kernel into $1 (a fresh directory).  Its text is part of the
# kernel's cache key.
build_kernel() {
    local out=$1 src=$cache/src/linux-source-6.1-$(pkg_version linux-source-6.1)
    if [ ! -f "$src/Makefile" ]; then
        echo "extracting $tarball"
        rm -rf "$src.tmp" && mkdir -p "$src.tmp"
        tar -C "$src.tmp" --strip-components=1 -xf "$tarball"
        mv "$src.tmp" "$src"
    fi
    local obj=$out/obj
    mkdir -p "$obj"
    local mk=(nice -n 15 make -C "$src" O="$obj" ARCH=riscv CROSS_COMPILE=$cross
              KBUILD_BUILD_USER=livemig KBUILD_BUILD_HOST=livemig
              KBUILD_BUILD_TIMESTAMP="livemig guest")
    "${mk[@]}" tinyconfig
    "$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$fragment"
    "${mk[@]}" olddefconfig
    # Every option the fragment asks for must survive olddefconfig (a
    # missing dependency drops it silently).
    local missing=0 line
    while IFS= read -r line; do
        case $line in
        CONFIG_*=*)
            grep -qx "$line" "$obj/.config" || { echo "config: $line did not stick"; missing=1; } ;;
        esac
    done <"$fragment"
    [ $missing -eq 0 ] || return 1
    "${mk[@]}" -j"$jobs" Image
    cp "$obj/arch/riscv/boot/Image" "$obj/.config" "$out/"
    mv "$out/.config" "$out/config"
}

# Builds the initramfs into $1.  Its text is part of the initramfs's key.
build_initramfs() {
    local out=$1 root=$1/root
    mkdir -p "$root/dev" "$root/proc" "$root/sys"
    ${cross}gcc -static -O2 -Wall -Wextra -Werror -o "$root/init" "$init_src"
    ${cross}strip "$root/init"
    # /dev/console must exist before devtmpfs is mounted: the kernel opens
    # it for init's stdio.  The tree holds no special files (no root
    # needed to build); the node comes in a second archive below.
    (cd "$root" && { find . -mindepth 1 | LC_ALL=C sort; } |
        cpio --quiet -o -H newc -R 0:0) >"$out/body.cpio"
    python3 - "$out/body.cpio" "$out/initramfs.cpio" <<'EOF'
# Append a second newc archive holding the character device dev/console
# (5,1), which cpio cannot archive without creating the node on disk.  The
# kernel unpacks concatenated archives in order, so dev/ exists by then.
import sys
def entry(name, mode, rdev=(0, 0)):
    name = name.encode() + b'\0'
    hdr = b'070701' + b''.join(b'%08X' % v for v in (
        0, mode, 0, 0, 1, 0, 0, 0, 0, rdev[0], rdev[1], len(name), 0)) + name
    return hdr + b'\0' * (-len(hdr) % 4)
body = open(sys.argv[1], 'rb').read()
extra = entry('dev/console', 0o020600, (5, 1)) + entry('TRAILER!!!', 0)
open(sys.argv[2], 'wb').write(body + extra)
EOF
    gzip -9 -n <"$out/initramfs.cpio" >"$out/initramfs.cpio.gz"
    rm -rf "$root" "$out/body.cpio" "$out/initramfs.cpio"
}

need ${cross}gcc gcc-riscv64-linux-gnu
need cpio cpio
[ -f "$tarball" ] || { echo "build-linux-guest: $tarball missing (package linux-source-6.1)" >&2; exit 3; }
[ -f "/usr/riscv64-linux-gnu/lib/libc.a" ] ||
    { echo "build-linux-guest: static libc missing (package libc6-dev-riscv64-cross)" >&2; exit 3; }

gccv=$(${cross}gcc -dumpfullversion)
kkey=$( { declare -f build_kernel; cat "$fragment"; pkg_version linux-source-6.1; echo "$gccv"; } |
        sha256sum | cut -c1-16)
ikey=$( { declare -f build_initramfs; cat "$init_src" 2>/dev/null; echo "$gccv"; } |
        sha256sum | cut -c1-16)
kdir=$cache/kernel-$kkey
idir=$cache/initramfs-$ikey

build_cached() {   # NAME DIR ARTIFACT FUNCTION
    local name=$1 dir=$2 artifact=$3 fn=$4
    [ -f "$dir/$artifact" ] && return 0
    if [ $cached_only -eq 1 ]; then
        echo "build-linux-guest: no cached $name ($dir); run scripts/build-linux-guest.sh" >&2
        exit 3
    fi
    (
        flock 9
        [ -f "$dir/$artifact" ] && exit 0
        rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
        echo "build-linux-guest: building $name in $dir (log: $dir.tmp/build.log)" >&2
        local t0=$SECONDS
        # In the background so that set -e holds inside the function (it
        # is ignored in functions called from a condition).
        "$fn" "$dir.tmp" >"$dir.tmp/build.log" 2>&1 &
        if ! wait $!; then
            echo "build-linux-guest: $name build failed; last lines of $dir.tmp/build.log:" >&2
            tail -n 30 "$dir.tmp/build.log" >&2
            exit 1
        fi
        echo "$((SECONDS - t0))" >"$dir.tmp/build-seconds"
        rm -rf "$dir.tmp/obj"   # objects are big and not reused across keys
        rm -rf "$dir" && mv "$dir.tmp" "$dir"
        echo "build-linux-guest: $name built in $(cat "$dir/build-seconds")s" >&2
    ) 9>"$cache/.lock-$name"
}

# The initramfs first: it takes seconds, the kernel can take an hour.
if [ $kernel_only -eq 0 ]; then
    build_cached initramfs "$idir" initramfs.cpio.gz build_initramfs
fi
if [ $initramfs_only -eq 0 ]; then
    build_cached kernel "$kdir" Image build_kernel
    echo "kernel: $kdir/Image"
fi
if [ $kernel_only -eq 0 ]; then
    echo "initrd: $idir/initramfs.cpio.gz"
fi
