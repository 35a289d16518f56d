"""Helpers for the riscv-virt tests: a livemig-vm running --machine
riscv-virt with Debian's OpenSBI + U-Boot, its QMP socket, and its console
on a unix socket (--serial unix:PATH) that the test reads and types into.
"""
import os
import socket
import subprocess
import time

import lmtest
from lmtest import QMP

OPENSBI = "/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_dynamic.bin"
UBOOT = "/usr/lib/u-boot/qemu-riscv64_smode/u-boot.bin"
PROMPT = b"=> "
TIMEOUT = 120.0  # generous: the machine may be loaded; nothing here measures speed


ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def linux_guest():
    """((kernel, initrd), None) for the Linux test guest, or (None, reason).
    The initramfs (seconds to build, keyed by tests/guest/init.c) is built
    when missing; the kernel (an hour on a loaded machine) only ever comes
    from the cache (scripts/build-linux-guest.sh builds it)."""
    script = os.path.join(ROOT, "scripts", "build-linux-guest.sh")
    subprocess.run([script, "--initramfs-only"], capture_output=True, text=True, timeout=600)
    p = subprocess.run([script, "--cached-only"], capture_output=True, text=True)
    if p.returncode != 0:
        return None, ("no cached Linux guest (%s); build it once with "
                      "scripts/build-linux-guest.sh" % p.stderr.strip())
    paths = dict(line.split(": ", 1) for line in p.stdout.splitlines() if ": " in line)
    return (paths["kernel"], paths["initrd"]), None


def missing_firmware():
    """The reason the U-Boot guest cannot run here, or None."""
    for path, pkg in ((OPENSBI, "opensbi"), (UBOOT, "u-boot-qemu")):
        if not os.path.exists(path):
            return "%s missing (Debian package %s)" % (path, pkg)
    return None


class Console:
    """A client of the machine's console socket."""

    def __init__(self, path, timeout=20.0):
        deadline = time.time() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.time() > deadline:
                    raise
                time.sleep(0.02)
        self.buf = b""      # received, not yet consumed by wait()
        self.log = b""      # everything received

    def _recv(self, timeout):
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        if not data:
            raise EOFError("console closed")
        self.buf += data
        self.log += data
        return True

    def wait(self, pattern, timeout=TIMEOUT):
        """Everything up to and including pattern (bytes)."""
        deadline = time.time() + timeout
        while pattern not in self.buf:
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError("console: no %r after %ss; last output: %r" %
                                   (pattern, timeout, self.buf[-400:]))
            self._recv(left)
        i = self.buf.index(pattern) + len(pattern)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def drain(self, quiet=0.5):
        """Reads until nothing arrives for `quiet` seconds."""
        while self._recv(quiet):
            pass

    def type(self, text):
        self.sock.sendall(text.encode() if isinstance(text, str) else text)

    def command(self, line, timeout=TIMEOUT):
        """Types a command at the prompt; returns its output (without the echo
        and the next prompt)."""
        self.type(line + "\n")
        out = self.wait(b"\n" + PROMPT, timeout)
        text = out.decode(errors="replace").replace("\r", "")
        lines = text.split("\n")
        # The first line is the echo, the last the new prompt.
        return "\n".join(lines[1:-1])

    def close(self):
        self.sock.close()


class RiscvVM(lmtest.VM):
    """livemig-vm --machine riscv-virt booting OpenSBI + U-Boot."""

    def __init__(self, tmpdir, name, memory="128M", smp=1, incoming=None, paused=False,
                 extra=(), kernel=UBOOT):
        self.name = name
        self.qmp_path = os.path.join(tmpdir, name + ".qmp")
        self.console_path = os.path.join(tmpdir, name + ".console")
        self.log_path = os.path.join(tmpdir, name + ".log")
        self.serial_path = self.log_path
        args = [lmtest.VM_BIN, "--machine", "riscv-virt", "--name", name, "--memory", str(memory),
                "--smp", str(smp), "--qmp", "unix:" + self.qmp_path,
                "--serial", "unix:" + self.console_path]
        if kernel:
            args += ["--kernel", kernel]
        if incoming:
            args += ["--incoming", incoming]
        if paused:
            args += ["--paused"]
        args += list(extra)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.qmp = self._connect()
        self.console = Console(self.console_path)

    def shutdown(self):
        self.console.close()
        super().shutdown()


class RiscvTest(lmtest.MigrationTest):
    def setUp(self):
        reason = missing_firmware()
        if reason:
            self.skipTest(reason)
        super().setUp()

    def rvm(self, name, **kw):
        v = RiscvVM(self.tmp, name, **kw)
        self.vms.append(v)
        return v

    def boot_to_prompt(self, name="src", **kw):
        """A machine at U-Boot's prompt (autoboot stopped by a key)."""
        vm = self.rvm(name, **kw)
        out = vm.console.wait(b"Hit any key to stop autoboot")
        vm.console.type("\n")
        vm.console.wait(PROMPT)
        vm.boot_log = out
        return vm
