#!/usr/bin/env python3
"""A/B of livemig builds, cell by cell, alternated in one run.

  python3 bench/ab.py --variant before=/tmp/main/build --variant after=build \
      --cells anon:tcp:precopy,anon:tcp:multifd4,file:tcp:precopy --reps 3

Each variant is NAME=BUILD_DIR[,VAR=VALUE...] (environment for its
processes).  Every repetition runs every cell with every variant, the
variants' order reversed on odd repetitions, so that the host's slow phases
(first touches of memory the hypervisor took back, other work) fall on all
of them alike.  Cells are DEST:TRANSPORT:MODE as in bench/throughput.py,
whose engine driver this uses (the same source and destination set-up:
anonymous source filled by its own process, destinations warmed just
before `migrate`, memory verified by hash).  The raw floor (bench/rawcopy,
fastest method) of each cell's transport, streams and destination is
measured in the same run.  Prints one line per run and a table of medians:
GiB/s, CPU s/GiB source/destination, the ratio to the floor, and the load
average over the run.  A benchmark, not a test: nothing here passes or
fails.
"""
import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("throughput", os.path.join(HERE, "throughput.py"))
tp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tp)


def parse_variant(text):
    name, rest = text.split("=", 1)
    parts = rest.split(",")
    env = dict(p.split("=", 1) for p in parts[1:])
    return name, os.path.abspath(parts[0]), env


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", action="append", required=True,
                    help="NAME=BUILD_DIR[,VAR=VALUE...] (at least two)")
    ap.add_argument("--cells", default="anon:tcp:precopy,anon:tcp:multifd4,file:tcp:precopy")
    ap.add_argument("--size", default="1G")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--floor-reps", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--tmpdir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    ap.add_argument("--raw-methods", default=None,
                    help="rawcopy sender>receiver methods per destination, as in throughput.py, "
                         "e.g. anon=write>read;file=write>pwrite")
    ap.add_argument("--json", default=None, help="also write every run here")
    args = ap.parse_args()
    if args.raw_methods:
        for part in args.raw_methods.split(";"):
            dk, ms = part.split("=")
            tp.RAW_METHODS[dk] = [tuple(m.split(">")) for m in ms.split("+")]

    size = tp.parse_size(args.size)
    gib = size / tp.GiB
    cells = [tuple(c.split(":")) for c in args.cells.split(",")]
    variants = [parse_variant(v) for v in args.variant]
    tmp = tempfile.mkdtemp(prefix="livemig-ab-", dir=args.tmpdir)
    raw_bin = os.path.join(tmp, "rawcopy")
    subprocess.run(["cc", "-O2", "-pthread", "-o", raw_bin, os.path.join(HERE, "rawcopy.c")],
                   check=True)
    base_env = dict(os.environ)

    def warm():
        tp.rawcopy_warm(raw_bin, size)

    engines = {name: tp.Livemig(build, tmp, args.timeout, warm) for name, build, _ in variants}
    runs = {(name, c): [] for name, _, _ in variants for c in cells}
    loads = []
    try:
        data = tp.Data("random", size, tmp)
        data.prepare()
        engines[variants[0][0]].make_stream(data)
        floors = {}
        for dk, transport, mode in cells:
            key = (transport, tp.streams_of(mode), dk)
            if key not in floors:
                floors[key] = tp.raw_floor(raw_bin, warm, data, transport, key[1], dk, tmp,
                                           args.floor_reps)
        for i in range(args.reps):
            order = variants if i % 2 == 0 else variants[::-1]
            for c in cells:
                for name, _, env in order:
                    os.environ.clear()
                    os.environ.update(base_env)
                    os.environ.update(env)
                    r = engines[name].run(data, "anon", c[0], c[1], c[2])
                    r["load"] = os.getloadavg()[0]
                    loads.append(r["load"])
                    runs[(name, c)].append(r)
                    print("%-8s %-22s #%d %s" % (name, ":".join(c), i, json.dumps(r)), flush=True)
        os.environ.clear()
        os.environ.update(base_env)
        data.discard()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("\nload average (1 min) over the runs: %.2f–%.2f" % (min(loads), max(loads)))
    print("| cell | variant | GiB/s | CPU s/GiB src/dst | raw GiB/s (how; CPU src/dst) | livemig/raw | runs |")
    print("|---|---|--:|--:|--:|--:|---|")
    for c in cells:
        fl = floors[(c[1], tp.streams_of(c[2]), c[0])]
        for name, _, _ in variants:
            s = tp.summarize(runs[(name, c)], size)
            if s.get("error"):
                print("| %s | %s | %s |" % (":".join(c), name, tp.cell(s["error"])))
                continue
            each = " ".join("%.2f" % (gib / (r["total_ms"] / 1000.0)) for r in runs[(name, c)]
                            if "error" not in r)
            print("| %s | %s | %.2f | %.2f/%.2f | %.2f (%s; %.2f/%.2f) | %.2f× | %s%s |" % (
                ":".join(c), name, s["gibps"], s["cpu_src"], s["cpu_dst"], fl["gibps"],
                fl["method"], fl["cpu_src"], fl["cpu_dst"], s["gibps"] / fl["gibps"], each,
                "" if s["verified"] == "yes" else " verified: " + s["verified"]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"floors": {"%s:%d:%s" % k: v for k, v in floors.items()},
                       "runs": {"%s %s" % (n, ":".join(c)): v for (n, c), v in runs.items()}},
                      fh, indent=1)


if __name__ == "__main__":
    sys.exit(main())
