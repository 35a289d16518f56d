"""Convergence under pressure (issue 12 §1, §3, §4): a guest that dirties
faster than the link carries, and what each strategy makes of it.

The guest: two vCPUs running the random workload over a 4 MiB working set;
vCPU 0 dirties at 16 MiB/s, vCPU 1 at 256 KiB/s.  The link: max-bandwidth
and avail-switchover-bandwidth both 2 MiB/s (a link that slow for the
stop-copy too), downtime-limit 100 ms, so only ~200 KiB may remain at the
switchover.  Unthrottled, every pass re-dirties the whole working set (4 MiB
> 200 KiB) whatever the machine's speed, as long as vCPU 0 keeps above the
link's 2 MiB/s; each check below is by counters and states, never by time.
"""
import subprocess
import time

import lmtest
from lmtest import MigrationTest

MIB = 1 << 20
LINK = 2 * MIB
GUEST = ["--working-set", "4M", "--vcpu-dirty-rate", "16M,256K"]


class ConvergenceTest(MigrationTest):
    def pair(self, postcopy=False):
        src = self.vm("src", memory="32M", smp=2, workload="random", extra=GUEST)
        dst = self.vm("dst", memory="32M", smp=2, workload="random", extra=GUEST,
                      incoming="defer", paused=True)
        self.assertTrue(src.wait_running_steps())
        src.set_params(max_bandwidth=LINK, avail_switchover_bandwidth=LINK, downtime_limit=100)
        if postcopy:
            src.set_caps(postcopy_ram=True)
            dst.set_caps(postcopy_ram=True)
        return src, dst

    def start(self, src, dst, name):
        uri = "unix:" + self.path(name)
        dst.cmd("migrate-incoming", uri=uri)
        src.cmd("migrate", uri=uri)

    def wait_for(self, vm, pred, what, timeout=90):
        deadline = time.time() + timeout
        while time.time() < deadline:
            info = vm.migration()
            if pred(info):
                return info
            self.assertNotIn(info["status"], ("failed", "cancelled"), info)
            time.sleep(0.05)
        self.fail("%s: still %s" % (what, vm.migration()))

    def finish(self, src, dst, timeout=120):
        info = src.wait_migration(timeout=timeout)
        self.assertEqual(info["status"], "completed", info.get("error-desc"))
        self.assertEqual(dst.wait_migration(timeout=timeout)["status"], "completed")
        self.assertEqual(dst.status(), "paused")
        self.assert_same_memory(src, dst)
        dst.cmd("cont")
        self.assert_guest_ok(dst)
        return info

    def test_everything_off_never_converges(self):
        src, dst = self.pair()
        self.start(src, dst, "mig.sock")
        # Five passes in: what remains has stopped shrinking.
        info = self.wait_for(src, lambda i: i.get("x-convergence", {}).get("pass", 0) >= 5 and
                             i["x-convergence"]["estimated-time"] == "never",
                             "the forecast never said never")
        self.assertEqual(info["status"], "active")
        cv = info["x-convergence"]
        print("x-convergence:", cv)
        # The guest keeps up with the link at least (never is declared at
        # 90 % of it, with what remains not shrinking).
        self.assertGreaterEqual(cv["ratio"], 0.9)
        self.assertIn("the guest dirties %.1f MB/s, the link carries %.1f MB/s" %
                      (cv["dirty-rate"] / 1e6, cv["bandwidth"] / 1e6), cv["reason"])
        self.assertEqual(cv["vcpu"]["cpu-index"], 0)
        self.assertIn("vCPU 0 dirties", cv["reason"])
        self.assertIn("block ram", cv["reason"])
        self.assertGreater(cv["downtime"], 100)
        # `livemig info` shows the forecast and its reason.
        r = subprocess.run([lmtest.CLI_BIN, "info", src.qmp_path], capture_output=True, text=True,
                           timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("never at this rate", r.stdout)
        self.assertIn("Reason:", r.stdout)
        self.assertIn("the guest dirties", r.stdout)
        # Nothing was throttled: neither strategy is on.
        self.assertNotIn("cpu-throttle-percentage", info)
        self.assertEqual([v["throttle"] for v in src.workload()["per-vcpu"]], [0, 0])
        # It does not end by itself either: a few more passes, still active.
        passes = cv["pass"]
        info = self.wait_for(src, lambda i: i["x-convergence"]["pass"] >= passes + 2,
                             "no more passes")
        self.assertEqual(info["status"], "active")
        src.cmd("migrate_cancel")
        self.assertEqual(src.wait_migration()["status"], "cancelled")
        self.assert_guest_ok(src)

    def test_auto_converge_completes(self):
        src, dst = self.pair()
        src.set_caps(auto_converge=True)
        src.set_params(cpu_throttle_initial=60, cpu_throttle_increment=20)
        self.start(src, dst, "mig.sock")
        info = self.finish(src, dst)
        self.assertGreater(info["ram"]["dirty-sync-count"], 2)
        # The guest was throttled (the busy vCPU surely paid for it; the
        # light one works so little that its share of sleep may round to
        # nothing) and the throttle is lifted at the end.
        per = src.workload()["per-vcpu"]
        self.assertGreater(per[0]["throttle-ns"], 0, per)
        self.assertNotIn("cpu-throttle-percentage", info)

    def test_dirty_limit_throttles_only_the_heavy_vcpu(self):
        src, dst = self.pair()
        src.set_caps(dirty_limit=True)
        src.set_params(vcpu_dirty_limit=1, x_vcpu_dirty_limit_period=100)
        before = src.workload()["per-vcpu"]
        self.start(src, dst, "mig.sock")
        seen = self.wait_for(src, lambda i: "dirty-limit-throttle-time-per-round" in i or
                             i["status"] == "completed", "dirty-limit never engaged")
        limits = src.cmd("query-vcpu-dirty-limit")
        info = self.finish(src, dst)
        after = src.workload()["per-vcpu"]
        print("limits:", limits, "before:", before, "after:", after)
        if seen["status"] != "completed":
            self.assertEqual([v["cpu-index"] for v in limits], [0, 1])
            self.assertTrue(all(v["limit-rate"] == 1 for v in limits), limits)
        # vCPU 0 paid for the convergence; vCPU 1, under its limit all
        # along, never slept for it and went on stepping.
        self.assertGreater(after[0]["throttle-ns"], 0)
        self.assertEqual(after[1]["throttle-ns"], 0)
        self.assertGreater(after[1]["steps"], before[1]["steps"])
        self.assertNotIn("cpu-throttle-percentage", info)
        # The limits end with the migration.
        self.assertEqual(src.cmd("query-vcpu-dirty-limit"), [])

    def test_auto_postcopy_switches(self):
        src, dst = self.pair(postcopy=True)
        src.set_caps(x_auto_postcopy=True)
        # Two stalled passes in a row, or (where a loaded machine makes the
        # guest's pace wobble) 5 s of precopy that does not shrink.
        src.set_params(x_auto_postcopy_passes=2, x_auto_postcopy_time=5000)
        self.start(src, dst, "mig.sock")
        info = self.finish(src, dst)
        self.assertEqual(info["x-auto-postcopy"]["state"], "postcopy")
        events = [e for e in src.qmp.events if e["event"] == "X_AUTO_POSTCOPY"]
        self.assertEqual([e["data"]["action"] for e in events], ["postcopy"])
        statuses = [e["data"]["status"] for e in src.qmp.events if e["event"] == "MIGRATION"]
        self.assertIn("postcopy-active", statuses)
        self.assertEqual(info["x-auto-postcopy"]["pass"], events[0]["data"]["pass"])

    def test_auto_postcopy_falls_back_to_dirty_limit(self):
        src, dst = self.pair()
        src.set_caps(x_auto_postcopy=True, dirty_limit=True)
        # With x-auto-postcopy on, its verdict (not QEMU's trigger)
        # engages the limits.
        src.set_params(x_auto_postcopy_passes=2, x_auto_postcopy_time=5000, vcpu_dirty_limit=1,
                       x_vcpu_dirty_limit_period=100)
        self.start(src, dst, "mig.sock")
        info = self.finish(src, dst)
        self.assertEqual(info["x-auto-postcopy"]["state"], "dirty-limit")
        statuses = [e["data"]["status"] for e in src.qmp.events if e["event"] == "MIGRATION"]
        self.assertNotIn("postcopy-active", statuses)
        events = [e for e in src.qmp.events if e["event"] == "X_AUTO_POSTCOPY"]
        self.assertEqual([e["data"]["action"] for e in events], ["dirty-limit"])
        per = src.workload()["per-vcpu"]
        self.assertGreater(per[0]["throttle-ns"], 0)
        self.assertEqual(per[1]["throttle-ns"], 0)

    def test_dirty_limit_by_hand(self):
        vm = self.vm("src", memory="32M", smp=2, workload="random", extra=GUEST)
        self.assertTrue(vm.wait_running_steps())
        vm.set_params(x_vcpu_dirty_limit_period=100)
        with self.assertRaises(lmtest.QMPError):
            vm.cmd("set-vcpu-dirty-limit", cpu_index=7, dirty_rate=1)
        with self.assertRaises(lmtest.QMPError):
            vm.cmd("set-vcpu-dirty-limit", cpu_index=0, dirty_rate=0)
        vm.cmd("set-vcpu-dirty-limit", cpu_index=0, dirty_rate=1)
        deadline = time.time() + 60
        while vm.workload()["per-vcpu"][0]["throttle"] == 0:
            self.assertLess(time.time(), deadline, vm.cmd("query-vcpu-dirty-limit"))
            time.sleep(0.05)
        limits = vm.cmd("query-vcpu-dirty-limit")
        self.assertEqual([(v["cpu-index"], v["limit-rate"]) for v in limits], [(0, 1)])
        self.assertEqual(vm.workload()["per-vcpu"][1]["throttle"], 0)
        vm.cmd("cancel-vcpu-dirty-limit")
        while vm.workload()["per-vcpu"][0]["throttle"] != 0:
            self.assertLess(time.time(), deadline)
            time.sleep(0.05)
        self.assertEqual(vm.cmd("query-vcpu-dirty-limit"), [])
        self.assert_guest_ok(vm)


if __name__ == "__main__":
    lmtest.main()
