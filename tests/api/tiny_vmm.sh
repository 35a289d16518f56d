#!/usr/bin/env bash
# examples/tiny_vmm migrates itself to a second copy of itself over a unix
# socket; the destination checks RAM and device state against the guest's
# invariant and that the guest runs on.  usage: tiny_vmm.sh TINY_VMM
set -uo pipefail
bin=$1
dir=$(mktemp -d)
trap 'kill $dst 2>/dev/null; rm -rf "$dir"' EXIT
timeout 120 "$bin" dest "unix:$dir/m.sock" > "$dir/dst.out" 2>&1 &
dst=$!
for _ in $(seq 200); do [ -S "$dir/m.sock" ] && break; sleep 0.05; done
timeout 120 "$bin" source "unix:$dir/m.sock" > "$dir/src.out" 2>&1
src_rc=$?
wait $dst
dst_rc=$?
cat "$dir/src.out" "$dir/dst.out"
# The step the source stopped at is the one that arrived.
step=$(sed -n 's/.*, step \([0-9]*\)$/\1/p' "$dir/src.out")
[ $src_rc -eq 0 ] && [ $dst_rc -eq 0 ] && [ -n "$step" ] &&
    grep -q "destination: verified; step $step arrived" "$dir/dst.out"
