#!/usr/bin/env python3
"""RISC-V guest migration, QEMU against livemig, in one run (a benchmark,
not a test: it prints tables, it asserts nothing about time).

Guests (the same for both engines, same RAM size, same in-guest work):
  uboot  Debian's OpenSBI (fw_dynamic.bin) + U-Boot (qemu-riscv64_smode).
         The workload is typed into U-Boot's shell: fill 16 MiB with
         `random`, take its crc32, then loop `cp.b` + `cmp.b` of the 16 MiB
         (dirtying 16 MiB per iteration) printing `lmloop N` until Ctrl-C;
         then the crc32 of the copy.
  linux  OpenSBI + the kernel and initramfs of scripts/build-linux-guest.sh
         (only when they are cached): its /init rewrites and re-verifies
         lmwork.mb MiB at lmwork.rate_mb MiB/s and prints a progress line a
         second.

Engines:
  qemu     qemu-system-riscv64 -M virt (TCG), destination -incoming defer,
           QMP migrate over a unix socket.
  livemig  build/livemig-vm --machine riscv-virt, destination --incoming
           defer --paused, the same QMP commands; before `cont` the
           destination's x-query-memory-hash must equal the source's.

Per migration: total time, downtime and bytes sent (query-migrate), and
the verification: the destination's console carries on from where the
source's stopped (U-Boot: the next lmloop numbers, every cmp "were the
same", the copy's crc32 equal to the original, a command typed afterwards
answers; Linux: progress lines keep coming with "ok", no MISMATCH).

Also the emulators' speed: tests/riscv/speed.bin and speed_short.bin (a
loop with a known instruction count) on both, instructions per second from
the difference between the two runs (boot and exit cancel out), over CPU
time and over wall time.

  python3 bench/riscv_migrate.py [--guests uboot,linux] [--ram 256M]
      [--after 3] [--no-speed] [--out bench/riscv-results.md]

Without livemig-vm's riscv-virt machine it prints "livemig: riscv-virt not
available" and runs the QEMU half.  Standard library only.
"""
import argparse
import datetime
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from qmpclient import QMP, connect_unix, wait_migration

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OPENSBI = "/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_dynamic.bin"
UBOOT = "/usr/lib/u-boot/qemu-riscv64_smode/u-boot.bin"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def parse_size(s):
    s = s.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(s[:-1]) * mult[s[-1]]) if s[-1] in mult else int(s)


def proc_cpu(pid):
    """utime + stime of a process, seconds."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except OSError:
        return 0.0


class Console:
    """The guest's serial console through a unix socket: everything read is
    kept (text), input is typed slowly enough for a polled UART."""

    def __init__(self, path, timeout=60):
        self.sock = connect_unix(path, timeout)
        self.text = ""
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self):
        while True:
            try:
                d = self.sock.recv(65536)
            except OSError:
                return
            if not d:
                return
            with self.lock:
                self.text += d.decode(errors="replace").replace("\r", "")

    def type(self, s):
        # U-Boot reads its UART by polling; a 16-byte FIFO overflows when a
        # whole line arrives at once.
        for i in range(0, len(s), 8):
            self.sock.sendall(s[i:i + 8].encode())
            time.sleep(0.02)

    def wait(self, pattern, timeout, start=0):
        """Waits for a regex in the text after offset start; returns the
        match or None."""
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                m = rx.search(self.text, start)
            if m:
                return m
            time.sleep(0.05)
        return None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Machine:
    """One emulator process with its console and QMP sockets."""

    def __init__(self, engine, guest, ram, tmp, tag, incoming=False):
        self.tmp = tmp
        self.con_path = os.path.join(tmp, tag + ".con")
        self.qmp_path = os.path.join(tmp, tag + ".qmp")
        self.log_path = os.path.join(tmp, tag + ".log")
        if engine == "qemu":
            cmd = ["qemu-system-riscv64", "-M", "virt", "-m", str(ram >> 20), "-smp", str(SMP),
                   "-display", "none", "-monitor", "none", "-nodefaults",
                   "-chardev", "socket,id=con0,path=%s,server=on,wait=off" % self.con_path,
                   "-serial", "chardev:con0",
                   "-qmp", "unix:%s,server=on,wait=off" % self.qmp_path,
                   "-bios", guest.bios, "-kernel", guest.kernel]
            if QEMU_CPU:
                cmd += ["-cpu", QEMU_CPU]
            if guest.initrd:
                cmd += ["-initrd", guest.initrd, "-device", "virtio-rng-device"]
            if guest.append:
                cmd += ["-append", guest.append]
            if incoming:
                cmd += ["-incoming", "defer"]
        else:
            cmd = [os.path.join(BUILD, "livemig-vm"), "--machine", "riscv-virt",
                   "--memory", "%dM" % (ram >> 20), "--name", tag, "--smp", str(SMP),
                   "--serial", "unix:" + self.con_path, "--qmp", "unix:" + self.qmp_path,
                   "--bios", guest.bios, "--kernel", guest.kernel]
            if guest.initrd:
                cmd += ["--initrd", guest.initrd, "--device", "virtio-rng-device"]
            if guest.append:
                cmd += ["--append", guest.append]
            if incoming:
                cmd += ["--incoming", "defer", "--paused"]
        self.logf = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=subprocess.STDOUT)
        self.qmp = QMP(self.qmp_path)
        self.console = Console(self.con_path)

    def cpu(self):
        return proc_cpu(self.proc.pid)

    def stop(self):
        self.console.close()
        try:
            self.qmp.cmd("quit")
        except Exception:
            pass
        self.qmp.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.logf.close()

    def log_tail(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()[-2000:]


class Guest:
    def __init__(self, name, bios, kernel, initrd=None, append=None):
        self.name, self.bios, self.kernel = name, bios, kernel
        self.initrd, self.append = initrd, append


# --------------------------------------------------------------------------
# In-guest workloads: start on the source, verify on the destination.

UBOOT_REGION = 0x1000000  # 16 MiB copied and compared per iteration


def uboot_start(m, after, timeout):
    c = m.console
    if not c.wait(r"Hit any key to stop autoboot", timeout):
        raise RuntimeError("no U-Boot autoboot prompt; console:\n" + c.text[-2000:])
    c.type("\n")
    if not c.wait(r"=> ", timeout):
        raise RuntimeError("no U-Boot prompt")
    start = len(c.text)
    c.type("random 0x84000000 0x%x 1234; crc32 0x84000000 0x%x\n" % (UBOOT_REGION, UBOOT_REGION))
    m_crc = c.wait(r"crc32 for 84000000 \.\.\. 84ffffff ==> ([0-9a-f]{8})", timeout, start)
    if not m_crc:
        raise RuntimeError("no crc32 answer; console:\n" + c.text[-2000:])
    start = len(c.text)
    # Runs until Ctrl-C (cmp polls for it; cp does not, so a copy is
    # never cut short).
    c.type("setenv n 0; while itest $n < 1000000; do cp.b 0x84000000 0x86000000 0x%x; "
           "cmp.b 0x84000000 0x86000000 0x%x; setexpr n $n + 1; echo lmloop $n; done; "
           "echo lmdone\n" % (UBOOT_REGION, UBOOT_REGION))
    if not c.wait(r"lmloop 1\n", timeout, start):
        raise RuntimeError("workload did not start; console:\n" + c.text[-2000:])
    return {"crc": m_crc.group(1)}


def last_lmloop(text):
    found = re.findall(r"lmloop ([0-9a-f]+)", text)
    return int(found[-1], 16) if found else 0


def uboot_verify(src, dst, state, after, timeout):
    """Returns (ok, detail)."""
    c = dst.console
    src_last = last_lmloop(src.console.text)
    if not c.wait(r"(lmloop [0-9a-f]+\n(.|\n)*){%d}" % after, timeout):
        return False, "destination printed fewer than %d lmloop lines (source's last %d)" % (
            after, src_last)
    c.type("\x03")
    if not c.wait(r"lmdone\n", timeout):
        return False, "the loop did not stop on Ctrl-C"
    text = c.text
    dst_loops = [int(x, 16) for x in re.findall(r"lmloop ([0-9a-f]+)", text)]
    if dst_loops[0] > src_last + 1 or dst_loops != list(range(dst_loops[0], dst_loops[-1] + 1)):
        return False, "lmloop does not carry on: source's last %d, destination %s" % (
            src_last, dst_loops)
    if "!=" in text or "were the same" not in text:
        return False, "cmp found a difference on the destination"
    start = len(c.text)
    c.type("crc32 0x86000000 0x%x; echo lmalive\n" % UBOOT_REGION)
    crc = c.wait(r"crc32 for 86000000 \.\.\. 86ffffff ==> ([0-9a-f]{8})", timeout, start)
    if not crc or crc.group(1) != state["crc"]:
        return False, "copy's crc32 %s != original %s" % (crc and crc.group(1), state["crc"])
    if not c.wait(r"\nlmalive", timeout, start):
        return False, "no answer to a command typed after the migration"
    return True, "lmloop %d..%d after source's %d, cmp same, crc32 %s, shell answers" % (
        dst_loops[0], dst_loops[-1], src_last, state["crc"])


PROGRESS = r"lmwork: t=(\d+) iter=(\d+) chunks=(\d+) (ok|FAIL[^\n]*)\n"


def linux_start(m, after, timeout):
    # Two progress lines (their seconds may skip a number when the guest
    # got no CPU for a while: wait for lines, not for "t=2").
    first = m.console.wait(PROGRESS, timeout)
    if not first or not m.console.wait(PROGRESS, timeout, first.end()):
        raise RuntimeError("Linux guest did not start its workload; console:\n" +
                           m.console.text[-3000:])
    return {}


def linux_verify(src, dst, state, after, timeout):
    c = dst.console
    start = len(c.text)
    lines = []
    deadline = time.time() + timeout
    while len(lines) < after and time.time() < deadline:
        m = c.wait(PROGRESS, 5, start)
        if m:
            lines.append(m)
            start = m.end()
    src_prog = re.findall(PROGRESS, src.console.text)
    if len(lines) < after:
        return False, "destination printed %d progress lines" % len(lines)
    if "MISMATCH" in c.text or any(m.group(4) != "ok" for m in lines):
        return False, "the guest's check failed: " + lines[-1].group(0).strip()
    src_iter = int(src_prog[-1][1]) if src_prog else 0
    if int(lines[0].group(2)) < src_iter:
        return False, "iter went back: source %d, destination %s" % (src_iter, lines[0].group(2))
    return True, "progress carries on (iter %d -> %s), ok, no MISMATCH" % (
        src_iter, lines[-1].group(2))


WORKLOADS = {"uboot": (uboot_start, uboot_verify), "linux": (linux_start, linux_verify)}


# --------------------------------------------------------------------------

def migrate_once(engine, guest, ram, after, timeout):
    tmp = tempfile.mkdtemp(prefix="lm-rvbench-")
    src = dst = None
    row = {"engine": engine, "guest": guest.name, "ram": ram}
    try:
        src = Machine(engine, guest, ram, tmp, "src")
        dst = Machine(engine, guest, ram, tmp, "dst", incoming=True)
        start, verify = WORKLOADS[guest.name]
        state = start(src, after, timeout)
        uri = "unix:" + os.path.join(tmp, "mig.sock")
        dst.qmp.cmd("migrate-incoming", uri=uri)
        time.sleep(0.2)
        cpu0 = (src.cpu(), dst.cpu())
        t0 = time.time()
        src.qmp.cmd("migrate", uri=uri)
        info = wait_migration(lambda: src.qmp.cmd("query-migrate"), timeout)
        row["wall_s"] = time.time() - t0
        row["cpu_src_s"] = src.cpu() - cpu0[0]
        row["cpu_dst_s"] = dst.cpu() - cpu0[1]
        row["status"] = info.get("status", "timeout")
        row["total_ms"] = info.get("total-time")
        row["downtime_ms"] = info.get("downtime")
        ram_info = info.get("ram", {})
        row["sent"] = ram_info.get("transferred")
        row["dirty_syncs"] = ram_info.get("dirty-sync-count")
        if row["status"] != "completed":
            row["verified"] = "no: migration %s" % row["status"]
            return row
        if engine == "livemig":
            # The destination waits paused: its RAM must equal the stopped
            # source's before it runs.
            hs = src.qmp.cmd("x-query-memory-hash")
            deadline = time.time() + timeout
            while dst.qmp.cmd("query-status").get("status") == "inmigrate" and \
                    time.time() < deadline:
                time.sleep(0.05)
            hd = dst.qmp.cmd("x-query-memory-hash")
            if hs.get("hash") != hd.get("hash"):
                row["verified"] = "no: memory hash %s != %s" % (hs.get("hash"), hd.get("hash"))
                return row
            dst.qmp.cmd("cont")
        ok, detail = verify(src, dst, state, after, timeout)
        if not ok:
            log("destination console (tail):\n" + dst.console.text[-1500:])
        row["verified"] = ("yes: " if ok else "no: ") + detail + \
            (", memory hash equal" if engine == "livemig" and ok else "")
        return row
    except Exception as e:  # a benchmark reports, it does not stop
        row.setdefault("status", "error")
        row["verified"] = "no: %s" % e
        if src:
            log("source log:", src.log_tail())
        return row
    finally:
        for m in (dst, src):
            if m:
                m.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def run_prog(engine, prog, timeout):
    """Runs a bare-metal program to its finisher; returns (wall, cpu, output)."""
    tmp = tempfile.mkdtemp(prefix="lm-rvspeed-")
    try:
        out = os.path.join(tmp, "console.txt")
        if engine == "qemu":
            cmd = ["qemu-system-riscv64", "-M", "virt", "-smp", "1", "-m", "128M",
                   "-display", "none", "-monitor", "none", "-nodefaults",
                   "-serial", "file:" + out, "-bios", prog]
        else:
            cmd = [os.path.join(BUILD, "livemig-vm"), "--machine", "riscv-virt",
                   "--memory", "128M", "--bios", prog, "--serial", "file:" + out]
        t0 = time.time()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)   # reaped here, not by Popen
        wall = time.time() - t0
        with open(out, errors="replace") as f:
            text = f.read()
        return wall, ru.ru_utime + ru.ru_stime, text, os.waitstatus_to_exitcode(status)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def speed(engine, progs_dir, timeout):
    res = {}
    for name in ("speed_short", "speed"):
        wall, cpu, text, rc = run_prog(engine, os.path.join(progs_dir, name + ".bin"), timeout)
        m = re.search(r"loop-insns=(\d+) result=([0-9a-f]+)", text)
        if rc != 0 or not m:
            return {"engine": engine, "error": "%s: exit %d, output %r" % (name, rc, text[-200:])}
        res[name] = (int(m.group(1)), wall, cpu, m.group(2))
    d_insn = res["speed"][0] - res["speed_short"][0]
    d_wall = res["speed"][1] - res["speed_short"][1]
    d_cpu = res["speed"][2] - res["speed_short"][2]
    return {"engine": engine, "insns": d_insn, "wall": d_wall, "cpu": d_cpu,
            "mips_cpu": d_insn / d_cpu / 1e6 if d_cpu > 0 else 0,
            "mips_wall": d_insn / d_wall / 1e6 if d_wall > 0 else 0,
            "result": res["speed"][3]}


def livemig_missing():
    vm = os.path.join(BUILD, "livemig-vm")
    if not os.access(vm, os.X_OK):
        return "%s not built" % vm
    out = subprocess.run([vm, "--help"], capture_output=True, text=True)
    if "riscv-virt" not in out.stdout + out.stderr:
        return "riscv-virt not available"
    return None


def cached_linux():
    p = subprocess.run([os.path.join(ROOT, "scripts", "build-linux-guest.sh"), "--cached-only"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        return None, p.stderr.strip()
    paths = dict(line.split(": ", 1) for line in p.stdout.splitlines() if ": " in line)
    return (paths.get("kernel"), paths.get("initrd")), None


def fmt_mib(n):
    return "%.1f" % (n / (1 << 20)) if isinstance(n, int) else "-"


def main():
    global BUILD, SMP, QEMU_CPU
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--guests", default="uboot,linux")
    ap.add_argument("--engines", default="qemu,livemig")
    ap.add_argument("--ram", default="256M")
    ap.add_argument("--after", type=int, default=3,
                    help="workload iterations (U-Boot) or progress lines (Linux) the "
                         "destination must show")
    ap.add_argument("--linux-mb", type=int, default=64)
    ap.add_argument("--linux-rate", type=int, default=8, help="MiB/s the Linux guest rewrites")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--smp", type=int, default=1, help="harts, the same for both engines")
    ap.add_argument("--qemu-cpu", help="QEMU's -cpu (e.g. rv64,sstc=off)")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--progs", help="directory of the tests/riscv programs "
                    "(default BUILD/tests/riscv)")
    ap.add_argument("--out", help="also write the tables (markdown) to this file")
    a = ap.parse_args()
    BUILD = a.build
    SMP, QEMU_CPU = a.smp, a.qemu_cpu
    ram = parse_size(a.ram)
    engines = a.engines.split(",")
    missing = livemig_missing() if "livemig" in engines else None
    if missing:
        print("livemig: %s" % missing)
        engines = [e for e in engines if e != "livemig"]
    if not shutil.which("qemu-system-riscv64"):
        print("qemu: qemu-system-riscv64 not installed (package qemu-system-misc)")
        engines = [e for e in engines if e != "qemu"]

    guests = []
    for g in a.guests.split(","):
        if g == "uboot":
            guests.append(Guest("uboot", OPENSBI, UBOOT))
        elif g == "linux":
            paths, why = cached_linux()
            if not paths:
                print("linux: no cached kernel (%s); run scripts/build-linux-guest.sh" % why)
                continue
            guests.append(Guest("linux", OPENSBI, paths[0], paths[1],
                                "console=ttyS0 earlycon=sbi lmwork.mb=%d lmwork.rate_mb=%d" %
                                (a.linux_mb, a.linux_rate)))

    rows = []
    for g in guests:
        for e in engines:
            log("migrating %s on %s ..." % (g.name, e))
            rows.append(migrate_once(e, g, ram, a.after, a.timeout))
            log("  ", rows[-1])

    speeds = []
    progs = a.progs or os.path.join(BUILD, "tests", "riscv")
    if not a.no_speed:
        if not os.path.exists(os.path.join(progs, "speed.bin")):
            print("speed: %s/speed.bin not built (needs riscv64-unknown-elf-gcc)" % progs)
        else:
            for e in engines:
                log("timing speed.bin on %s ..." % e)
                speeds.append(speed(e, progs, a.timeout))

    out = []
    out.append("# RISC-V guest migration: QEMU and livemig (%s)" %
               datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"))
    out.append("")
    out.append("Host: %s, %d CPUs (shared), %s. QEMU: %s. Guest RAM %s; U-Boot loop "
               "cp.b+cmp.b of 16 MiB, migrated after its first iteration, %d more watched "
               "on the destination; Linux lmwork.mb=%d at %d MiB/s, virtio-rng; %d hart(s)%s." % (
                   platform.machine(), os.cpu_count(), platform.release(),
                   subprocess.run(["qemu-system-riscv64", "--version"], capture_output=True,
                                  text=True).stdout.split("\n")[0] if
                   shutil.which("qemu-system-riscv64") else "absent",
                   a.ram, a.after, a.linux_mb, a.linux_rate, a.smp,
                   ", QEMU -cpu " + a.qemu_cpu if a.qemu_cpu else ""))
    out.append("")
    out.append("| guest | engine | status | total ms | downtime ms | MiB sent | dirty syncs "
               "| CPU src/dst s | verified |")
    out.append("|---|---|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        out.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["guest"], r["engine"], r.get("status"), r.get("total_ms", "-"),
            r.get("downtime_ms", "-"), fmt_mib(r.get("sent")), r.get("dirty_syncs", "-"),
            "%.1f/%.1f" % (r["cpu_src_s"], r["cpu_dst_s"]) if "cpu_src_s" in r else "-",
            r.get("verified")))
    if missing:
        out.append("")
        out.append("livemig: %s" % missing)
    if speeds:
        out.append("")
        out.append("Interpreter speed: tests/riscv/speed.bin minus speed_short.bin "
                   "(xorshift, mul, load/add/store loop; instructions counted from the code).")
        out.append("")
        out.append("| engine | instructions | wall s | CPU s | M instr/s (CPU) | M instr/s (wall) "
                   "| result |")
        out.append("|---|---:|---:|---:|---:|---:|---|")
        for s in speeds:
            if "error" in s:
                out.append("| %s | error: %s | | | | | |" % (s["engine"], s["error"]))
            else:
                out.append("| %s | %d | %.2f | %.2f | %.0f | %.0f | %s |" % (
                    s["engine"], s["insns"], s["wall"], s["cpu"], s["mips_cpu"],
                    s["mips_wall"], s["result"]))
    text = "\n".join(out) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


BUILD = os.path.join(ROOT, "build")
SMP = 1
QEMU_CPU = None

if __name__ == "__main__":
    main()
