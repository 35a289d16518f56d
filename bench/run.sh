#!/usr/bin/env bash
# livemig throughput benchmark: one command.
#
#   bash bench/run.sh                 # 1G and 4G (about an hour on a quiet 2-CPU machine)
#   bash bench/run.sh --sizes 1G      # quick run
#   bash bench/run.sh --sizes 1G --reps 5 --timeout 60
#
# Installs qemu-system-x86 if missing (apt-get), builds livemig (meson +
# ninja) and bench/rawcopy, runs bench/throughput.py and writes
# bench/results.md.  All arguments go to bench/throughput.py (--help there).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"

need=()
dpkg -s qemu-system-x86 >/dev/null 2>&1 || need+=(qemu-system-x86)
for cmd in meson:meson ninja:ninja-build cc:gcc python3:python3; do
    command -v "${cmd%%:*}" >/dev/null 2>&1 || need+=("${cmd#*:}")
done
if ((${#need[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing: ${need[*]}" >&2
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${need[@]}"
fi

[ -f build/build.ninja ] || meson setup build
ninja -C build

tmp=$(mktemp -d /tmp/livemig-bench-bin.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cc -O2 -Wall -pthread -o "$tmp/rawcopy" bench/rawcopy.c

python3 bench/throughput.py --build "$root/build" --rawcopy "$tmp/rawcopy" \
    --out "$root/bench/results.md" "$@"
