"""The riscv-virt machine with a real guest: Debian's OpenSBI and U-Boot.

It boots to U-Boot's prompt and answers typed commands; its console
matches QEMU's for the same firmware; and it migrates live while U-Boot
fills and compares memory in a loop: the destination's console carries on
where the source's stopped, every comparison still reports no difference,
memory is byte for byte the source's, and a command typed afterwards runs.
"""
import difflib
import os
import re
import shutil
import subprocess
import time
import zlib

import lmtest
import rvtest
from rvtest import PROMPT, RiscvTest

# The loop the guest runs while it migrates: two 256 KiB regions filled with
# the iteration's value and compared.  LOOPS bounds it; a migration that
# takes longer than the loop still checks everything, just with a quieter
# guest at the end.  U-Boot's numbers are hex.
LOOPS = 30
LOOP = ("setenv n 0; while itest $n -lt %x; do setexpr n $n + 1; echo it $n; "
        "mw.q 0x81000000 $n 0x8000; mw.q 0x81200000 $n 0x8000; "
        "cmp.q 0x81000000 0x81200000 0x8000; done" % LOOPS)
SAME = "Total of 32768 double word(s) were the same"

# Lines that name the machine and differ from QEMU's on purpose: QEMU's
# CPU has the H extension (hence its ISA string and delegation masks) and
# a CFI flash, and its device tree differs in size (where U-Boot puts it).
MACHINE_LINES = ("Boot HART Base ISA", "Boot HART MIDELEG", "Boot HART MEDELEG", "CPU:",
                 "Core:", "Flash:", "Working FDT set to")


class Boot(RiscvTest):
    def test_commands(self):
        vm = self.boot_to_prompt()
        self.assertIn(b"OpenSBI v", vm.boot_log)
        self.assertIn(b"Boot HART Priv Version    : v1.12", vm.boot_log)
        c = vm.console
        self.assertIn("U-Boot 20", c.command("version"))
        # crc32 of 4 KiB of a pattern, against Python's.
        c.command("mw.l 0x81000000 0x12345678 0x400")
        out = c.command("crc32 0x81000000 0x1000")
        want = zlib.crc32(bytes.fromhex("78563412") * 0x400)
        self.assertIn("==> %08x" % want, out)
        # random fills memory; cmp sees the difference and its position.
        self.assertIn("4096 bytes filled with random data", c.command("random 0x81001000 0x1000 7"))
        out = c.command("cmp.l 0x81000000 0x81001000 0x400")
        self.assertIn("!=", out)
        c.command("mw.l 0x81001000 0x12345678 0x400")
        self.assertIn("Total of 1024 word(s) were the same",
                      c.command("cmp.l 0x81000000 0x81001000 0x400"))
        # A loop of the shell runs to its end.
        out = c.command("for i in a b c; do echo x$i; done")
        self.assertEqual(out.split(), ["xa", "xb", "xc"])

    def test_bad_device_option(self):
        """--device names QEMU's virtio-rng-device or fails clearly."""
        for args, want in (
                (["--machine", "riscv-virt", "--device", "virtio-net-device"],
                 "only virtio-rng-device exists"),
                (["--device", "virtio-rng-device"], "need --machine riscv-virt")):
            p = subprocess.run([lmtest.VM_BIN] + args, capture_output=True, text=True, timeout=30)
            self.assertNotEqual(p.returncode, 0)
            self.assertIn(want, p.stderr)

    def test_console_matches_qemu(self):
        qemu = shutil.which("qemu-system-riscv64")
        if not qemu:
            self.skipTest("qemu-system-riscv64 not installed (Debian package qemu-system-misc)")
        ours = self.boot_to_prompt_unattended()
        qlog = self.path("qemu.console")
        proc = subprocess.Popen([qemu, "-M", "virt", "-m", "128M", "-smp", "1", "-display", "none",
                                 "-monitor", "none", "-serial", "file:" + qlog,
                                 "-bios", rvtest.OPENSBI, "-kernel", rvtest.UBOOT],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            theirs = wait_file(qlog, PROMPT)
        finally:
            proc.kill()
            proc.wait()
        a, b = normalise(theirs), normalise(ours)
        if a != b:
            diff = "\n".join(difflib.unified_diff(a, b, "qemu", "livemig-vm", lineterm=""))
            self.fail("console differs from QEMU's:\n" + diff)

    def boot_to_prompt_unattended(self):
        vm = self.rvm("src")
        return vm.console.wait(b"\n" + PROMPT)


def wait_file(path, pattern, timeout=rvtest.TIMEOUT):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(path, "rb") as f:
                data = f.read()
            if pattern in data:
                return data[:data.index(pattern) + len(pattern)]
        except FileNotFoundError:
            pass
        time.sleep(0.1)
    raise TimeoutError("%s: no %r after %ss" % (path, pattern, timeout))


def normalise(data):
    lines = data.decode(errors="replace").replace("\r", "").split("\n")
    return [l for l in lines if not l.startswith(MACHINE_LINES)]


def make_disk(path, sectors=2048):
    """An image whose every sector differs; returns its bytes.  (U-Boot
    takes block numbers in hex: the tests write them as 0x...)"""
    data = b"".join(bytes((i * 7 + j) & 255 for j in range(512)) for i in range(sectors))
    with open(path, "wb") as f:
        f.write(data)
    return data


class Disk(RiscvTest):
    def test_virtio_blk(self):
        img = self.path("disk.img")
        data = make_disk(img)
        vm = self.boot_to_prompt(extra=["--drive", "file=" + img])
        c = vm.console
        c.command("virtio scan")
        self.assertIn("Capacity: 1.0 MB = 0.0 GB (2048 x 512)", c.command("virtio info"))
        self.assertIn("8 blocks read: OK", c.command("virtio read 0x81000000 0xa 8"))
        out = c.command("crc32 0x81000000 0x1000")
        self.assertIn("==> %08x" % zlib.crc32(data[10 * 512:18 * 512]), out)
        c.command("mw.b 0x81100000 0xa5 0x400")
        self.assertIn("2 blocks written: OK", c.command("virtio write 0x81100000 0x64 2"))
        with open(img, "rb") as f:
            f.seek(100 * 512)
            self.assertEqual(f.read(1024), b"\xa5" * 1024)
            f.seek(0)
            rest = f.read()
        self.assertEqual(rest[:100 * 512], data[:100 * 512])
        self.assertEqual(rest[102 * 512:], data[102 * 512:])


def read_mtime(vm):
    """The CLINT's mtime (10 MHz) as the guest reads it.  (This machine does
    not enforce PMP, so S-mode U-Boot can read it; QEMU's would fault.)"""
    out = vm.console.command("md.q 0x200bff8 1")
    return int(re.search(r"0200bff8: ([0-9a-f]{16})", out).group(1), 16)


class Migrate(RiscvTest):
    """Live migration while U-Boot fills and compares memory."""

    def start_loop(self, src):
        src.console.type(LOOP + "\n")
        src.console.wait(b"it 2\r\n")

    def check_continues(self, src, dst, hash_check=True):
        """dst: the destination, paused (-S) unless it already runs."""
        if hash_check:
            self.assertEqual(dst.status(), "paused")
            self.assertEqual(src.status(), "postmigrate")
            self.assertEqual(src.memory_hash(), dst.memory_hash())
            dst.cmd("cont")
        self.assertEqual(dst.status(), "running")
        src.console.drain()
        tail = dst.console.wait(b"it %x\r\n" % LOOPS)
        tail += dst.console.wait(b"\n" + PROMPT)
        whole = (src.console.log + tail).decode(errors="replace").replace("\r", "")
        its = [int(x, 16) for x in re.findall(r"^it ([0-9a-f]+)$", whole, re.M)]
        self.assertEqual(its, list(range(1, LOOPS + 1)), "the console did not carry on:\n" + whole)
        self.assertNotIn("!=", whole)
        self.assertEqual(whole.count(SAME), LOOPS, whole)
        self.assertIn("U-Boot 20", dst.console.command("version"))
        self.assertIn(SAME, dst.console.command("cmp.q 0x81000000 0x81200000 0x8000"))

    def pair(self, caps=None, dst_paused=True, smp=1, extra=()):
        src = self.boot_to_prompt("src", smp=smp, extra=extra)
        dst = self.rvm("dst", incoming="defer", paused=dst_paused, smp=smp, extra=extra)
        if caps:
            src.set_caps(**caps)
            dst.set_caps(**caps)
        self.start_loop(src)
        return src, dst

    def test_precopy_unix(self):
        """uffd-wp tracks the interpreter's stores to guest RAM; the virtio
        disk (both sides open the image) works on after the move."""
        img = self.path("disk.img")
        data = make_disk(img)
        drive = ["--drive", "file=" + img]
        src = self.boot_to_prompt("src", extra=drive)
        dst = self.rvm("dst", incoming="defer", paused=True, extra=drive)
        src.console.command("virtio scan")
        self.assertIn("8 blocks read: OK", src.console.command("virtio read 0x81400000 0 8"))
        h0 = time.monotonic()
        t0 = read_mtime(src)
        self.start_loop(src)
        src.set_params(**{"x-dirty-tracker": "uffd-wp"})
        info = self.migrate(src, dst, "unix:" + self.path("mig.sock"))
        self.assertEqual(info.get("dirty-tracker"), "uffd-wp-async")
        self.check_continues(src, dst)
        c = dst.console
        self.assertIn("8 blocks read: OK", c.command("virtio read 0x81400000 0x14 8"))
        self.assertIn("==> %08x" % zlib.crc32(data[20 * 512:28 * 512]),
                      c.command("crc32 0x81400000 0x1000"))
        # Guest time carried on: forward, and by no more than the real time
        # that passed (it stands still while the guest runs nowhere).
        t1 = read_mtime(dst)
        h1 = time.monotonic()
        self.assertGreater(t1, t0)
        self.assertLessEqual((t1 - t0) / 10e6, h1 - h0 + 0.001)

    def test_precopy_interpreter_log(self):
        """The interpreter's own dirty bitmap (--dirty-log: set in its store
        path, pulled by the engine through lm_ram_set_dirty_log's hook) is
        the only tracker."""
        src, dst = self.pair(extra=["--dirty-log"])
        src.set_params(**{"x-dirty-tracker": "dirty-log"})
        info = self.migrate(src, dst, "unix:" + self.path("mig.sock"))
        self.assertEqual(info.get("dirty-tracker"), "dirty-log")
        self.check_continues(src, dst)

    def test_tcp_multifd_smp2(self):
        src, dst = self.pair(caps={"multifd": True}, smp=2)
        info = self.migrate(src, dst, "tcp:127.0.0.1:0")
        self.assertGreater(info["ram"]["multifd-bytes"], 0)
        self.check_continues(src, dst)

    def test_cancel_fail_then_retry(self):
        """A cancelled migration, then one whose destination dies, leave the
        source running: its loop goes on to the end and it answers a
        command; a third migration then completes."""
        src = self.boot_to_prompt("src")
        src.set_params(**{"max-bandwidth": 1 << 20})  # slow enough to interrupt
        self.start_loop(src)
        dst = self.rvm("dst", incoming="defer", paused=True)
        dst.cmd("migrate-incoming", uri="unix:" + self.path("mig.sock"))
        src.cmd("migrate", uri="unix:" + self.path("mig.sock"))
        src.wait_migration(statuses=("active",))
        src.cmd("migrate_cancel")
        self.assertEqual(src.wait_migration()["status"], "cancelled")
        self.assertEqual(src.status(), "running")

        dstb = self.rvm("dstb", incoming="defer", paused=True)
        dstb.cmd("migrate-incoming", uri="unix:" + self.path("migb.sock"))
        src.cmd("migrate", uri="unix:" + self.path("migb.sock"))
        src.wait_migration(statuses=("active",))
        dstb.kill()
        self.assertEqual(src.wait_migration()["status"], "failed")
        self.assertEqual(src.status(), "running")

        src.console.wait(b"it %x\r\n" % LOOPS)
        src.console.wait(PROMPT)
        whole = src.console.log.decode(errors="replace").replace("\r", "")
        self.assertEqual(whole.count(SAME), LOOPS, whole)
        self.assertNotIn("!=", whole)
        self.assertIn("U-Boot 20", src.console.command("version"))

        src.console.log = b""
        src.set_params(**{"max-bandwidth": 0})
        self.start_loop(src)
        dst2 = self.rvm("dst2", incoming="defer", paused=True)
        self.migrate(src, dst2, "unix:" + self.path("mig2.sock"))
        self.check_continues(src, dst2)

    def test_postcopy_preempt(self):
        src, dst = self.pair(caps={"postcopy_ram": True, "postcopy_preempt": True},
                             dst_paused=False)
        src.set_params(**{"max-bandwidth": 16 << 20})
        dst.cmd("migrate-incoming", uri="unix:" + self.path("mig.sock"))
        src.cmd("migrate", uri="unix:" + self.path("mig.sock"))
        src.wait_migration(statuses=("active", "postcopy-active", "completed"))
        src.cmd("migrate-start-postcopy")
        info = src.wait_migration()
        self.assertEqual(info["status"], "completed", info.get("error-desc"))
        self.assertEqual(dst.wait_migration()["status"], "completed")
        self.assertGreater(info["ram"]["postcopy-bytes"], 0)
        self.check_continues(src, dst, hash_check=False)

    def test_mapped_ram_save_restore(self):
        img = self.path("guest.img")
        src = self.boot_to_prompt("src")
        src.set_caps(**{"mapped-ram": True})
        self.start_loop(src)
        src.cmd("migrate", uri="file:" + img)
        self.assertEqual(src.wait_migration()["status"], "completed")
        dst = self.rvm("dst", incoming="defer", paused=True)
        dst.set_caps(**{"mapped-ram": True})
        dst.cmd("migrate-incoming", uri="file:" + img)
        self.assertEqual(dst.wait_migration()["status"], "completed")
        self.check_continues(src, dst)


if __name__ == "__main__":
    lmtest.main()
