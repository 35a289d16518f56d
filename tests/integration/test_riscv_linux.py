"""The Linux test guest (scripts/build-linux-guest.sh) boots to its
self-checking init on Debian's qemu-system-riscv64 -M virt and on
livemig-vm --machine riscv-virt: OpenSBI, the kernel, then /init runs its
memory workload for lmwork.secs=3, prints progress lines and "lmwork: done
... ok" after a full verification pass, and powers the machine off (the
emulator exits 0).

Skips, with the reason printed: no cached kernel (building it takes long;
run scripts/build-linux-guest.sh once), no qemu-system-riscv64, no
riscv-virt machine in livemig-vm.
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

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OPENSBI = "/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_dynamic.bin"
# panic=-1: a guest that panics resets at once (QEMU: -no-reboot exits;
# livemig-vm powers off on a reset) instead of idling until RUN_LIMIT_S.
# One hart: the init program's workload has crashed (SIGSEGV in init, on
# QEMU and livemig-vm alike) with two; see the closing note of this stop.
APPEND = "console=ttyS0 earlycon=sbi lmwork.mb=16 lmwork.secs=3 panic=-1"
RUN_LIMIT_S = 900   # a hang guard, not a speed check


def cached_guest():
    p = subprocess.run([os.path.join(ROOT, "scripts", "build-linux-guest.sh"), "--cached-only"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        return None, ("no cached Linux guest (%s); build it once with "
                      "scripts/build-linux-guest.sh" % p.stderr.strip())
    paths = dict(line.split(": ", 1) for line in p.stdout.splitlines() if ": " in line)
    return (paths["kernel"], paths["initrd"]), None


class RiscvLinux(unittest.TestCase):
    def boot(self, who, cmd, console):
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
        if why:
            print("SKIP qemu: " + why)
            self.skipTest(why)
        console = os.path.join(self.tmp, "qemu.txt")
        self.boot("qemu", ["qemu-system-riscv64", "-M", "virt", "-m", "256M", "-smp", "1", "-no-reboot",
                           "-display", "none", "-monitor", "none", "-serial", "file:" + console,
                           "-bios", OPENSBI, "-kernel", paths[0], "-initrd", paths[1],
                           "-append", APPEND], console)

    def test_livemig(self):
        paths, why = cached_guest()
        if not why and os.environ.get("LIVEMIG_SANITIZED") == "1":
            why = ("a whole Linux boot on the interpreter built with ASan/UBSan takes over 15 "
                   "minutes; it runs in the normal build")
        if not why:
            out = subprocess.run([lmtest.VM_BIN, "--help"], capture_output=True, text=True)
            if "riscv-virt" not in out.stdout + out.stderr:
                why = "livemig-vm has no --machine riscv-virt yet (its --help does not list it)"
        if why:
            print("SKIP livemig: " + why)
            self.skipTest(why)
        console = os.path.join(self.tmp, "livemig.txt")
        self.boot("livemig-vm", [lmtest.VM_BIN, "--machine", "riscv-virt", "--memory", "256M",
                                 "--smp", "1", "--serial", "file:" + console,
                                 "--bios", OPENSBI, "--kernel", paths[0], "--initrd", paths[1],
                                 "--append", APPEND], console)


if __name__ == "__main__":
    unittest.main(verbosity=2)
