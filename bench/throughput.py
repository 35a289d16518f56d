#!/usr/bin/env python3
"""livemig migration throughput benchmark, side by side with its anchors.

Fair conditions (issue 14 §1): for each guest RAM size, data kind (random,
zero), destination kind (anonymous RAM, a file on /dev/shm), transport
(unix, tcp) and mode (precopy, multifd 2/4, postcopy) it migrates

  - livemig-vm -> livemig-vm from anonymous RAM its own process filled,
  - livemig-vm -> livemig-vm from a file-backed source (second figure),
  - QEMU 7.2 from Debian (qemu-system-x86_64, TCG, guest stopped) from
    anonymous RAM its own process filled,

the sources filled by an incoming migration of the same bytes from a file
(a running VM's RAM has been accessed by its own process; a file QEMU never
touched costs it 3-5 s of CPU per GiB on this host on first access), every
destination started after touching and freeing its amount of memory, and
beside them in the same run the raw floor: bench/rawcopy moving the same
bytes into a destination in the same state by the fastest means.

Standard library only.  Run through bench/run.sh, which installs QEMU,
builds livemig and bench/rawcopy, and calls this script.
"""
import argparse
import datetime
import hashlib
import json
import os
import platform
import random
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
# guest RAM contents and the sources' states

class Data:
    """The RAM contents of one configuration: 'random' (SIZE bytes from
    os.urandom in a /dev/shm file, the same bytes for every engine) or
    'zero' (nothing written: every page reads as zero)."""

    def __init__(self, kind, size, tmp):
        self.kind, self.size, self.tmp = kind, size, tmp
        self.path = os.path.join(tmp, "ram-%s-%s" % (kind, fmt_size(size)))
        self.streams = {}   # engine -> a migration stream of these contents

    def prepare(self):
        """Before each run: the random file is made once; the zero file is
        recreated sparse every time (a source reading it through a shared
        mapping could fill it with real zero pages)."""
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
        else:
            if os.path.exists(self.path):
                os.unlink(self.path)
            with open(self.path, "wb") as f:
                f.truncate(self.size)

    def discard(self):
        for p in [self.path] + list(self.streams.values()):
            if p and os.path.exists(p):
                os.unlink(p)

    def equals(self, read_chunk, sample=None):
        """Compare these contents with what read_chunk(offset, n) returns:
        all of it, or (sample=N) N random 4 KiB pages plus the first and the
        last: reading another process's RAM through /proc/PID/mem runs at a
        few MB/s on this host under load, so QEMU's side is sampled."""
        if sample:
            rnd = random.Random(self.size)
            pages = self.size // 4096
            offs = sorted({0, pages - 1} | {rnd.randrange(pages) for _ in range(sample)})
            src = open(self.path, "rb") if self.kind == "random" else None
            try:
                for p in offs:
                    want = bytes(4096)
                    if src:
                        src.seek(p * 4096)
                        want = src.read(4096)
                    if read_chunk(p * 4096, 4096) != want:
                        return False
                return True
            finally:
                if src:
                    src.close()
        zero = bytes(CHUNK)
        src = open(self.path, "rb") if self.kind == "random" else None
        try:
            off = 0
            while off < self.size:
                n = min(CHUNK, self.size - off)
                want = src.read(n) if src else (zero if n == CHUNK else bytes(n))
                if read_chunk(off, n) != want:
                    return False
                off += n
            return True
        finally:
            if src:
                src.close()

    def equals_process_memory(self, pid, addr, sample=None):
        with open("/proc/%d/mem" % pid, "rb", buffering=0) as mem:
            def rd(off, n):
                mem.seek(addr + off)
                return mem.read(n)
            return self.equals(rd, sample)

    def equals_file(self, path, sample=None):
        with open(path, "rb", buffering=0) as fh:
            def rd(off, n):
                fh.seek(off)
                return fh.read(n)
            return self.equals(rd, sample)


def wait_incoming_done(m, timeout):
    """An incoming migration into m has finished: its run state left
    'inmigrate' (both engines report it so)."""
    deadline = time.time() + timeout
    st = None
    while time.time() < deadline:
        st = m.cmd("query-status")["status"]
        if st != "inmigrate":
            info = m.cmd("query-migrate")
            if info.get("status") not in (None, "completed"):
                raise RuntimeError("%s: incoming fill ended %s: %s" % (m.name, info.get("status"),
                                                                      info.get("error-desc")))
            return
        time.sleep(0.02)
    raise TimeoutError("%s: incoming fill still running after %ss (%s)" % (m.name, timeout, st))


class Engine:
    """What livemig and QEMU share: one measured migration from a source in
    a given state to a destination in a given state."""

    def __init__(self, tmp, timeout, warm):
        self.tmp = tmp
        self.timeout = timeout
        self.warm = warm
        self.seq = 0

    def dst_file(self):
        return os.path.join(self.tmp, "%s-dst-%d.ram" % (self.tag, self.seq))

    def set_mode(self, m, mode):
        m.cmd("migrate-set-parameters", **{"max-bandwidth": self.unlimited})
        if mode.startswith("multifd"):
            m.cmd("migrate-set-capabilities", capabilities=[{"capability": "multifd", "state": True}])
            m.cmd("migrate-set-parameters", **{"multifd-channels": int(mode[len("multifd"):])})
        elif mode == "postcopy":
            m.cmd("migrate-set-capabilities",
                  capabilities=[{"capability": "postcopy-ram", "state": True}])

    def run(self, data, src_kind, dst_kind, transport, mode):
        """src_kind: 'anon' (anonymous RAM its own process filled, or never
        touched for zero data) or 'file' (the data file mapped shared);
        dst_kind: 'anon' or 'file' (a new file on /dev/shm)."""
        data.prepare()
        src = dst = None
        dpath = None
        try:
            src = self.start_source(data, src_kind)
            if dst_kind == "file":
                dpath = self.dst_file()
            dst = self.start_dest(data.size, dpath)
            for m in (src, dst):
                self.set_mode(m, mode)
            if transport == "unix":
                uri = "unix:" + os.path.join(self.tmp, "%s-mig-%d.sock" % (self.tag, self.seq))
                dst.cmd("migrate-incoming", uri=uri)
            else:
                dst.cmd("migrate-incoming", uri="tcp:127.0.0.1:0")
                addr = dst.cmd("query-migrate")["socket-address"][0]
                uri = "tcp:%s:%s" % (addr["host"], addr["port"])
            # Warm just before the first byte, as rawcopy does for the floor:
            # on this host memory freed by the warm-up goes back to the
            # hypervisor within seconds (free page reporting), so warming
            # before the destination's process start and QMP set-up left an
            # engine colder pages than the floor, which copies at once.
            self.warm()
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
            ok = self.verify(data, src, dst, dpath)
            ram = info.get("ram", {})
            total = info.get("total-time")
            if not total:
                # QEMU 7.2 once answered total-time 0 for a 1 GiB run that
                # took 0.95 s: the wall time from migrate to completed then.
                log("  %s: total-time read %r; the wall time (%.0f ms) stands for it" % (
                    self.tag, total, wall * 1000))
                total = round(wall * 1000)
            return {"total_ms": total, "downtime_ms": info.get("downtime"),
                    "transferred": ram.get("transferred"),
                    "wall_s": wall, "cpu_src": c1[0] - c0[0], "cpu_dst": c1[1] - c0[1],
                    "verified": ok}
        except Exception as e:  # a broken run is reported, not fatal
            return {"error": "%s: %s" % (type(e).__name__, e)}
        finally:
            for m in (src, dst):
                if m:
                    m.stop()
            if dpath and os.path.exists(dpath):
                os.unlink(dpath)


class Livemig(Engine):
    tag = "lm"
    unlimited = 0

    def __init__(self, build, tmp, timeout, warm):
        super().__init__(tmp, timeout, warm)
        self.vm_bin = os.path.join(build, "livemig-vm")
        self.caps = None

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
        return self.caps

    def make_stream(self, data):
        """A livemig stream of data's contents, saved once by a source
        whose RAM is the data file."""
        path = os.path.join(self.tmp, "lm-stream-%s-%s" % (data.kind, fmt_size(data.size)))
        m = self.start("save", data.size, backend="file:" + data.path)
        try:
            m.cmd("stop")
            m.cmd("migrate", uri="file:" + path)
            info = wait_status(m, self.timeout)
            if info["status"] != "completed":
                raise RuntimeError("livemig save to %s: %s" % (path, info.get("error-desc")))
        finally:
            m.stop()
        data.streams["lm"] = path

    def start_source(self, data, kind):
        if kind == "file":
            return self.start("src", data.size, backend="file:" + data.path)
        m = self.start("src", data.size, incoming=data.kind == "random")
        if data.kind == "random":
            # its own process writes every page: a running guest's state
            m.cmd("migrate-incoming", uri="file:" + data.streams["lm"])
            wait_incoming_done(m, self.timeout)
        return m

    def start_dest(self, size, path):
        return self.start("dst", size, backend=("file:" + path) if path else None, incoming=True)

    def verify(self, data, src, dst, dpath):
        return (src.cmd("query-status")["status"] == "postmigrate" and
                src.cmd("x-query-memory-hash")["hash"] == dst.cmd("x-query-memory-hash")["hash"])


class Qemu(Engine):
    tag = "qemu"
    unlimited = 100000000000   # QEMU 7.2: bytes/s; 0 would mean 0

    def __init__(self, binary, tmp, timeout, warm):
        super().__init__(tmp, timeout, warm)
        self.bin = binary
        self.accel = None
        self.sample = 0   # verify N random pages instead of all (--qemu-verify-sample)

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

    def start(self, name, size, mem_path=None, incoming=False):
        self.seq += 1
        qmp = os.path.join(self.tmp, "qemu-%s-%d.qmp" % (name, self.seq))
        if mem_path:
            mem = "memory-backend-file,id=ram,size=%d,mem-path=%s,share=on" % (size, mem_path)
        else:
            mem = "memory-backend-ram,id=ram,size=%d" % size
        argv = [self.bin, "-M", "pc", "-accel", self.pick_accel(), "-m", "%dM" % (size >> 20),
                "-object", mem, "-machine", "memory-backend=ram",
                "-nographic", "-display", "none", "-vga", "none", "-nodefaults", "-S",
                "-qmp", "unix:%s,server=on,wait=off" % qmp]
        if incoming:
            argv += ["-incoming", "defer"]
        return Machine("qemu-%s-%d" % (name, self.seq), argv, qmp, self.tmp)

    def make_stream(self, data):
        path = os.path.join(self.tmp, "qemu-stream-%s-%s" % (data.kind, fmt_size(data.size)))
        m = self.start("save", data.size, mem_path=data.path)
        try:
            self.set_mode(m, "precopy")
            m.cmd("migrate", uri="exec:cat > %s" % path)
            info = wait_status(m, self.timeout * 4)
            if info["status"] != "completed":
                raise RuntimeError("QEMU save to %s: %s" % (path, info.get("error-desc")))
        finally:
            m.stop()
        data.streams["qemu"] = path

    def start_source(self, data, kind):
        if kind == "file":
            return self.start("src", data.size, mem_path=data.path)
        m = self.start("src", data.size, incoming=data.kind == "random")
        if data.kind == "random":
            m.cmd("migrate-incoming", uri="exec:cat %s" % data.streams["qemu"])
            wait_incoming_done(m, self.timeout)
        return m

    def start_dest(self, size, path):
        return self.start("dst", size, mem_path=path, incoming=True)

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

    def verify(self, data, src, dst, dpath):
        n = self.sample or None
        if dpath:
            return data.equals_file(dpath, n)
        addr = self.ram_address(dst.pid, data.size)
        return data.equals_process_memory(dst.pid, addr, n) if addr is not None else None


# --------------------------------------------------------------------------
# the raw floor

# How rawcopy moves the bytes, per destination kind: sender / receiver.
RAW_METHODS = {
    "anon": [("write", "read"), ("sendfile", "read")],
    "file": [("write", "pwrite"), ("sendfile", "splice"), ("write", "read")],
}


def rawcopy(binary, *args):
    out = subprocess.run([binary] + [str(a) for a in args], capture_output=True, text=True,
                         timeout=300)
    if out.returncode != 0:
        raise RuntimeError("rawcopy %s: %s" % (" ".join(map(str, args)), out.stderr.strip()))
    kv = dict(x.split("=") for x in out.stdout.split())
    return {"gibps": float(kv["GiBps"]), "cpu_src": float(kv["src_cpu"]),
            "cpu_dst": float(kv["dst_cpu"]), "secs": float(kv["seconds"])}


def raw_floor(binary, warm, data, transport, streams, dst_kind, tmp, reps):
    """The fastest of RAW_METHODS into a destination in the same state as
    the engines' (warmed host, fresh mapping or fresh file): its median
    figures and the method."""
    best = None
    for snd, rcv in RAW_METHODS[dst_kind]:
        runs = []
        for _ in range(reps):
            # No warm() here: rawcopy warms by itself once its sender holds
            # the source and before it maps the destination, the order of
            # an engine's run (source, warm, destination).  Warming first let
            # the sender's source take the warmed memory (4 GiB: 1.95 CPU-s
            # per GiB at the anonymous floor's destination, 0.35 at livemig's).
            dest = "fresh-thp" if dst_kind == "anon" else "file:" + os.path.join(tmp, "raw-dst")
            runs.append(rawcopy(binary, "socket", data.size, streams, transport, dest, data.path,
                                snd, rcv))
        med = {k: median([r[k] for r in runs]) for k in runs[0]}
        med["method"] = "%s→%s" % (snd, rcv)
        log("  raw %s %d-stream %s %s: %s GiB/s" % (transport, streams, dst_kind, med["method"],
                                                   " ".join("%.2f" % r["gibps"] for r in runs)))
        if best is None or med["gibps"] > best["gibps"]:
            best = med
    return best


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
        "verified": ("yes" if all(r["verified"] for r in good) else
                     "unverified" if any(r["verified"] is None for r in good) else "NO"),
        "errors": len(runs) - len(good),
    }


def cell(s):
    return str(s).replace("\n", " ").replace("|", "/")[:80]


def f(x, fmt="%.2f"):
    return "–" if x is None else fmt % x


def ratio(a, b):
    return "–" if not a or not b else "%.2f×" % (a / b)




def build_source_dir(build):
    """The source tree a meson build directory was configured from (its
    meson-info), so a run names the revision it measured; the bench's own
    tree when that cannot be read."""
    try:
        with open(os.path.join(build, "meson-info", "meson-info.json")) as fh:
            return json.load(fh)["directories"]["source"]
    except (OSError, ValueError, KeyError):
        return ROOT


def machine_header(qemu_version, build=None):
    src_dir = build_source_dir(build) if build else ROOT

    def sh(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=src_dir).stdout.strip()
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
            res.append("%s (%s%% CPU)" % (comm, pcpu))
    return res


MODES = ("precopy", "multifd2", "multifd4", "postcopy")
POSTCOPY_ROWS = ("random:anon:unix:precopy", "random:anon:unix:postcopy")


def streams_of(mode):
    return int(mode[len("multifd"):]) if mode.startswith("multifd") else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1G,4G", help="comma-separated guest RAM sizes (default 1G,4G)")
    ap.add_argument("--reps", type=int, default=2, help="repetitions per configuration (median)")
    ap.add_argument("--reps-large", type=int, default=1,
                    help="repetitions for sizes above 2G (default 1)")
    ap.add_argument("--data", default="random,zero")
    ap.add_argument("--dests", default="anon,file", help="destination RAM: anon, file (/dev/shm)")
    ap.add_argument("--transports", default="unix,tcp")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--large-filter", default=None,
                    help="for sizes above 2G only these data:dest:transport:mode rows, "
                         "e.g. random:anon:unix:precopy,random:file:unix:multifd4 (default all)")
    ap.add_argument("--only", default=None,
                    help="only these data:dest:transport:mode rows at every size (default all)")
    ap.add_argument("--postcopy", action="store_true",
                    help="quick postcopy check (issue 14 §3): only %s, 1G, 3 repetitions, "
                         "written to bench/postcopy-throughput.md, unless --only/--sizes/--reps/--out say "
                         "otherwise" % ",".join(POSTCOPY_ROWS))
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per migration")
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--rawcopy", default=None, help="bench/rawcopy binary")
    ap.add_argument("--qemu", default=shutil.which("qemu-system-x86_64") or "qemu-system-x86_64")
    ap.add_argument("--no-qemu", action="store_true")
    ap.add_argument("--no-raw", action="store_true",
                    help="skip the raw floor (its copy needs the RAM size twice more in memory)")
    ap.add_argument("--qemu-verify-sample", type=int, default=0,
                    help="check N random pages of QEMU's destination instead of all (0: all)")
    ap.add_argument("--raw-methods", default=None,
                    help="rawcopy sender>receiver methods per destination, e.g. "
                         "anon=write>read+sendfile>read;file=write>pwrite+sendfile>splice")
    ap.add_argument("--tmpdir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results.md"))
    ap.add_argument("--json", default=None, help="also write every run's figures here")
    args = ap.parse_args()
    if args.postcopy:
        # The postcopy row and, as its anchor, precopy into the same memory.
        given = set(a.split("=")[0] for a in sys.argv[1:])
        args.only = args.only or ",".join(POSTCOPY_ROWS)
        if "--sizes" not in given:
            args.sizes = "1G"
        if "--reps" not in given:
            args.reps = 3
        if "--out" not in given:   # bench/results.md is the whole fair run's
            args.out = os.path.join(ROOT, "bench", "postcopy-throughput.md")

    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    kinds = args.data.split(",")
    dests = args.dests.split(",")
    transports = args.transports.split(",")
    modes = [m for m in args.modes.split(",") if m]
    large_filter = set(args.large_filter.split(",")) if args.large_filter else None
    only = set(args.only.split(",")) if args.only else None
    tmp = tempfile.mkdtemp(prefix="livemig-bench-", dir=args.tmpdir)
    raw_bin = args.rawcopy or os.path.join(tmp, "rawcopy")
    if not args.rawcopy:
        subprocess.run(["cc", "-O2", "-pthread", "-o", raw_bin,
                        os.path.join(ROOT, "bench", "rawcopy.c")], check=True)

    cur = {"size": 0}

    def warm():
        """Touch and free the destination's amount of memory, so every
        destination (and the raw floor) finds the host's free memory in
        the same state: without it first touches swing 2-6x here."""
        rawcopy_warm(raw_bin, cur["size"])

    lm = Livemig(args.build, tmp, args.timeout, warm)
    qemu = None if args.no_qemu else Qemu(args.qemu, tmp, args.timeout, warm)
    if qemu:
        qemu.sample = args.qemu_verify_sample
    if args.raw_methods:
        for part in args.raw_methods.split(";"):
            dk, ms = part.split("=")
            RAW_METHODS[dk] = [tuple(m.split(">")) for m in ms.split("+")]
    header = machine_header(qemu.version() if qemu else "not measured", args.build)
    header["busy"] = busy_processes()
    header["accel"] = qemu.pick_accel() if qemu else "-"
    caps = lm.capabilities()
    need = {"multifd2": "multifd", "multifd4": "multifd", "postcopy": "postcopy-ram"}
    t_start = time.time()
    results = []
    alldata = {"header": header, "runs": []}
    try:
        for size in sizes:
            cur["size"] = size
            large = size > 2 * GiB
            reps = args.reps_large if large else args.reps
            filt = only or (large_filter if large else None)
            sz = fmt_size(size)
            datas = {k: Data(k, size, tmp) for k in kinds}
            for d in datas.values():
                d.prepare()
            if "random" in datas:
                log("[%s] saving the source streams" % sz)
                lm.make_stream(datas["random"])
                if qemu:
                    qemu.make_stream(datas["random"])
            log("[%s] warm-up" % sz)
            lm.run(datas.get("random") or datas[kinds[0]], "anon", "anon", "unix", "precopy")

            floors = {}
            if "random" in datas and not args.no_raw:
                for transport in transports:
                    for streams in sorted({streams_of(m) for m in modes}):
                        for dk in dests:
                            if filt and not any(
                                    r.split(":")[1] == dk and r.split(":")[2] == transport and
                                    streams_of(r.split(":")[3]) == streams for r in filt):
                                continue
                            floors[(transport, streams, dk)] = raw_floor(
                                raw_bin, warm, datas["random"], transport, streams, dk, tmp, reps)

            for kind in kinds:
                data = datas[kind]
                for dk in dests:
                    for transport in transports:
                        for mode in modes:
                            key = "%s:%s:%s:%s" % (kind, dk, transport, mode)
                            if filt and key not in filt:
                                continue
                            row = {"size": size, "data": kind, "dst": dk, "transport": transport,
                                   "mode": mode,
                                   "raw": floors.get((transport, streams_of(mode), dk))
                                   if kind == "random" else None}
                            results.append(row)
                            if mode in need and need[mode] not in caps:
                                row["lm"] = row["lmf"] = {"error": "n/a", "n": 0}
                                row["qemu"] = {"error": "not measured", "n": 0}
                                continue
                            runs = {"lm": [], "lmf": [], "qemu": []}
                            for i in range(reps):
                                plan = [("lm", lm, "anon"), ("lmf", lm, "file")]
                                if qemu:
                                    plan.append(("qemu", qemu, "anon"))
                                if i % 2:
                                    plan.reverse()   # neither engine always goes first
                                for tag, eng, sk in plan:
                                    r = eng.run(data, sk, dk, transport, mode)
                                    runs[tag].append(r)
                                    log("  %-4s %s %s %s-dst %s %s #%d: %s" % (
                                        tag, sz, kind, dk, transport, mode, i, json.dumps(r)))
                            alldata["runs"].append(dict(row, runs=runs))
                            for tag in runs:
                                row[tag] = (summarize(runs[tag], size) if runs[tag] else
                                            {"error": "not measured", "n": 0})
            for d in datas.values():
                d.discard()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    elapsed = time.time() - t_start
    text = render(header, results, sizes, args, elapsed)
    print(text)
    with open(args.out, "w") as fh:
        fh.write(text)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(alldata, fh, indent=1)
    log("wrote %s (%.0f s)" % (args.out, elapsed))


def rawcopy_warm(binary, size):
    subprocess.run([binary, "warm", str(size)], check=True, timeout=120)


def render(h, results, sizes, args, elapsed):
    L = []
    L.append("# livemig migration throughput vs QEMU and the raw floor (fair conditions)\n")
    L.append("**The machine's load is in the table below** (load average at start, the busiest "
             "other processes).  Wall-clock throughput swings with load and with the host's "
             "first touches of fresh memory; the CPU seconds per GiB and the ratios between "
             "engines measured in the same run (interleaved, back to back) are the steadier "
             "figures.  Reproduce with the command in the table.\n")
    L.append("| | |\n|---|---|")
    L.append("| date | %s |" % h["date"])
    L.append("| machine | %s, %s CPUs (`nproc`), %s RAM, kernel %s |" % (h["cpu"], h["nproc"],
                                                                          h["memory"], h["kernel"]))
    L.append("| load average at start | %s%s |" % (h["load"], ("; busy: " + ", ".join(h["busy"]))
                                                  if h["busy"] else ""))
    L.append("| QEMU | %s, `-M pc -accel %s -S` (guest stopped), max-bandwidth 1e11 B/s |" %
             (h["qemu"], h["accel"]))
    L.append("| livemig | git %s, `livemig-vm --workload idle --paused`, max-bandwidth 0 |" % h["rev"])
    L.append("| runs | median of %d (sizes ≤ 2G) / %d (larger) per cell; livemig, livemig file-source "
             "and QEMU interleaved (order alternating), after a warm-up; %.0f s in all |"
             % (args.reps, args.reps_large, elapsed))
    cmd = "bash bench/run.sh --sizes %s --reps %d" % (",".join(fmt_size(s) for s in sizes), args.reps)
    if args.only:
        cmd += " --only %s" % args.only
    if args.qemu_verify_sample:
        cmd += " --qemu-verify-sample %d" % args.qemu_verify_sample
    if args.raw_methods:
        cmd += " --raw-methods '%s'" % args.raw_methods
    if args.large_filter and any(s > 2 * GiB for s in sizes):
        cmd += " --large-filter %s" % args.large_filter
    L.append("| reproduce | `%s` |" % cmd)
    L.append("")
    L.append("""How each side is set up, the same for both engines:

- **Source, anon** (the main columns): anonymous guest RAM that the VMM's own process has
  written, as a running guest's RAM is.  For random data each engine's source is filled by an
  incoming migration of the same bytes from a file (livemig `migrate-incoming file:`, QEMU
  `migrate-incoming exec:cat`) and then migrated out, paused.  Zero data: RAM never written.
- **Source, file** (livemig only, a second figure): `--memory-backend file:` on a /dev/shm file
  holding the data (sent from the page cache).
- **Destination**: anon = fresh anonymous RAM (livemig default, QEMU `memory-backend-ram`);
  file = a new file on /dev/shm mapped shared (livemig `--memory-backend file:`, QEMU
  `memory-backend-file,share=on`).  With both sides started and the destination listening,
  just before `migrate`, the bench touches and frees the destination's amount of anonymous
  memory (`rawcopy warm`), so each destination finds the host's free memory in the same state
  (the raw floor is warmed at the same point: source ready, destination about to be written).
- **raw floor**: bench/rawcopy moving the same random bytes over the same transport, one
  connection per channel, into a destination in the same state (warmed once its sender holds
  the source, as the engines' destinations are; fresh mapping or new /dev/shm file); the
  fastest of: write() from an anonymous buffer or sendfile() from the page cache (no anonymous
  copy), received by read() into the mapping, or (file) pwrite() from a 4 MiB buffer or
  splice() into the file.  Zero data: no floor (neither engine sends zero pages' bytes).
- **GiB/s** = guest RAM / total-time of query-migrate on the source.  **CPU** = utime+stime of
  the whole process from `migrate` to completion, per GiB of guest RAM, source/destination.
- **downtime**: livemig's runs from stopping the source to the destination's confirmation that
  it loaded everything and runs; QEMU 7.2's ends when the source has sent its last bytes (it does
  not wait for the destination), so QEMU's figure is the smaller by construction.
- verified: livemig compares `x-query-memory-hash` of both sides; QEMU's destination RAM is
  compared with the data byte for byte%s.
""")
    L[-1] = L[-1] % ((" in %d random 4 KiB pages and the first and last (`--qemu-verify-sample`: "
                      "/proc/PID/mem reads run at MB/s on this host)" % args.qemu_verify_sample)
                     if args.qemu_verify_sample else "")
    L.append("| RAM | data | dest | transport | mode | livemig ms | downtime ms | GiB/s | CPU s/GiB src/dst "
             "| file-src GiB/s (CPU src/dst) | QEMU ms | QEMU downtime ms | QEMU GiB/s | QEMU CPU s/GiB src/dst "
             "| raw GiB/s (how; CPU src/dst) | livemig/QEMU | livemig/raw | QEMU/raw | verified |")
    L.append("|---|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|")
    for row in results:
        lmr, lf, q, raw = row["lm"], row["lmf"], row["qemu"], row.get("raw")
        head = "| %s | %s | %s | %s | %s |" % (fmt_size(row["size"]), row["data"], row["dst"],
                                               row["transport"], row["mode"])
        if lmr.get("n"):
            c1 = "%s | %s | %s | %s/%s" % (f(lmr["total_ms"], "%d"), f(lmr["downtime_ms"], "%d"),
                                           f(lmr["gibps"]), f(lmr["cpu_src"]), f(lmr["cpu_dst"]))
        else:
            c1 = "%s | | | " % cell(lmr.get("error"))
        c2 = ("%s (%s/%s)" % (f(lf["gibps"]), f(lf["cpu_src"]), f(lf["cpu_dst"])) if lf.get("n")
              else cell(lf.get("error")))
        if q.get("n"):
            c3 = "%s | %s | %s | %s/%s" % (f(q["total_ms"], "%d"), f(q["downtime_ms"], "%d"),
                                           f(q["gibps"]), f(q["cpu_src"]), f(q["cpu_dst"]))
        else:
            c3 = "%s | | | " % cell(q.get("error"))
        if raw:
            gib = row["size"] / GiB
            c4 = "%s (%s; %s/%s)" % (f(raw["gibps"]), raw["method"], f(raw["cpu_src"] / gib),
                                     f(raw["cpu_dst"] / gib))
        else:
            c4 = "–"
        lg = lmr.get("gibps") if lmr.get("n") else None
        qg = q.get("gibps") if q.get("n") else None
        rg = raw["gibps"] if raw else None
        ver = "/".join(x.get("verified", "–") if x.get("n") else "–" for x in (lmr, lf, q))
        L.append(head + " %s | %s | %s | %s | %s | %s | %s | %s |" % (
            c1, c2, c3, c4, ratio(lg, qg), ratio(lg, rg), ratio(qg, rg), ver))
    L.append("")
    L.append("verified: livemig anon source / livemig file source / QEMU.\n")
    L.append(render_targets(results, sizes))
    return "\n".join(L) + "\n"


def render_targets(results, sizes):
    def get(size, kind, dst, transport, mode):
        for r in results:
            if (r["size"], r["data"], r["dst"], r["transport"], r["mode"]) == (size, kind, dst,
                                                                                transport, mode):
                return r
        return None

    def ok(r, tag):
        return r is not None and r[tag].get("n") and r[tag].get("gibps")

    L = ["## Targets, checked with the numbers above\n", "| target | measured | met |",
         "|---|---|---|"]

    def add(name, value, met):
        L.append("| %s | %s | %s |" % (name, value, "yes" if met else "no"))

    for size in sizes:
        sz = fmt_size(size)
        for t in ("unix", "tcp"):
            r = get(size, "random", "anon", t, "precopy")
            if ok(r, "lm") and ok(r, "qemu"):
                v = r["lm"]["gibps"] / r["qemu"]["gibps"]
                add("%s random %s precopy ≥ 1.8× QEMU (issue 5)" % (sz, t), "%.2f×" % v, v >= 1.8)
            if ok(r, "lm") and r["raw"]:
                v = r["lm"]["gibps"] / r["raw"]["gibps"]
                add("%s random %s precopy ≥ 0.8× 1-stream raw floor (issue 5)" % (sz, t),
                    "%.2f×" % v, v >= 0.8)
            for m in ("multifd2", "multifd4"):
                r = get(size, "random", "anon", t, m)
                if ok(r, "lm") and r["raw"]:
                    v = r["lm"]["gibps"] / r["raw"]["gibps"]
                    add("%s random %s %s ≥ 0.8× %d-stream raw floor (issue 5)" % (
                        sz, t, m, streams_of(m)), "%.2f×" % v, v >= 0.8)
            for m in MODES:
                r = get(size, "random", "file", t, m)
                if ok(r, "lm") and r["raw"]:
                    v = r["lm"]["gibps"] / r["raw"]["gibps"]
                    add("%s random %s %s file-backed destination ≥ 0.8× raw floor into the same "
                        "file (issue 14 §2)" % (sz, t, m), "%.2f×" % v, v >= 0.8)
            r = get(size, "zero", "file", t, "precopy")
            if ok(r, "lm"):
                v = r["lm"]["total_ms"] * GiB / size
                add("%s zero RAM to a fresh file-backed destination ≤ 10 ms per GiB (issue 14 §2)"
                    % sz, "%.0f ms (%s)" % (r["lm"]["total_ms"], t), v <= 10)
            pc, pre = get(size, "random", "anon", t, "postcopy"), get(size, "random", "anon", t,
                                                                      "precopy")
            if ok(pc, "lm") and ok(pre, "lm"):
                v = pc["lm"]["gibps"] / pre["lm"]["gibps"]
                add("%s %s postcopy ≥ 0.8× precopy single channel (issue 14 §3)" % (sz, t),
                    "%.2f×" % v, v >= 0.8)
                c = pc["lm"]["cpu_src"] / max(pre["lm"]["cpu_src"], 1e-9)
                add("%s %s postcopy source CPU/GiB ≤ 3× precopy's (issue 14 §3)" % (sz, t),
                    "%.2f / %.2f s = %.1f×" % (pc["lm"]["cpu_src"], pre["lm"]["cpu_src"], c),
                    c <= 3)
            if ok(pc, "lm") and ok(pc, "qemu"):
                v = pc["lm"]["gibps"] / pc["qemu"]["gibps"]
                add("%s %s postcopy ahead of QEMU's (issue 14 §3)" % (sz, t), "%.2f×" % v, v > 1)
        r = get(size, "random", "anon", "unix", "precopy")
        if size == 4 * GiB and ok(r, "lm"):
            d = r["lm"]["downtime_ms"]
            add("idle 4 GiB downtime ≤ 10 ms (issue 5)", "%s ms" % f(d, "%d"), d <= 10)
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
