"""Multifd: guest pages on extra connections, each with its own thread.

Every migration test checks the destination's memory byte for byte against
the stopped source (the destination stays paused until `cont`), the
workload's invariant, and that the guest runs on there.
"""
import os
import shutil
import signal
import time

import lmtest
from lmtest import MigrationTest, QMPError

MEM = "128M"


class MultifdBase(MigrationTest):
    def pair(self, workload="increment", src_params=None, caps=None, dst_caps=None, tag="",
             extra=()):
        src = self.vm("src" + tag, memory=MEM, workload=workload, extra=extra)
        dst = self.vm("dst" + tag, memory=MEM, workload=workload, extra=extra, incoming="defer",
                      paused=True)
        src.set_caps(multifd=True, **(caps or {}))
        dst.set_caps(multifd=True, **(dst_caps if dst_caps is not None else caps or {}))
        if src_params:
            src.set_params(**src_params)
        self.assertTrue(src.wait_running_steps())
        return src, dst

    def check(self, src, dst, info):
        self.assertGreaterEqual(info["ram"]["dirty-sync-count"], 2)
        self.assertGreater(info["ram"]["multifd-bytes"], 0)
        self.assertEqual(dst.status(), "paused")
        self.assert_same_memory(src, dst)
        dinfo = dst.migration()
        self.assertGreater(dinfo["ram"]["multifd-bytes"], 0)
        dst.cmd("cont")
        self.assert_guest_ok(dst)

    def live(self, uri, workload="increment", tag="", extra=(), **params):
        if "--dirty-rate" not in extra:
            extra = list(extra) + lmtest.LIVE_RATE
        src, dst = self.pair(workload, params, tag=tag, extra=extra)
        info = self.migrate(src, dst, uri)
        self.check(src, dst, info)
        return src, dst, info


    def stop_all(self):
        for vm in self.vms:
            vm.shutdown()
        self.vms = []


class Channels(MultifdBase):
    def test_capability_and_defaults(self):
        src = self.vm("src", memory=MEM)
        caps = {c["capability"]: c["state"] for c in src.cmd("query-migrate-capabilities")}
        self.assertIn("multifd", caps)
        self.assertFalse(caps["multifd"])
        p = src.cmd("query-migrate-parameters")
        self.assertEqual(p["multifd-channels"], 2)
        self.assertEqual(p["multifd-compression"], "none")
        self.assertEqual(p["zero-page-detection"], "multifd")
        self.assertFalse(p["zero-copy-send"])
        with self.assertRaises(QMPError):
            src.set_params(multifd_channels=0)
        with self.assertRaises(QMPError):
            src.set_params(multifd_channels=65)
        with self.assertRaises(QMPError):
            src.set_params(multifd_compression="lz4")

    def test_unix_channels(self):
        for n in (1, 2, 4, 16):
            with self.subTest(channels=n):
                self.live("unix:" + self.path("mig%d.sock" % n), tag=str(n), multifd_channels=n)
                self.stop_all()

    def test_tcp_channels(self):
        for n in (1, 2, 4, 16):
            with self.subTest(channels=n):
                self.live("tcp:127.0.0.1:0", tag=str(n), multifd_channels=n)
                self.stop_all()

    def test_non_socket_transport_refused(self):
        src = self.vm("src", memory=MEM)
        src.set_caps(multifd=True)
        with self.assertRaises(QMPError) as cm:
            src.cmd("migrate", uri="file:" + self.path("save.img"))
        self.assertIn("socket transport", cm.exception.desc)
        self.assertEqual(src.status(), "running")

    def test_destination_without_capability(self):
        src, dst = self.pair(dst_caps={})
        dst.set_caps(multifd=False)
        uri = "unix:" + self.path("mig.sock")
        dst.cmd("migrate-incoming", uri=uri)
        src.cmd("migrate", uri=uri)
        info = src.wait_migration()
        self.assertEqual(info["status"], "failed")
        dinfo = dst.wait_migration()
        self.assertEqual(dinfo["status"], "failed")
        self.assertIn("capability multifd is off", dinfo["error-desc"])
        self.assertTrue(src.wait_running_steps())


class ZeroDetection(MultifdBase):
    def every_mode(self, sock, extra, channels):
        """A live migration per zero-page-detection mode, half the RAM never
        written: zero pages found unless detection is off."""
        for mode in ("none", "legacy", "multifd"):
            with self.subTest(mode=mode):
                src, dst, info = self.live("unix:" + self.path("%s%s.sock" % (sock, mode)),
                                           tag=mode, zero_page_detection=mode,
                                           workload="random",
                                           extra=extra + ["--working-set", "50%"],
                                           multifd_channels=channels)
                if mode == "none":
                    self.assertEqual(info["ram"]["duplicate"], 0)
                else:
                    self.assertGreater(info["ram"]["duplicate"], 0)
                self.stop_all()

    def test_modes(self):
        self.every_mode("z", [], 2)

    def test_file_backed_ram(self):
        """memfd RAM: pages go from the page cache (sendfile), unread; zero
        pages are the memfd's holes (the half the guest never wrote)."""
        self.every_mode("f", ["--memory-backend", "memfd"], 4)


class Compression(MultifdBase):
    def test_zstd(self):
        for level in (1, 5):
            with self.subTest(level=level):
                params = {"multifd-compression": "zstd", "multifd-zstd-level": level,
                          "multifd-channels": 4}
                src, dst = self.pair("random", params, tag=str(level),
                                     extra=lmtest.LIVE_RATE)
                dst.set_params(**{"multifd-compression": "zstd", "multifd-channels": 4})
                info = self.migrate(src, dst, "unix:" + self.path("zstd%d.sock" % level))
                self.check(src, dst, info)
                self.stop_all()

    def test_mismatch(self):
        """The sides must agree (QEMU): zstd into a destination set to none
        fails naming both; the source runs on and a retry that agrees works."""
        params = {"multifd-compression": "zstd"}
        src, dst = self.pair("random", params, extra=["--dirty-rate", "32M"])
        dst.cmd("migrate-incoming", uri="unix:" + self.path("m.sock"))
        src.cmd("migrate", uri="unix:" + self.path("m.sock"))
        dinfo = dst.wait_migration(statuses=("failed",))
        self.assertIn("multifd-compression zstd", dinfo["error-desc"])
        self.assertIn("multifd-compression none", dinfo["error-desc"])
        self.assertEqual(src.wait_migration(statuses=("failed",))["status"], "failed")
        self.assertTrue(src.wait_running_steps())
        dst2 = self.vm("dst2", memory=MEM, workload="random", extra=["--dirty-rate", "32M"],
                       incoming="defer", paused=True)
        dst2.set_caps(multifd=True)
        dst2.set_params(**params)
        info = self.migrate(src, dst2, "unix:" + self.path("m2.sock"))
        self.check(src, dst2, info)


class ZeroCopy(MultifdBase):
    """zero-copy-send: the multifd senders write guest pages with
    MSG_ZEROCOPY (tcp only) and wait for the kernel's completions at every
    sync.  On loopback the kernel copies anyway and says so in every
    completion, so each channel's flush counts in dirty-sync-missed-zero-copy."""

    def check_zero_copy(self, info):
        ram = info["ram"]
        self.assertGreater(ram["x-zero-copy-sends"], 0)
        self.assertLessEqual(ram["x-zero-copy-copied"], ram["x-zero-copy-sends"])
        # Loopback: every send was copied, every flush that had any missed.
        self.assertEqual(ram["x-zero-copy-copied"], ram["x-zero-copy-sends"])
        self.assertGreater(ram["dirty-sync-missed-zero-copy"], 0)

    def test_tcp_live(self):
        for n in (2, 4):
            with self.subTest(channels=n):
                src, dst, info = self.live("tcp:127.0.0.1:0", workload="random", tag=str(n),
                                           multifd_channels=n, zero_copy_send=True)
                self.check_zero_copy(info)
                self.stop_all()

    def test_tcp_capability(self):
        """QEMU's spelling: the zero-copy-send capability is the same switch."""
        src = self.vm("src", memory=MEM, workload="random", extra=lmtest.LIVE_RATE)
        dst = self.vm("dst", memory=MEM, workload="random", incoming="defer", paused=True)
        src.set_caps(multifd=True, zero_copy_send=True)
        dst.set_caps(multifd=True)
        self.assertTrue(src.cmd("query-migrate-parameters")["zero-copy-send"])
        self.assertTrue(src.wait_running_steps())
        info = self.migrate(src, dst, "tcp:127.0.0.1:0")
        self.check(src, dst, info)
        self.check_zero_copy(info)

    def test_refused(self):
        src = self.vm("src", memory=MEM)
        # Refused when set, as QEMU, not only at migrate.
        with self.assertRaises(QMPError) as cm:
            src.set_params(zero_copy_send=True)
        self.assertIn("requires the multifd capability", cm.exception.desc)
        src.set_caps(multifd=True)
        src.set_params(zero_copy_send=True)
        src.set_params(multifd_compression="zstd")
        with self.assertRaises(QMPError) as cm:
            src.cmd("migrate", uri="tcp:127.0.0.1:1")
        self.assertIn("does not work with multifd-compression", cm.exception.desc)
        src.set_params(multifd_compression="none")
        with self.assertRaises(QMPError) as cm:
            src.cmd("migrate", uri="file:" + self.path("save.img"))
        self.assertIn("socket transport", cm.exception.desc)
        self.assertEqual(src.status(), "running")
        self.assertEqual(src.migration().get("status", "none"), "none")

    def test_unix_refused_then_retry(self):
        """The kernel has no SO_ZEROCOPY for unix sockets: migrate says so,
        the source runs on, and the same migration without zero-copy works."""
        src, dst = self.pair(src_params={"zero-copy-send": True}, extra=lmtest.LIVE_RATE)
        uri = "unix:" + self.path("zc.sock")
        dst.cmd("migrate-incoming", uri=uri)
        with self.assertRaises(QMPError) as cm:
            src.cmd("migrate", uri=uri)
        self.assertIn("zero-copy-send needs a tcp transport", cm.exception.desc)
        self.assertIn("unix sockets", cm.exception.desc)
        self.assertEqual(src.status(), "running")
        self.assertTrue(src.wait_running_steps())
        src.set_params(zero_copy_send=False)
        info = self.migrate(src, dst, uri, dst_uri=False)
        self.check(src, dst, info)
        self.assertEqual(info["ram"]["x-zero-copy-sends"], 0)

    def start_tcp(self, src, dst):
        dst.cmd("migrate-incoming", uri="tcp:127.0.0.1:0")
        addr = dst.migration()["socket-address"][0]
        src.cmd("migrate", uri="tcp:%s:%s" % (addr["host"], addr["port"]))
        src.wait_migration(statuses=("active",))
        while src.migration()["ram"]["x-zero-copy-sends"] == 0:
            time.sleep(0.01)

    def test_cancel_and_dead_peer_do_not_hang(self):
        """A sender waiting for completions (or for room) is woken by
        cancel, and by a destination that dies; the source runs on."""
        src, dst = self.pair(src_params={"max-bandwidth": lmtest.SLOW_BANDWIDTH,
                                         "multifd-channels": 4, "zero-copy-send": True},
                             extra=lmtest.LIVE_RATE)
        # A frozen destination: nothing more is read, the sends back up.
        self.start_tcp(src, dst)
        os.kill(dst.proc.pid, signal.SIGSTOP)
        time.sleep(1.5)
        src.cmd("migrate_cancel")
        self.assertEqual(src.wait_migration(timeout=10)["status"], "cancelled")
        os.kill(dst.proc.pid, signal.SIGCONT)
        self.assertTrue(src.wait_running_steps())
        self.assertTrue(src.verify()["ok"])
        # A destination killed mid-migration.
        dst2 = self.vm("dst2", memory=MEM, incoming="defer", paused=True)
        dst2.set_caps(multifd=True)
        self.start_tcp(src, dst2)
        dst2.kill()
        info = src.wait_migration(timeout=30)
        self.assertEqual(info["status"], "failed")
        self.assertTrue(src.wait_running_steps())
        self.assertTrue(src.verify()["ok"])
        # A retry, zero-copy still on, completes.
        src.set_params(**{"max-bandwidth": 0})
        dst3 = self.vm("dst3", memory=MEM, incoming="defer", paused=True)
        dst3.set_caps(multifd=True)
        info = self.migrate(src, dst3, "tcp:127.0.0.1:0")
        self.check(src, dst3, info)
        self.check_zero_copy(info)

    def test_locked_memory_limit(self):
        """Without CAP_IPC_LOCK and with a tiny RLIMIT_MEMLOCK the kernel
        cannot pin the pages: the migration fails saying so, the source
        runs on, and a retry without zero-copy succeeds."""
        wrapper = ["prlimit", "--memlock=65536", "setpriv", "--inh-caps=-ipc_lock",
                   "--bounding-set=-ipc_lock", "--"]
        if not shutil.which("prlimit") or not shutil.which("setpriv") or os.geteuid() != 0:
            self.skipTest("needs root, prlimit and setpriv to drop CAP_IPC_LOCK")
        src = self.vm("src", memory=MEM, workload="random", wrapper=wrapper,
                      extra=lmtest.LIVE_RATE)
        dst = self.vm("dst", memory=MEM, workload="random", incoming="defer", paused=True)
        src.set_caps(multifd=True)
        dst.set_caps(multifd=True)
        src.set_params(zero_copy_send=True)
        self.assertTrue(src.wait_running_steps())
        dst.cmd("migrate-incoming", uri="tcp:127.0.0.1:0")
        addr = dst.migration()["socket-address"][0]
        uri = "tcp:%s:%s" % (addr["host"], addr["port"])
        src.cmd("migrate", uri=uri)
        info = src.wait_migration()
        self.assertEqual(info["status"], "failed")
        self.assertIn("RLIMIT_MEMLOCK", info["error-desc"])
        self.assertTrue(src.wait_running_steps())
        self.assertTrue(src.verify()["ok"])
        src.set_params(zero_copy_send=False)
        dst2 = self.vm("dst2", memory=MEM, workload="random", incoming="defer", paused=True)
        dst2.set_caps(multifd=True)
        info = self.migrate(src, dst2, "tcp:127.0.0.1:0")
        self.check(src, dst2, info)


class Failures(MultifdBase):
    def test_cancel_then_retry(self):
        src, dst = self.pair(src_params={"max-bandwidth": lmtest.SLOW_BANDWIDTH,
                                         "multifd-channels": 4}, extra=lmtest.LIVE_RATE)
        uri = "unix:" + self.path("mig.sock")
        dst.cmd("migrate-incoming", uri=uri)
        src.cmd("migrate", uri=uri)
        src.wait_migration(statuses=("active",))
        # Wait until pages flow on the multifd channels.
        while src.migration()["ram"]["multifd-bytes"] == 0:
            pass
        src.cmd("migrate_cancel")
        self.assertEqual(src.wait_migration()["status"], "cancelled")
        self.assertEqual(dst.wait_migration(statuses=("failed",))["status"], "failed")
        self.assertTrue(src.wait_running_steps())
        self.assertTrue(src.verify()["ok"])
        # A retry to a fresh destination succeeds.
        src.set_params(**{"max-bandwidth": 0})
        dst2 = self.vm("dst2", memory=MEM, incoming="defer", paused=True)
        dst2.set_caps(multifd=True)
        info = self.migrate(src, dst2, "unix:" + self.path("mig2.sock"))
        self.check(src, dst2, info)


class Postcopy(MultifdBase):
    """Multifd during precopy; at the switch its channels are flushed and
    closed, postcopy goes on on the main (and preempt) connections.  The
    destination is started paused (it stays so after RUN), and every page
    has arrived once it completes: its memory equals the stopped source's
    byte for byte, then the guest runs on after `cont`."""

    def run_postcopy(self, preempt):
        caps = {"postcopy_ram": True}
        if preempt:
            caps["postcopy_preempt"] = True
        src, dst = self.pair("random", {"downtime-limit": 1, "max-bandwidth": 32 << 20,
                                        "multifd-channels": 4}, caps=caps, tag=str(preempt))
        uri = "unix:" + self.path("pc%d.sock" % preempt)
        dst.cmd("migrate-incoming", uri=uri)
        src.cmd("migrate", uri=uri)
        src.wait_migration(statuses=("active",))
        # Postcopy only once multifd carried pages.
        while src.migration()["ram"]["multifd-bytes"] == 0:
            pass
        src.cmd("migrate-start-postcopy")
        info = src.wait_migration()
        self.assertEqual(info["status"], "completed", info.get("error-desc"))
        self.assertGreater(info["ram"]["multifd-bytes"], 0)
        self.assertGreater(info["ram"]["postcopy-bytes"], 0)
        dinfo = dst.wait_migration()
        self.assertEqual(dinfo["status"], "completed", dinfo.get("error-desc"))
        self.assertGreater(dinfo["ram"]["multifd-bytes"], 0)
        self.assertEqual(dst.status(), "paused")
        # The source's run state follows the MIGRATION event, a moment
        # after query-migrate says completed.
        deadline = time.time() + 10
        while src.status() != "postmigrate" and time.time() < deadline:
            time.sleep(0.02)
        self.assert_same_memory(src, dst)
        dst.cmd("cont")
        self.assert_guest_ok(dst)
        self.stop_all()

    def test_multifd_then_postcopy(self):
        self.run_postcopy(False)

    def test_multifd_then_postcopy_preempt(self):
        self.run_postcopy(True)


if __name__ == "__main__":
    lmtest.main()
