#!/usr/bin/env python3
"""Sums meson's test logs into the line CI reads: 'N passed, N failed'.

Each meson test counts once; a test file of cases (unittest, cmocka)
passes only when all its cases pass.  A build directory's
fuzz-results.json (scripts/fuzz.sh: one line per fuzz target, in the
testlog's shape) counts the same way."""
import json
import os
import sys

passed = failed = skipped = 0


def count(build, log):
    global passed, failed, skipped
    if not os.path.exists(log):
        return
    with open(log) as f:
        for line in f:
            r = json.loads(line)
            res = r.get("result")
            if res in ("OK", "EXPECTEDFAIL"):
                passed += 1
            elif res == "SKIP":
                skipped += 1
            else:
                failed += 1
                print("FAILED: %s (%s) %s" % (r.get("name"), build, res))


for build in sys.argv[1:]:
    count(build, os.path.join(build, "meson-logs", "testlog.json"))
    count(build, os.path.join(build, "fuzz-results.json"))
print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
