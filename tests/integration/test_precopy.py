"""Live precopy migration between two livemig-vm processes, driven over QMP.

Each test checks the destination's memory (byte for byte against the
stopped source where the destination stays paused, and always by the
workload's invariant) and that the guest runs on there.
"""
import json
import os
import socket

import lmtest
from lmtest import MigrationTest

MEM = "128M"


class LiveBase(MigrationTest):
    def _live(self, uri, dst_uri=None, workload="increment", extra=(), dst_extra=None):
        if workload != "idle" and "--dirty-rate" not in extra:
            extra = list(extra) + lmtest.LIVE_RATE
        src = self.vm("src", memory=MEM, workload=workload, extra=extra)
        dst = self.vm("dst", memory=MEM, workload=workload,
                      extra=extra if dst_extra is None else dst_extra,
                      incoming="defer", paused=True)
        self.assertTrue(src.wait_running_steps())
        info = self.migrate(src, dst, uri, dst_uri)
        self.assertGreaterEqual(info["ram"]["dirty-sync-count"], 2)
        self.assertEqual(dst.status(), "paused")
        self.assert_same_memory(src, dst)
        dst.cmd("cont")
        self.assert_guest_ok(dst)
        return src, dst, info


class Transports(LiveBase):
    def test_unix(self):
        self._live("unix:" + self.path("mig.sock"))

    def test_tcp_ipv4(self):
        self._live("tcp:127.0.0.1:0")

    def test_tcp_ipv6(self):
        if not socket.has_ipv6:
            self.skipTest("no IPv6 on this host")
        try:
            s = socket.socket(socket.AF_INET6)
            s.bind(("::1", 0))
            s.close()
        except OSError:
            self.skipTest("::1 is not configured on this host")
        src = self.vm("src", memory=MEM, extra=lmtest.LIVE_RATE)
        dst = self.vm("dst", memory=MEM, incoming="defer", paused=True)
        dst.cmd("migrate-incoming", uri="tcp:[::1]:0")
        addr = dst.migration()["socket-address"][0]
        self.assertEqual(addr["type"], "inet")
        src.cmd("migrate", uri="tcp:[::1]:%s" % addr["port"])
        self.assertEqual(src.wait_migration()["status"], "completed")
        self.assertEqual(dst.wait_migration()["status"], "completed")
        self.assert_same_memory(src, dst)
        dst.cmd("cont")
        self.assert_guest_ok(dst)

    def test_fd(self):
        a, b = socket.socketpair()
        fa, fb = a.fileno(), b.fileno()
        src = self.vm("src", memory=MEM, pass_fds=(fa,), extra=lmtest.LIVE_RATE)
        dst = self.vm("dst", memory=MEM, incoming="defer", paused=True, pass_fds=(fb,))
        a.close()
        b.close()
        dst.cmd("migrate-incoming", uri="fd:%d" % fb)
        src.cmd("migrate", uri="fd:%d" % fa)
        self.assertEqual(src.wait_migration()["status"], "completed")
        self.assertEqual(dst.wait_migration()["status"], "completed")
        self.assert_same_memory(src, dst)
        dst.cmd("cont")
        self.assert_guest_ok(dst)

    def save_restore(self, save_uri, load_uri):
        # A file is as fast as the disk once writeback throttles it: a guest
        # that rewrites all of its RAM faster than that never converges
        # (QEMU's neither).  A bounded dirty rate keeps the test about the
        # transport.
        src = self.vm("src", memory=MEM, extra=lmtest.LIVE_RATE)
        self.assertTrue(src.wait_running_steps())
        src.cmd("migrate", uri=save_uri)
        info = src.wait_migration()
        self.assertEqual(info["status"], "completed", info.get("error-desc"))
        dst = self.vm("dst", memory=MEM, incoming="defer", paused=True,
                      extra=lmtest.LIVE_RATE)
        dst.cmd("migrate-incoming", uri=load_uri)
        dinfo = dst.wait_migration()
        self.assertEqual(dinfo["status"], "completed", dinfo.get("error-desc"))
        self.assert_same_memory(src, dst)
        dst.cmd("cont")
        self.assert_guest_ok(dst)

    def test_exec(self):
        img = self.path("saved.img")
        self.save_restore("exec:cat > " + img, "exec:cat " + img)

    def test_file(self):
        img = self.path("saved.img")
        self.save_restore("file:" + img, "file:" + img)

    def test_file_offset(self):
        img = self.path("saved.img")
        with open(img, "wb") as f:
            f.write(b"H" * 4096)
        self.save_restore("file:%s,offset=4096" % img, "file:%s,offset=4096" % img)
        with open(img, "rb") as f:
            self.assertEqual(f.read(4096), b"H" * 4096)

    def test_vmdesc_only_when_asked(self):
        """The JSON device description travels only with x-vmdesc (seed 000)."""
        for wanted in (False, True):
            img = self.path("saved-%s.img" % wanted)
            src = self.vm("src%s" % wanted, memory="32M", workload="idle")
            src.set_params(**{"x-vmdesc": wanted})
            src.cmd("migrate", uri="file:" + img)
            self.assertEqual(src.wait_migration()["status"], "completed")
            with open(img, "rb") as f:
                data = f.read()
            has = b'"ram_blocks"' in data and b'"vmsd_name"' in data
            self.assertEqual(has, wanted)
            if wanted:
                start = data.index(b'{"ram_blocks"')
                end = data.index(b"\x06", start)  # the EOF record follows the JSON
                desc = json.loads(data[start:end])
                names = {d["name"] for d in desc["devices"]}
                self.assertIn("cpu", names)
                dst = self.vm("dst", memory="32M", workload="idle", incoming="defer")
                dst.cmd("migrate-incoming", uri="file:" + img)
                self.assertEqual(dst.wait_migration()["status"], "completed")

    def test_incoming_uri_on_command_line(self):
        sock = self.path("mig.sock")
        src = self.vm("src", memory=MEM, extra=lmtest.LIVE_RATE)
        dst = self.vm("dst", memory=MEM, incoming="unix:" + sock)
        self.assertEqual(dst.status(), "inmigrate")
        self.migrate(src, dst, "unix:" + sock, dst_uri=False)
        self.assert_guest_ok(dst)


class Workloads(LiveBase):
    def test_random(self):
        self._live("unix:" + self.path("m.sock"), workload="random")

    def test_random_unlimited_converges_by_downtime_limit(self):
        # Unbounded writes to a working set small enough to fit the downtime
        # limit even at a few MB/s.
        src, dst, info = self._live("unix:" + self.path("m.sock"), workload="random",
                                    extra=["--working-set", "2M", "--dirty-rate", "0"])
        self.assertIn("downtime", info)

    def test_idle_switches_with_nothing_left(self):
        src, dst, info = self._live("unix:" + self.path("m.sock"), workload="idle")
        self.assertLessEqual(info["ram"]["dirty-sync-count"], 4)

    def test_several_blocks(self):
        self._live("unix:" + self.path("m.sock"), workload="random",
                   extra=["--blocks", "3", "--memory", "96M"])

    def test_memfd_backend(self):
        self._live("unix:" + self.path("m.sock"), extra=["--memory-backend", "memfd"])

    def test_hugetlbfs_backend(self):
        need = 2 * (64 << 20) // (2 << 20)
        path = "/proc/sys/vm/nr_hugepages"
        try:
            with open(path) as f:
                before = int(f.read())
            if before < need:
                with open(path, "w") as f:
                    f.write(str(need))
            with open(path) as f:
                if int(f.read()) < need:
                    raise OSError("the kernel reserved fewer")
        except OSError as e:
            self.skipTest("cannot reserve %d huge pages of 2 MiB: %s" % (need, e))
        try:
            src, dst, info = self._live("unix:" + self.path("m.sock"), workload="random",
                                        extra=["--memory-backend", "hugetlbfs", "--memory", "64M"])
            self.assertEqual(info["ram"]["page-size"], 2 << 20)
        finally:
            for vm in self.vms:
                vm.shutdown()
            self.vms = []
            if before < need:
                with open(path, "w") as f:
                    f.write(str(before))

    def test_file_backend_keeps_and_carries_contents(self):
        """file:PATH guest RAM is inspectable from outside and its existing
        contents are the guest's RAM: they arrive byte for byte."""
        a, b = self.path("a.ram"), self.path("b.ram")
        size = 32 << 20
        with open(a, "wb") as f:
            f.write(os.urandom(size))
        src = self.vm("src", memory="32M", workload="idle", extra=["--memory-backend", "file:" + a])
        dst = self.vm("dst", memory="32M", workload="idle", incoming="defer", paused=True,
                      extra=["--memory-backend", "file:" + b])
        self.migrate(src, dst, "unix:" + self.path("m.sock"))
        with open(a, "rb") as fa, open(b, "rb") as fb:
            self.assertTrue(fa.read() == fb.read(), "destination RAM file differs")
        self.assertEqual(src.memory_hash(), dst.memory_hash())

    def test_sparse_file_backend(self):
        """A file-backed guest's holes go as zero pages without a read, its
        data out of the page cache; pages the guest writes into holes while
        it migrates (the increment workload) arrive too."""
        a, b = self.path("a.ram"), self.path("b.ram")
        size = 32 << 20
        data = os.urandom(4 << 20)
        with open(a, "wb") as f:
            f.truncate(size)
            f.seek(8 << 20)
            f.write(data)
        src = self.vm("src", memory="32M", workload="idle", extra=["--memory-backend", "file:" + a])
        dst = self.vm("dst", memory="32M", workload="idle", incoming="defer", paused=True,
                      extra=["--memory-backend", "file:" + b])
        info = self.migrate(src, dst, "unix:" + self.path("m.sock"))
        with open(a, "rb") as fa, open(b, "rb") as fb:
            self.assertTrue(fa.read() == fb.read(), "destination RAM file differs")
        # The holes were sent as zero pages, the data as pages.
        self.assertGreaterEqual(info["ram"]["duplicate"], (size - len(data)) // 4096)
        self.assertGreaterEqual(info["ram"]["normal-bytes"], len(data))

        for vm in self.vms:
            vm.shutdown()
        self.vms = []
        c = self.path("c.ram")
        with open(c, "wb") as f:
            f.truncate(64 << 20)
        self._live("unix:" + self.path("m2.sock"), workload="increment",
                   extra=["--memory-backend", "file:" + c], dst_extra=[])

    def test_thp_backend(self):
        self._live("unix:" + self.path("m.sock"), extra=["--thp"])

    def test_iterative_device(self):
        src, dst, info = self._live("unix:" + self.path("m.sock"),
                                    extra=["--vram", "8M", "--vram-rate", "4M"])


class Trackers(MigrationTest):
    def _with_tracker(self, tracker):
        src = self.vm("src", memory=MEM, workload="random", extra=lmtest.LIVE_RATE)
        dst = self.vm("dst", memory=MEM, workload="random", incoming="defer")
        src.set_params(**{"x-dirty-tracker": tracker})
        self.assertTrue(src.wait_running_steps())
        info = self.migrate(src, dst, "unix:" + self.path("m.sock"))
        expected = {"uffd-wp": "uffd-wp-async", "manual": "manual"}[tracker]
        self.assertEqual(info.get("dirty-tracker"), expected)
        self.assert_guest_ok(dst)

    def test_uffd_wp(self):
        self._with_tracker("uffd-wp")

    def test_manual(self):
        self._with_tracker("manual")


class Modes(MigrationTest):
    def test_stop_migrate_cont(self):
        """Non-live: stop the source, migrate, cont on the destination."""
        src = self.vm("src", memory=MEM)
        dst = self.vm("dst", memory=MEM, incoming="defer")
        src.cmd("stop")
        self.assertEqual(src.status(), "paused")
        steps = src.workload()["steps"]
        dst.cmd("migrate-incoming", uri="unix:" + self.path("m.sock"))
        src.cmd("migrate", uri="unix:" + self.path("m.sock"))
        self.assertEqual(src.wait_migration()["status"], "completed")
        self.assertEqual(dst.wait_migration()["status"], "completed")
        self.assertEqual(src.memory_hash(), dst.memory_hash())
        self.assertEqual(dst.workload()["steps"], steps)
        dst.cmd("cont")
        self.assert_guest_ok(dst)

    def test_pause_before_switchover(self):
        src = self.vm("src", memory=MEM, extra=lmtest.LIVE_RATE)
        dst = self.vm("dst", memory=MEM, incoming="defer")
        src.set_caps(pause_before_switchover=True)
        dst.cmd("migrate-incoming", uri="unix:" + self.path("m.sock"))
        src.cmd("migrate", uri="unix:" + self.path("m.sock"))
        src.wait_migration(statuses=("pre-switchover",))
        self.assertNotEqual(src.status(), "running")
        src.cmd("migrate-continue", state="pre-switchover")
        self.assertEqual(src.wait_migration()["status"], "completed")
        self.assertEqual(dst.wait_migration()["status"], "completed")
        self.assert_guest_ok(dst)
        events = [e["data"]["status"] for e in src.qmp.events if e["event"] == "MIGRATION"]
        self.assertEqual(events[-3:], ["pre-switchover", "device", "completed"])

    def test_device_state_on_every_switchover(self):
        src = self.vm("src", memory=MEM, extra=lmtest.LIVE_RATE)
        dst = self.vm("dst", memory=MEM, incoming="defer")
        self.migrate(src, dst, "unix:" + self.path("m.sock"))
        events = [e["data"]["status"] for e in src.qmp.events if e["event"] == "MIGRATION"]
        self.assertEqual(events, ["setup", "active", "device", "completed"])
        self.assertTrue(any(e["event"] == "MIGRATION_PASS" for e in src.qmp.events))
        self.assert_guest_ok(dst)

    def test_validate_uuid(self):
        """The source's validate-uuid decides (QEMU): a destination with
        another UUID fails; the destination's own capability plays no part."""
        u1 = "11111111-2222-3333-4444-555555555555"
        u2 = "11111111-2222-3333-4444-666666666666"
        # A dirty rate any migration outruns: three migrations must complete.
        src = self.vm("src", memory=MEM, workload="random", extra=["--uuid", u1, "--dirty-rate", "4M"])
        src.set_caps(validate_uuid=True)
        bad = self.vm("bad", memory=MEM, workload="random", incoming="defer", extra=["--uuid", u2])
        bad.cmd("migrate-incoming", uri="unix:" + self.path("bad.sock"))
        src.cmd("migrate", uri="unix:" + self.path("bad.sock"))
        self.assertEqual(src.wait_migration()["status"], "failed")
        dinfo = bad.wait_migration()
        self.assertEqual(dinfo["status"], "failed")
        self.assertIn("UUID", dinfo["error-desc"])
        self.assertEqual(src.status(), "running")
        # Only the destination asks: not checked.
        src.set_caps(validate_uuid=False)
        other = self.vm("other", memory=MEM, workload="random", incoming="defer", paused=True,
                        extra=["--uuid", u2])
        other.set_caps(validate_uuid=True)
        self.migrate(src, other, "unix:" + self.path("other.sock"))
        self.assert_same_memory(src, other)
        other.cmd("quit")
        src.cmd("cont")
        src.set_caps(validate_uuid=True)
        good = self.vm("good", memory=MEM, workload="random", incoming="defer", extra=["--uuid", u1])
        self.migrate(src, good, "unix:" + self.path("good.sock"))
        self.assert_guest_ok(good)

    def test_statistics(self):
        src = self.vm("src", memory=MEM, workload="random", extra=lmtest.LIVE_RATE)
        dst = self.vm("dst", memory=MEM, workload="random", incoming="defer")
        info = self.migrate(src, dst, "unix:" + self.path("m.sock"))
        ram = info["ram"]
        for key in ("transferred", "total", "duplicate", "normal", "normal-bytes", "mbps",
                    "dirty-sync-count", "page-size"):
            self.assertIn(key, ram)
        self.assertEqual(ram["total"], 128 << 20)
        self.assertGreater(ram["normal"], 0)
        self.assertGreater(ram["transferred"], ram["normal-bytes"] // 2)
        self.assertGreaterEqual(info["total-time"], info["setup-time"])
        self.assertIn("downtime", info)
        self.assert_guest_ok(dst)


if __name__ == "__main__":
    lmtest.main()
