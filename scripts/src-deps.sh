#!/usr/bin/env bash
# Which folder of src/ includes which: one "A -> B" line per pair, from the
# #include "B/..." lines of src/A/*.{c,h} (a folder's includes of itself
# and of include/livemig are left out).  --dot prints a Graphviz digraph;
# --check prints every cycle and exits 1 if there is one, except for the
# known back edges listed in scripts/src-deps.allow ("A -> B" lines: debt
# that is still to be paid, printed on every check).
# usage: scripts/src-deps.sh [--dot|--check] [SRC_DIR]
set -euo pipefail
mode=text
case "${1:-}" in --dot|--check) mode=${1#--}; shift ;; esac
src=${1:-$(dirname "$0")/../src}
edges=$(cd "$src" &&
    grep -rHoE '^[[:space:]]*#[[:space:]]*include[[:space:]]+"[a-z_]+/' --include='*.c' --include='*.h' . |
    sed -E 's|^\./([^/]+)/.*include[[:space:]]+"([a-z_]+)/$|\1 \2|' |
    awk -v dirs="$(ls -d */ | tr -d / | tr '\n' ' ')" '
        BEGIN { n = split(dirs, d, " "); for (i = 1; i <= n; i++) folder[d[i]] = 1 }
        $1 != $2 && ($2 in folder)' | sort -u)
case $mode in
text) echo "$edges" | awk 'NF { print $1 " -> " $2 }' ;;
dot)
    echo "digraph src {"
    echo "$edges" | awk 'NF { printf "  \"%s\" -> \"%s\";\n", $1, $2 }'
    echo "}" ;;
check)
    # Depth-first search over the folder graph; a back edge is a cycle.
    allow=$(dirname "$0")/src-deps.allow
    echo "$edges" | ALLOW="$allow" python3 -c '
import os, sys
known = set()
if os.path.exists(os.environ["ALLOW"]):
    for line in open(os.environ["ALLOW"]):
        f = line.split("#")[0].split()
        if len(f) == 3 and f[1] == "->":
            known.add((f[0], f[2]))
g = {}
for line in sys.stdin:
    if line.split():
        a, b = line.split()
        if (a, b) in known:
            print("known back edge (to remove): %s -> %s" % (a, b))
            continue
        g.setdefault(a, []).append(b)
state, cycles = {}, []
def visit(n, path):
    state[n] = 1
    for m in g.get(n, []):
        if state.get(m) == 1:
            cycles.append(path[path.index(m):] + [m])
        elif not state.get(m):
            visit(m, path + [m])
    state[n] = 2
for n in sorted(g):
    if not state.get(n):
        visit(n, [n])
for c in cycles:
    print("cycle: " + " -> ".join(c))
sys.exit(1 if cycles else 0)
' && echo "no cycles" ;;
esac
