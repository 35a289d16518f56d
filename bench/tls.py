#!/usr/bin/env python3
"""What TLS costs: migration throughput with and without TLS, livemig
beside QEMU in one run, with the same certificates (scripts/make-test-certs.sh,
tls-creds-x509 objects with verify-peer on both sides).

Loopback TCP, 1 GiB of random guest RAM (no page is sent as a zero page),
single channel and multifd with 4 channels.  Each engine's guest is
stopped (livemig --workload idle; QEMU TCG -S), so the figures are pure
transfer.  Each source is in a running VM's state: anonymous RAM its own
process wrote, by an incoming migration from a file of the random bytes
(bench/tls_link.py's engines; issue 14 says why).  livemig runs are
verified byte for byte (x-query-memory-hash), QEMU runs by reading the
destination's RAM.

    python3 bench/tls.py [--size 1G] [--reps 3] [--no-qemu] [--before BUILD] [--modes precopy]

--before BUILD adds the rows of another build of livemig (e.g. the
commit before a change, built elsewhere), measured in the same run: the
builds (and QEMU) alternate within each rep, plain and TLS within each
engine.  Each row gives the median and the best of the reps, and the CPU
seconds per GiB each side spends (median), plain and with TLS: on this
shared host wall-clock rates swing 2-8x between back-to-back runs, the
CPU per GiB much less, so "TLS adds CPU s/GiB" is the figure to compare.

Not a test: it prints a table (markdown) and never fails on a number.
Target (issue 11): TLS costs at most 15 % of plain throughput on a single
channel (AES-GCM with the CPU's AES instructions).
"""
import argparse
import mmap
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import throughput as tp  # noqa: E402  (the machinery of bench/throughput.py)
import tls_link  # noqa: E402  (its engines: sources in a running VM's state)

ROOT = os.path.join(HERE, "..")


def warm_host(size):
    """Touch and free the destination's amount of memory before a run: the
    first touch of memory the host has just reclaimed costs 2-6x more, and
    the destination's first touches are most of its CPU (issue 14)."""
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
    m.close()


def rate(r, size):
    if "error" in r:
        return None
    return size / (r["total_ms"] / 1000.0) / 1e6  # MB/s


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--no-qemu", action="store_true")
    ap.add_argument("--before", help="another livemig build directory, measured beside")
    ap.add_argument("--certs", help="certificates made by scripts/make-test-certs.sh "
                    "(default: made for this run)")
    ap.add_argument("--modes", default="precopy,multifd4",
                    help="comma-separated: precopy (the single channel), multifd4")
    ap.add_argument("--timeout", type=float, default=180)
    args = ap.parse_args()
    size = tp.parse_size(args.size)
    tmp = tempfile.mkdtemp(prefix="lmtlsbench-", dir="/dev/shm")
    certs = args.certs or os.path.join(tmp, "certs")
    if not args.certs:
        subprocess.run([os.path.join(ROOT, "scripts", "make-test-certs.sh"), certs], check=True)
    try:
        data = tp.Data("random", size, tmp)
        data.prepare()
        engines = [tls_link.Livemig(args.build, tmp, args.timeout)]
        if args.before:
            engines.append(tls_link.Livemig(args.before, tmp, args.timeout,
                                            name="livemig (before)"))
        qemu_bin = shutil.which("qemu-system-x86_64")
        if qemu_bin and not args.no_qemu:
            engines.append(tls_link.Qemu(qemu_bin, tmp, args.timeout))
        for eng in engines:
            eng.save_seed(data)
        here = tls_link.Loopback()
        runs = {}  # (engine, mode, tls) -> [result]
        for mode in args.modes.split(","):
            for rep in range(args.reps):
                # Within a rep the engines alternate, and plain and TLS
                # alternate within an engine: a change in the machine's
                # load (or in its memory's first-touch cost, which swings
                # 2-8x here: bench/tls-results.md) meets every row alike.
                for eng in engines:
                    for tls in (False, True):
                        # Warmed just before the first byte, as in
                        # bench/throughput.py: memory freed by a warm-up
                        # goes back to the hypervisor within seconds here,
                        # and warming before the source's load left the
                        # destinations pages whose first touch cost 2-10x,
                        # in step with the plain/TLS alternation (plain
                        # runs 0.58-6.3 s for the same 1 GiB).
                        r = eng.run(data, here, certs, mode, tls,
                                    warm=lambda: warm_host(size))
                        tp.log("%s %s %s rep %d: %s" % (eng.name, mode, "tls" if tls else "plain",
                                                        rep + 1, r))
                        runs.setdefault((eng.name, mode, tls), []).append(r)
        data.discard()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_tables(args, size, [e.name for e in engines], runs)


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    if not n:
        return None
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2.0


def summary(rs, size):
    """best and median MB/s, median CPU s/GiB of each side, verdicts."""
    ok = [r for r in rs if "error" not in r]
    gib = size / float(1 << 30)
    rates = [rate(r, size) for r in ok]
    cpus = [r for r in ok if "cpu_src" in r]
    return {
        "n": len(ok), "of": len(rs),
        "best": max(rates) if rates else None, "median": median(rates),
        "src": median([r["cpu_src"] / gib for r in cpus]),
        "dst": median([r["cpu_dst"] / gib for r in cpus]),
        "downtime": median([r["downtime_ms"] for r in ok if r.get("downtime_ms") is not None]),
        "verified": "%d/%d" % (sum(1 for r in ok if r.get("verified") is True), len(rs)),
        "errors": sorted(set(r["error"] for r in rs if "error" in r)),
    }


def fmt(x, f="%.0f"):
    return "-" if x is None else f % x


def cost(a, b):
    return "%.0f %%" % (100.0 * (1 - b / a)) if a and b else "-"


def print_tables(args, size, names, runs):
    print("\n## TLS cost: %s random RAM, tcp loopback, %d reps (median / best)\n"
          % (args.size, args.reps))
    print("| engine | mode | plain MB/s med / best | TLS MB/s med / best | TLS cost med / best | "
          "CPU s/GiB plain (src + dst) | CPU s/GiB TLS (src + dst) | TLS adds CPU s/GiB "
          "(src / dst) | TLS downtime ms | verified plain, TLS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    errors = []
    for mode in args.modes.split(","):
        for ename in names:
            p = summary(runs.get((ename, mode, False), []), size)
            t = summary(runs.get((ename, mode, True), []), size)
            errors += ["%s %s: %s" % (ename, mode, e) for e in p["errors"] + t["errors"]]

            def both(s):
                return "%s + %s" % (fmt(s["src"], "%.2f"), fmt(s["dst"], "%.2f"))

            def added(a, b):
                return "%+.2f" % (b - a) if a is not None and b is not None else "-"
            print("| %s | %s | %s / %s | %s / %s | %s / %s | %s | %s | %s / %s | %s | %s, %s |" % (
                ename, mode, fmt(p["median"]), fmt(p["best"]), fmt(t["median"]), fmt(t["best"]),
                cost(p["median"], t["median"]), cost(p["best"], t["best"]), both(p), both(t),
                added(p["src"], t["src"]), added(p["dst"], t["dst"]), fmt(t["downtime"]),
                p["verified"], t["verified"]))
    print("\nMB/s = guest RAM size / total-time; CPU = utime+stime of each process over the "
          "migration, per GiB of guest RAM, median of the reps (steadier than MB/s on a shared "
          "machine: what TLS adds, whatever else loads it).  TLS cost = 1 - TLS MB/s / plain "
          "MB/s, of the medians and of the bests.  TLS: x509, verify-peer on both sides, "
          "GnuTLS default priorities (TLS 1.3, AES-256-GCM).")
    for e in errors:
        print("- failed: %s" % e)
    # Every run, in run order within its row: the spread says how far the
    # medians can be trusted on this host.
    gib = size / float(1 << 30)
    print("\nPer run, total ms (source / destination CPU s/GiB):\n")
    for mode in args.modes.split(","):
        for ename in names:
            for tls in (False, True):
                cells = []
                for r in runs.get((ename, mode, tls), []):
                    if "error" in r:
                        cells.append("failed")
                    else:
                        cells.append("%d (%.2f / %.2f)" % (r["total_ms"], r["cpu_src"] / gib,
                                                           r["cpu_dst"] / gib))
                print("- %s %s %s: %s" % (ename, mode, "TLS" if tls else "plain",
                                          ", ".join(cells)))


if __name__ == "__main__":
    main()
