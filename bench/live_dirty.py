#!/usr/bin/env python3
"""Live dirty tracking: what a running guest pays, before and after hot
groups (x-dirty-hot-groups, src/ram/dirty.h), in one run.

For each guest RAM size, dirty rate and working set it migrates a
livemig-vm running the random workload (one vCPU) to a paused destination,
once with x-dirty-hot-groups off and once on (order alternating), and
reports: converged? (completed within --timeout), total time, downtime,
dirty syncs, the source's minor faults per second (each write to a
write-protected page is one), its CPU, and the guest progress lost: the
workload's steps during the migration against its rate just before.

    python3 bench/live_dirty.py [--sizes 1G,4G] [--rates 64M,256M]
        [--working-sets 100%,64M] [--reps 1] [--timeout 60] [--out FILE]

Standard library only; reuses bench/throughput.py's QMP client.
"""
import argparse
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


def one(vm_bin, tmp, size, rate, ws, hot, timeout, seq):
    def start(name, extra):
        qmp = os.path.join(tmp, "%s-%d.qmp" % (name, seq))
        argv = [vm_bin, "--name", name, "--memory", str(size), "--smp", "1",
                "--qmp", "unix:" + qmp, "--serial", "none"] + extra
        return tp.Machine("%s-%d" % (name, seq), argv, qmp, tmp)

    guest = ["--workload", "random", "--dirty-rate", str(rate), "--working-set", ws]
    src = dst = None
    try:
        src = start("src", guest)
        dst = start("dst", guest + ["--incoming", "defer", "--paused"])
        # Let the guest run (populate its working set), then take its rate.
        time.sleep(3)
        s0, t0 = steps(src), time.monotonic()
        time.sleep(2)
        s1, t1 = steps(src), time.monotonic()
        rate_before = (s1 - s0) / (t1 - t0)
        src.cmd("migrate-set-parameters", **{"max-bandwidth": 0, "x-dirty-hot-groups": hot})
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
        if converged:
            ok = src.cmd("x-query-memory-hash")["hash"] == dst.cmd("x-query-memory-hash")["hash"]
        run_s = (info.get("total-time") or wall * 1000) / 1000.0
        # Against the rate the guest is asked to write at (pages/s): the
        # rate measured before the migration swings with the host's load.
        expected = rate / 4096.0 * run_s
        lost = 1 - (st1 - st0) / expected if expected > 0 else None
        return {"converged": converged, "total_ms": info.get("total-time"),
                "downtime_ms": info.get("downtime"), "wall_s": wall,
                "syncs": info.get("ram", {}).get("dirty-sync-count"),
                "faults_per_s": (f1 - f0) / wall, "cpu_src": c1 - c0, "lost": lost,
                "rate_before": rate_before, "verified": ok, "status": info.get("status")}
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
    ap.add_argument("--working-sets", default="100%,64M")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--build", default=os.path.join(tp.ROOT, "build"))
    ap.add_argument("--out", default=os.path.join(tp.ROOT, "bench", "live-dirty-results.md"))
    args = ap.parse_args()
    vm_bin = os.path.join(args.build, "livemig-vm")
    tmp = tempfile.mkdtemp(prefix="livemig-live-", dir="/dev/shm")
    header = tp.machine_header("not used")
    rows = []
    seq = 0
    t_start = time.time()
    try:
        for size in [tp.parse_size(s) for s in args.sizes.split(",")]:
            for rate in [tp.parse_size(r) for r in args.rates.split(",")]:
                for ws in args.working_sets.split(","):
                    runs = {False: [], True: []}
                    for i in range(args.reps):
                        for hot in ((False, True) if i % 2 == 0 else (True, False)):
                            seq += 1
                            r = one(vm_bin, tmp, size, rate, ws, hot, args.timeout, seq)
                            runs[hot].append(r)
                            tp.log("%s %s/s ws %s hot=%s #%d: %s" % (tp.fmt_size(size),
                                   tp.fmt_size(rate), ws, hot, i, r))
                    rows.append((size, rate, ws, runs))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = render(header, rows, args, time.time() - t_start)
    print(text)
    with open(args.out, "w") as fh:
        fh.write(text)


def med(rs, k):
    xs = [r[k] for r in rs if r.get(k) is not None]
    return statistics.median(xs) if xs else None


def before_text(rows):
    fr = []
    for size, rate, ws, runs in rows:
        for rs in runs.values():
            fr += [r["rate_before"] / (rate / 4096.0) for r in rs if "rate_before" in r]
    return "%.0f %%" % (100 * statistics.median(fr)) if fr else "–"


def render(h, rows, args, elapsed):
    L = ["# Live dirty tracking: hot groups off vs on (issue 14 §6)\n",
         "**Measured on a shared machine** (2 CPUs, seven other engineers building and testing; "
         "load average %s at the start): wall times swing with that load, so read the off/on "
         "pairs, measured back to back in the same run.\n" % h["load"],
         "| | |\n|---|---|",
         "| date | %s |" % h["date"],
         "| machine | %s, %s CPUs, %s RAM, kernel %s |" % (h["cpu"], h["nproc"], h["memory"],
                                                          h["kernel"]),
         "| livemig | git %s |" % h["rev"],
         "| guest | `livemig-vm --smp 1 --workload random --dirty-rate R --working-set W`, "
         "running 5 s before the migration; destination paused; unix socket, max-bandwidth 0 |",
         "| runs | %d per cell (median), off and on alternating; timeout %.0f s; %.0f s in all |"
         % (args.reps, args.timeout, elapsed),
         "| reproduce | `python3 bench/live_dirty.py --sizes %s --rates %s --working-sets %s "
         "--reps %d` |" % (args.sizes, args.rates, args.working_sets, args.reps),
         "",
         "converged: completed within the timeout (else cancelled, figures up to then). "
         "faults/s: the source process's minor faults per second during the migration (a "
         "guest write to a write-protected page is one). progress lost: 1 − the workload's "
         "steps (page writes) during the migration ÷ (the dirty rate it is asked for, in pages "
         "per second, × the migration's time); before the migration the same guest reached "
         "%s of that rate (median).\n" % before_text(rows),
         "| RAM | dirty rate | working set | x-dirty-hot-groups | converged | total ms | "
         "downtime ms | syncs | faults/s | source CPU s | guest progress lost | verified |",
         "|---|---|---|---|---|--:|--:|--:|--:|--:|--:|---|"]
    for size, rate, ws, runs in rows:
        for hot in (False, True):
            rs = [r for r in runs[hot] if "error" not in r]
            if not rs:
                L.append("| %s | %s/s | %s | %s | %s | | | | | | | |" % (
                    tp.fmt_size(size), tp.fmt_size(rate), ws, "on" if hot else "off",
                    runs[hot][0].get("error") if runs[hot] else "not run"))
                continue
            conv = sum(1 for r in rs if r["converged"])
            lost = med(rs, "lost")
            L.append("| %s | %s/s | %s | %s | %d of %d | %s | %s | %s | %s | %s | %s | %s |" % (
                tp.fmt_size(size), tp.fmt_size(rate), ws, "on" if hot else "off", conv, len(rs),
                tp.f(med(rs, "total_ms"), "%d"), tp.f(med(rs, "downtime_ms"), "%d"),
                tp.f(med(rs, "syncs"), "%d"), tp.f(med(rs, "faults_per_s"), "%.0f"),
                tp.f(med(rs, "cpu_src")), "–" if lost is None else "%.0f %%" % (100 * lost),
                "/".join("yes" if r["verified"] else "–" if r["verified"] is None else "NO"
                         for r in rs)))
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
