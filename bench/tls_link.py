#!/usr/bin/env python3
"""Migration over a shaped link between two hosts: livemig beside QEMU in
one run, with the same certificates, total time and downtime.

The hosts are two network namespaces joined by the link of
tests/integration/netns.py (1 Gbit/s, 10 ms RTT by default: a veth pair
with netem where the kernel has it, else a TUN pair (MTU 65000) with the
C forwarder lmwire for the delay and `tc tbf` for the rate).  The source runs in
one namespace, the destination in the other, and the migration goes
tcp:10.199.0.2:PORT, plain and with TLS (tls-creds-x509 objects made from
scripts/make-test-certs.sh, verify-peer on both sides, the destination's
address checked against its certificate), single channel and multifd 4.

The guest is the same for both engines: SIZE of random RAM, stopped (QEMU
-S; livemig --workload idle, paused), so the figures are the transfer and
the switchover.  Each engine's source is in a running VM's state: its RAM
is anonymous and was written by its own process, by an incoming migration
from a file of the random bytes (issue 14: QEMU given a RAM file its
process never touched pays the first access of every page on this host).
The link floor is the same number of bytes in plain TCP streams through
the same link (one for precopy, four for multifd 4), in the same run.

    python3 bench/tls_link.py [--size 512M] [--rate 1000] [--rtt 10] [--reps 1] [--no-qemu]

Needs root and iproute2.  Not a test: it prints tables (markdown) and
never fails on a number.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import netns  # noqa: E402
import throughput as tp  # noqa: E402

QEMU_NO_CAP = 100000000000  # QEMU 7.2: max-bandwidth in bytes/s (its default is 32 MiB/s)
DOWNTIME_LIMIT_MS = 300     # both engines' default, set explicitly


def add_tls(m, certs, server):
    m.cmd("object-add", **{"qom-type": "tls-creds-x509", "id": "tls0",
                           "dir": os.path.join(certs, "server" if server else "client"),
                           "endpoint": "server" if server else "client", "verify-peer": True})
    m.cmd("migrate-set-parameters", **{"tls-creds": "tls0"})


def set_mode(m, mode):
    if mode.startswith("multifd"):
        m.cmd("migrate-set-capabilities", capabilities=[{"capability": "multifd", "state": True}])
        m.cmd("migrate-set-parameters", **{"multifd-channels": int(mode[len("multifd"):])})


class Engine:
    """What differs between the engines: how a VMM is started, how its
    state is saved to / loaded from a file, and how a run is verified."""
    name = None

    def __init__(self, tmp, timeout, name=None):
        self.name = name or self.name
        self.tmp, self.timeout = tmp, timeout
        self.tag = "".join(c if c.isalnum() else "_" for c in self.name)
        self.state = os.path.join(tmp, "%s.state" % self.tag)
        self.seq = 0

    def machine(self, name, argv):
        self.seq += 1
        qmp = os.path.join(self.tmp, "%s-%s-%d.qmp" % (self.tag, name, self.seq))
        return tp.Machine("%s-%s-%d" % (self.tag, name, self.seq), argv(qmp), qmp, self.tmp)

    def wait(self, m):
        info = tp.wait_status(m, self.timeout)
        if info.get("status") != "completed":
            raise RuntimeError("%s: %s: %s" % (m.name, info.get("status"), info.get("error-desc")))
        return info

    def save_seed(self, data):
        """A stream file of the guest: RAM = the random bytes."""
        m = self.start("seed", data.size, wrapper=[], data=data)
        try:
            self.no_cap(m)
            m.cmd("migrate", uri=self.save_uri())
            self.wait(m)
        finally:
            m.stop()

    def loaded_source(self, size, wrapper):
        """A paused source whose anonymous RAM its own process wrote: an
        incoming migration from the seed file."""
        m = self.start("src", size, wrapper=wrapper, incoming=True)
        try:
            m.cmd("migrate-incoming", uri=self.load_uri())
            self.wait(m)
        except BaseException:
            m.stop()
            raise
        return m

    def run(self, data, link, certs, mode, tls, warm=None):
        """One migration from link.src_ns to link.dst_ns (Loopback: here).
        warm: called just before the first byte (see bench/tls.py)."""
        src = dst = None
        try:
            src = self.loaded_source(data.size, link.run_in(link.src_ns))
            dst = self.start("dst", data.size, wrapper=link.run_in(link.dst_ns), incoming=True)
            for m, server in ((src, False), (dst, True)):
                self.no_cap(m)
                m.cmd("migrate-set-parameters", **{"downtime-limit": DOWNTIME_LIMIT_MS})
                set_mode(m, mode)
                if tls:
                    add_tls(m, certs, server)
            dst.cmd("migrate-incoming", uri="tcp:%s:0" % link.dst_addr)
            port = dst.cmd("query-migrate")["socket-address"][0]["port"]
            if warm:
                warm()
            c0 = (src.cpu(), dst.cpu())
            t0 = time.monotonic()
            src.cmd("migrate", uri="tcp:%s:%s" % (link.dst_addr, port))
            info = tp.wait_status(src, self.timeout)
            dinfo = tp.wait_status(dst, self.timeout) if info["status"] == "completed" else {}
            wall = time.monotonic() - t0
            c1 = (src.cpu(), dst.cpu())
            if info["status"] != "completed" or dinfo.get("status") != "completed":
                return {"error": "%s/%s: %s" % (info["status"], dinfo.get("status"),
                                                info.get("error-desc") or dinfo.get("error-desc"))}
            ram = info.get("ram", {})
            return {"total_ms": info.get("total-time"), "downtime_ms": info.get("downtime"),
                    "setup_ms": info.get("setup-time"), "transferred": ram.get("transferred"),
                    "wall_s": wall, "cpu_src": c1[0] - c0[0], "cpu_dst": c1[1] - c0[1],
                    "verified": self.verify(src, dst, data)}
        except Exception as e:  # a broken run is reported, not fatal
            return {"error": "%s: %s" % (type(e).__name__, e)}
        finally:
            for m in (src, dst):
                if m:
                    m.stop()


class Livemig(Engine):
    name = "livemig"

    def __init__(self, build, tmp, timeout, name=None):
        super().__init__(tmp, timeout, name)
        self.bin = os.path.join(build, "livemig-vm")

    def start(self, name, size, wrapper, data=None, incoming=False):
        def argv(qmp):
            a = wrapper + [self.bin, "--name", name, "--memory", str(size), "--workload", "idle",
                           "--qmp", "unix:" + qmp, "--serial", "none", "--paused"]
            if data is not None:
                a += ["--memory-backend", "file:" + data.path]
            if incoming:
                a += ["--incoming", "defer"]
            return a
        return self.machine(name, argv)

    def no_cap(self, m):
        m.cmd("migrate-set-parameters", **{"max-bandwidth": 0})

    def save_uri(self):
        return "file:" + self.state

    def load_uri(self):
        return "file:" + self.state

    def verify(self, src, dst, data):
        return src.cmd("x-query-memory-hash")["hash"] == dst.cmd("x-query-memory-hash")["hash"]


class Qemu(Engine):
    name = "QEMU"

    def __init__(self, binary, tmp, timeout):
        super().__init__(tmp, timeout)
        # Its accelerator choice and RAM lookup (no warm-up between runs here).
        self.q = tp.Qemu(binary, tmp, timeout, warm=lambda: None)

    def start(self, name, size, wrapper, data=None, incoming=False):
        if data is not None:
            mem = "memory-backend-file,id=ram,size=%d,mem-path=%s,share=on" % (size, data.path)
        else:
            mem = "memory-backend-ram,id=ram,size=%d" % size

        def argv(qmp):
            a = wrapper + [self.q.bin, "-M", "pc", "-accel", self.q.pick_accel(), "-m",
                           "%dM" % (size >> 20), "-object", mem, "-machine", "memory-backend=ram",
                           "-nographic", "-display", "none", "-vga", "none", "-nodefaults", "-S",
                           "-qmp", "unix:%s,server=on,wait=off" % qmp]
            if incoming:
                a += ["-incoming", "defer"]
            return a
        return self.machine(name, argv)

    def no_cap(self, m):
        m.cmd("migrate-set-parameters", **{"max-bandwidth": QEMU_NO_CAP})

    def save_uri(self):  # QEMU 7.2 has no file: transport
        return "exec:cat > %s" % self.state

    def load_uri(self):
        return "exec:cat %s" % self.state

    def verify(self, src, dst, data):
        addr = self.q.ram_address(dst.pid, data.size)
        return data.equals_process_memory(dst.pid, addr) if addr is not None else None


class Loopback:
    """Both machines on this host's loopback: Engine.run's link for tls.py."""
    src_ns = dst_ns = None
    dst_addr = "127.0.0.1"

    def run_in(self, ns):
        return []


def link_floor(link, size, streams, timeout):
    """(seconds, steady bytes/s) of size bytes through the link in
    `streams` plain TCP streams (netns.Link.capacity)."""
    steady, average = link.capacity(size, streams, timeout)
    return size / average, steady


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="512M")
    ap.add_argument("--rate", type=int, default=1000, help="Mbit/s")
    ap.add_argument("--rtt", type=float, default=10, help="ms")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--no-qemu", action="store_true")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--certs", help="certificates made by scripts/make-test-certs.sh "
                    "(default: made for this run)")
    args = ap.parse_args()
    why = netns.skip_reason()
    if why:
        raise SystemExit("bench/tls_link.py: " + why)
    size = tp.parse_size(args.size)
    tmp = tempfile.mkdtemp(prefix="lmlinkbench-", dir="/dev/shm")
    certs = args.certs or os.path.join(tmp, "certs")
    if not args.certs:
        subprocess.run([os.path.join(ROOT, "scripts", "make-test-certs.sh"), certs], check=True,
                       stdout=subprocess.DEVNULL)
    rows, floors = [], []
    link = None
    try:
        data = tp.Data("random", size, tmp)
        data.prepare()
        engines = [Livemig(args.build, tmp, args.timeout)]
        qemu_bin = shutil.which("qemu-system-x86_64")
        if qemu_bin and not args.no_qemu:
            engines.append(Qemu(qemu_bin, tmp, args.timeout))
        for e in engines:
            e.save_seed(data)
            tp.log("%s: seed state saved (%d bytes)" % (e.name, os.path.getsize(e.state)))
        load0 = os.getloadavg()[0]
        link = netns.Link(rate_mbit=args.rate, rtt_ms=args.rtt)
        tp.log("link: %s" % link.kind)
        for mode in ("precopy", "multifd4"):
            for tls in (False, True):
                for e in engines:  # the engines alternate under the same load
                    runs = []
                    for _ in range(args.reps):
                        r = e.run(data, link, certs, mode, tls)
                        tp.log("%s %s %s: %s" % (e.name, mode, "tls" if tls else "plain", r))
                        runs.append(r)
                    ok = [x for x in runs if "error" not in x]
                    best = min(ok, key=lambda x: x["total_ms"]) if ok else runs[0]
                    rows.append((e.name, mode, tls, best))
            streams = int(mode[len("multifd"):]) if mode.startswith("multifd") else 1
            secs, steady = link_floor(link, size, streams, args.timeout)
            floors.append((mode, streams, secs, steady))
            tp.log("link floor, %d streams: %.2f s, steady %.0f MB/s" % (streams, secs,
                                                                        steady / 1e6))
        kind = link.kind
        load1 = os.getloadavg()[0]
    finally:
        if link:
            link.close()
        shutil.rmtree(tmp, ignore_errors=True)

    print("\n## Over a shaped link: %s random RAM, %d Mbit/s, %g ms RTT (%s), best of %d\n"
          % (args.size, args.rate, args.rtt, kind, args.reps))
    floor = {}
    for mode, streams, secs, steady in floors:
        floor[mode] = secs
        print("Link floor for %s: the same bytes in %d plain TCP stream%s through the same "
              "link: %.2f s = %.0f MB/s on average, %.0f MB/s steady (the second half of "
              "the bytes; line rate %.0f MB/s)" % (mode, streams, "s" if streams > 1 else "",
                                                   secs, size / secs / 1e6, steady / 1e6,
                                                   args.rate / 8.0))
    print("Machine load (1-minute load average, 2 cores) at the start / end: %.1f / %.1f"
          % (load0, load1))
    print()
    print("| engine | mode | TLS | total ms | downtime ms | setup ms | MB/s | x floor | "
          "CPU s/GiB src + dst | verified |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    gib = size / float(1 << 30)
    for name, mode, tls, r in rows:
        if "error" in r:
            print("| %s | %s | %s | %s |  |  |  |  |  |  |" % (name, mode, "on" if tls else "off",
                                                             r["error"]))
            continue
        secs = r["total_ms"] / 1000.0
        print("| %s | %s | %s | %d | %s | %s | %.0f | %.2f | %.2f + %.2f | %s |" % (
            name, mode, "on" if tls else "off", r["total_ms"], r["downtime_ms"], r["setup_ms"],
            size / secs / 1e6, secs / floor[mode], r["cpu_src"] / gib, r["cpu_dst"] / gib,
            r["verified"]))
    print("\ntotal = the engine's total-time; x floor = total / the link floor of the mode "
          "(measured after its runs).  Downtime as "
          "each engine defines it: livemig's runs until the destination confirmed it runs, "
          "QEMU 7.2's ends when its source has sent the last bytes.")


if __name__ == "__main__":
    main()
