#!/usr/bin/env python3
"""Live dirty tracking: what a running guest pays while it is migrated, before
and after this branch's tracking changes (issue 14 §6, issue 12), in one run.

For each guest RAM size and dirty rate it migrates a livemig-vm running
the random workload (one vCPU) to a paused destination, once per variant:

  before      --before-build (livemig built from the commit before the
              change; its defaults: protect-at-sync, x-dirty-hot-groups off)
  after       --build with its defaults
  after+flip  --build with x-dirty-hot-groups flipped from its default
              (set --hot-variant none to skip)

and reports: converged? (completed within --timeout), total time,
downtime, dirty syncs, the source's minor faults per second (each write to
a write-protected page is one), its CPU, and the guest's pace: workload
steps (page writes) per second just before the migration, during it and
on the destination after it (resumed), and the share lost during it.

    python3 bench/live_dirty.py --before-build DIR [--sizes 1G,4G]
        [--rates 64M,256M] [--reps 1] [--timeout 60] [--quick] [--out FILE]

--quick: 1 GiB only.  4 GiB guests need 8 GiB free (source and
destination); cells run one at a time.  Standard library only; reuses
bench/throughput.py's QMP client.
"""
import argparse
import mmap
import os
import statistics
import sys
import tempfile
import shutil
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throughput as tp  # noqa: E402


def minflt(pid):
    with open("/proc/%d/stat" % pid) as f:
        data = f.read()
    return int(data[data.rindex(")") + 2:].split()[7])


def steps(m):
    return m.cmd("x-query-workload")["steps"]


def warm_memory(size):
    """Touch and free the run's amount of memory (source and destination)
    in huge pages, so the host's reclaim is not charged to the first run's
    guest (a first guest here populated at ~25 pages/s, the next at 13 k)."""
    m = mmap.mmap(-1, size)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        m.madvise(mmap.MADV_HUGEPAGE)
    for off in range(0, size, 1 << 21):
        m[off] = 1
    m.close()


def rate_over(m, seconds):
    s0, t0 = steps(m), time.monotonic()
    time.sleep(seconds)
    return (steps(m) - s0) / (time.monotonic() - t0)


def one(vm_bin, tmp, size, rate, ws, hot, timeout, warmup, seq):
    """hot: None (the build's default) or the x-dirty-hot-groups to set."""
    def start(name, extra):
        qmp = os.path.join(tmp, "%s-%d.qmp" % (name, seq))
        argv = [vm_bin, "--name", name, "--memory", str(size), "--smp", "1",
                "--qmp", "unix:" + qmp, "--serial", "none"] + extra
        return tp.Machine("%s-%d" % (name, seq), argv, qmp, tmp)

    guest = ["--workload", "random", "--dirty-rate", str(rate), "--working-set", ws]
    src = dst = None
    try:
        warm_memory(2 * size)
        src = start("src", guest)
        dst = start("dst", guest + ["--incoming", "defer", "--paused"])
        # Let the guest run until it keeps its pace (its first touches of
        # fresh RAM are slow here), at most --warmup s, then take its rate.
        t_up = time.monotonic()
        time.sleep(2)
        while (rate_over(src, 1) < 0.8 * rate / 4096.0 and
               time.monotonic() - t_up < warmup):
            pass
        rate_before = rate_over(src, 2)
        params = {"max-bandwidth": 0}
        if hot is not None:
            params["x-dirty-hot-groups"] = hot
        src.cmd("migrate-set-parameters", **params)
        hot_used = src.cmd("query-migrate-parameters").get("x-dirty-hot-groups")
        uri = "unix:" + os.path.join(tmp, "mig-%d.sock" % seq)
        dst.cmd("migrate-incoming", uri=uri)
        c0, f0, st0, w0 = src.cpu(), minflt(src.pid), steps(src), time.monotonic()
        src.cmd("migrate", uri=uri)
        info = {}
        converged = False
        while time.monotonic() - w0 < timeout:
            info = src.cmd("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                converged = info["status"] == "completed"
                break
            time.sleep(0.05)
        wall = time.monotonic() - w0
        # steps up to the stop: the guest is paused afterwards
        st1 = src.cmd("x-query-workload")["steps"]
        c1, f1 = src.cpu(), minflt(src.pid)
        if not converged:
            info = src.cmd("query-migrate")
            src.cmd("migrate_cancel")
        ok = None
        rate_after = None
        if converged:
            ok = src.cmd("x-query-memory-hash")["hash"] == dst.cmd("x-query-memory-hash")["hash"]
            dst.cmd("cont")
            rate_after = rate_over(dst, 2)
        run_s = (info.get("total-time") or wall * 1000) / 1000.0
        rate_during = (st1 - st0) / run_s if run_s > 0 else None
        lost = 1 - rate_during / rate_before if rate_before and rate_during is not None else None
        return {"converged": converged, "total_ms": info.get("total-time"),
                "downtime_ms": info.get("downtime"), "wall_s": wall,
                "syncs": info.get("ram", {}).get("dirty-sync-count"),
                "faults_per_s": (f1 - f0) / wall, "cpu_src": c1 - c0, "lost": lost,
                "rate_before": rate_before, "rate_during": rate_during,
                "rate_after": rate_after, "hot": hot_used, "verified": ok,
                "status": info.get("status"), "load": os.getloadavg()[0]}
    except Exception as e:
        return {"error": "%s: %s" % (type(e).__name__, e)}
    finally:
        for m in (src, dst):
            if m:
                m.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1G,4G")
    ap.add_argument("--rates", default="64M,256M")
    ap.add_argument("--working-sets", default="100%")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--quick", action="store_true", help="1 GiB only")
    ap.add_argument("--warmup", type=float, default=20.0,
                    help="at most this many seconds for the guest to reach 80 %% of its rate")
    ap.add_argument("--build", default=os.path.join(tp.ROOT, "build"))
    ap.add_argument("--before-build", default=None,
                    help="build dir of the commit before the change (rows 'before')")
    ap.add_argument("--hot-variant", default="flip", choices=("flip", "none"))
    ap.add_argument("--out", default=os.path.join(tp.ROOT, "bench", "live-dirty-results.md"))
    args = ap.parse_args()
    if args.quick:
        args.sizes = "1G"
    variants = []
    if args.before_build:
        variants.append(("before", os.path.join(args.before_build, "livemig-vm"), None))
    variants.append(("after", os.path.join(args.build, "livemig-vm"), None))
    if args.hot_variant == "flip":
        variants.append(("after+flip", os.path.join(args.build, "livemig-vm"), "flip"))
    tmp = tempfile.mkdtemp(prefix="livemig-live-", dir="/dev/shm")
    header = tp.machine_header("not used")
    rows = []
    seq = 0
    t_start = time.time()
    defaults = {}
    try:
        for size in [tp.parse_size(s) for s in args.sizes.split(",")]:
            for rate in [tp.parse_size(r) for r in args.rates.split(",")]:
                for ws in args.working_sets.split(","):
                    runs = {v[0]: [] for v in variants}
                    for i in range(args.reps):
                        order = variants if i % 2 == 0 else list(reversed(variants))
                        for name, vm_bin, hot in order:
                            seq += 1
                            if hot == "flip":
                                hot = not defaults.get("after", False)
                            r = one(vm_bin, tmp, size, rate, ws, hot, args.timeout, args.warmup, seq)
                            if name == "after" and r.get("hot") is not None:
                                defaults["after"] = r["hot"]
                            runs[name].append(r)
                            tp.log("%s %s/s ws %s %s #%d: %s" % (tp.fmt_size(size),
                                   tp.fmt_size(rate), ws, name, i, r))
                    rows.append((size, rate, ws, runs))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = render(header, rows, args, time.time() - t_start, [v[0] for v in variants])
    print(text)
    with open(args.out, "w") as fh:
        fh.write(text)


def med(rs, k):
    xs = [r[k] for r in rs if r.get(k) is not None]
    return statistics.median(xs) if xs else None


def render(h, rows, args, elapsed, names):
    loads = [r["load"] for _, _, _, runs in rows for rs in runs.values() for r in rs
             if "load" in r]
    L = ["# Live dirty tracking: before / after (issue 14 §6, issue 12)\n",
         "**Measured on a shared machine** (2 CPUs, other engineers building and testing; "
         "load average %s at the start, %s–%s during the runs; the host is itself a PVM guest, "
         "where every page-table change traps): wall times and the guest's pace swing with "
         "that load, so read the variants of one cell, measured back to back.\n"
         % (h["load"], "%.0f" % min(loads) if loads else "?",
            "%.0f" % max(loads) if loads else "?"),
         "| | |\n|---|---|",
         "| date | %s |" % h["date"],
         "| machine | %s, %s CPUs, %s RAM, kernel %s |" % (h["cpu"], h["nproc"], h["memory"],
                                                          h["kernel"]),
         "| livemig | after: git %s; before: %s |" % (h["rev"], args.before_build or "not run"),
         "| guest | `livemig-vm --smp 1 --workload random --dirty-rate R --working-set W`, "
         "running until it reaches 80 %% of its rate (at most %.0f s) before the migration; "
         "destination paused; unix socket, max-bandwidth 0 |" % args.warmup,
         "| runs | %d per cell (median), variants alternating; timeout %.0f s; %.0f s in all |"
         % (args.reps, args.timeout, elapsed),
         "| reproduce | `python3 bench/live_dirty.py --before-build DIR --sizes %s --rates %s "
         "--working-sets %s --reps %d` (`--quick`: 1 GiB only) |"
         % (args.sizes, args.rates, args.working_sets, args.reps),
         "",
         "before: protect-at-sync, x-dirty-hot-groups off (the old defaults). after: "
         "protect-on-send (LM_DIRTY_PROTECT_ON_SEND) with this build's default "
         "x-dirty-hot-groups; after+flip: the same with x-dirty-hot-groups flipped. "
         "converged: completed within the timeout (else cancelled, figures up to then). "
         "faults/s: the source process's minor faults per second during the migration. "
         "steps/s: the workload's page writes per second 2 s before the migration, during it "
         "(until the stop), and on the destination 2 s after it (resumed); lost: 1 − during ÷ "
         "before.\n",
         "| RAM | dirty rate | variant | hot groups | converged | total ms | downtime ms | "
         "syncs | faults/s | source CPU s | steps/s before / during / after | lost | "
         "verified |",
         "|---|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|---|"]
    for size, rate, ws, runs in rows:
        for name in names:
            rs = [r for r in runs.get(name, []) if "error" not in r]
            cell = "| %s | %s/s%s | %s |" % (tp.fmt_size(size), tp.fmt_size(rate),
                                             "" if ws == "100%" else " (ws %s)" % ws, name)
            if not rs:
                L.append(cell + " | %s | | | | | | | | |" % (
                    runs[name][0].get("error") if runs.get(name) else "not run"))
                continue
            conv = sum(1 for r in rs if r["converged"])
            lost = med(rs, "lost")
            hot = {r.get("hot") for r in rs}
            L.append(cell + " %s | %d of %d | %s | %s | %s | %s | %s | %s / %s / %s | %s | %s |"
                     % ("/".join("on" if x else "off" if x is not None else "?" for x in hot),
                        conv, len(rs),
                        tp.f(med(rs, "total_ms"), "%d"), tp.f(med(rs, "downtime_ms"), "%d"),
                        tp.f(med(rs, "syncs"), "%d"), tp.f(med(rs, "faults_per_s"), "%.0f"),
                        tp.f(med(rs, "cpu_src")), tp.f(med(rs, "rate_before"), "%.0f"),
                        tp.f(med(rs, "rate_during"), "%.0f"), tp.f(med(rs, "rate_after"), "%.0f"),
                        "–" if lost is None else "%.0f %%" % (100 * lost),
                        "/".join("yes" if r["verified"] else "–" if r["verified"] is None
                                 else "NO" for r in rs)))
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
