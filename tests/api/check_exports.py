"""The shared library exports exactly the functions the public headers
declare with LM_API: nothing internal leaks, nothing public is missing.

usage: check_exports.py LIBLIVEMIG.so INCLUDE_DIR [GENERATED_INCLUDE_DIR]
"""
import glob
import os
import re
import subprocess
import sys

# Symbols every shared object defines, not part of any API.
LINKER = {"_init", "_fini", "__bss_start", "_edata", "_end"}


def declared(dirs):
    names = set()
    for d in dirs:
        for path in glob.glob(os.path.join(d, "livemig", "*.h")):
            text = open(path).read()
            for m in re.finditer(r"^LM_API\b[^;(]*?\b([A-Za-z_][A-Za-z0-9_]*)\s*\(", text, re.M):
                names.add(m.group(1))
    return names


def exported(lib):
    out = subprocess.run(["nm", "-D", "--defined-only", lib], check=True,
                         capture_output=True, text=True).stdout
    names = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] in "TtWwDdBbRrVv" and parts[2] not in LINKER:
            names.add(parts[2].split("@")[0])
    return names


def main():
    lib, dirs = sys.argv[1], sys.argv[2:]
    want, have = declared(dirs), exported(lib)
    leaked, missing = sorted(have - want), sorted(want - have)
    print("%d functions declared LM_API, %d symbols exported" % (len(want), len(have)))
    for n in leaked:
        print("exported but not declared in include/livemig (internal symbol leaks): " + n)
    for n in missing:
        print("declared LM_API but not exported: " + n)
    sys.exit(1 if leaked or missing else 0)


if __name__ == "__main__":
    main()
