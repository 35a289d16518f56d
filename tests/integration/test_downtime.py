"""The switchover's downtime tells the truth (docs/architecture.md,
convergence): max-bandwidth is lifted for the stop-copy, expected-downtime
(computed at each dirty sync) predicts the blackout, and
x-downtime-breakdown's parts tile the measured downtime.

No timing threshold on the machine's speed: the blackout is compared with
the limit the migration promised to keep, and the prediction with the
measure of the same run.
"""
import os
import subprocess
import time

import lmtest
from lmtest import MigrationTest

MEM = "32M"
LIMIT_MS = 300
CAP = 8 << 20
# expected-downtime against the real one: within 25 %, or within this
# much: the downtime here is 1-2 ms, and on a loaded host a descheduled
# vCPU or load thread adds up to ~10 ms (seen: stopping the vCPUs took
# 10.9 ms once) that no prediction can know; the breakdown shows where.
SLACK_US = 10000
# Even so the comparison depends on the host's load (a run on the shared
# 2-core machine saw a 73 ms blackout predicted at 14 ms: the destination's
# load thread waited 54 ms for a CPU), so it runs only when asked:
# LIVEMIG_DOWNTIME_ACCURACY=1.  The rest of the test is load-proof.
ACCURACY = os.environ.get("LIVEMIG_DOWNTIME_ACCURACY") == "1"


class CappedSwitchover(MigrationTest):
    def run_capped(self, caps=None, params=None, extra=("--dirty-rate", "256K"), src_params=None):
        extra = list(extra)
        src = self.vm("src", memory=MEM, workload="random", extra=extra)
        dst = self.vm("dst", memory=MEM, workload="random", extra=extra, incoming="defer")
        for vm in (src, dst):
            if caps:
                vm.set_caps(**caps)
            if params:
                vm.set_params(**params)
        src.set_params(**dict({"max-bandwidth": CAP, "downtime-limit": LIMIT_MS}, **(src_params or {})))
        self.assertTrue(src.wait_running_steps())
        info = self.migrate(src, dst, "unix:" + self.path("mig.sock"), timeout=120)
        self.assertGreaterEqual(info["ram"]["dirty-sync-count"], 2)
        # The destination was drained (PING answered by BACKLOG) before the
        # stop: nothing of the pass before it was still queued there.
        self.assertGreaterEqual(info["x-destination-drains"], 1)
        self.assertEqual(info["x-destination-backlog"], 0)

        # The blackout as the guest saw it: stopped on the source, resumed
        # on the destination, on the host's one monotonic clock.
        stop = src.workload()["x-last-stop-ns"]
        start = dst.workload()["x-last-start-ns"]
        self.assertGreater(stop, 0)
        self.assertGreater(start, stop)
        blackout_ms = (start - stop) / 1e6
        bd = info["x-downtime-breakdown"]
        parts = {p["name"]: p["us"] for p in bd["parts"]}
        # Pausing and resuming the vCPU threads is the machine's own latency,
        # which a loaded host stretches (seen: 200 ms to pause two vCPUs at a
        # load average of 45): the migration's share must fit the limit.
        vcpus_ms = (parts.get("stop", 0) + parts.get("dst:restart", 0)) / 1e3
        self.assertLessEqual(blackout_ms - vcpus_ms, LIMIT_MS,
                             "the guest was stopped for %.1f ms: %s" % (blackout_ms, bd))
        self.assertLessEqual(bd["downtime-us"] / 1e3 - vcpus_ms, LIMIT_MS, bd)

        real, expected = bd["downtime-us"], bd["expected-downtime-us"]
        # The prediction made at the switchover decision is kept with it.
        self.assertGreater(expected, 0)
        if ACCURACY:
            self.assertLessEqual(abs(expected - real), max(real // 4, SLACK_US),
                                 "expected %d us, real %d us: %s" % (expected, real, bd))
        # The parts tile the downtime: exact up to each part's rounding.
        self.assertLessEqual(abs(sum(parts.values()) - real), len(parts), bd)
        for name in ("stop", "sync", "ram-tail", "save:cpu", "send", "dst:restart", "confirmation"):
            self.assertIn(name, parts, bd)
        self.assertIn("dst:restart", [p["name"] for p in bd["destination"]])

        self.assert_guest_ok(dst)
        return src, dst, info

    def test_main_channel(self):
        src, dst, info = self.run_capped()
        # livemig info shows the breakdown.
        out = subprocess.run([lmtest.CLI_BIN, "info", src.qmp_path], capture_output=True, text=True,
                             timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("Downtime breakdown (us): total=%d" % info["x-downtime-breakdown"]["downtime-us"],
                      out.stdout)
        self.assertIn("confirmation=", out.stdout)

    def test_multifd(self):
        self.run_capped(caps={"multifd": True}, params={"multifd-channels": 2})

    def run_big_tail(self, caps=None, params=None):
        """The issue's case: the operator says the switchover gets 1 GB/s
        (avail-switchover-bandwidth), the guest keeps most of 8 MiB dirty (dirtied
        faster than the cap carries it): the stop-copy moves more than the
        cap could carry within the limit, and still stays within it."""
        src, dst, info = self.run_capped(
            caps=caps, params=params, extra=("--dirty-rate", "32M", "--working-set", "8M"),
            src_params={"avail-switchover-bandwidth": 1 << 30})
        self.assertGreater(info["ram"]["downtime-bytes"], CAP * LIMIT_MS // 1000, info)

    def test_big_tail_main_channel(self):
        self.run_big_tail()

    def test_big_tail_multifd(self):
        self.run_big_tail(caps={"multifd": True}, params={"multifd-channels": 2})


class PostcopyBandwidth(MigrationTest):
    def test_requests_bypass_max_postcopy_bandwidth(self):
        """max-postcopy-bandwidth holds the background stream only: at 1 byte/s
        the background stops after its first slice, yet every page the guest
        faults on keeps arriving; the stop-copy's lift leaves it alone."""
        src = self.vm("src", memory="64M", workload="random")
        dst = self.vm("dst", memory="64M", workload="random", incoming="defer")
        for vm in (src, dst):
            vm.set_caps(postcopy_ram=True)
        src.set_params(**{"max-postcopy-bandwidth": 1, "downtime-limit": 1})
        self.assertTrue(src.wait_running_steps())
        uri = "unix:" + self.path("mig.sock")
        dst.cmd("migrate-incoming", uri=uri)
        src.cmd("migrate", uri=uri)
        src.cmd("migrate-start-postcopy")  # belongs to the migration just started
        src.wait_migration(statuses=("postcopy-active",))
        deadline = time.time() + 30
        while dst.status() != "running" and time.time() < deadline:
            time.sleep(0.02)
        self.assertEqual(dst.status(), "running")
        first = src.migration()["ram"]["postcopy-requests"]
        steps = dst.workload()["steps"]
        deadline = time.time() + 30
        while time.time() < deadline:
            info = src.migration()
            if info["ram"]["postcopy-requests"] >= first + 100 and dst.workload()["steps"] > steps:
                break
            time.sleep(0.05)
        # Requested pages kept coming while the background was held back.
        self.assertGreaterEqual(info["ram"]["postcopy-requests"], first + 100, info)
        self.assertGreater(dst.workload()["steps"], steps)
        self.assertEqual(info["status"], "postcopy-active")
        self.assertLess(info["ram"]["postcopy-bytes"], 64 << 20)
        # Postcopy's breakdown: the source's parts, up to RUN, tile its downtime.
        bd = info["x-downtime-breakdown"]
        parts = {p["name"]: p["us"] for p in bd["parts"]}
        self.assertIn("discard", parts, bd)
        self.assertLessEqual(abs(sum(parts.values()) - bd["downtime-us"]), len(parts), bd)
        self.assertEqual(bd["destination"], [])
        # Lifting the budget lets the background finish.
        src.set_params(**{"max-postcopy-bandwidth": 0})
        self.assertEqual(src.wait_migration()["status"], "completed")
        self.assertEqual(dst.wait_migration()["status"], "completed")
        self.assert_guest_ok(dst)


if __name__ == "__main__":
    lmtest.main()
