"""Nothing lost: cancelled and failed migrations leave the source guest
running and intact, and a retry succeeds."""
import os
import signal
import socket
import time

import lmtest
from lmtest import MigrationTest

MEM = "128M"
SLOW = lmtest.SLOW_BANDWIDTH  # keeps the migration active until the test ends it


class Cancel(MigrationTest):
    def setUp(self):
        super().setUp()
        # A dirty rate any migration outruns (the retries), above SLOW.
        self.src = self.vm("src", memory=MEM, workload="increment", extra=lmtest.LIVE_RATE)
        self.assertTrue(self.src.wait_running_steps())

    def retry_succeeds(self, name="dst2"):
        """The source runs intact, and a second migration completes."""
        src = self.src
        self.assertEqual(src.status(), "running")
        v = src.verify()
        self.assertTrue(v["ok"], v)
        self.assertTrue(src.wait_running_steps())
        src.set_params(**{"max-bandwidth": 0})
        dst = self.vm(name, memory=MEM, workload="increment", incoming="defer")
        self.migrate(src, dst, "unix:" + self.path(name + ".sock"))
        self.assert_guest_ok(dst)

    def start_slow(self, dst_name="dst"):
        dst = self.vm(dst_name, memory=MEM, workload="increment", incoming="defer")
        self.src.set_params(**{"max-bandwidth": SLOW})
        dst.cmd("migrate-incoming", uri="unix:" + self.path(dst_name + ".sock"))
        self.src.cmd("migrate", uri="unix:" + self.path(dst_name + ".sock"))
        return dst

    def test_cancel_none(self):
        self.src.cmd("migrate_cancel")
        self.assertEqual(self.src.migration().get("status", "none"), "none")
        self.retry_succeeds()

    def test_cancel_setup(self):
        # A peer whose accept queue is full: the connect waits in setup.
        path = self.path("busy.sock")
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(path)
        lsock.listen(0)
        fillers = []
        for _ in range(4):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(path)
            except (BlockingIOError, OSError):
                pass
            fillers.append(s)
        self.src.cmd("migrate", uri="unix:" + path)
        info = self.src.wait_migration(statuses=("setup",), timeout=5)
        self.assertEqual(info["status"], "setup")
        time.sleep(0.2)
        self.assertEqual(self.src.migration()["status"], "setup")
        self.src.cmd("migrate_cancel")
        self.assertEqual(self.src.wait_migration()["status"], "cancelled")
        for s in fillers:
            s.close()
        lsock.close()
        self.retry_succeeds()

    def test_cancel_active(self):
        self.start_slow()
        self.src.wait_migration(statuses=("active",))
        time.sleep(0.3)
        self.src.cmd("migrate_cancel")
        self.assertEqual(self.src.wait_migration()["status"], "cancelled")
        self.retry_succeeds()

    def test_cancel_twice(self):
        self.start_slow()
        self.src.wait_migration(statuses=("active",))
        self.src.cmd("migrate_cancel")
        self.src.cmd("migrate_cancel")
        self.assertEqual(self.src.wait_migration()["status"], "cancelled")
        self.src.cmd("migrate_cancel")
        self.assertEqual(self.src.migration()["status"], "cancelled")
        self.retry_succeeds()

    def test_cancel_pre_switchover(self):
        self.src.set_caps(pause_before_switchover=True)
        dst = self.vm("dst", memory=MEM, workload="increment", incoming="defer")
        dst.cmd("migrate-incoming", uri="unix:" + self.path("dst.sock"))
        self.src.cmd("migrate", uri="unix:" + self.path("dst.sock"))
        self.src.wait_migration(statuses=("pre-switchover",))
        self.assertNotEqual(self.src.status(), "running")
        self.src.cmd("migrate_cancel")
        self.assertEqual(self.src.wait_migration()["status"], "cancelled")
        self.src.set_caps(pause_before_switchover=False)
        self.retry_succeeds()

    def test_cancel_completed(self):
        dst = self.vm("dst", memory=MEM, workload="increment", incoming="defer")
        self.migrate(self.src, dst, "unix:" + self.path("dst.sock"))
        self.src.cmd("migrate_cancel")
        self.assertEqual(self.src.migration()["status"], "completed")
        self.assertEqual(self.src.status(), "postmigrate")
        self.assert_guest_ok(dst)
        # The management tool may take the source back and migrate again.
        dst.cmd("quit")
        self.src.cmd("cont")
        self.retry_succeeds()

    def test_cancel_failed(self):
        self.src.cmd("migrate", uri="unix:" + self.path("nobody.sock"))
        info = self.src.wait_migration()
        self.assertEqual(info["status"], "failed")
        self.src.cmd("migrate_cancel")
        self.assertEqual(self.src.migration()["status"], "failed")
        self.retry_succeeds()


class Failures(MigrationTest):
    def test_nothing_listening_tcp(self):
        src = self.vm("src", memory=MEM)
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        src.cmd("migrate", uri="tcp:127.0.0.1:%d" % port)
        info = src.wait_migration()
        self.assertEqual(info["status"], "failed")
        self.assertIn("connect", info["error-desc"])
        self.assertEqual(src.status(), "running")
        self.assert_guest_ok(src)

    def test_bad_uri(self):
        src = self.vm("src", memory=MEM)
        with self.assertRaises(lmtest.QMPError) as cm:
            src.cmd("migrate", uri="carrier-pigeon:home")
        self.assertIn("unknown migration protocol", cm.exception.desc)
        self.assertEqual(src.status(), "running")

    def test_kill_destination_mid_migration(self):
        src = self.vm("src", memory=MEM, workload="increment", extra=lmtest.LIVE_RATE)
        dst = self.vm("dst", memory=MEM, workload="increment", incoming="defer")
        self.assertTrue(src.wait_running_steps())
        time.sleep(0.5)
        src.set_params(**{"max-bandwidth": SLOW})
        dst.cmd("migrate-incoming", uri="unix:" + self.path("dst.sock"))
        src.cmd("migrate", uri="unix:" + self.path("dst.sock"))
        src.wait_migration(statuses=("active",))
        time.sleep(0.5)
        dst.kill()
        info = src.wait_migration()
        self.assertEqual(info["status"], "failed")
        self.assertTrue(info.get("error-desc"))
        self.assertEqual(src.status(), "running")
        self.assert_guest_ok(src)
        src.set_params(**{"max-bandwidth": 0})
        dst2 = self.vm("dst2", memory=MEM, workload="increment", incoming="defer")
        self.migrate(src, dst2, "unix:" + self.path("dst2.sock"))
        self.assert_guest_ok(dst2)

    def test_kill_destination_during_switchover_wait(self):
        """The source waits for the destination's confirmation; losing the
        destination then fails the migration and the source runs on."""
        src = self.vm("src", memory=MEM, extra=lmtest.LIVE_RATE)
        dst = self.vm("dst", memory=MEM, incoming="defer")
        src.set_caps(pause_before_switchover=True)
        dst.cmd("migrate-incoming", uri="unix:" + self.path("dst.sock"))
        src.cmd("migrate", uri="unix:" + self.path("dst.sock"))
        src.wait_migration(statuses=("pre-switchover",))
        dst.kill()
        src.cmd("migrate-continue", state="pre-switchover")
        info = src.wait_migration()
        self.assertEqual(info["status"], "failed")
        self.assertEqual(src.status(), "running")
        self.assert_guest_ok(src)

    def test_destination_size_mismatch(self):
        src = self.vm("src", memory=MEM)
        dst = self.vm("dst", memory="64M", incoming="defer")
        dst.cmd("migrate-incoming", uri="unix:" + self.path("dst.sock"))
        src.cmd("migrate", uri="unix:" + self.path("dst.sock"))
        self.assertEqual(src.wait_migration()["status"], "failed")
        dinfo = dst.wait_migration()
        self.assertEqual(dinfo["status"], "failed")
        self.assertIn("size mismatch", dinfo["error-desc"])
        self.assertEqual(src.status(), "running")
        self.assert_guest_ok(src)

    def test_garbage_into_destination(self):
        dst = self.vm("dst", memory=MEM, incoming="defer")
        dst.cmd("migrate-incoming", uri="unix:" + self.path("dst.sock"))
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.path("dst.sock"))
        s.sendall(b"GET / HTTP/1.0\r\n\r\n" * 10)
        s.close()
        dinfo = dst.wait_migration()
        self.assertEqual(dinfo["status"], "failed")
        self.assertIn("bad magic", dinfo["error-desc"])
        self.assertTrue(dst.alive())
        self.assertEqual(dst.cmd("query-status")["status"], "inmigrate")


if __name__ == "__main__":
    lmtest.main()
