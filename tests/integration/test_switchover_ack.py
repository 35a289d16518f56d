"""switchover-ack (QEMU 8.1): a device on the destination holds the
switchover until it is ready.  livemig-vm's vram device approves once its
precopy data is loaded; x-vram-withhold-ack is its test hook for a device
that is not ready (issue 12 §2).

No timing threshold: the tests wait for the source to say it waits
(query-migrate's x-switchover-ack) and count passes, never seconds.
"""
import subprocess
import time

import lmtest
from lmtest import MigrationTest

MEM = "32M"
EXTRA = ["--vram", "1M"] + lmtest.LIVE_RATE


class SwitchoverAck(MigrationTest):
    def pair(self, dst_name="dst", withhold=False):
        if not hasattr(self, "src"):
            self.src = self.vm("src", memory=MEM, workload="random", extra=EXTRA)
            self.src.set_caps(switchover_ack=True)
            self.assertTrue(self.src.wait_running_steps())
        dst = self.vm(dst_name, memory=MEM, workload="random", extra=EXTRA, incoming="defer")
        dst.set_caps(switchover_ack=True)
        if withhold:
            dst.cmd("x-vram-withhold-ack", withhold=True)
        return self.src, dst

    def start(self, src, dst, name):
        uri = "unix:" + self.path(name)
        dst.cmd("migrate-incoming", uri=uri)
        src.cmd("migrate", uri=uri)

    def wait_holding(self, src, dst, passes=3, timeout=lmtest.DEFAULT_TIMEOUT):
        """The source is ready to switch over and waits for the ack, for
        `passes` more passes; returns its last query-migrate."""
        deadline = time.time() + timeout
        first = None
        while time.time() < deadline:
            info = src.migration()
            self.assertIn(info["status"], ("setup", "active"), info)
            if info.get("x-switchover-ack") == "waiting":
                count = info["ram"]["dirty-sync-count"]
                first = count if first is None else first
                if count >= first + passes:
                    return info
            time.sleep(0.02)
        self.fail("the source never waited for the ack: %s" % src.migration())

    def test_acked_completes(self):
        self.run_acked()

    def test_acked_completes_multifd(self):
        self.run_acked(caps={"multifd": True})

    def run_acked(self, caps=None):
        src, dst = self.pair()
        for vm in (src, dst):
            vm.set_caps(**(caps or {}))
        self.start(src, dst, "mig.sock")
        info = src.wait_migration()
        self.assertEqual(info["status"], "completed", info.get("error-desc"))
        self.assertEqual(info["x-switchover-ack"], "acked")
        self.assertEqual(dst.wait_migration()["status"], "completed")
        self.assertNotIn("x-switchover-ack-pending", dst.migration())
        self.assert_guest_ok(dst)  # guest RAM and every vram chunk

    def test_withheld_ack_holds_the_switchover(self):
        src, dst = self.pair(withhold=True)
        self.start(src, dst, "mig.sock")
        self.wait_holding(src, dst)
        # The destination still waits for its one device; livemig info says so.
        self.assertEqual(dst.migration()["x-switchover-ack-pending"], 1)
        out = subprocess.run([lmtest.CLI_BIN, "info", src.qmp_path], capture_output=True,
                             text=True, timeout=30)
        self.assertIn("Switchover ack:         waiting for the destination's devices", out.stdout)
        self.assertEqual(dst.status(), "inmigrate")
        self.assertEqual(src.status(), "running")
        # The timeline says so too.
        hist = src.cmd("x-query-migration-history")
        self.assertTrue(hist["passes"][-1]["switchover-ack-pending"], hist["passes"][-1])
        # The device is ready: the switchover follows.
        dst.cmd("x-vram-withhold-ack", withhold=False)
        info = src.wait_migration()
        self.assertEqual(info["status"], "completed", info.get("error-desc"))
        self.assertEqual(info["x-switchover-ack"], "acked")
        self.assertEqual(dst.wait_migration()["status"], "completed")
        self.assert_guest_ok(dst)

    def test_never_acked_stays_active_until_cancel(self):
        src, dst = self.pair(withhold=True)
        self.start(src, dst, "mig.sock")
        self.wait_holding(src, dst, passes=5)
        src.cmd("migrate_cancel")
        self.assertEqual(src.wait_migration()["status"], "cancelled")
        # The source runs on, intact.
        self.assert_guest_ok(src)
        # A retry to a destination whose device acks completes.
        src2, dst2 = self.pair("dst2")
        self.start(src2, dst2, "mig2.sock")
        info = src2.wait_migration()
        self.assertEqual(info["status"], "completed", info.get("error-desc"))
        self.assertEqual(dst2.wait_migration()["status"], "completed")
        self.assert_guest_ok(dst2)

    def test_needs_return_path(self):
        src = self.vm("src", memory=MEM, workload="random", extra=EXTRA)
        src.set_caps(return_path=False)
        with self.assertRaisesRegex(lmtest.QMPError, "requires capability 'return-path'"):
            src.set_caps(switchover_ack=True)
        src.set_caps(return_path=True, switchover_ack=True)
        with self.assertRaisesRegex(lmtest.QMPError, "requires capability 'return-path'"):
            src.set_caps(return_path=False)
        # A file has no return path: a clear failure, and the guest runs on.
        src.cmd("migrate", uri="file:" + self.path("state"))
        info = src.wait_migration()
        self.assertEqual(info["status"], "failed")
        self.assertIn("switchover-ack needs the return path", info["error-desc"])
        self.assert_guest_ok(src)


if __name__ == "__main__":
    lmtest.main()
