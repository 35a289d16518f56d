"""Nothing lost, ever (issue 9): a destination never starts a guest from a
stream that lost a record.

A proxy between the two machines (streamproxy.py) drops one record of an
otherwise valid migration; the destination must refuse to start the guest,
with an error naming what is missing, the source (whose guest was stopped
before the migration, so that nothing is sent twice) must run on intact
once continued, and a retry must complete with memory verified.
"""
import lmtest
import streamproxy
from lmtest import MigrationTest

MEM = "64M"


class Incomplete(MigrationTest):
    def setUp(self):
        super().setUp()
        self.src = self.vm("src", memory=MEM, workload="increment", extra=("--vram", "1M"))
        self.assertTrue(self.src.wait_running_steps())
        self.src.set_caps(return_path=True)
        self.proxies = []
        self.n = 0

    def tearDown(self):
        for p in self.proxies:
            p.close()
        super().tearDown()

    def through_proxy(self, policy, multifd=False, expect_error=()):
        """One migration of the stopped source through a proxy applying
        policy; the destination must fail with every word of expect_error,
        and the source guest must run on when continued."""
        self.n += 1
        name = "dst%d" % self.n
        dst = self.vm(name, memory=MEM, workload="increment", extra=("--vram", "1M"),
                      incoming="defer")
        if multifd:
            for vm in (self.src, dst):
                vm.set_caps(multifd=True)
                vm.set_params(**{"multifd-channels": 2})
        self.src.cmd("stop")
        target = self.path(name + ".sock")
        front = self.path(name + "-proxy.sock")
        dst.cmd("migrate-incoming", uri="unix:" + target)
        proxy = streamproxy.Proxy(front, target, policy)
        self.proxies.append(proxy)
        self.src.cmd("migrate", uri="unix:" + front)
        info = self.src.wait_migration()
        self.assertEqual(info["status"], "failed", info)
        dinfo = dst.wait_migration()
        self.assertEqual(dinfo["status"], "failed", dinfo)
        for word in expect_error:
            self.assertIn(word, dinfo.get("error-desc", ""))
        self.assertNotEqual(dst.status(), "running")
        # Nothing lost: the source guest runs on when continued.
        self.assertEqual(self.src.status(), "paused")
        self.src.cmd("cont")
        self.assert_guest_ok(self.src)
        if multifd:
            self.src.set_caps(multifd=False)
        return dinfo

    def retry_succeeds(self):
        dst = self.vm("final", memory=MEM, workload="increment", extra=("--vram", "1M"),
                      incoming="defer")
        self.src.cmd("stop")
        self.migrate(self.src, dst, "unix:" + self.path("final.sock"))
        self.assert_same_memory(self.src, dst)
        dst.cmd("cont")
        self.assert_guest_ok(dst)

    def test_lost_pages_record(self):
        state = {"dropped": False}

        def drop_first_pages(conn, kind, raw, info):
            if kind == "ram" and info["rtype"] == streamproxy.RAM_PAGES and not state["dropped"]:
                state["dropped"] = True
                state["range"] = (info["first"], info["first"] + info["count"] - 1)
                return b""
            return raw
        d = self.through_proxy(drop_first_pages, expect_error=("incomplete", "RAM block 'ram0'",
                                                               "never arrived"))
        self.assertIn("pages %d-" % state["range"][0], d["error-desc"])
        self.retry_succeeds()

    def test_lost_multifd_packet(self):
        state = {"dropped": False}

        def drop_first_data(conn, kind, raw, info):
            if (conn.startswith("multifd") and kind == "packet" and info["type"] == 1 and
                    any(r[0] == streamproxy.RAM_PAGES for r in info["runs"]) and
                    not state["dropped"]):
                state["dropped"] = True
                return b""
            return raw
        self.through_proxy(drop_first_data, multifd=True,
                           expect_error=("incomplete", "RAM block 'ram0'", "never arrived"))
        self.assertTrue(state["dropped"])
        self.retry_succeeds()

    def test_lost_device_sections(self):
        # cpu 0's FULL, vram's END (an iterative device), clock, serial and
        # globalstate: each lost in turn.
        cases = [(("cpu", 0, streamproxy.REC_FULL), "device 'cpu' instance 0 has no section"),
                 (("vram", 0, streamproxy.REC_END), "device 'vram' instance 0 has no END section"),
                 (("clock", 0, streamproxy.REC_FULL), "device 'clock' instance 0 has no section"),
                 (("serial", 0, streamproxy.REC_FULL), "device 'serial' instance 0 has no section"),
                 (("globalstate", 0, streamproxy.REC_FULL), "no globalstate section")]
        for (idstr, instance, typ), message in cases:
            with self.subTest(section=idstr):
                def drop(conn, kind, raw, info):
                    if (kind == "section" and info["idstr"] == idstr and
                            info["instance"] == instance and info["type"] == typ):
                        return b""
                    return raw
                self.through_proxy(drop, expect_error=("incomplete", message))
        self.retry_succeeds()


if __name__ == "__main__":
    lmtest.main()
