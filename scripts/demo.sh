#!/usr/bin/env bash
# One command: install what is missing, build, and run the live-migration
# demo (two livemig-vm on this host, migrated live, memory verified).
#
#   scripts/demo.sh [livemig demo options]   the synthetic guest (livemig demo)
#   scripts/demo.sh --guest linux            a real guest: Linux on the RISC-V
#       machine (livemig-vm --machine riscv-virt), its self-checking init
#       rewriting memory while it is migrated live with the progress bar;
#       the engine's memory hash is compared and the guest's console carries
#       on on the destination.  The Linux guest comes from
#       scripts/build-linux-guest.sh (built once and cached; the kernel build
#       takes minutes on an idle machine, an hour on a loaded one).
set -euo pipefail
cd "$(dirname "$0")/.."

guest=synthetic
if [ "${1:-}" = "--guest" ]; then
    guest=${2:?--guest needs synthetic or linux}
    shift 2
fi
case $guest in
synthetic | linux) ;;
*) echo "demo: --guest must be synthetic or linux" >&2; exit 2 ;;
esac

. scripts/deps.sh
if [ "$guest" = linux ]; then
    LIVEMIG_RISCV_TESTS=1   # OpenSBI for the firmware
fi
livemig_install_deps
livemig_setup build
ninja -C build >/dev/null
if [ "$guest" = synthetic ]; then
    exec build/livemig demo "$@"
fi

# ---- Linux on riscv-virt ----
[ $# -eq 0 ] || { echo "demo: --guest linux takes no further options" >&2; exit 2; }
paths=$(scripts/build-linux-guest.sh --install-deps)
kernel=$(sed -n 's/^kernel: //p' <<<"$paths")
initrd=$(sed -n 's/^initrd: //p' <<<"$paths")

dir=$(mktemp -d /tmp/livemig-demo-linux-XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

append="console=ttyS0 earlycon=sbi lmwork.mb=64 lmwork.rate_mb=8 panic=-1"
vm() {   # NAME [extra livemig-vm options]
    local name=$1
    shift
    build/livemig-vm --machine riscv-virt --name "$name" --memory 256M --smp 1 \
        --kernel "$kernel" --initrd "$initrd" --append "$append" --device virtio-rng-device \
        --qmp "unix:$dir/$name.qmp" --serial "file:$dir/$name-console.log" "$@" \
        >"$dir/$name.log" 2>&1 &
    pids+=($!)
}

# Waits (at most $3 s) for a line matching $2 in console file $1.
wait_console() {
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        grep -qa -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "demo: no '$2' on $1 after $3 s; its tail:" >&2
    tail -n 20 "$1" >&2 || true
    return 1
}

show() {   # TITLE FILE LINES
    echo "$1:"
    tr -d '\r' <"$2" | grep -a . | tail -n "$3" | sed 's/^/    /'
}

hash_of() {
    build/livemig qmp "$1" x-query-memory-hash | sed -n 's/.*"hash": *"\{0,1\}\([0-9a-fx]*\).*/\1/p'
}

echo "livemig demo: Linux on livemig-vm --machine riscv-virt (256 MiB, 1 hart)"
echo "  kernel: $kernel"
echo "  initrd: $initrd (init rewrites 64 MiB at 8 MiB/s and checks it)"
echo "  work dir: $dir"
vm src
vm dst --incoming defer --paused
echo "Booting Linux on the source (OpenSBI, the kernel, then /init)..."
wait_console "$dir/src-console.log" "lmwork: t=[3-9]" 900
show "Guest console on the source" "$dir/src-console.log" 6
echo
echo "Migrating live: source -> destination"
build/livemig migrate --from "$dir/src.qmp" --to "$dir/dst.qmp" --no-verify --timeout 600
src_hash=$(hash_of "$dir/src.qmp")
dst_hash=$(hash_of "$dir/dst.qmp")
echo "  memory hash: source $src_hash, destination $dst_hash"
[ -n "$src_hash" ] && [ "$src_hash" = "$dst_hash" ] || { echo "Result: FAIL - memory differs"; exit 1; }
build/livemig qmp "$dir/dst.qmp" cont >/dev/null
echo
wait_console "$dir/dst-console.log" "lmwork: t=" 120
sleep 3
show "Guest console on the destination (it carries on)" "$dir/dst-console.log" 4
if grep -qa "MISMATCH\|FAIL" "$dir/src-console.log" "$dir/dst-console.log"; then
    echo "Result: FAIL - the guest found a mismatch in its memory"
    exit 1
fi
echo
echo "Result: PASS - memory hash equal, the guest's own checks ok, Linux runs on the destination"
