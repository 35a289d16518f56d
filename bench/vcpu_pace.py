#!/usr/bin/env python3
"""Where a live guest's pace goes while it is migrated (issue 12, issue 14 §6).

Starts a livemig-vm (one vCPU, random workload) and a paused destination,
and samples the vCPU thread alone, before and during the migration:

  steps/s       the workload's page writes per second (x-query-workload)
  cpu µs/step   the vCPU thread's on-CPU time per step (/proc/.../schedstat)
  wait µs/step  time it was runnable but waiting for a CPU (run-queue delay:
                contention with the migration threads and everything else)
  faults/step   the thread's minor faults per step (each write to a
                write-protected page is one)
  µs/fault      (cpu/step during - cpu/step before) / (faults/step during):
                the vCPU time one write fault costs, everything included

With --perf it also records the vCPU thread (perf record -t) during the
migration and prints the top symbols, which say whether that time is the
fault path, waiting for mmap_lock behind the re-protect, or TLB flushes.

    python3 bench/vcpu_pace.py [--size 1G] [--rate 256M] [--hot on|off]
        [--seconds 4] [--warmup 3] [--perf]

Standard library only; reuses bench/throughput.py's QMP client.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throughput as tp  # noqa: E402


def vcpu_tid(pid):
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
            if f.read().strip().startswith("vcpu"):
                return int(tid)
    raise RuntimeError("no vCPU thread in process %d" % pid)


def sample(pid, tid, m):
    with open("/proc/%d/task/%d/schedstat" % (pid, tid)) as f:
        run_ns, wait_ns, _ = (int(x) for x in f.read().split())
    with open("/proc/%d/task/%d/stat" % (pid, tid)) as f:
        data = f.read()
    minflt = int(data[data.rindex(")") + 2:].split()[7])
    return {"t": time.monotonic(), "run": run_ns, "wait": wait_ns, "flt": minflt,
            "steps": m.cmd("x-query-workload")["steps"], "cpu": m.cpu()}


def delta(a, b):
    steps = max(b["steps"] - a["steps"], 1)
    dt = b["t"] - a["t"]
    return {"steps_s": steps / dt, "cpu_us": (b["run"] - a["run"]) / 1e3 / steps,
            "wait_us": (b["wait"] - a["wait"]) / 1e3 / steps,
            "flt": (b["flt"] - a["flt"]) / steps, "proc_cores": (b["cpu"] - a["cpu"]) / dt,
            "vcpu_busy": (b["run"] - a["run"]) / 1e9 / dt}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--rate", default="256M")
    ap.add_argument("--working-set", default="100%")
    ap.add_argument("--hot", default="off", choices=("on", "off"))
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--warmup", type=float, default=3.0,
                    help="seconds the guest runs before the 'before' sample")
    ap.add_argument("--perf", action="store_true")
    ap.add_argument("--build", default=os.path.join(tp.ROOT, "build"))
    args = ap.parse_args()
    vm_bin = os.path.join(args.build, "livemig-vm")
    tmp = tempfile.mkdtemp(prefix="livemig-pace-", dir="/dev/shm")
    size, rate = tp.parse_size(args.size), tp.parse_size(args.rate)
    guest = ["--workload", "random", "--dirty-rate", str(rate), "--working-set",
             args.working_set]
    src = dst = None

    def start(name, extra):
        qmp = os.path.join(tmp, name + ".qmp")
        return tp.Machine(name, [vm_bin, "--name", name, "--memory", str(size), "--smp", "1",
                                 "--qmp", "unix:" + qmp, "--serial", "none"] + extra, qmp, tmp)
    try:
        src = start("src", guest)
        dst = start("dst", guest + ["--incoming", "defer", "--paused"])
        tid = vcpu_tid(src.pid)
        time.sleep(args.warmup)
        a = sample(src.pid, tid, src)
        time.sleep(2)
        b = sample(src.pid, tid, src)
        before = delta(a, b)
        src.cmd("migrate-set-parameters", **{"max-bandwidth": 0,
                                               "x-dirty-hot-groups": args.hot == "on",
                                               "downtime-limit": 1})
        uri = "unix:" + os.path.join(tmp, "mig.sock")
        dst.cmd("migrate-incoming", uri=uri)
        perf = None
        if args.perf:
            perf = subprocess.Popen(["perf", "record", "-q", "-g", "-t", str(tid), "-o",
                                     os.path.join(tmp, "perf.data"), "--", "sleep",
                                     str(args.seconds)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        c = sample(src.pid, tid, src)
        src.cmd("migrate", uri=uri)
        time.sleep(args.seconds)
        d = sample(src.pid, tid, src)
        during = delta(c, d)
        info = src.cmd("query-migrate")
        src.cmd("migrate_cancel")
        if perf:
            perf.wait(timeout=60)
        extra_us = during["cpu_us"] - before["cpu_us"]
        print("guest %s random at %s/s, x-dirty-hot-groups %s, load %s" % (
            args.size, args.rate, args.hot, open("/proc/loadavg").read().split()[0]))
        print("| phase | steps/s | vCPU busy | cpu µs/step | run-queue wait µs/step | "
              "faults/step | source process cores |")
        print("|---|--:|--:|--:|--:|--:|--:|")
        for name, x in (("before", before), ("during", during)):
            print("| %s | %.0f | %.0f %% | %.1f | %.1f | %.2f | %.2f |" % (
                name, x["steps_s"], 100 * x["vcpu_busy"], x["cpu_us"], x["wait_us"], x["flt"],
                x["proc_cores"]))
        if during["flt"] > before["flt"] + 0.01:
            print("vCPU time per write fault: %.1f µs (syncs %s, status %s)" % (
                extra_us / (during["flt"] - before["flt"]),
                info.get("ram", {}).get("dirty-sync-count"), info.get("status")))
        if perf:
            rep = subprocess.run(["perf", "report", "-i", os.path.join(tmp, "perf.data"),
                                  "--no-children", "--sort", "sym", "--stdio", "-g", "none",
                                  "--percent-limit", "1.5"],
                                 capture_output=True, text=True, timeout=120)
            print("\n".join(l for l in rep.stdout.splitlines()
                            if l.strip() and not l.startswith("#")))
    finally:
        for m in (src, dst):
            if m:
                m.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
