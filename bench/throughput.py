#!/usr/bin/env python3
"""livemig migration throughput benchmark, side by side with its anchors.

For each guest RAM size and data kind it migrates livemig-vm -> livemig-vm
over QMP (precopy single channel over unix and tcp; multifd 2/4 channels and
postcopy only when the engine lists those capabilities), then QEMU 7.2 from
Debian (qemu-system-x86_64, TCG, guest stopped with -S) migrating the same
RAM contents, and the raw socket / memcpy limits measured by bench/rawcopy
on the same bytes into destination memory in the same state (freshly mapped).
Runs of livemig and QEMU are interleaved (livemig, QEMU, livemig, ...) and
kept back to back, because this machine returns memory idle for ~2 s to the
host and cold runs are 2-5x slower.

Standard library only.  Run through bench/run.sh, which installs QEMU,
builds livemig and bench/rawcopy, and calls this script.
"""
import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CLK_TCK = os.sysconf("SC_CLK_TCK")
GiB = 1 << 30
CHUNK = 64 << 20


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def parse_size(s):
    s = s.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if s[-1] in mult:
        return int(float(s[:-1]) * mult[s[-1]])
    return int(s)


def fmt_size(n):
    for unit, m in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20)):
        if n % m == 0:
            return "%d%s" % (n // m, unit)
    return str(n)


# --------------------------------------------------------------------------
# QMP: a minimal blocking client (the idea of tests/integration/lmtest.py's)

class QMPError(Exception):
    pass


class QMP:
    def __init__(self, path, timeout=60.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = ""
        self.dec = json.JSONDecoder()
        self.greeting = self._read()
        self.cmd("qmp_capabilities")

    def _read(self):
        while True:
            text = self.buf.lstrip()
            if text:
                try:
                    obj, end = self.dec.raw_decode(text)
                    self.buf = text[end:]
                    return obj
                except ValueError:
                    pass
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("QMP connection closed")
            self.buf += chunk.decode()

    def cmd(self, name, args=None):
        req = {"execute": name}
        if args:
            req["arguments"] = args
        self.sock.sendall(json.dumps(req).encode())
        while True:
            msg = self._read()
            if "event" in msg:
                continue
            if "error" in msg:
                raise QMPError("%s: %s" % (name, msg["error"].get("desc")))
            return msg["return"]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------
# processes

def cpu_seconds(pid):
    """utime + stime of the whole process (all threads), in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Machine:
    """One VMM process (livemig-vm or qemu-system-x86_64) driven over QMP."""

    def __init__(self, name, argv, qmp_path, logdir):
        self.name = name
        self.qmp_path = qmp_path
        self.log_path = os.path.join(logdir, name + ".log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        self.qmp = None
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited early (%s): %s" % (name, self.proc.returncode,
                                                                 self.read_log()[-2000:]))
            if os.path.exists(qmp_path):
                try:
                    self.qmp = QMP(qmp_path)
                    break
                except OSError:
                    pass
            time.sleep(0.02)
        if self.qmp is None:
            self.stop()
            raise RuntimeError("%s: QMP socket never appeared" % name)

    def read_log(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def cmd(self, name, **args):
        return self.qmp.cmd(name, args)

    def cpu(self):
        return cpu_seconds(self.pid)

    def stop(self):
        """quit over QMP, then SIGKILL by PID if it lingers."""
        if self.proc.poll() is None and self.qmp is not None:
            try:
                self.qmp.cmd("quit")
            except Exception:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        if self.qmp is not None:
            self.qmp.close()
        self.log.close()


def wait_status(m, timeout, statuses=("completed", "failed", "cancelled")):
    deadline = time.time() + timeout
    info = {}
    while time.time() < deadline:
        info = m.cmd("query-migrate")
        if info.get("status") in statuses:
            return info
        time.sleep(0.005)
    raise TimeoutError("%s: migration still %s after %ss" % (m.name, info.get("status"), timeout))


# --------------------------------------------------------------------------
# guest RAM contents

class Data:
    """The RAM contents of one configuration: 'random' (a file on /dev/shm
    filled from os.urandom), 'zero-file' (a sparse file: all zeros, never
    written) or 'zero-anon' (no file: anonymous RAM never touched)."""

    def __init__(self, kind, size, tmp):
        self.kind, self.size, self.tmp = kind, size, tmp
        self.path = None if kind == "zero-anon" else os.path.join(tmp, "ram-%s-%s" % (kind, fmt_size(size)))

    def prepare(self):
        """Called before each run: the zero file is recreated sparse every
        time (a QEMU source reading it through its shared mapping fills it
        with real zero pages)."""
        if self.kind == "random":
            if not os.path.exists(self.path) or os.path.getsize(self.path) != self.size:
                t = time.time()
                with open(self.path, "wb") as f:
                    left = self.size
                    while left:
                        n = min(left, 16 << 20)
                        f.write(os.urandom(n))
                        left -= n
                log("  filled %s with random bytes in %.1fs" % (self.path, time.time() - t))
        elif self.kind == "zero-file":
            if os.path.exists(self.path):
                os.unlink(self.path)
            with open(self.path, "wb") as f:
                f.truncate(self.size)

    def discard(self):
        if self.path and os.path.exists(self.path):
            os.unlink(self.path)

    def equals_process_memory(self, pid, addr):
        """Compare this data with SIZE bytes of process PID's memory at addr."""
        zero = bytes(CHUNK)
        src = open(self.path, "rb") if self.kind == "random" else None
        try:
            with open("/proc/%d/mem" % pid, "rb", buffering=0) as mem:
                mem.seek(addr)
                off = 0
                while off < self.size:
                    n = min(CHUNK, self.size - off)
                    got = mem.read(n)
                    want = src.read(n) if src else (zero if n == CHUNK else bytes(n))
                    if got != want:
                        return False
                    off += n
            return True
        finally:
            if src:
                src.close()


# --------------------------------------------------------------------------
# livemig

class Livemig:
    def __init__(self, build, tmp, timeout):
        self.vm_bin = os.path.join(build, "livemig-vm")
        self.tmp = tmp
        self.timeout = timeout
        self.caps = None
        self.seq = 0

    def start(self, name, size, backend=None, incoming=False):
        self.seq += 1
        qmp = os.path.join(self.tmp, "lm-%s-%d.qmp" % (name, self.seq))
        argv = [self.vm_bin, "--name", name, "--memory", str(size), "--workload", "idle",
                "--qmp", "unix:" + qmp, "--serial", "none"]
        if backend:
            argv += ["--memory-backend", backend]
        if incoming:
            argv += ["--incoming", "defer", "--paused"]
        return Machine("lm-%s-%d" % (name, self.seq), argv, qmp, self.tmp)

    def capabilities(self):
        """The optional modes this engine offers: "multifd" when it lists the
        capability and the multifd-channels parameter, "postcopy-ram" when
        it lists the capability and has migrate-start-postcopy."""
        if self.caps is None:
            m = self.start("probe", 16 << 20)
            try:
                caps = {c["capability"] for c in m.cmd("query-migrate-capabilities")}
                cmds = {c["name"] for c in m.cmd("query-commands")}
                params = set(m.cmd("query-migrate-parameters"))
            finally:
                m.stop()
            self.caps = set()
            if "multifd" in caps and "multifd-channels" in params:
                self.caps.add("multifd")
            if "postcopy-ram" in caps and "migrate-start-postcopy" in cmds:
                self.caps.add("postcopy-ram")
            if "x-checksum" in caps:
                self.caps.add("x-checksum")
            self.listed = caps
        return self.caps

    def run(self, data, transport, mode):
        """One migration; returns a dict of measurements."""
        data.prepare()
        backend = "file:" + data.path if data.path else None
        src = dst = None
        try:
            src = self.start("src", data.size, backend=backend)
            dst = self.start("dst", data.size, incoming=True)
            for m in (src, dst):
                m.cmd("migrate-set-parameters", **{"max-bandwidth": 0})
                if mode.startswith("multifd"):
                    m.cmd("migrate-set-capabilities",
                          capabilities=[{"capability": "multifd", "state": True}])
                    m.cmd("migrate-set-parameters", **{"multifd-channels": int(mode[len("multifd"):])})
                elif mode == "postcopy":
                    m.cmd("migrate-set-capabilities",
                          capabilities=[{"capability": "postcopy-ram", "state": True}])
            if mode == "precopy-checksum":
                # Page data checksums (stream-format.md §4d): the source asks.
                src.cmd("migrate-set-capabilities",
                        capabilities=[{"capability": "x-checksum", "state": True}])
            if transport == "unix":
                uri = "unix:" + os.path.join(self.tmp, "lm-mig-%d.sock" % self.seq)
                dst.cmd("migrate-incoming", uri=uri)
            else:
                dst.cmd("migrate-incoming", uri="tcp:127.0.0.1:0")
                addr = dst.cmd("query-migrate")["socket-address"][0]
                uri = "tcp:%s:%s" % (addr["host"], addr["port"])
            c0 = (src.cpu(), dst.cpu())
            t0 = time.monotonic()
            src.cmd("migrate", uri=uri)
            if mode == "postcopy":
                src.cmd("migrate-start-postcopy")
            try:
                info = wait_status(src, self.timeout)
                dinfo = wait_status(dst, self.timeout) if info["status"] == "completed" else {}
            except TimeoutError as e:
                try:
                    src.cmd("migrate_cancel")
                except Exception:
                    pass
                return {"error": "timeout (%s)" % e}
            wall = time.monotonic() - t0
            c1 = (src.cpu(), dst.cpu())
            if info["status"] != "completed" or dinfo.get("status") != "completed":
                return {"error": "%s/%s: %s" % (info["status"], dinfo.get("status"),
                                                info.get("error-desc") or dinfo.get("error-desc"))}
            ok = (src.cmd("query-status")["status"] == "postmigrate" and
                  src.cmd("x-query-memory-hash")["hash"] == dst.cmd("x-query-memory-hash")["hash"])
            ram = info.get("ram", {})
            return {"total_ms": info.get("total-time"), "downtime_ms": info.get("downtime"),
                    "setup_ms": info.get("setup-time"),
                    "transferred": ram.get("transferred"), "mbps": ram.get("mbps"),
                    "wall_s": wall, "cpu_src": c1[0] - c0[0], "cpu_dst": c1[1] - c0[1],
                    "verified": ok}
        except Exception as e:  # a broken run is reported, not fatal
            return {"error": "%s: %s" % (type(e).__name__, e)}
        finally:
            for m in (src, dst):
                if m:
                    m.stop()


# --------------------------------------------------------------------------
# QEMU

class Qemu:
    def __init__(self, binary, tmp, timeout):
        self.bin = binary
        self.tmp = tmp
        self.timeout = timeout
        self.seq = 0
        self.accel = None

    def version(self):
        out = subprocess.run([self.bin, "--version"], capture_output=True, text=True).stdout
        return out.splitlines()[0] if out else "?"

    def pick_accel(self):
        """qtest if this build has it (Debian 12's does not), else TCG with
        the guest stopped (-S): QEMU then measures pure transfer."""
        if self.accel is None:
            out = subprocess.run([self.bin, "-accel", "help"], capture_output=True, text=True).stdout
            self.accel = "qtest" if "qtest" in out.split() else "tcg,tb-size=16"
        return self.accel

    def start(self, name, size, data=None, incoming=False):
        self.seq += 1
        qmp = os.path.join(self.tmp, "qemu-%s-%d.qmp" % (name, self.seq))
        if data is not None and data.path:
            mem = "memory-backend-file,id=ram,size=%d,mem-path=%s,share=on" % (size, data.path)
        else:
            mem = "memory-backend-ram,id=ram,size=%d" % size
        argv = [self.bin, "-M", "pc", "-accel", self.pick_accel(), "-m", "%dM" % (size >> 20),
                "-object", mem, "-machine", "memory-backend=ram",
                "-nographic", "-display", "none", "-vga", "none", "-nodefaults", "-S",
                "-qmp", "unix:%s,server=on,wait=off" % qmp]
        if incoming:
            argv += ["-incoming", "defer"]
        return Machine("qemu-%s-%d" % (name, self.seq), argv, qmp, self.tmp)

    def ram_address(self, pid, size):
        """The host address of the destination's anonymous guest RAM: the
        one rw-p anonymous mapping of exactly SIZE bytes."""
        hits = []
        with open("/proc/%d/maps" % pid) as f:
            for line in f:
                p = line.split()
                a, b = (int(x, 16) for x in p[0].split("-"))
                if b - a == size and p[1] == "rw-p" and len(p) == 5:
                    hits.append(a)
        return hits[0] if len(hits) == 1 else None

    def run(self, data, transport, mode, verify=True):
        data.prepare()
        src = dst = None
        try:
            src = self.start("src", data.size, data=data)
            dst = self.start("dst", data.size, incoming=True)
            for m in (src, dst):
                # QEMU 7.2: max-bandwidth in bytes/s; 0 would mean 0, so huge
                m.cmd("migrate-set-parameters", **{"max-bandwidth": 100000000000})
                if mode.startswith("multifd"):
                    m.cmd("migrate-set-capabilities",
                          capabilities=[{"capability": "multifd", "state": True}])
                    m.cmd("migrate-set-parameters", **{"multifd-channels": int(mode[len("multifd"):])})
                elif mode == "postcopy":
                    m.cmd("migrate-set-capabilities",
                          capabilities=[{"capability": "postcopy-ram", "state": True}])
            if transport == "unix":
                uri = "unix:" + os.path.join(self.tmp, "qemu-mig-%d.sock" % self.seq)
                dst.cmd("migrate-incoming", uri=uri)
            else:
                dst.cmd("migrate-incoming", uri="tcp:127.0.0.1:0")
                addr = dst.cmd("query-migrate")["socket-address"][0]
                uri = "tcp:%s:%s" % (addr["host"], addr["port"])
            c0 = (src.cpu(), dst.cpu())
            t0 = time.monotonic()
            src.cmd("migrate", uri=uri)
            if mode == "postcopy":
                src.cmd("migrate-start-postcopy")
            try:
                info = wait_status(src, self.timeout)
                dinfo = wait_status(dst, self.timeout) if info["status"] == "completed" else {}
            except TimeoutError as e:
                try:
                    src.cmd("migrate_cancel")
                except Exception:
                    pass
                return {"error": "timeout (%s)" % e}
            wall = time.monotonic() - t0
            c1 = (src.cpu(), dst.cpu())
            if info["status"] != "completed" or dinfo.get("status") != "completed":
                return {"error": "%s/%s: %s" % (info["status"], dinfo.get("status"),
                                                info.get("error-desc"))}
            ok = None
            if verify:
                addr = self.ram_address(dst.pid, data.size)
                ok = data.equals_process_memory(dst.pid, addr) if addr is not None else None
            ram = info.get("ram", {})
            return {"total_ms": info.get("total-time"), "downtime_ms": info.get("downtime"),
                    "setup_ms": info.get("setup-time"),
                    "transferred": ram.get("transferred"), "mbps": ram.get("mbps"),
                    "wall_s": wall, "cpu_src": c1[0] - c0[0], "cpu_dst": c1[1] - c0[1],
                    "verified": ok}
        except Exception as e:
            return {"error": "%s: %s" % (type(e).__name__, e)}
        finally:
            for m in (src, dst):
                if m:
                    m.stop()


# --------------------------------------------------------------------------
# raw limits

# Raw socket limits measured: destination state / how the sender moves the
# bytes (write() from its mapping of the file, or sendfile from the page cache).
RAW_STATES = ("fresh-thp/write", "fresh-thp/sendfile", "populated/sendfile")


def raw_limit(raw, size, transport, streams):
    """The raw limit for a migration into fresh (THP-advised) memory: the
    faster of write() and sendfile."""
    v = [raw.get((size, transport, streams, s)) for s in RAW_STATES[:2]]
    v = [x for x in v if x is not None]
    return max(v) if v else None


def rawcopy(binary, *args):
    out = subprocess.run([binary] + [str(a) for a in args], capture_output=True, text=True,
                         timeout=300)
    if out.returncode != 0:
        raise RuntimeError("rawcopy %s: %s" % (" ".join(map(str, args)), out.stderr.strip()))
    kv = dict(x.split("=") for x in out.stdout.split())
    return float(kv["GiBps"])


# --------------------------------------------------------------------------
# summary

def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(runs, size):
    good = [r for r in runs if "error" not in r]
    if not good:
        return {"error": runs[0]["error"] if runs else "not run", "n": 0}
    gib = size / GiB
    total = median([r["total_ms"] for r in good])
    return {
        "n": len(good),
        "total_ms": total,
        "downtime_ms": median([r["downtime_ms"] for r in good]),
        "gibps": gib / (total / 1000.0) if total else None,
        "cpu_src": median([r["cpu_src"] for r in good]) / gib,
        "cpu_dst": median([r["cpu_dst"] for r in good]) / gib,
        "transferred": median([r["transferred"] for r in good]),
        "verified": ("yes" if all(r["verified"] for r in good) else
                     "unverified" if any(r["verified"] is None for r in good) else "NO"),
        "errors": len(runs) - len(good),
        "all_total_ms": [r["total_ms"] for r in good],
    }


def cell(s):
    return str(s).replace("\n", " ").replace("|", "/")


def f(x, fmt="%.2f"):
    return "–" if x is None else fmt % x


def ratio(a, b):
    return "–" if not a or not b else "%.2f×" % (a / b)


def machine_header(qemu_version):
    def sh(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT).stdout.strip()
        except OSError:
            return "?"
    cpu = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal"):
                mem = "%.1f GiB" % (int(line.split()[1]) / (1 << 20))
    rev = sh("git", "rev-parse", "--short", "HEAD")
    dirty = sh("git", "status", "--porcelain", "--untracked-files=no")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": platform.release(), "nproc": str(os.cpu_count()), "memory": mem, "cpu": cpu,
        "qemu": qemu_version, "rev": rev + (" (with uncommitted changes)" if dirty else ""),
        "load": " ".join(open("/proc/loadavg").read().split()[:3]),
    }


def busy_processes():
    """Other processes using CPU now (the machine is shared): pid, %cpu, comm."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,comm", "--sort=-pcpu"], capture_output=True,
                             text=True).stdout.splitlines()[1:]
    except OSError:
        return []
    res = []
    for line in out[:8]:
        pid, pcpu, comm = line.split(None, 2)
        if float(pcpu) >= 20 and int(pid) != os.getpid():
            res.append("%s (pid %s, %s%% CPU)" % (comm, pid, pcpu))
    return res


# --------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1G,4G", help="comma-separated guest RAM sizes (default 1G,4G)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per configuration (median)")
    ap.add_argument("--reps-large", type=int, default=1,
                    help="repetitions for sizes above 2G (default 1)")
    ap.add_argument("--data", default="random,zero-file,zero-anon")
    ap.add_argument("--transports", default="unix,tcp")
    ap.add_argument("--modes", default="precopy,multifd2,multifd4,postcopy",
                    help="comma-separated subset of precopy,precopy-checksum,multifd2,multifd4,"
                         "postcopy (default: all but precopy-checksum)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per migration")
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--rawcopy", default=None, help="bench/rawcopy binary")
    ap.add_argument("--qemu", default=shutil.which("qemu-system-x86_64") or "qemu-system-x86_64")
    ap.add_argument("--no-qemu", action="store_true")
    ap.add_argument("--tmpdir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results.md"))
    ap.add_argument("--json", default=None, help="also write every run's figures here")
    args = ap.parse_args()

    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    kinds = args.data.split(",")
    transports = args.transports.split(",")
    tmp = tempfile.mkdtemp(prefix="livemig-bench-", dir=args.tmpdir)
    raw_bin = args.rawcopy or os.path.join(tmp, "rawcopy")
    if not args.rawcopy:
        subprocess.run(["cc", "-O2", "-pthread", "-o", raw_bin,
                        os.path.join(ROOT, "bench", "rawcopy.c")], check=True)

    lm = Livemig(args.build, tmp, args.timeout)
    qemu = None if args.no_qemu else Qemu(args.qemu, tmp, args.timeout)
    header = machine_header(qemu.version() if qemu else "not measured")
    header["busy"] = busy_processes()
    header["accel"] = qemu.pick_accel() if qemu else "-"
    caps = lm.capabilities()
    modes = [("precopy", None), ("precopy-checksum", "x-checksum"), ("multifd2", "multifd"),
             ("multifd4", "multifd"), ("postcopy", "postcopy-ram")]
    modes = [m for m in modes if m[0] in args.modes.split(",")]
    log("livemig capabilities: %s; usable optional modes: %s" %
        (", ".join(sorted(lm.listed)), ", ".join(sorted(caps)) or "none"))
    t_start = time.time()
    results = []   # rows
    raw = {}       # (size, transport, streams, state) -> GiB/s
    memcpy = {}    # (size, state) -> GiB/s
    alldata = {"header": header, "runs": []}

    try:
        for size in sizes:
            reps = args.reps if size <= 2 * GiB else args.reps_large
            sz = fmt_size(size)
            datas = {k: Data(k, size, tmp) for k in kinds}
            rnd = datas.get("random") or Data("random", size, tmp)
            rnd.prepare()
            # warm-up (discarded): one livemig migration and one raw copy
            log("[%s] warm-up" % sz)
            lm.run(rnd, "unix", "precopy")
            rawcopy(raw_bin, "socket", size, 1, "unix", "fresh-thp", rnd.path, "sendfile")

            log("[%s] raw limits" % sz)
            for state in ("fresh-thp", "populated"):
                memcpy[(size, state)] = median([rawcopy(raw_bin, "memcpy", size, state, rnd.path)
                                                for _ in range(reps)])
            for transport in transports:
                for streams in (1, 2):
                    for state in RAW_STATES:
                        dest, method = state.split("/")
                        v = [rawcopy(raw_bin, "socket", size, streams, transport, dest, rnd.path,
                                     method)
                             for _ in range(reps)]
                        raw[(size, transport, streams, state)] = median(v)
                        log("  raw %s %d-stream %s: %s GiB/s" % (transport, streams, state,
                                                                 " ".join("%.2f" % x for x in v)))

            for kind in kinds:
                data = datas[kind]
                for transport in transports:
                    for mode, cap in modes:
                        row = {"size": size, "data": kind, "transport": transport, "mode": mode}
                        results.append(row)
                        if cap and cap not in caps:
                            row["lm"] = {"error": "n/a (not implemented)", "n": 0}
                            row["qemu"] = {"error": "not measured", "n": 0}
                            continue
                        lruns, qruns = [], []
                        for i in range(reps):
                            r = lm.run(data, transport, mode)
                            lruns.append(r)
                            log("  livemig %s %s %s %s #%d: %s" % (sz, kind, transport, mode, i,
                                                                   json.dumps(r)))
                            if qemu:
                                q = qemu.run(data, transport, mode)
                                qruns.append(q)
                                log("  qemu    %s %s %s %s #%d: %s" % (sz, kind, transport, mode, i,
                                                                       json.dumps(q)))
                        alldata["runs"].append({"size": size, "data": kind, "transport": transport,
                                                "mode": mode, "livemig": lruns, "qemu": qruns})
                        row["lm"] = summarize(lruns, size)
                        row["qemu"] = summarize(qruns, size) if qemu else {"error": "not measured",
                                                                           "n": 0}
                data.discard()
            rnd.discard()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    elapsed = time.time() - t_start
    text = render(header, results, raw, memcpy, sizes, transports, args, elapsed)
    print(text)
    with open(args.out, "w") as fh:
        fh.write(text)
    if args.json:
        alldata["raw"] = {"%s/%s/%d/%s" % (fmt_size(k[0]), k[1], k[2], k[3]): v for k, v in raw.items()}
        with open(args.json, "w") as fh:
            json.dump(alldata, fh, indent=1)
    log("wrote %s (%.0f s)" % (args.out, elapsed))


def render(h, results, raw, memcpy, sizes, transports, args, elapsed):
    L = []
    L.append("# livemig migration throughput vs QEMU and the raw socket limit\n")
    L.append("| | |\n|---|---|")
    L.append("| date | %s |" % h["date"])
    L.append("| machine | %s, %s CPUs (`nproc`), %s RAM, kernel %s |" % (h["cpu"], h["nproc"],
                                                                          h["memory"], h["kernel"]))
    L.append("| load average at start | %s%s |" % (h["load"], ("; busy: " + ", ".join(h["busy"]))
                                                  if h["busy"] else ""))
    L.append("| QEMU | %s, `-M pc -accel %s -S` (guest stopped), max-bandwidth 1e11 B/s |" %
             (h["qemu"], h["accel"]))
    L.append("| livemig | git %s, `livemig-vm --workload idle` (source running), max-bandwidth 0 |" % h["rev"])
    L.append("| runs | median of %d (sizes ≤ 2G) / %d (larger) per row, livemig and QEMU interleaved, back to back after a warm-up; %.0f s in all |"
             % (args.reps, args.reps_large, elapsed))
    L.append("| reproduce | `bash bench/run.sh --sizes %s` |" % ",".join(fmt_size(s) for s in sizes))
    L.append("")
    L.append("Throughput = guest RAM / total-time (query-migrate), GiB/s. CPU = utime+stime "
             "of the whole process over the migration, per GiB of guest RAM. raw = bench/rawcopy "
             "moving the same bytes over the same transport into freshly mapped memory advised "
             "MADV_HUGEPAGE (as livemig-vm's and QEMU's destination RAM is), the faster of "
             "write() from the file's mapping and sendfile() from its page cache "
             "(1 stream for precopy/postcopy rows, 2 streams for multifd rows). "
             "Data: random = /dev/shm file of os.urandom bytes (source `--memory-backend file:`, "
             "QEMU `memory-backend-file,share=on`); zero-file = sparse file; "
             "zero-anon = anonymous RAM never touched.\n")
    L.append("| RAM | data | transport | mode | total ms | downtime ms | GiB/s | CPU s/GiB src/dst "
             "| verified | QEMU GiB/s | QEMU downtime ms | QEMU CPU s/GiB src/dst | QEMU verified "
             "| livemig/QEMU | raw GiB/s | livemig/raw |")
    L.append("|---|---|---|---|--:|--:|--:|--:|---|--:|--:|--:|---|--:|--:|--:|")
    for row in results:
        lmr, q = row["lm"], row["qemu"]
        streams = 2 if row["mode"].startswith("multifd") else 1
        rl = raw_limit(raw, row["size"], row["transport"], streams)
        head = "| %s | %s | %s | %s |" % (fmt_size(row["size"]), row["data"], row["transport"],
                                          row["mode"])
        if lmr.get("n", 0) == 0:
            L.append(head + " %s | | | | | | | | | | %s (%d-stream) | |" %
                     (cell(lmr.get("error")), f(rl), streams))
            continue
        qg = q.get("gibps") if q.get("n") else None
        qcol = ("%s | %s | %s/%s | %s" % (f(qg), f(q["downtime_ms"], "%d"), f(q["cpu_src"]),
                                         f(q["cpu_dst"]), q["verified"])
                if q.get("n") else "%s | | | " % cell(q.get("error")))
        L.append(head + " %s | %s | %s | %s/%s | %s%s | %s | %s | %s (%d-stream) | %s |" % (
            f(lmr["total_ms"], "%d"), f(lmr["downtime_ms"], "%d"), f(lmr["gibps"]),
            f(lmr["cpu_src"]), f(lmr["cpu_dst"]), lmr["verified"],
            (" (%d failed)" % lmr["errors"]) if lmr["errors"] else "",
            qcol, ratio(lmr["gibps"], qg), f(rl), streams, ratio(lmr["gibps"], rl)))

    # idle-guest downtime
    L.append("\n## Downtime of an idle guest (precopy, unix, random data)\n")
    L.append("| RAM | livemig downtime ms | QEMU downtime ms | target |")
    L.append("|---|--:|--:|---|")
    for row in results:
        if row["data"] == "random" and row["transport"] == "unix" and row["mode"] == "precopy":
            lmr, q = row["lm"], row["qemu"]
            L.append("| %s | %s | %s | %s |" % (fmt_size(row["size"]),
                                                f(lmr.get("downtime_ms"), "%d"),
                                                f(q.get("downtime_ms"), "%d"),
                                                "≤ 10 ms (4 GiB)" if row["size"] == 4 * GiB else ""))
    if 4 * GiB not in sizes:
        L.append("| 4G | not run (`--sizes` without 4G) | | ≤ 10 ms |")

    # raw limits
    L.append("\n## Raw limits (bench/rawcopy, same random bytes, GiB/s)\n")
    L.append("Destination: fresh = freshly mapped, MADV_HUGEPAGE; populated = the same, "
             "touched beforehand.  Sender: write() from a mapping of the data file "
             "(pre-faulted), or sendfile() from its page cache.\n")
    L.append("| RAM | transport | streams | write → fresh | sendfile → fresh | sendfile → populated |")
    L.append("|---|---|--:|--:|--:|--:|")
    for size in sizes:
        for t in transports:
            for streams in (1, 2):
                L.append("| %s | %s | %d | %s |" % (
                    fmt_size(size), t, streams,
                    " | ".join(f(raw.get((size, t, streams, s))) for s in RAW_STATES)))
        L.append("| %s | memcpy (1 thread) | | %s → fresh | | %s → populated |" % (
            fmt_size(size), f(memcpy.get((size, "fresh-thp"))), f(memcpy.get((size, "populated")))))

    # targets
    L.append("\n## Targets (issue 5)\n")
    L.append("| target | measured | met |")
    L.append("|---|---|---|")

    def row_for(size, kind, transport, mode):
        for r in results:
            if (r["size"], r["data"], r["transport"], r["mode"]) == (size, kind, transport, mode):
                return r
        return None

    for size in sizes:
        sz = fmt_size(size)
        r = row_for(size, "random", "unix", "precopy")
        if r and r["lm"].get("n"):
            g, qg = r["lm"]["gibps"], r["qemu"].get("gibps") if r["qemu"].get("n") else None
            rl = raw_limit(raw, size, "unix", 1)
            if qg:
                L.append("| %s random unix single channel ≥ 1.8 × QEMU | %.2f× | %s |" %
                         (sz, g / qg, "yes" if g / qg >= 1.8 else "no"))
            if rl:
                L.append("| %s random unix single channel ≥ 0.8 × 1-stream raw | %.2f× | %s |" %
                         (sz, g / rl, "yes" if g / rl >= 0.8 else "no"))
        for mode in ("multifd2", "multifd4"):
            r = row_for(size, "random", "unix", mode)
            rl = raw_limit(raw, size, "unix", 2)
            if r and r["lm"].get("n") and rl:
                g = r["lm"]["gibps"]
                L.append("| %s random unix %s ≥ 0.8 × 2-stream raw | %.2f× | %s |" %
                         (sz, mode, g / rl, "yes" if g / rl >= 0.8 else "no"))
            elif r:
                L.append("| %s random unix %s ≥ 0.8 × 2-stream raw | %s | – |" % (sz, mode, r["lm"].get("error")))
        r = row_for(size, "zero-anon", "unix", "precopy")
        if r and r["lm"].get("n") and r["qemu"].get("n"):
            g, qg = r["lm"]["gibps"], r["qemu"]["gibps"]
            L.append("| %s zero RAM (never touched) ≥ 10 × QEMU | %.1f× | %s |" %
                     (sz, g / qg, "yes" if g / qg >= 10 else "no"))
        r = row_for(size, "random", "unix", "precopy")
        if size == 4 * GiB and r and r["lm"].get("n"):
            d = r["lm"]["downtime_ms"]
            L.append("| idle 4 GiB downtime ≤ 10 ms | %s ms | %s |" % (f(d, "%d"), "yes" if d <= 10 else "no"))
    L.append("")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
