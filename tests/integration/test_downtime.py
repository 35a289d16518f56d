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
# Timing, compared only when asked (LIVEMIG_DOWNTIME_ACCURACY=1, on a quiet
# host): the blackout within the downtime limit on the destination's clock,
# and expected-downtime within 25 % of the real downtime, or within
# SLACK_US where the downtime is a few ms (a descheduled thread adds that
# much on a loaded host, which no prediction can know).  On the shared
# 2-core machine a vCPU thread waited 200 ms for a CPU at load 45 and a
# blackout predicted at 14 ms took 73 ms: a timing assertion there would
# test the host.  Everything else below runs always and does not depend
# on the machine's speed or load.
SLACK_US = 10000
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
        blackout_us = (start - stop) / 1e3
        bd = info["x-downtime-breakdown"]
        parts = {p["name"]: p["us"] for p in bd["parts"]}
        real, expected = bd["downtime-us"], bd["expected-downtime-us"]
        # The prediction made at the switchover decision is kept with it,
        # with its fixed part: at least the measured dirty sync and the
        # return path's round trip (never 0, even on a first migration).
        self.assertGreater(bd["fixed-us"], 0, bd)
        self.assertGreaterEqual(expected, bd["fixed-us"], bd)
        # Term by term, beside the parts they predict: the fixed terms add
        # up to fixed-us, and with the bytes term to the prediction (each
        # rounded to the µs); the sync and round trip were measured.
        terms = {p["name"]: p["us"] for p in bd["expected-parts"]}
        self.assertEqual(list(terms), ["stop", "sync", "round-trip", "rest", "tail", "bytes"], bd)
        self.assertLessEqual(abs(sum(terms.values()) - bd["fixed-us"] - terms["bytes"]), 5, bd)
        self.assertLessEqual(abs(sum(terms.values()) - expected), 6, bd)
        self.assertGreater(terms["sync"], 0, bd)
        self.assertGreater(terms["round-trip"], 0, bd)
        # The source's downtime (its clock: from before it stopped the
        # guest to the destination's confirmation, sent after the guest
        # started there) holds the blackout: same host, same clock.
        self.assertGreaterEqual(real + 1, blackout_us, (blackout_us, bd))
        if ACCURACY:
            self.assertLessEqual(blackout_us, LIMIT_MS * 1000,
                                 "the guest was stopped for %.0f us: %s" % (blackout_us, bd))
            self.assertLessEqual(real, LIMIT_MS * 1000, bd)
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
        self.assertIn("Expected:", out.stdout)
        self.assertIn("round-trip=", out.stdout)

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
        # Megabytes were dirty at the decision: the prediction priced them.
        terms = {p["name"]: p["us"] for p in info["x-downtime-breakdown"]["expected-parts"]}
        self.assertGreater(terms["bytes"], 0, info["x-downtime-breakdown"])
        if not (caps or {}).get("multifd"):
            # Its BACKLOG said how fast it loads RAM (the tail moves at the
            # slower of the two sides): it loaded megabytes on this channel.
            # With multifd other threads load the pages: not said.
            self.assertGreater(info["x-destination-load-rate"], 0, info)

    def test_big_tail_main_channel(self):
        self.run_big_tail()

    def test_big_tail_multifd(self):
        self.run_big_tail(caps={"multifd": True}, params={"multifd-channels": 2})


# core/breakdown.h: one learned sample counts up to this many times its
# probe (the round trip just measured, at least 1 us).
LM_BD_OUTLIER = 16
BYTES_PARTS = ("ram-tail", "transfer", "dst:ram-tail")


class LearnedAcrossMigrations(MigrationTest):
    def test_second_migration_prices_what_the_first_taught(self):
        """What a switchover teaches (core/breakdown.h) lives as long as the
        source's engine: migrated again after `cont`, the same source
        predicts its stop and its rest from the first switchover's measured
        parts (one sample: as measured, at most LM_BD_OUTLIER times the
        round trip measured before the second), and its terms still add up
        to its expected-downtime.  Both destinations hold the guest's memory
        and run it, and so does the source in between."""
        extra = ["--dirty-rate", "256K"]
        src = self.vm("src", memory=MEM, workload="random", extra=extra)
        src.set_params(**{"max-bandwidth": CAP, "downtime-limit": LIMIT_MS})
        self.assertTrue(src.wait_running_steps())
        seen = []
        for i in range(2):
            dst = self.vm("dst%d" % i, memory=MEM, workload="random", extra=extra,
                          incoming="defer")
            info = self.migrate(src, dst, "unix:" + self.path("mig%d.sock" % i), timeout=120)
            self.assert_guest_ok(dst)
            seen.append(info["x-downtime-breakdown"])
            dst.shutdown()
            src.cmd("cont")
            self.assertTrue(src.wait_running_steps())
        first, second = seen
        parts = {p["name"]: p["us"] for p in first["parts"]}
        terms = {p["name"]: p["us"] for p in second["expected-parts"]}
        self.assertEqual(list(terms), ["stop", "sync", "round-trip", "rest", "tail", "bytes"], second)
        self.assertLessEqual(abs(sum(terms.values()) - second["expected-downtime-us"]), 6, second)
        cap = LM_BD_OUTLIER * max(terms["round-trip"], 1)
        # Each term rounded to the µs: the cap by up to 16 x 0.5 µs, the
        # rest (the first's fixed parts less stop, sync and confirmation)
        # by 0.5 µs a part.
        self.assertLessEqual(abs(terms["stop"] - min(parts["stop"], cap)), LM_BD_OUTLIER // 2 + 1,
                             (first, second))
        rest = sum(us for n, us in parts.items()
                   if n not in BYTES_PARTS + ("stop", "sync", "confirmation"))
        self.assertLessEqual(abs(terms["rest"] - min(rest, cap)), LM_BD_OUTLIER // 2 + len(parts),
                             (first, second))


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
