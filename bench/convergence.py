#!/usr/bin/env python3
"""Convergence under pressure, QEMU beside livemig (issue 12; a benchmark,
not a test: it prints a table and asserts nothing about time).

The guest dirties memory faster than the link carries it: RAM (default
1 GiB) dirtied sequentially, one store per 4 KiB page, at --dirty-rate
(default 256 MiB/s), over a link capped with max-bandwidth (default
100 MiB/s) on a unix socket.

  qemu     qemu-system-riscv64 -M virt (TCG), the guest bench/dirtier.S
           (assembled here with riscv64-unknown-elf-gcc), paced by the time
           CSR; auto-converge on (QEMU 7.2 from Debian has no dirty-limit
           without KVM's dirty ring, nor x-auto-postcopy).
  livemig  build/livemig-vm --workload increment (the same pattern: one
           store per page, sequentially), --smp 2, each strategy:
           none, auto-converge, dirty-limit (vcpu-dirty-limit per vCPU),
           x-auto-postcopy (with postcopy-ram).

livemig's stop-copy runs without max-bandwidth (as QEMU 8.2+); to keep
"the link carries 100 MiB/s" true for its decision too, livemig also gets
avail-switchover-bandwidth = the cap.  QEMU 7.2 keeps its cap.

Per run: completed or not (a run that has not completed after --timeout
seconds is cancelled and reported with its x-convergence reason), total
time, downtime, and the guest's progress: steps/s over --sample seconds
before, averaged over the migration, and over --sample seconds after on
the destination.  "lost" is 1 - during/before: progress lost to
throttling.  livemig runs also verify memory (the hashes of the stopped
source and the paused destination, then x-verify-memory).

  python3 bench/convergence.py [--ram 1G] [--dirty-rate 256M] [--cap 100M]
      [--timeout 120] [--strategies none,auto-converge,dirty-limit,auto-postcopy,qemu]
      [--tracker uffd-wp|dirty-log]
      [--out bench/convergence-results.md]

Standard library only.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from qmpclient import QMP, wait_migration

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.environ.get("LIVEMIG_BUILD", os.path.join(HERE, "..", "build"))
MIB = 1 << 20
COUNTER = 0x80001000
REGION_OFFSET = 2 * MIB
MTIME_HZ = 10_000_000


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def parse_size(s):
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * mult[s[-1].upper()] if s[-1].upper() in mult else int(s)


class Machine:
    def __init__(self, argv, qmp_path, log_path):
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        self.qmp = QMP(qmp_path)

    def stop(self):
        try:
            self.qmp.cmd("quit")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Engine:
    """steps() reads the guest's progress counter; the rest is QMP."""

    def __init__(self, tmp, args):
        self.tmp, self.args = tmp, args


class Qemu(Engine):
    name = "QEMU 7.2 (TCG)"

    def build_guest(self):
        pages = (self.args.ram - REGION_OFFSET) // 4096
        # Ticks of the 10 MHz timer per page, times 1024.
        tpp = MTIME_HZ * 1024 * 4096 // self.args.dirty_rate
        elf = os.path.join(self.tmp, "dirtier.elf")
        self.bin = os.path.join(self.tmp, "dirtier.bin")
        subprocess.run(["riscv64-unknown-elf-gcc", "-nostdlib", "-nostartfiles",
                        "-Wl,-Ttext=0x80000000", "-DREGION_PAGES=%d" % pages, "-DTPP_X1024=%d" % tpp,
                        "-o", elf, os.path.join(HERE, "dirtier.S")], check=True)
        subprocess.run(["riscv64-unknown-elf-objcopy", "-O", "binary", elf, self.bin], check=True)

    def start(self, tag, incoming):
        qmp = os.path.join(self.tmp, tag + ".qmp")
        argv = ["qemu-system-riscv64", "-M", "virt", "-m", str(self.args.ram >> 20), "-smp", "1",
                "-bios", self.bin, "-nographic", "-monitor", "none", "-serial", "none",
                "-qmp", "unix:%s,server=on,wait=off" % qmp]
        if incoming:
            argv += ["-incoming", "defer"]
        return Machine(argv, qmp, os.path.join(self.tmp, tag + ".log"))

    def steps(self, m):
        out = m.qmp.cmd("human-monitor-command", command_line="xp /1gx 0x%x" % COUNTER)
        return int(out.split(":")[1].split()[0], 16)

    def configure(self, src, dst, strategy):
        src.qmp.cmd("migrate-set-capabilities",
                    capabilities=[{"capability": "auto-converge", "state": True}])
        src.qmp.cmd("migrate-set-parameters", max_bandwidth=self.args.cap)

    def resume_dst(self, dst):
        pass  # QEMU's destination runs by itself (no -S)

    def verify(self, src, dst):
        # The guest carries on from where it stopped: the counter arrived
        # and grows.
        return "counter grows from %d" % self.steps(dst)


class Livemig(Engine):
    name = "livemig"

    def start(self, tag, incoming):
        qmp = os.path.join(self.tmp, tag + ".qmp")
        argv = [os.path.join(BUILD, "livemig-vm"), "--name", tag, "--memory",
                "%dM" % (self.args.ram >> 20), "--smp", "2", "--workload", "increment",
                "--dirty-rate", str(self.args.dirty_rate), "--qmp", "unix:" + qmp]
        if self.args.tracker == "dirty-log":
            argv += ["--dirty-log"]
        if incoming:
            argv += ["--incoming", "defer", "--paused"]
        return Machine(argv, qmp, os.path.join(self.tmp, tag + ".log"))

    def steps(self, m):
        return m.qmp.cmd("x-query-workload")["steps"]

    def configure(self, src, dst, strategy):
        caps = {"none": [], "auto-converge": ["auto-converge"], "dirty-limit": ["dirty-limit"],
                "auto-postcopy": ["x-auto-postcopy", "postcopy-ram"]}[strategy]
        src.qmp.cmd("migrate-set-capabilities",
                    capabilities=[{"capability": c, "state": True} for c in caps])
        if "postcopy-ram" in caps:
            dst.qmp.cmd("migrate-set-capabilities",
                        capabilities=[{"capability": "postcopy-ram", "state": True}])
        # Two vCPUs: each limited to a third of the link.
        if self.args.tracker == "dirty-log":
            src.qmp.cmd("migrate-set-parameters", x_dirty_tracker="dirty-log")
        src.qmp.cmd("migrate-set-parameters", max_bandwidth=self.args.cap,
                    avail_switchover_bandwidth=self.args.cap,
                    vcpu_dirty_limit=max(1, self.args.cap // MIB // 3),
                    x_vcpu_dirty_limit_period=200)

    def resume_dst(self, dst):
        pass

    def verify(self, src, dst):
        same = src.qmp.cmd("x-query-memory-hash")["hash"] == dst.qmp.cmd("x-query-memory-hash")["hash"]
        ok = dst.qmp.cmd("x-verify-memory")["ok"]
        dst.qmp.cmd("cont")
        return "hash %s, verify %s" % ("equal" if same else "DIFFERENT", "ok" if ok else "FAILED")


def rate(engine, m, seconds):
    s0, t0 = engine.steps(m), time.monotonic()
    time.sleep(seconds)
    return (engine.steps(m) - s0) / (time.monotonic() - t0)


def run(engine, strategy, args):
    src = engine.start("src", False)
    dst = engine.start("dst", True)
    row = {"engine": engine.name, "strategy": strategy}
    try:
        engine.configure(src, dst, strategy)
        time.sleep(args.sample)  # warm up: first touches of fresh RAM
        row["before"] = rate(engine, src, args.sample)
        sock = os.path.join(engine.tmp, "mig.sock")
        dst.qmp.cmd("migrate-incoming", uri="unix:" + sock)
        s0, t0 = engine.steps(src), time.monotonic()
        src.qmp.cmd("migrate", uri="unix:" + sock)
        last_steps = [s0]

        def sample(info):
            if info.get("status") == "active":
                last_steps[0] = engine.steps(src)

        info = wait_migration(lambda: src.qmp.cmd("query-migrate"), args.timeout, 0.2, sample)
        elapsed = time.monotonic() - t0
        row["status"] = info.get("status")
        row["during"] = (last_steps[0] - s0) / elapsed if elapsed else 0
        row["throttle"] = info.get("cpu-throttle-percentage", 0)
        cv = info.get("x-convergence", {})
        if row["status"] != "completed":
            row["reason"] = cv.get("reason", "")
            src.qmp.cmd("migrate_cancel")
            return row
        row["total"] = info.get("total-time")
        row["downtime"] = info.get("downtime")
        row["auto"] = info.get("x-auto-postcopy", {}).get("state", "")
        wait_migration(lambda: dst.qmp.cmd("query-migrate"), 60, 0.1)
        row["verified"] = engine.verify(src, dst)
        time.sleep(0.5)
        row["after"] = rate(engine, dst, args.sample)
        return row
    finally:
        src.stop()
        dst.stop()


def fmt(row):
    def num(k, f="%.0f"):
        return f % row[k] if row.get(k) is not None else "-"
    lost = "-"
    if row.get("before") and row.get("during") is not None:
        lost = "%.0f %%" % (100 * (1 - row["during"] / row["before"]))
    done = row["status"] if row["status"] == "completed" else "**not completed** (%s)" % row.get("reason", row["status"])
    return "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
        row["engine"], row["strategy"], done, num("total"), num("downtime"),
        num("before"), num("during"), num("after"), lost, row.get("verified", "-"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ram", default="1G")
    ap.add_argument("--dirty-rate", default="256M")
    ap.add_argument("--cap", default="100M")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--sample", type=float, default=3)
    ap.add_argument("--strategies", default="qemu,none,auto-converge,dirty-limit,auto-postcopy")
    ap.add_argument("--tracker", choices=["uffd-wp", "dirty-log"], default="uffd-wp",
                    help="how livemig learns what the guest dirtied: write-protect faults "
                         "(any VMM) or the VMM's own log pulled at each sync (KVM's dirty "
                         "log; QEMU's TCG also tracks in software, without faults)")
    ap.add_argument("--out")
    args = ap.parse_args()
    args.ram, args.dirty_rate, args.cap = (parse_size(args.ram), parse_size(args.dirty_rate),
                                           parse_size(args.cap))
    tmp = tempfile.mkdtemp(prefix="lm-conv-")
    rows = []
    try:
        for strategy in args.strategies.split(","):
            if strategy == "qemu":
                if not (shutil.which("qemu-system-riscv64") and
                        shutil.which("riscv64-unknown-elf-gcc")):
                    log("qemu: qemu-system-riscv64 or riscv64-unknown-elf-gcc missing")
                    continue
                eng = Qemu(tmp, args)
                eng.build_guest()
                row = run(eng, "auto-converge", args)
            else:
                row = run(Livemig(tmp, args), strategy, args)
            log(row)
            rows.append(row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load = os.getloadavg()
    lines = ["# Convergence: a guest dirtying %d MiB/s over a link capped at %d MiB/s\n"
             % (args.dirty_rate // MIB, args.cap // MIB),
             "RAM %d MiB, unix socket, max-bandwidth %d MiB/s, livemig's tracker %s; loadavg %.1f %.1f %.1f at the end "
             "(a shared, loaded machine: the numbers are from one run, each engine "
             "beside the others in the same run).  Steps/s: pages the guest dirtied per second; "
             "lost = 1 - during/before.\n" % (args.ram // MIB, args.cap // MIB, args.tracker, *load),
             "| engine | strategy | result | total ms | downtime ms | steps/s before | "
             "during | after | lost | verified |",
             "|---|---|---|--:|--:|--:|--:|--:|--:|---|"]
    lines += [fmt(r) for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
