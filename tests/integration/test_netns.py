"""Two hosts: source and destination in their own network namespaces,
joined by a shaped link (netns.py), every migration with TLS (x509,
verify-peer on both sides, the destination's name checked against its
address 10.199.0.2).

- precopy, multifd (4 channels) and postcopy with preempt complete over a
  1 Gbit/s link with 10 ms RTT and 0.1 % loss;
- a link cut mid-precopy fails the source by itself (the namespaces' TCP
  gives up after a few retransmissions: tcp_retries2=3), the guest runs
  on, and a retry over the restored link succeeds;
- a link cut mid-postcopy pauses both sides; migrate-recover /
  migrate resume=true over a new TLS connection finish it.

Memory is checked each time: byte for byte for precopy and multifd, the
workload's invariant for postcopy, and the guest runs on.  Needs root and
`ip netns`: skipped, with the reason printed, where those are missing.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

import lmtest
import netns
from lmtest import MigrationTest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
MAKE_CERTS = os.path.join(ROOT, "scripts", "make-test-certs.sh")
MEM = "32M"
SHAPED = dict(rate_mbit=1000, rtt_ms=10, loss_pct=0.1)
CERTS = None


def setUpModule():
    global CERTS
    reason = netns.skip_reason()
    if reason:
        print("test_netns: skipped: " + reason)
        raise unittest.SkipTest(reason)
    CERTS = tempfile.mkdtemp(prefix="lmnetns-")
    subprocess.run([MAKE_CERTS, CERTS], check=True, timeout=120)


def tearDownModule():
    if CERTS:
        shutil.rmtree(CERTS, ignore_errors=True)


class TwoHosts(MigrationTest):
    def link(self, **shape):
        link = netns.Link(**shape)
        self.addCleanup(link.close)
        print("\n  link: %s" % link.kind)
        return link

    def pair(self, link, workload="increment", caps=None, dst_paused=True, dirty_rate="256K"):
        src = self.vm("src", memory=MEM, workload=workload, wrapper=link.run_in(link.src_ns),
                      extra=["--dirty-rate", dirty_rate])
        dst = self.vm("dst", memory=MEM, workload=workload, wrapper=link.run_in(link.dst_ns),
                      incoming="defer", paused=dst_paused)
        for vm, endpoint, d in ((src, "client", "client"), (dst, "server", "server")):
            vm.cmd("object-add", **{"qom-type": "tls-creds-x509", "id": "tls0",
                                    "dir": os.path.join(CERTS, d), "endpoint": endpoint,
                                    "verify-peer": True})
            vm.set_params(**{"tls-creds": "tls0"})
            if caps:
                vm.set_caps(**caps)
        self.assertTrue(src.wait_running_steps())
        return src, dst

    def listen(self, dst, link, cmd="migrate-incoming"):
        dst.cmd(cmd, uri="tcp:%s:0" % link.dst_addr)
        port = dst.migration()["socket-address"][0]["port"]
        return "tcp:%s:%s" % (link.dst_addr, port)

    def precopy_ok(self, src, dst, link, timeout=120):
        info = self.migrate(src, dst, self.listen(dst, link), dst_uri=False, timeout=timeout)
        self.assertEqual(dst.status(), "paused")
        self.assert_same_memory(src, dst)
        dst.cmd("cont")
        self.assert_guest_ok(dst)
        return info

    def wait_until(self, what, cond, timeout=60):
        deadline = time.time() + timeout
        while not cond():
            if time.time() > deadline:
                self.fail("timed out waiting for " + what)
            time.sleep(0.05)

    def wait_status(self, vm, statuses, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            st = vm.migration().get("status")
            if st in statuses:
                return st
            time.sleep(0.05)
        return vm.migration().get("status")


class Shaped(TwoHosts):
    def test_precopy(self):
        link = self.link(**SHAPED)
        src, dst = self.pair(link)
        self.precopy_ok(src, dst, link)

    def test_multifd(self):
        link = self.link(**SHAPED)
        src, dst = self.pair(link, caps={"multifd": True})
        for vm in (src, dst):
            vm.set_params(**{"multifd-channels": 4})
        info = self.precopy_ok(src, dst, link)
        self.assertGreater(info["ram"]["multifd-bytes"], 0)

    def test_postcopy_preempt(self):
        link = self.link(**SHAPED)
        src, dst = self.pair(link, workload="random", dst_paused=False, dirty_rate="0",
                             caps={"postcopy_ram": True, "postcopy_preempt": True})
        src.set_params(**{"downtime-limit": 1, "max-bandwidth": 4 << 20})
        uri = self.listen(dst, link)
        src.cmd("migrate-start-postcopy")
        src.cmd("migrate", uri=uri)
        info = src.wait_migration(timeout=180)
        self.assertEqual(info["status"], "completed", info.get("error-desc"))
        dinfo = dst.wait_migration(timeout=60)
        self.assertEqual(dinfo["status"], "completed", dinfo.get("error-desc"))
        self.assertGreater(info["ram"]["postcopy-bytes"], 0)
        self.assertNotIn("postcopy preempt:", src.read_log())
        self.assert_guest_ok(dst)


class LinkCut(TwoHosts):
    def test_precopy_cut_fails_cleanly_and_retry_succeeds(self):
        # A guest that dirties faster than the link moves: precopy is still
        # running whenever the link goes.
        link = self.link(rate_mbit=100, rtt_ms=1)
        link.sysctl("net.ipv4.tcp_retries2", 3)
        src, dst = self.pair(link, workload="random", dirty_rate="0")
        src.cmd("migrate", uri=self.listen(dst, link))
        self.wait_until("1 MiB sent", lambda: src.migration()["ram"]["transferred"] > (1 << 20))
        link.down()
        info = src.wait_migration(statuses=("failed",), timeout=120)
        print("  source: %s" % info.get("error-desc"))
        self.assertTrue(info.get("error-desc"))
        self.assertEqual(src.status(), "running")
        self.assertTrue(src.wait_running_steps())
        self.assertTrue(src.verify()["ok"])
        # The destination heard nothing: the operator ends its half.
        dst.cmd("migrate_cancel")
        self.assertIn(self.wait_status(dst, ("failed", "cancelled")), ("failed", "cancelled"))
        link.up()
        # The retry only has to complete: the guest stops so that it can.
        src.cmd("stop")
        self.precopy_ok(src, dst, link)

    def test_postcopy_cut_pauses_and_recovers(self):
        link = self.link(rate_mbit=1000, rtt_ms=1)
        link.sysctl("net.ipv4.tcp_retries2", 3)
        src, dst = self.pair(link, workload="random", dst_paused=False, dirty_rate="0",
                             caps={"postcopy_ram": True, "postcopy_preempt": True})
        src.set_params(**{"downtime-limit": 1, "max-bandwidth": 4 << 20,
                          "max-postcopy-bandwidth": 2 << 20})
        uri = self.listen(dst, link)
        src.cmd("migrate-start-postcopy")
        src.cmd("migrate", uri=uri)
        src.wait_migration(statuses=("postcopy-active",))
        self.wait_until("postcopy bytes",
                        lambda: src.migration()["ram"]["postcopy-bytes"] >= (256 << 10))
        link.down()
        # Each side notices when its own unacknowledged bytes time out; the
        # destination may have nothing to send, then the operator pauses it.
        self.assertEqual(self.wait_status(src, ("postcopy-paused",), 120), "postcopy-paused")
        if self.wait_status(dst, ("postcopy-paused",), 20) != "postcopy-paused":
            dst.cmd("migrate-pause")
        self.assertEqual(self.wait_status(dst, ("postcopy-paused",), 60), "postcopy-paused")
        link.up()
        uri = self.listen(dst, link, cmd="migrate-recover")
        src.cmd("migrate", uri=uri, resume=True)
        info = src.wait_migration(timeout=180)
        self.assertEqual(info["status"], "completed", info.get("error-desc"))
        dinfo = dst.wait_migration(timeout=60)
        self.assertEqual(dinfo["status"], "completed", dinfo.get("error-desc"))
        self.assert_guest_ok(dst)


if __name__ == "__main__":
    lmtest.main()
