"""Two hosts on one machine: a source and a destination network namespace
joined by a link the test shapes (bandwidth, delay, loss) and cuts.

    with netns.Link(rate_mbit=1000, rtt_ms=10, loss_pct=0.1) as link:
        src = VM(..., wrapper=link.run_in(link.src_ns))
        dst = VM(..., wrapper=link.run_in(link.dst_ns))
        ... migrate to "tcp:%s:PORT" % link.dst_addr ...
        link.down(); link.up()

The link is a veth pair with `tc netem` (delay, loss, rate) where the
kernel has netem; without it (this project's CI kernel has tbf but no
netem), a pair of TUN devices (MTU 65000: few, big packets) joined by a
forwarder process that delays and drops packets (lmwire, C, built with
the tests; a Python one where it is not built), with `tc tbf` for the
rate.  capacity() measures what the link carries (plain TCP): lmwire
carries ~95-118 MB/s of a 1 Gbit/s link on this loaded host, Python 46-80.  Addresses are
10.199.0.1/30 (source) and 10.199.0.2/30 (destination), inside the
namespaces only: the host's own interfaces are never touched.  The
namespaces and the forwarder always go away on close (also after a failed
test), and their names carry the pid so parallel runs never meet.

Needs root and iproute2 (`ip netns`, `tc`); skip_reason() says why not.
"""
import fcntl
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections import deque

SRC_ADDR = "10.199.0.1"
DST_ADDR = "10.199.0.2"
PREFIX = 30
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
WIRE_MTU = 65000  # big segments: the forwarder moves few packets per second


def _sh(*args, check=True):
    return subprocess.run(list(args), check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=30)


def skip_reason():
    """None where namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root (running as uid %d)" % os.geteuid()
    for tool in ("ip", "tc"):
        if not shutil.which(tool):
            return "iproute2's '%s' is not installed" % tool
    name = "lmprobe%d" % os.getpid()
    r = _sh("ip", "netns", "add", name, check=False)
    if r.returncode != 0:
        return "'ip netns add' fails: %s" % r.stderr.strip()
    _sh("ip", "netns", "del", name, check=False)
    return None


def wire_binary():
    """The C forwarder (tests/integration/lmwire.c) in the build, or None."""
    build = os.environ.get("LIVEMIG_BUILD",
                           os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                        "build"))
    path = os.path.join(build, "tests", "integration", "lmwire")
    return path if os.access(path, os.X_OK) else None


def _tc_has(ns, dev, qdisc_args):
    r = _sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", *qdisc_args,
            check=False)
    return r.returncode == 0, r.stderr.strip()


class Link:
    def __init__(self, rate_mbit=None, rtt_ms=0.0, loss_pct=0.0, seed=1):
        tag = "%d%02d" % (os.getpid() % 100000, random.randrange(100))
        self.src_ns = "lmsrc" + tag
        self.dst_ns = "lmdst" + tag
        self.src_dev = "lmA" + tag
        self.dst_dev = "lmB" + tag
        self.src_addr, self.dst_addr = SRC_ADDR, DST_ADDR
        self.rate_mbit, self.rtt_ms, self.loss_pct = rate_mbit, rtt_ms, loss_pct
        self.wire = None
        self.netem = False
        self.kind = None
        self._tun_fds = []
        try:
            for ns in (self.src_ns, self.dst_ns):
                _sh("ip", "netns", "add", ns)
                _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            if not self._try_veth_netem():
                self._make_wire(seed)
        except BaseException:
            self.close()
            raise

    # -- the two ways to make the link --

    def _try_veth_netem(self):
        _sh("ip", "link", "add", self.src_dev, "type", "veth", "peer", "name", self.dst_dev)
        _sh("ip", "link", "set", self.src_dev, "netns", self.src_ns)
        _sh("ip", "link", "set", self.dst_dev, "netns", self.dst_ns)
        shaping = self.rtt_ms or self.loss_pct
        for ns, dev in ((self.src_ns, self.src_dev), (self.dst_ns, self.dst_dev)):
            if shaping:
                args = ["netem", "delay", "%.3fms" % (self.rtt_ms / 2.0), "loss",
                        "%.4f%%" % self.loss_pct, "limit", "100000"]
                if self.rate_mbit:
                    args += ["rate", "%dmbit" % self.rate_mbit]
                ok, why = _tc_has(ns, dev, args)
                if not ok:
                    # No netem in this kernel: the forwarder does it.
                    _sh("ip", "netns", "exec", self.src_ns, "ip", "link", "del", self.src_dev,
                        check=False)
                    self.netem_missing = why
                    return False
            elif self.rate_mbit:
                self._tbf(ns, dev)
        self.netem = bool(shaping)
        self._addresses()
        self.kind = "veth" + (" + netem" if shaping else "") + (" + tbf" if self.rate_mbit and
                                                                not shaping else "")
        return True

    def _make_wire(self, seed):
        for ns, dev in ((self.src_ns, self.src_dev), (self.dst_ns, self.dst_dev)):
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            self._tun_fds.append(fd)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", dev.encode(), IFF_TUN | IFF_NO_PI))
            _sh("ip", "link", "set", dev, "netns", ns)
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", dev, "mtu", str(WIRE_MTU))
            if self.rate_mbit:
                self._tbf(ns, dev)
        wire_args = [str(self._tun_fds[0]), str(self._tun_fds[1]), str(self.rtt_ms / 2000.0),
                     str(self.loss_pct / 100.0), str(seed)]
        forwarder = wire_binary()
        if forwarder:
            self.wire = subprocess.Popen([forwarder] + wire_args, pass_fds=self._tun_fds)
        else:  # not built: the slow Python forwarder (~30-50 MB/s here)
            self.wire = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--wire"] +
                                         wire_args, pass_fds=self._tun_fds)
        for fd in self._tun_fds:
            os.close(fd)
        self._tun_fds = []
        self._addresses()
        self.kind = "tun pair (MTU %d) + %s delay/loss" % (
            WIRE_MTU, "lmwire" if forwarder else "Python") + (" + tbf" if self.rate_mbit else "")

    def _netem(self, loss_pct):
        for ns, dev in ((self.src_ns, self.src_dev), (self.dst_ns, self.dst_dev)):
            args = ["netem", "delay", "%.3fms" % (self.rtt_ms / 2.0), "loss", "%.4f%%" % loss_pct,
                    "limit", "100000"]
            if self.rate_mbit:
                args += ["rate", "%dmbit" % self.rate_mbit]
            _sh("ip", "netns", "exec", ns, "tc", "qdisc", "change", "dev", dev, "root", *args)

    def _tbf(self, ns, dev):
        rate = "%dmbit" % self.rate_mbit
        # burst: a 64 KB segment at least, and ~1 ms at the rate.
        burst = max(256 * 1024, self.rate_mbit * 1000 // 8)
        _sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
            rate, "burst", str(burst), "latency", "100ms")

    def _addresses(self):
        for ns, dev, addr, peer in ((self.src_ns, self.src_dev, SRC_ADDR, DST_ADDR),
                                    (self.dst_ns, self.dst_dev, DST_ADDR, SRC_ADDR)):
            _sh("ip", "netns", "exec", ns, "ip", "addr", "add", "%s/%d" % (addr, PREFIX), "dev",
                dev)
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", dev, "up")

    # -- what tests use --

    def run_in(self, ns):
        """The command prefix that runs a process inside namespace ns."""
        return ["ip", "netns", "exec", ns]

    def sysctl(self, key, value):
        """Set a per-namespace sysctl on both sides (e.g. tcp_retries2)."""
        for ns in (self.src_ns, self.dst_ns):
            _sh("ip", "netns", "exec", ns, "sysctl", "-qw", "%s=%s" % (key, value))

    def capacity(self, size=256 << 20, streams=1, timeout=180):
        """What the link carries, iperf-like: `size` bytes in `streams`
        plain TCP streams from the source namespace to the destination's.
        Returns (steady, average) bytes per second: steady counts the
        second half of each stream's bytes only, past TCP's slow start and
        its receive-window growth (a short stream over 10 ms RTT measures
        those, not the link); average is the whole transfer."""
        recv = subprocess.Popen(self.run_in(self.dst_ns) + [sys.executable, "-c", _SINK,
                                                            self.dst_addr],
                                stdout=subprocess.PIPE, text=True)
        try:
            port = recv.stdout.readline().strip()
            out = subprocess.run(self.run_in(self.src_ns) + [sys.executable, "-c", _SOURCE,
                                                             self.dst_addr, port, str(size),
                                                             str(streams)],
                                 capture_output=True, text=True, timeout=timeout, check=True)
            steady, average = out.stdout.split()
            return float(steady), float(average)
        finally:
            recv.kill()
            recv.wait()

    def down(self):
        """Cut the link: nothing passes either way until up().  Like a
        pulled cable, not like a device taken down on the sending host:
        the packets vanish on the way and TCP finds out by its own timers
        (a device that is down fails sends at once, and TCP then waits
        for ever).  The wire drops everything; a veth pair has its
        destination end taken down, so the source's end loses its carrier
        and drops what it is given."""
        if self.wire:
            self.wire.send_signal(signal.SIGUSR1)
        elif self.netem:
            self._netem(loss_pct=100.0)
        else:
            _sh("ip", "netns", "exec", self.dst_ns, "ip", "link", "set", self.dst_dev, "down")

    def up(self):
        if self.wire:
            self.wire.send_signal(signal.SIGUSR2)
        elif self.netem:
            self._netem(loss_pct=self.loss_pct)
        else:
            _sh("ip", "netns", "exec", self.dst_ns, "ip", "link", "set", self.dst_dev, "up")

    def close(self):
        if self.wire:
            self.wire.kill()
            self.wire.wait()
            self.wire = None
        for fd in self._tun_fds:
            os.close(fd)
        self._tun_fds = []
        for ns in (self.src_ns, self.dst_ns):
            # Deleting a namespace deletes its devices (and the veth peer).
            _sh("ip", "netns", "del", ns, check=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# capacity(): a sink that drains every connection and says when it has
# all (so the time is the receiver's), and a source of `streams` streams.
_SINK = r"""
import socket, struct, sys, threading, time
s = socket.socket(); s.bind((sys.argv[1], 0)); s.listen(16)
print(s.getsockname()[1], flush=True)
def drain(c):
    want = struct.unpack("!Q", c.recv(8, socket.MSG_WAITALL))[0]
    got, half = 0, None
    while True:
        n = len(c.recv(1 << 20))
        if not n:
            break
        got += n
        if half is None and got >= want // 2:
            half = (time.monotonic(), got)
    end = time.monotonic()
    c.sendall(("%r %r %r %r" % (half[0], half[1], end, got)).encode())
while True:
    c, _ = s.accept()
    threading.Thread(target=drain, args=(c,), daemon=True).start()
"""

# Times are the sink's CLOCK_MONOTONIC (one clock for every namespace).
_SOURCE = r"""
import socket, struct, sys, threading, time
size, streams = int(sys.argv[3]), int(sys.argv[4]); buf = bytes(1 << 20)
conns = [socket.create_connection((sys.argv[1], int(sys.argv[2]))) for _ in range(streams)]
marks = []
def send(c, left):
    c.sendall(struct.pack("!Q", left))
    while left:
        left -= c.send(memoryview(buf)[:min(left, len(buf))])
    c.shutdown(socket.SHUT_WR)
    marks.append([float(x) for x in c.recv(200).split()])
t = time.monotonic()
ts = [threading.Thread(target=send, args=(c, size // streams)) for c in conns]
for x in ts: x.start()
for x in ts: x.join()
end = max(m[2] for m in marks)
steady = sum(m[3] - m[1] for m in marks) / (end - min(m[0] for m in marks))
print(steady, size / (end - t))
"""


def _wire(fd_a, fd_b, one_way_s, loss, seed):
    """Forward packets between two TUN devices, each after one_way_s, dropping
    a `loss` fraction of them (the netem the kernel lacks)."""
    rng = random.Random(seed)
    cut = [False]  # SIGUSR1: the cable is pulled; SIGUSR2: back in
    signal.signal(signal.SIGUSR1, lambda *a: cut.__setitem__(0, True))
    signal.signal(signal.SIGUSR2, lambda *a: cut.__setitem__(0, False))
    peer = {fd_a: fd_b, fd_b: fd_a}
    queue = deque()  # (due, out_fd, packet): one delay for all, so FIFO
    for fd in (fd_a, fd_b):
        os.set_blocking(fd, False)
    debug = os.environ.get("LMWIRE_DEBUG")
    stats = [0, 0, time.monotonic()]
    while True:
        if debug and time.monotonic() - stats[2] > 1:
            print("wire: %d packets, %d bytes/s" % (stats[0], stats[1]), file=sys.stderr)
            stats = [0, 0, time.monotonic()]
        timeout = None
        if queue:
            timeout = max(0.0, queue[0][0] - time.monotonic())
        readable, _, _ = select.select([fd_a, fd_b], [], [], timeout)
        now = time.monotonic()
        for fd in readable:
            for _ in range(64):
                try:
                    pkt = os.read(fd, 65536)
                except BlockingIOError:
                    break
                except OSError:
                    break  # a device that is down
                stats[0] += 1
                stats[1] += len(pkt)
                if cut[0] or (loss and rng.random() < loss):
                    continue
                queue.append((now + one_way_s, peer[fd], pkt))
        while queue and queue[0][0] <= time.monotonic():
            _, out, pkt = queue.popleft()
            try:
                os.write(out, pkt)
            except OSError:
                pass  # down, or full: the packet is lost, as on a wire


if __name__ == "__main__" and len(sys.argv) == 7 and sys.argv[1] == "--wire":
    _wire(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]),
          int(sys.argv[6]))
