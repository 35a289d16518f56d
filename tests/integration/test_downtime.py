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
    def run_capped(self, caps=None, params=None):
        extra = ["--dirty-rate", "256K"]
        src = self.vm("src", memory=MEM, workload="random", extra=extra)
        dst = self.vm("dst", memory=MEM, workload="random", extra=extra, incoming="defer")
        for vm in (src, dst):
            if caps:
                vm.set_caps(**caps)
            if params:
                vm.set_params(**params)
        src.set_params(**{"max-bandwidth": CAP, "downtime-limit": LIMIT_MS})
        self.assertTrue(src.wait_running_steps())
        info = self.migrate(src, dst, "unix:" + self.path("mig.sock"), timeout=120)
        self.assertGreaterEqual(info["ram"]["dirty-sync-count"], 2)

        # The blackout as the guest saw it: stopped on the source, resumed
        # on the destination, on the host's one monotonic clock.
        stop = src.workload()["x-last-stop-ns"]
        start = dst.workload()["x-last-start-ns"]
        self.assertGreater(stop, 0)
        self.assertGreater(start, stop)
        blackout_ms = (start - stop) / 1e6
        self.assertLessEqual(blackout_ms, LIMIT_MS, "the guest was stopped for %.1f ms" % blackout_ms)
        self.assertLessEqual(info["downtime"], LIMIT_MS)

        bd = info["x-downtime-breakdown"]
        real, expected = bd["downtime-us"], bd["expected-downtime-us"]
        # The prediction the switchover decision made fitted the limit.
        self.assertGreater(expected, 0)
        self.assertLessEqual(expected, LIMIT_MS * 1000)
        if ACCURACY:
            self.assertLessEqual(abs(expected - real), max(real // 4, SLACK_US),
                                 "expected %d us, real %d us: %s" % (expected, real, bd))
        # The parts tile the downtime: exact up to each part's rounding.
        parts = {p["name"]: p["us"] for p in bd["parts"]}
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


if __name__ == "__main__":
    lmtest.main()
