#!/usr/bin/env python3
"""expected-downtime against the real downtime, in live runs (issue 14 §5,
issue 11 §3): a benchmark, not a test.  Each row is one migration between
two livemig-vm processes on this host; "learned" rows migrate the same
source a second time (after `cont`), so its expected-downtime uses the
fixed cost learned from the first switchover's breakdown.

Usage: LIVEMIG_BUILD=build python3 bench/downtime_accuracy.py [RUNS]
"""
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "integration"))
import lmtest  # noqa: E402

SCENARIOS = [
    # name, VM args, caps, source parameters
    ("idle-ish, 8 MB/s cap", ["--dirty-rate", "256K"], {}, {"max-bandwidth": 8 << 20}),
    ("8 MiB hot, cap + avail 1G", ["--dirty-rate", "32M", "--working-set", "8M"], {},
     {"max-bandwidth": 8 << 20, "avail-switchover-bandwidth": 1 << 30}),
    ("multifd 2, 8 MB/s cap", ["--dirty-rate", "256K"], {"multifd": True},
     {"max-bandwidth": 8 << 20}),
    ("uncapped, 64 MiB hot", ["--dirty-rate", "64M", "--working-set", "64M"], {}, {}),
]


def one(tmp, name, src, args, caps, params, tag):
    dst = lmtest.VM(tmp, name + "-dst-" + tag, memory="128M", workload="random", extra=args,
                    incoming="defer")
    try:
        for vm in (src, dst):
            if caps:
                vm.set_caps(**caps)
        if caps.get("multifd"):
            for vm in (src, dst):
                vm.set_params(**{"multifd-channels": 2})
        src.set_params(**dict({"downtime-limit": 300}, **params))
        uri = "unix:" + os.path.join(tmp, name + tag + ".sock")
        dst.cmd("migrate-incoming", uri=uri)
        src.cmd("migrate", uri=uri)
        info = src.wait_migration(timeout=300)
        dst.wait_migration(timeout=300)
        blackout = (dst.workload()["x-last-start-ns"] - src.workload()["x-last-stop-ns"]) / 1e3
        bd = info.get("x-downtime-breakdown", {})
        parts = {p["name"]: p["us"] for p in bd.get("parts", [])}
        return info, bd, parts, blackout
    finally:
        dst.shutdown()


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    print("| scenario | run | tail bytes | expected µs | real µs | error | blackout µs (dst clock) "
          "| stop | sync | ram-tail | dst:restart |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, args, caps, params in SCENARIOS:
        for r in range(runs):
            with tempfile.TemporaryDirectory(prefix="lmbench-") as tmp:
                key = "s%d" % r
                src = lmtest.VM(tmp, key + "-src", memory="128M", workload="random", extra=args)
                try:
                    src.wait_running_steps()
                    for tag in ("first", "learned"):
                        info, bd, parts, blackout = one(tmp, key, src, args, caps, params, tag)
                        real, exp = bd.get("downtime-us", 0), bd.get("expected-downtime-us", 0)
                        err = (exp - real) / real * 100 if real else 0
                        print("| %s | %d %s | %d | %d | %d | %+.0f %% | %.0f | %d | %d | %d | %d |" % (
                            name, r + 1, tag, info["ram"]["downtime-bytes"], exp, real, err, blackout,
                            parts.get("stop", 0), parts.get("sync", 0), parts.get("ram-tail", 0),
                            parts.get("dst:restart", 0)))
                        sys.stdout.flush()
                        src.cmd("cont")  # the same engine migrates again: learned fixed cost
                        src.wait_running_steps()
                finally:
                    src.shutdown()


if __name__ == "__main__":
    main()
