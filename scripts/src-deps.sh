#!/usr/bin/env bash
# Which folder of src/ includes which: one "A -> B" line per pair, from the
# #include "B/..." lines of src/A/*.{c,h} (a folder's includes of itself
# and of include/livemig are left out).  --dot prints a Graphviz digraph;
# --draw prints the drawing of docs/architecture.md: every folder on one
# line with what it includes, each above all the folders it includes
# (layers, the lowest last), so every arrow points down; --check prints
# every cycle and exits 1 if there is one (there is no allowed one).
# usage: scripts/src-deps.sh [--dot|--draw|--check] [SRC_DIR]
set -euo pipefail
mode=text
case "${1:-}" in --dot|--draw|--check) mode=${1#--}; shift ;; esac
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
draw)
    # Layer of a folder: 0 when it includes no folder, else one above the
    # highest it includes (a cycle has no layer: --check says where).
    echo "$edges" | DIRS="$(cd "$src" && ls -d */ | tr -d / | tr '\n' ' ')" python3 -c '
import os, sys
g = {d: [] for d in os.environ["DIRS"].split()}
for line in sys.stdin:
    if line.split():
        a, b = line.split()
        g[a].append(b)
layer = {}
def depth(n, seen=()):
    if n in seen:
        sys.exit("cycle through %s: see --check" % n)
    if n not in layer:
        layer[n] = 1 + max((depth(m, seen + (n,)) for m in g[n]), default=-1)
    return layer[n]
for n in g:
    depth(n)
w = max(len(n) for n in g)
for n in sorted(g, key=lambda n: (-layer[n], n)):
    print("%d  %-*s  %s" % (layer[n], w, n,
          "-> " + ", ".join(sorted(g[n])) if g[n] else "(include/livemig only)"))
' ;;
check)
    # Depth-first search over the folder graph; a back edge is a cycle.
    echo "$edges" | python3 -c '
import sys
g = {}
for line in sys.stdin:
    if line.split():
        a, b = line.split()
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
