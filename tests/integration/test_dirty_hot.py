"""Hot dirty-tracking groups (x-dirty-hot-groups, src/ram/dirty.h) with a
live guest: a guest that keeps rewriting a small working set (its 2 MiB
groups turn hot and are left writable between syncs) migrated by precopy,
multifd and postcopy, with the behaviour on and off (the default), and
with auto-converge on (the throttle retires the hot groups mid-migration).
Pages are write-protected when they are claimed for sending
(LM_DIRTY_PROTECT_ON_SEND) in every case.  Each
migration first runs capped (lmtest.SLOW_BANDWIDTH) until several dirty
syncs have passed, so groups have had the time to turn hot (1 ms of downtime allowed), then
uncapped (or switched to postcopy) to finish; the destination's memory is
checked byte for byte against the stopped source and by the workload's
invariant, and the guest runs on there.
"""
import time

import lmtest
from lmtest import MigrationTest

MEM = "64M"
# Random writes over 4 MiB at LIVE_RATE: at SLOW_BANDWIDTH a pass takes
# seconds, in which most pages of the working set are rewritten.
GUEST = ["--working-set", "4M"] + lmtest.LIVE_RATE
SYNCS = 5


class HotGroups(MigrationTest):
    def _run(self, mode, hot=None, auto_converge=False):
        src = self.vm("src", memory=MEM, workload="random", extra=GUEST)
        dst = self.vm("dst", memory=MEM, workload="random", extra=GUEST, incoming="defer",
                      paused=True)
        self.assertTrue(src.wait_running_steps())
        for vm in (src, dst):
            if mode == "multifd":
                vm.set_caps(multifd=True)
                vm.set_params(**{"multifd-channels": 2})
            elif mode == "postcopy":
                vm.set_caps(postcopy_ram=True)
        if auto_converge:
            src.set_caps(auto_converge=True)
        if hot is None:
            self.assertFalse(src.cmd("query-migrate-parameters")["x-dirty-hot-groups"],
                             "x-dirty-hot-groups is off by default")
            hot = True
        # Phase 1 cannot converge: 1 ms of downtime at SLOW_BANDWIDTH holds
        # less than a page.
        src.set_params(**{"x-dirty-hot-groups": hot, "max-bandwidth": lmtest.SLOW_BANDWIDTH,
                          "downtime-limit": 1})
        self.assertEqual(src.cmd("query-migrate-parameters")["x-dirty-hot-groups"], hot)
        uri = "unix:" + self.path("mig.sock")
        dst.cmd("migrate-incoming", uri=uri)
        src.cmd("migrate", uri=uri)
        deadline = time.time() + lmtest.DEFAULT_TIMEOUT
        # A starved guest (a loaded host) may write nothing in a pass; the
        # migration then switches over early, which is fine: the checks
        # below are about correctness.
        while True:
            info = src.migration()
            if (info.get("ram", {}).get("dirty-sync-count", 0) >= SYNCS or
                    info["status"] not in ("setup", "active")):
                break
            self.assertLess(time.time(), deadline, "no %d dirty syncs: %s" % (SYNCS, info))
            time.sleep(0.05)
        if mode == "postcopy":
            # Before the limits go: uncapped with 300 ms allowed, precopy
            # could finish first.  (A migration that switched over early,
            # above, refuses the request.)
            try:
                src.cmd("migrate-start-postcopy")
            except lmtest.QMPError:
                if src.migration()["status"] in ("setup", "active"):
                    raise
        src.set_params(**{"max-bandwidth": 0, "downtime-limit": 300})
        info = src.wait_migration()
        self.assertEqual(info["status"], "completed", info.get("error-desc"))
        self.assertEqual(dst.wait_migration()["status"], "completed")
        self.assertGreaterEqual(info["ram"]["dirty-sync-count"], 2)
        self.assert_same_memory(src, dst)
        dst.cmd("cont")
        self.assert_guest_ok(dst)

    def test_precopy(self):
        self._run("precopy")

    def test_precopy_auto_converge(self):
        # Phase 1 dirties more than it sends: the throttle engages, and the
        # migration retires the hot groups while pages of them are writable.
        self._run("precopy", auto_converge=True)

    def test_precopy_off(self):
        self._run("precopy", hot=False)

    def test_multifd(self):
        self._run("multifd")

    def test_postcopy(self):
        self._run("postcopy")


if __name__ == "__main__":
    lmtest.main()
