#!/usr/bin/env bash
# No two folders of src/ include each other, directly or around a longer
# cycle (scripts/src-deps.sh --check; no cycle is allowed), and the check
# does catch a cycle: a two-folder tree that has one must fail it.
# usage: src_deps.sh SOURCE_ROOT
set -uo pipefail
root=$1
"$root/scripts/src-deps.sh" "$root/src" || { echo "FAIL: listing src/"; exit 1; }
"$root/scripts/src-deps.sh" --check "$root/src" || { echo "FAIL: src/ has a cycle"; exit 1; }
"$root/scripts/src-deps.sh" --draw "$root/src" || { echo "FAIL: drawing src/"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/alpha" "$tmp/beta"
printf '#include "beta/b.h"\n' > "$tmp/alpha/a.c"
printf '#include "alpha/a.h"\n' > "$tmp/beta/b.h"
if "$root/scripts/src-deps.sh" --check "$tmp"; then
    echo "FAIL: the cycle alpha <-> beta was not caught"
    exit 1
fi
echo "ok: src/ has no cycle, and a new cycle is caught"
