#!/usr/bin/env python3
"""What page data checksums (capability x-checksum, stream-format.md §4d)
cost a single-channel precopy migration: bench/throughput.py's livemig runs
(same machines, data and measurements), with and without the capability,
alternated run by run so that a change in the machine's load hits both
alike; medians.  Prints a markdown table.

  python3 bench/checksum_cost.py [--size 1G] [--reps 5] [--transport unix]
"""
import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throughput as tp  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--transport", default="unix")
    ap.add_argument("--data", default="random")
    ap.add_argument("--build", default=os.path.join(tp.ROOT, "build"))
    ap.add_argument("--tmpdir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    args = ap.parse_args()
    size = tp.parse_size(args.size)
    tmp = tempfile.mkdtemp(prefix="livemig-csum-", dir=args.tmpdir)
    modes = ("precopy", "precopy-checksum")
    runs = {m: [] for m in modes}
    try:
        lm = tp.Livemig(args.build, tmp, 120.0)
        data = tp.Data(args.data, size, tmp)
        data.prepare()
        lm.run(data, args.transport, "precopy")  # warm-up, discarded
        for i in range(args.reps):
            for m in (modes if i % 2 == 0 else modes[::-1]):
                r = lm.run(data, args.transport, m)
                runs[m].append(r)
                tp.log("  %s #%d: %s" % (m, i, r))
        data.discard()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    s = {m: tp.summarize(runs[m], size) for m in modes}
    header = tp.machine_header("not measured")
    print("| | |\n|---|---|")
    print("| date | %s |" % header["date"])
    print("| machine | %s, %s CPUs, load average at start %s |" % (header["cpu"], header["nproc"],
                                                                   header["load"]))
    print("| livemig | git %s; %s %s, %s transport, single channel, %d runs each, alternated |" %
          (header["rev"], tp.fmt_size(size), args.data, args.transport, args.reps))
    print()
    print("| mode | total ms (median) | all runs ms | GiB/s | CPU s/GiB src/dst | verified |")
    print("|---|--:|---|--:|--:|---|")
    for m in modes:
        x = s[m]
        if "error" in x:
            print("| %s | %s | | | | |" % (m, x["error"]))
            continue
        print("| %s | %d | %s | %.2f | %.2f/%.2f | %s |" % (
            "x-checksum" if m.endswith("checksum") else "no checksum", x["total_ms"],
            " ".join("%d" % t for t in x["all_total_ms"]), x["gibps"], x["cpu_src"], x["cpu_dst"],
            x["verified"]))
    a, b = s["precopy"], s["precopy-checksum"]
    if "error" not in a and "error" not in b:
        print("\ncost of checksums: %+.1f %% total time (median against median)" %
              (100.0 * (b["total_ms"] - a["total_ms"]) / a["total_ms"]))


if __name__ == "__main__":
    main()
