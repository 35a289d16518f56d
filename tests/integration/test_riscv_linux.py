"""The Linux test guest (scripts/build-linux-guest.sh) boots to its
self-checking init on Debian's qemu-system-riscv64 -M virt and on
livemig-vm --machine riscv-virt: OpenSBI, the kernel, then /init reads
virtio-rng (/dev/hwrng), runs its memory workload for lmwork.secs=3,
prints progress lines and "lmwork: done ... ok" after a full verification
pass, and powers the machine off (the emulator exits 0).

LinuxMigrate migrates that guest live between two livemig-vm processes
while init's workload runs (precopy with uffd-wp, precopy with the
interpreter's own dirty log, postcopy with preempt): the destination's
console carries on (the progress lines' seconds go on rising, no mismatch),
the engine's memory hash matches (precopy), and on the destination init's
full pass over its buffer ("check", then "done") says ok, the virtio-rng
answers, and the machine powers off cleanly.

Skips, with the reason printed: no cached kernel (building it takes long;
run scripts/build-linux-guest.sh once), no qemu-system-riscv64, no
riscv-virt machine in livemig-vm, and the livemig-vm runs in the sanitizer
build (LIVEMIG_SANITIZED: a Linux boot there takes over 15 minutes).
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import lmtest  # noqa: E402
import rvtest  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OPENSBI = "/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_dynamic.bin"
# panic=-1: a guest that panics resets at once (QEMU: -no-reboot exits;
# livemig-vm powers off on a reset) instead of idling until RUN_LIMIT_S.
# Two harts: the guest once hung with two on livemig-vm (a CSRRS of mip
# latched the PLIC's SEIP line into the software bit, fixed in rv_hart.c).
APPEND = "console=ttyS0 earlycon=sbi lmwork.mb=16 lmwork.secs=3 panic=-1"
RUN_LIMIT_S = 900   # a hang guard, not a speed check


def cached_guest():
    return rvtest.linux_guest()


def livemig_guest():
    """cached_guest(), or (None, why) livemig-vm cannot boot it here."""
    paths, why = cached_guest()
    if not why and os.environ.get("LIVEMIG_SANITIZED") == "1":
        why = ("a whole Linux boot on the interpreter built with ASan/UBSan takes over 15 "
               "minutes; it runs in the normal build")
    if not why:
        out = subprocess.run([lmtest.VM_BIN, "--help"], capture_output=True, text=True)
        if "riscv-virt" not in out.stdout + out.stderr:
            why = "livemig-vm has no --machine riscv-virt yet (its --help does not list it)"
    return paths, why


HWRNG = r"lmwork: hwrng [0-9a-f]{32}\n"


class RiscvLinux(unittest.TestCase):
    def boot(self, who, guest, argv):
        """Boots guest, (kernel, initrd) or (None, why not: the test
        skips), with the command argv(console file, kernel, initrd) until
        it powers off; checks init's lines on its console."""
        paths, why = guest
        if why:
            print("SKIP %s: %s" % (who, why))
            self.skipTest(why)
        console = os.path.join(self.tmp, who + ".txt")
        cmd = argv(console, *paths)
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_LIMIT_S)
        except subprocess.TimeoutExpired:
            p = None
        with open(console, errors="replace") as f:
            text = f.read().replace("\r", "")
        tail = text[-3000:]
        self.assertIsNotNone(p, "%s: no poweroff within %ds; console tail:\n%s" %
                             (who, RUN_LIMIT_S, tail))
        self.assertNotIn("MISMATCH", text, "%s: the guest's check failed:\n%s" % (who, tail))
        self.assertRegex(text, r"lmwork: start mb=16 ", "%s: init did not start:\n%s" % (who, tail))
        self.assertRegex(text, HWRNG, "%s: no bytes from virtio-rng:\n%s" % (who, tail))
        self.assertRegex(text, r"lmwork: t=1 iter=\d+ chunks=\d+ ok",
                         "%s: no progress line:\n%s" % (who, tail))
        self.assertRegex(text, r"lmwork: done t=\d+ iter=\d+ chunks=\d+ ok",
                         "%s: no final ok:\n%s" % (who, tail))
        self.assertEqual(p.returncode, 0, "%s: exit %d after poweroff; stderr:\n%s" %
                         (who, p.returncode, p.stderr[-2000:]))
        print("%s: %s" % (who, re.findall(r"lmwork: done[^\n]*", text)[-1]))

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="lm-rv-linux-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_qemu(self):
        paths, why = cached_guest()
        if not why and not shutil.which("qemu-system-riscv64"):
            why = "qemu-system-riscv64 not installed (package qemu-system-misc)"
        self.boot("qemu", (paths, why), lambda console, kernel, initrd: [
            "qemu-system-riscv64", "-M", "virt", "-m", "256M", "-smp", "2", "-no-reboot",
            "-display", "none", "-monitor", "none", "-serial", "file:" + console,
            "-device", "virtio-rng-device", "-bios", OPENSBI, "-kernel", kernel, "-initrd", initrd,
            "-append", APPEND])

    def test_livemig(self):
        self.boot("livemig-vm", livemig_guest(), lambda console, kernel, initrd: [
            lmtest.VM_BIN, "--machine", "riscv-virt", "--memory", "256M", "--smp", "2",
            "--serial", "file:" + console, "--device", "virtio-rng-device",
            "--bios", OPENSBI, "--kernel", kernel, "--initrd", initrd, "--append", APPEND])


# The migrated guest: init runs until told "done" on its console.  128 MiB
# of RAM, 16 MiB of workload rewritten at 8 MiB/s at most (lmtest's
# LIVE_RATE), which a migration over a unix socket outruns.
MIGRATE_APPEND = "console=ttyS0 earlycon=sbi lmwork.mb=16 lmwork.rate_mb=8 panic=-1"
MIGRATE_SMP = 2
BOOT_TIMEOUT = 600.0   # a hang guard for a Linux boot on a loaded machine, not a speed check
PROGRESS = re.compile(r"^lmwork: t=(\d+) iter=\d+ chunks=\d+ (ok|FAIL.*)$", re.M)


def console_text(data):
    return data.decode(errors="replace").replace("\r", "")


class LinuxMigrate(rvtest.RiscvTest):
    def setUp(self):
        super().setUp()
        self.guest, why = livemig_guest()
        if why:
            print("SKIP: " + why)
            self.skipTest(why)

    def linux(self, name, extra=(), **kw):
        args = ["--initrd", self.guest[1], "--append", MIGRATE_APPEND,
                "--device", "virtio-rng-device"] + list(extra)
        return self.rvm(name, memory="128M", smp=MIGRATE_SMP, kernel=self.guest[0],
                        extra=args, **kw)

    def boot(self, extra=()):
        """A source whose init has filled its buffer, read the rng and
        printed two progress lines."""
        src = self.linux("src", extra)
        src.console.wait(b"lmwork: filled ", BOOT_TIMEOUT)
        src.console.wait(b"lmwork: hwrng ", BOOT_TIMEOUT)
        # Two progress lines (not "t=2": the seconds skip a number when
        # the guest got no CPU for a while on a loaded machine).
        src.console.wait(b"lmwork: t=", BOOT_TIMEOUT)
        src.console.wait(b"lmwork: t=", BOOT_TIMEOUT)
        src.console.wait(b"\n", BOOT_TIMEOUT)
        return src

    def check_carries_on(self, src, dst):
        """The destination runs; init goes on where the source stopped and
        proves its memory on the destination."""
        self.assertEqual(dst.status(), "running")
        src.console.drain()
        before = console_text(src.console.log)
        src_ts = [int(m.group(1)) for m in PROGRESS.finditer(before)]
        self.assertTrue(src_ts, "no progress line on the source:\n" + before[-3000:])
        # Two whole progress lines from the destination.
        c = dst.console
        c.wait(b"lmwork: t=", rvtest.TIMEOUT)
        c.wait(b"lmwork: t=", rvtest.TIMEOUT)
        c.wait(b"\n", rvtest.TIMEOUT)
        after = console_text(c.log)
        whole = before + after
        ts = [int(m.group(1)) for m in PROGRESS.finditer(whole)]
        self.assertGreaterEqual(len(ts), len(src_ts) + 1, whole[-3000:])
        self.assertEqual(ts, sorted(set(ts)), "progress did not carry on:\n" + whole[-3000:])
        self.assertNotIn("MISMATCH", whole)
        self.assertNotIn("FAIL", whole)
        # virtio-rng answers on the destination (its queue state arrived).
        c.type("rng\n")
        c.wait(b"lmwork: hwrng ", rvtest.TIMEOUT)
        # A full pass over every chunk on the destination, then done.
        c.type("check\n")
        out = console_text(c.wait(b"lmwork: check ", rvtest.TIMEOUT) + c.wait(b"\n", rvtest.TIMEOUT))
        c.type("done\n")
        out += console_text(c.wait(b"lmwork: done ", rvtest.TIMEOUT) + c.wait(b"\n", rvtest.TIMEOUT))
        whole = before + console_text(c.log)
        self.assertRegex(out, r"lmwork: check t=\d+ chunks=256 ok", whole[-3000:])
        self.assertRegex(out, r"lmwork: done t=\d+ iter=\d+ chunks=\d+ ok", whole[-3000:])
        self.assertRegex(whole, HWRNG + r"(.|\n)*" + HWRNG, whole[-3000:])
        self.assertNotIn("MISMATCH", whole)
        # init powers the machine off: the destination exits cleanly.
        self.assertEqual(dst.proc.wait(timeout=rvtest.TIMEOUT), 0)
        print("%s" % re.findall(r"lmwork: done[^\n]*", whole)[-1])

    def precopy(self, tracker, extra=()):
        src = self.boot(extra)
        dst = self.linux("dst", extra, incoming="defer", paused=True)
        src.set_params(**{"x-dirty-tracker": tracker})
        info = self.migrate(src, dst, "unix:" + self.path("mig.sock"), timeout=rvtest.TIMEOUT)
        self.assertEqual(src.status(), "postmigrate")
        self.assertEqual(dst.status(), "paused")
        self.assertEqual(src.memory_hash(), dst.memory_hash())
        dst.cmd("cont")
        self.check_carries_on(src, dst)
        return info

    def test_precopy_uffd_wp(self):
        """uffd-wp write-protects guest RAM under the interpreter's stores."""
        info = self.precopy("uffd-wp")
        self.assertEqual(info.get("dirty-tracker"), "uffd-wp-async")

    def test_precopy_interpreter_log(self):
        """The interpreter's own dirty bitmap, set in its store path (as
        QEMU's TCG does) and pulled by the engine at every sync
        (--dirty-log: lm_ram_set_dirty_log), is the only tracker."""
        info = self.precopy("dirty-log", extra=["--dirty-log"])
        self.assertEqual(info.get("dirty-tracker"), "dirty-log")
        self.assertGreater(info["ram"]["dirty-sync-count"], 1)

    def test_postcopy_preempt(self):
        src = self.boot()
        dst = self.linux("dst", incoming="defer")
        for vm in (src, dst):
            vm.set_caps(postcopy_ram=True, postcopy_preempt=True)
        src.set_params(**{"max-bandwidth": 16 << 20})
        dst.cmd("migrate-incoming", uri="unix:" + self.path("mig.sock"))
        src.cmd("migrate", uri="unix:" + self.path("mig.sock"))
        src.wait_migration(statuses=("active",), timeout=rvtest.TIMEOUT)
        src.cmd("migrate-start-postcopy")
        info = src.wait_migration(timeout=rvtest.TIMEOUT)
        self.assertEqual(info["status"], "completed", info.get("error-desc"))
        self.assertEqual(dst.wait_migration(timeout=rvtest.TIMEOUT)["status"], "completed")
        self.assertGreater(info["ram"]["postcopy-bytes"], 0)
        self.check_carries_on(src, dst)


if __name__ == "__main__":
    unittest.main(verbosity=2)
