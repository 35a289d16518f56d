"""QEMU's behaviour where livemig differed without a reason, and security
hardening (issue 9, items 12, 13, 15, 16)."""
import os
import socket
import stat
import struct
import subprocess
import shutil

import lmtest
from lmtest import MigrationTest, QMPError

MEM = "64M"


def caps_of(vm):
    return {c["capability"]: c["state"] for c in vm.cmd("query-migrate-capabilities")}


class IncomingUri(MigrationTest):
    def test_settings_before_first_connection(self):
        """A destination started with --incoming URI takes capabilities and
        parameters until the source connects (QEMU's tests rely on it)."""
        sock = self.path("dst.sock")
        src = self.vm("src", memory=MEM, workload="random", extra=["--dirty-rate", "4M"])
        dst = self.vm("dst", memory=MEM, workload="random", incoming="unix:" + sock, paused=True)
        self.assertEqual(dst.migration()["status"], "setup")
        dst.set_caps(multifd=True)
        dst.set_params(**{"multifd-channels": 3})
        self.assertTrue(caps_of(dst)["multifd"])
        src.set_caps(multifd=True)
        src.set_params(**{"multifd-channels": 3})
        info = self.migrate(src, dst, "unix:" + sock, dst_uri=False)
        self.assertGreater(info["ram"]["multifd-bytes"], 0)
        self.assert_same_memory(src, dst)
        dst.cmd("cont")
        self.assert_guest_ok(dst)


class ParameterChecks(MigrationTest):
    def setUp(self):
        super().setUp()
        self.src = self.vm("src", memory=MEM, workload="random", extra=["--dirty-rate", "4M"])

    def params(self):
        return self.src.cmd("query-migrate-parameters")

    def test_cpu_throttle(self):
        src = self.src
        with self.assertRaises(QMPError) as cm:
            src.set_params(**{"max-cpu-throttle": 10})  # below cpu-throttle-initial 20
        self.assertIn("max-cpu-throttle", cm.exception.desc)
        self.assertEqual(self.params()["max-cpu-throttle"], 99)
        src.set_params(**{"max-cpu-throttle": 30})
        # Checked as a whole, whichever order the request lists them in.
        src.set_params(**{"cpu-throttle-initial": 50, "max-cpu-throttle": 60})
        p = self.params()
        self.assertEqual((p["cpu-throttle-initial"], p["max-cpu-throttle"]), (50, 60))
        with self.assertRaises(QMPError):
            src.set_params(**{"cpu-throttle-initial": 70})
        with self.assertRaises(QMPError):
            src.set_params(**{"cpu-throttle-initial": 40, "max-cpu-throttle": 30})
        p = self.params()
        self.assertEqual((p["cpu-throttle-initial"], p["max-cpu-throttle"]), (50, 60))

    def test_zstd_level(self):
        self.src.set_params(**{"multifd-zstd-level": 0})
        self.assertEqual(self.params()["multifd-zstd-level"], 0)
        self.src.set_params(**{"multifd-zstd-level": 20})
        with self.assertRaises(QMPError):
            self.src.set_params(**{"multifd-zstd-level": 21})
        self.assertEqual(self.params()["multifd-zstd-level"], 20)

    def test_capability_combinations(self):
        src = self.src
        with self.assertRaises(QMPError) as cm:
            src.set_caps(postcopy_preempt=True)
        self.assertIn("requires postcopy-ram", cm.exception.desc)
        with self.assertRaises(QMPError) as cm:
            src.set_caps(zero_copy_send=True)
        self.assertIn("multifd", cm.exception.desc)
        with self.assertRaises(QMPError):
            src.set_params(**{"zero-copy-send": True})
        src.set_caps(mapped_ram=True)
        with self.assertRaises(QMPError) as cm:
            src.set_caps(postcopy_ram=True)
        self.assertIn("mapped-ram", cm.exception.desc)
        self.assertFalse(caps_of(src)["postcopy-ram"])
        src.set_caps(mapped_ram=False)
        # One request is checked as a whole, in either order.
        src.set_caps(postcopy_preempt=True, postcopy_ram=True)
        with self.assertRaises(QMPError):
            src.set_caps(postcopy_ram=False)
        src.set_caps(zero_copy_send=True, multifd=True)
        c = caps_of(src)
        self.assertTrue(c["postcopy-ram"] and c["postcopy-preempt"] and c["zero-copy-send"])
        self.assertEqual(src.status(), "running")

    def test_file_that_cannot_be_opened(self):
        """migrate to a file: it cannot write fails as a command; nothing starts."""
        src = self.src
        with self.assertRaises(QMPError) as cm:
            src.cmd("migrate", uri="file:" + self.path("no/such/dir/img"))
        self.assertIn("cannot open", cm.exception.desc)
        self.assertEqual(src.migration().get("status", "none"), "none")
        # Never through a symbolic link: the link's target is left alone.
        target = self.path("target")
        with open(target, "wb") as f:
            f.write(b"keep")
        os.symlink(target, self.path("link"))
        with self.assertRaises(QMPError) as cm:
            src.cmd("migrate", uri="file:" + self.path("link"))
        self.assertIn("symbolic link", cm.exception.desc)
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"keep")
        self.assertEqual(src.status(), "running")
        self.assertTrue(src.verify()["ok"])
        # A file that can be written: saved and restored intact.
        src.cmd("stop")
        src.cmd("migrate", uri="file:" + self.path("img"))
        self.assertEqual(src.wait_migration()["status"], "completed")
        dst = self.vm("dst", memory=MEM, workload="random", incoming="defer", paused=True)
        dst.cmd("migrate-incoming", uri="file:" + self.path("img"))
        self.assertEqual(dst.wait_migration()["status"], "completed")
        self.assertEqual(src.memory_hash(), dst.memory_hash())
        dst.cmd("cont")
        self.assert_guest_ok(dst)


class ExecStatus(MigrationTest):
    def test_exit_status_reported(self):
        """exec: whose command fails reports its exit status; the source
        runs on and a retry works."""
        src = self.vm("src", memory=MEM, workload="random", extra=["--dirty-rate", "4M"])
        for cmd, status in (("livemig-no-such-command-here", 127), ("exit 3", 3)):
            with self.subTest(cmd=cmd):
                src.cmd("migrate", uri="exec:" + cmd)
                info = src.wait_migration(statuses=("failed",))
                self.assertIn("exec: '%s' exited with status %d" % (cmd, status),
                              info["error-desc"])
                self.assertEqual(src.status(), "running")
        self.assertTrue(src.verify()["ok"])
        dst = self.vm("dst", memory=MEM, workload="random", incoming="defer")
        self.migrate(src, dst, "unix:" + self.path("dst.sock"))
        self.assert_guest_ok(dst)


class Hardening(MigrationTest):
    UMASK0 = ["sh", "-c", 'umask 0; exec "$@"', "sh"]

    def test_qmp_socket_mode(self):
        """0600 whatever the umask; --qmp-mode widens it on purpose."""
        vm = self.vm("a", memory="16M", wrapper=self.UMASK0)
        self.assertEqual(stat.S_IMODE(os.stat(vm.qmp_path).st_mode), 0o600)
        vm = self.vm("b", memory="16M", wrapper=self.UMASK0, extra=["--qmp-mode", "0660"])
        self.assertEqual(stat.S_IMODE(os.stat(vm.qmp_path).st_mode), 0o660)
        self.assertEqual(vm.status(), "running")

    def test_device_chunk_promise(self):
        """A device section that promises 64 MiB and sends 9 bytes is read
        into a buffer that grows as bytes arrive: under an address-space
        limit 48 MiB above its size, the destination reports the truncated
        stream, not a failed 64 MiB allocation."""
        if not shutil.which("prlimit"):
            self.skipTest("needs prlimit (util-linux)")
        sock = self.path("dst.sock")
        dst = self.vm("dst", memory="16M", incoming="defer")
        dst.cmd("migrate-incoming", uri="unix:" + sock)
        with open("/proc/%d/status" % dst.proc.pid) as f:
            vmsize = int([l for l in f if l.startswith("VmSize:")][0].split()[1]) * 1024
        limit = vmsize + (48 << 20)  # room for the run, not for 64 MiB
        subprocess.run(["prlimit", "--pid", str(dst.proc.pid), "--as=%d" % limit], check=True)
        config = bytes(16) + struct.pack(">II", 0, 1) + bytes([4]) + b"ram0" + \
            struct.pack(">QI", 16 << 20, 4096)
        stream = struct.pack(">II", 0x4C4D4947, 1)
        stream += b"\x01" + struct.pack(">I", len(config)) + config
        stream += b"\x05" + struct.pack(">I", 1) + bytes([5]) + b"clock" + struct.pack(">II", 0, 1)
        stream += struct.pack(">I", 64 << 20) + b"123456789"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock)
        s.sendall(stream)
        s.close()
        info = dst.wait_migration(statuses=("failed",))
        self.assertNotIn("out of memory", info["error-desc"])
        self.assertIn("end of stream", info["error-desc"])
        self.assertTrue(dst.alive())
        self.assertEqual(dst.status(), "inmigrate")


if __name__ == "__main__":
    lmtest.main()
