"""RISC-V instruction tests: the bare-metal programs of tests/riscv run on
livemig-vm --machine riscv-virt (--bios PROG.bin, console to a file) and on
Debian's qemu-system-riscv64 -M virt, and each console must equal the
output QEMU produced when tests/riscv/expected/PROG.txt was recorded
(tests/riscv/update_expected.sh).  Running QEMU again here keeps the
expected files honest; livemig-vm must match them line for line.  The
unified diff is printed on a mismatch.

Skips, with the reason printed: the programs were not built (no
riscv64-unknown-elf-gcc + picolibc), livemig-vm has no riscv-virt machine,
qemu-system-riscv64 is not installed.
"""
import difflib
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import lmtest  # noqa: E402

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "riscv")
EXPECTED = os.path.join(SRC, "expected")
PROGS_DIR = os.environ.get("LIVEMIG_RISCV_PROGS", "")
PROGRAMS = ["alu", "muldiv", "atomic", "fp", "rvc", "csr", "trap", "paging", "speed_short"]
# Hang guards only (an emulator that stops printing), never a speed check.
RUN_LIMIT_S = 600


def programs_missing():
    if not PROGS_DIR:
        return ("RISC-V test programs not built: riscv64-unknown-elf-gcc and picolibc "
                "(packages gcc-riscv64-unknown-elf picolibc-riscv64-unknown-elf) not found "
                "when meson configured the build")
    missing = [p for p in PROGRAMS if not os.path.exists(os.path.join(PROGS_DIR, p + ".bin"))]
    if missing:
        return "RISC-V test programs missing from %s: %s" % (PROGS_DIR, " ".join(missing))
    return None


def riscv_virt_missing():
    try:
        out = subprocess.run([lmtest.VM_BIN, "--help"], capture_output=True, text=True,
                             timeout=30)
    except OSError as e:
        return "livemig-vm not runnable: %s" % e
    if "riscv-virt" not in out.stdout + out.stderr:
        return "livemig-vm has no --machine riscv-virt yet (its --help does not list it)"
    return None


def diff(expected, got, name):
    return "".join(difflib.unified_diff(expected.splitlines(True), got.splitlines(True),
                                        "expected/%s.txt" % name, "%s console" % name))


class RiscvIsa(unittest.TestCase):
    def expected(self, name):
        with open(os.path.join(EXPECTED, name + ".txt")) as f:
            return f.read()

    def check_output(self, who, name, rc, console, err=""):
        want = self.expected(name)
        if console != want:
            d = diff(want, console, name)
            print("%s: %s console differs from expected (%d lines of diff):\n%s" %
                  (who, name, d.count("\n"), d[:20000]))
            if err:
                print("%s stderr:\n%s" % (who, err[-4000:]))
            self.fail("%s: %s output differs from tests/riscv/expected/%s.txt" %
                      (who, name, name))
        self.assertEqual(rc, 0, "%s: %s exit status %d (output matched)" % (who, name, rc))

    def run_livemig(self, name):
        reason = programs_missing() or riscv_virt_missing()
        if reason:
            print("SKIP livemig %s: %s" % (name, reason))
            self.skipTest(reason)
        tmp = tempfile.mkdtemp(prefix="lm-rv-isa-")
        try:
            console = os.path.join(tmp, "console.txt")
            cmd = [lmtest.VM_BIN, "--machine", "riscv-virt", "--memory", "128M",
                   "--bios", os.path.join(PROGS_DIR, name + ".bin"),
                   "--serial", "file:" + console]
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_LIMIT_S)
            except subprocess.TimeoutExpired:
                with open(console, errors="replace") as f:
                    got = f.read()
                self.fail("livemig-vm: %s did not finish in %ds; console so far:\n%s" %
                          (name, RUN_LIMIT_S, got[-4000:]))
            with open(console, errors="replace") as f:
                got = f.read()
            self.check_output("livemig-vm", name, p.returncode, got, p.stderr)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def run_qemu(self, name):
        reason = programs_missing()
        if not reason and not shutil.which("qemu-system-riscv64"):
            reason = "qemu-system-riscv64 not installed (package qemu-system-misc)"
        if reason:
            print("SKIP qemu %s: %s" % (name, reason))
            self.skipTest(reason)
        p = subprocess.run([os.path.join(SRC, "run_qemu.sh"),
                            os.path.join(PROGS_DIR, name + ".bin"), str(RUN_LIMIT_S)],
                           capture_output=True, text=True, errors="replace")
        self.check_output("qemu", name, p.returncode, p.stdout, p.stderr)


def _add(name):
    setattr(RiscvIsa, "test_%s_livemig" % name, lambda self: self.run_livemig(name))
    setattr(RiscvIsa, "test_%s_qemu" % name, lambda self: self.run_qemu(name))


for _name in PROGRAMS:
    _add(_name)

if __name__ == "__main__":
    unittest.main(verbosity=2)
