#!/usr/bin/env python3
"""Scattered small runs: what a sender's by-reference threshold saves.

livemig precopy (single channel) and multifd, livemig-vm -> livemig-vm,
for two builds of livemig alternated in one run (--before, --after: e.g.
main in a `git worktree` and this tree), over a unix socket and tcp
loopback, with two guest RAM contents:

  - random:    every page random bytes (runs of 1 MiB),
  - scattered: every other 4 KiB page random, the others zero (runs of
               one page: the case `lm_channel_mem_by_reference` is for).

Conditions as bench/throughput.py's (whose machinery this uses): each
source is filled by an incoming migration of the same stream (its own
process wrote every page; the zero pages stay unpopulated), each
destination is anonymous RAM, warmed just before the first byte, and the
migration is verified by comparing both sides' memory hashes.  Each cell
is the median of --reps runs; builds are alternated run by run (ABBA), so
both meet the same load.  CPU seconds per GiB of guest RAM (source,
destination) are the steady figures on a shared machine; wall time is
printed beside them.  Standard library only; needs the two builds and cc.
"""
import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throughput as tp  # noqa: E402

PAGE = 4096


class PatternData(tp.Data):
    """'random' as throughput.py's; 'scattered': every other page random."""

    def prepare(self):
        if self.kind != "scattered":
            return super().prepare()
        if os.path.exists(self.path) and os.path.getsize(self.path) == self.size:
            return None
        chunk = 16 << 20
        with open(self.path, "wb") as f:
            left = self.size
            while left:
                n = min(left, chunk)
                buf = bytearray(n)
                rnd = os.urandom(n // 2 + PAGE)
                for i, off in enumerate(range(0, n, 2 * PAGE)):
                    buf[off:off + PAGE] = rnd[i * PAGE:(i + 1) * PAGE]
                f.write(buf)
                left -= n
        return None


class Engine(tp.Livemig):
    def start_source(self, data, kind):
        # Filled by an incoming migration for both kinds of contents.
        m = self.start("src", data.size, incoming=True)
        m.cmd("migrate-incoming", uri="file:" + data.streams["lm"])
        tp.wait_incoming_done(m, self.timeout)
        return m


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="build directory of the 'before' livemig")
    ap.add_argument("--after", default=os.path.join(tp.ROOT, "build"))
    ap.add_argument("--size", default="1G")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--data", default="random,scattered")
    ap.add_argument("--transports", default="unix,tcp")
    ap.add_argument("--modes", default="precopy")
    ap.add_argument("--timeout", type=float, default=180.0)
    ap.add_argument("--tmpdir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    ap.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = ap.parse_args()

    size = tp.parse_size(args.size)
    tmp = tempfile.mkdtemp(prefix="livemig-scattered-", dir=args.tmpdir)
    raw_bin = os.path.join(tmp, "rawcopy")
    subprocess.run(["cc", "-O2", "-pthread", "-o", raw_bin,
                    os.path.join(tp.ROOT, "bench", "rawcopy.c")], check=True)

    def warm():
        tp.rawcopy_warm(raw_bin, size)

    builds = {"before": Engine(args.before, tmp, args.timeout, warm),
              "after": Engine(args.after, tmp, args.timeout, warm)}
    rows = [(d, t, m) for d in args.data.split(",") for t in args.transports.split(",")
            for m in args.modes.split(",")]
    runs = {}
    load0 = os.getloadavg()
    t0 = time.time()
    try:
        for d in args.data.split(","):
            data = PatternData(d, size, tmp)
            data.prepare()
            builds["after"].make_stream(data)
            for rep in range(args.reps):
                order = ("before", "after") if rep % 2 == 0 else ("after", "before")
                for row in [r for r in rows if r[0] == d]:
                    for b in order:
                        r = builds[b].run(data, "anon", "anon", row[1], row[2])
                        tp.log("  %s %s rep %d %s: %s" % (b, ":".join(row), rep, b, r))
                        if "error" in r or not r.get("verified"):
                            raise SystemExit("%s %s: %s" % (b, ":".join(row), r))
                        runs.setdefault((row, b), []).append(r)
            data.discard()
    finally:
        subprocess.run(["rm", "-rf", tmp])
    gib = size / tp.GiB
    med = lambda xs: statistics.median(xs)  # noqa: E731
    L = ["Scattered runs, %s, median and best of %d (builds alternated ABBA in one run), %s; "
         "loadavg %.1f at the start, %.1f at the end: a shared machine (other engineers' "
         "builds and tests), and this host's first touch of freed memory swings the "
         "destination's CPU 2-10x from run to run, so the source's CPU-s/GiB are the "
         "steadiest figures." %
         (args.size, args.reps, datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
          load0[0], os.getloadavg()[0]), "",
         "| data | transport | mode | src CPU-s/GiB before | after | after/before "
         "| dst CPU-s/GiB before | after | after/before | wall s before | after |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]

    def fig(rs, key, per=gib):
        xs = [r[key] / per for r in rs]
        return med(xs), min(xs)

    for row in rows:
        b, a = runs[(row, "before")], runs[(row, "after")]
        cells = []
        for key, per in (("cpu_src", gib), ("cpu_dst", gib), ("wall_s", 1)):
            (mb, bb), (ma, ba) = fig(b, key, per), fig(a, key, per)
            cells.append("%.2f / %.2f | %.2f / %.2f" % (mb, bb, ma, ba))
            if key != "wall_s":
                cells.append(tp.ratio(ma, mb))
        L.append("| %s | %s | %s | %s |" % (row[0], row[1], row[2], " | ".join(cells)))
    L.append("")
    L.append("Each cell: median / best.  after/before: of the medians.")
    L.append("")
    L.append("(%.0f s; `bench/scattered_runs.py %s`)" % (time.time() - t0, " ".join(sys.argv[1:])))
    text = "\n".join(L)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
