"""calc-dirty-rate / query-dirty-rate: the guest's dirtying rate, measured
with the migration's dirty tracker while no migration runs.

The random workload's --dirty-rate is in bytes/s of steps, one 4 KiB data
page (and its 4-byte version entry) per step, at a random place in the
working set.  The tracker counts distinct pages written in the window, so
the expected count is the number of distinct pages that many random picks
hit: N (1 - exp(-steps / N)) over a working set of N pages, plus the version
table's pages.  The steps are the workload's own counter (x-query-workload)
over the same period, so the check does not depend on how fast the machine
is; where the workload kept its set rate, the rate is also compared with
--dirty-rate itself.
"""
import math
import time

import lmtest
from lmtest import MigrationTest, QMPError

PAGE = 4096
MIB = 1 << 20


def random_layout(mem_bytes, ws_bytes=None):
    """Data and table pages of the random workload (src/vm/workload.c)."""
    npages = mem_bytes // PAGE
    d = npages * 1024 // 1025
    while d + (d * 4 + PAGE - 1) // PAGE < npages:
        d += 1
    while d > 0 and d + (d * 4 + PAGE - 1) // PAGE > npages:
        d -= 1
    ws = min(d, ws_bytes // PAGE) if ws_bytes else d
    return ws, (ws * 4 + PAGE - 1) // PAGE


class DirtyRateTest(MigrationTest):
    def warm_up(self, vm, rate, timeout=6.0):
        """A fresh guest's first touches are slow on a loaded machine: give
        the workload a while to reach its set rate (the checks do not need
        it to)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            s0, t0 = vm.workload()["steps"], time.monotonic()
            time.sleep(0.3)
            if (vm.workload()["steps"] - s0) / (time.monotonic() - t0) >= 0.9 * rate / PAGE:
                return

    def measure(self, vm, calc_ms, **args):
        """Runs one measurement; returns (query-dirty-rate, the workload's
        steps/s over exactly the measured window).  The workload's counter
        is sampled all along (CLOCK_MONOTONIC, as the engine's window) and
        interpolated at the window's ends."""
        samples = []

        def sample():
            t0 = time.monotonic_ns()
            steps = vm.workload()["steps"]
            samples.append(((t0 + time.monotonic_ns()) / 2, steps))

        sample()
        vm.cmd("calc-dirty-rate", calc_time=calc_ms, calc_time_unit="millisecond", **args)
        deadline = time.time() + 60
        while True:
            sample()
            r = vm.cmd("query-dirty-rate")
            if r["status"] == "measured":
                break
            self.assertEqual(r["status"], "measuring")
            self.assertLess(time.time(), deadline, "measurement never ended")
            time.sleep(0.01)
        sample()
        if "x-window-start-ns" not in r:
            return r, 0.0

        def steps_at(t):
            for (ta, sa), (tb, sb) in zip(samples, samples[1:]):
                if ta <= t <= tb:
                    return sa + (sb - sa) * (t - ta) / (tb - ta) if tb > ta else sa
            self.fail("window %d not within the samples %s" % (t, samples))

        start, end = r["x-window-start-ns"], r["x-window-end-ns"]
        return r, (steps_at(end) - steps_at(start)) * 1e9 / (end - start)

    def check_against_workload(self, r, steps_per_s, ws_pages, table_pages):
        self.assertEqual(r["mode"], "dirty-bitmap")
        self.assertEqual(r["calc-time-unit"], "millisecond")
        window = (r["x-window-end-ns"] - r["x-window-start-ns"]) / 1e9
        steps = steps_per_s * window
        # Each step also writes its data page's entry in the version table.
        expected = (ws_pages * (1 - math.exp(-steps / ws_pages)) +
                    table_pages * (1 - math.exp(-steps / table_pages)))
        got = r["x-dirty-pages"]
        print("window %.3f s: %.0f steps/s, expected %.0f distinct pages, measured %d (%s), "
              "%d MiB/s" % (window, steps_per_s, expected, got, r["x-dirty-tracker"],
                            r["dirty-rate"]))
        self.assertGreater(steps, 0, "the workload did not run")
        # 20 %, and a few pages of slack where a loaded machine let the
        # workload make only a few steps.
        self.assertLess(abs(got - expected), 0.2 * expected + 8, r)
        # Per block: livemig-vm's RAM blocks ram0, ram1, ... share the pages.
        self.assertTrue(r["x-blocks"])
        self.assertTrue(all(b["name"].startswith("ram") for b in r["x-blocks"]), r["x-blocks"])
        self.assertEqual(sum(b["dirty-pages"] for b in r["x-blocks"]), got)
        return expected

    def test_random_matches_set_rate(self):
        mem, rate = 256 * MIB, 32 * MIB
        vm = self.vm("src", memory="256M", workload="random",
                     extra=["--dirty-rate", "32M", "--blocks", "2"])
        self.assertTrue(vm.wait_running_steps())
        self.warm_up(vm, rate)
        r, steps_per_s = self.measure(vm, 1000)
        ws, table = random_layout(mem)
        self.check_against_workload(r, steps_per_s, ws, table)
        # Two blocks, and the random pages fall in both.
        self.assertEqual([b["name"] for b in r["x-blocks"]], ["ram0", "ram1"])
        self.assertTrue(all(b["dirty-pages"] > 0 for b in r["x-blocks"]), r["x-blocks"])
        # Where the workload kept its set rate (a loaded machine may slow it
        # down), the reported MB/s is within 20 % of --dirty-rate too.
        if steps_per_s >= 0.9 * rate / PAGE:
            self.assertLess(abs(r["dirty-rate"] - rate / MIB), 0.2 * rate / MIB, r)
        else:
            print("workload ran at %.0f%% of its set rate: set-rate check skipped"
                  % (100.0 * steps_per_s * PAGE / rate))
        self.assertEqual(vm.status(), "running")
        self.assertTrue(vm.verify()["ok"])
        self.assertTrue(vm.wait_running_steps())

    def test_working_set_counts_distinct_pages(self):
        # 8 MiB written at 32 MiB/s: each page is hit about four times a
        # second, and counted once.
        vm = self.vm("src", memory="128M", workload="random",
                     extra=["--dirty-rate", "32M", "--working-set", "8M"])
        self.assertTrue(vm.wait_running_steps())
        self.warm_up(vm, 32 * MIB)
        r, steps_per_s = self.measure(vm, 1000)
        ws, table = random_layout(128 * MIB, 8 * MIB)
        expected = self.check_against_workload(r, steps_per_s, ws, table)
        self.assertLessEqual(r["x-dirty-pages"], ws + table)
        window = (r["x-window-end-ns"] - r["x-window-start-ns"]) / 1e9
        self.assertLess(expected, 0.8 * steps_per_s * window + 1)
        self.assertTrue(vm.verify()["ok"])
        self.assertTrue(vm.wait_running_steps())

    def test_per_vcpu_rates(self):
        """Each vCPU's rate, from livemig-vm's per-vCPU counts over the
        window: vCPU 0 set to 8 MiB/s, vCPU 1 to 1 MiB/s."""
        rates = [8 * MIB, 1 * MIB]
        vm = self.vm("src", memory="128M", smp=2, workload="random",
                     extra=["--vcpu-dirty-rate", "8M,1M"])
        self.assertTrue(vm.wait_running_steps())
        self.warm_up(vm, sum(rates))
        before = [v["steps"] for v in vm.workload()["per-vcpu"]]
        r, _ = self.measure(vm, 1000)
        after = [v["steps"] for v in vm.workload()["per-vcpu"]]
        print("vcpu-dirty-rate:", r["vcpu-dirty-rate"])
        self.assertEqual([v["id"] for v in r["vcpu-dirty-rate"]], [0, 1])
        window = (r["x-window-end-ns"] - r["x-window-start-ns"]) / 1e9
        for i, v in enumerate(r["vcpu-dirty-rate"]):
            # The window lies within the two samples of the vCPU's counter.
            self.assertGreater(v["x-dirty-pages"], 0)
            self.assertLessEqual(v["x-dirty-pages"], after[i] - before[i])
            achieved = v["x-dirty-pages"] * PAGE / window
            if achieved >= 0.9 * rates[i]:
                self.assertLess(abs(achieved - rates[i]), 0.2 * rates[i], r)
        # The heavy vCPU dirties more than the light one, whatever the load.
        self.assertGreater(r["vcpu-dirty-rate"][0]["x-dirty-pages"],
                           r["vcpu-dirty-rate"][1]["x-dirty-pages"])
        self.assertTrue(vm.verify()["ok"])

    def test_idle_guest_measures_zero(self):
        vm = self.vm("src", memory="128M", workload="idle")
        r = vm.cmd("query-dirty-rate")
        self.assertEqual(r["status"], "unstarted")
        r, _ = self.measure(vm, 500)
        self.assertEqual(r["dirty-rate"], 0, r)
        self.assertLess(r["x-dirty-pages"], 16, r)
        self.assertEqual(r["status"], "measured")
        self.assertTrue(vm.verify()["ok"])

    def test_bad_input(self):
        vm = self.vm("src", memory="64M", workload="idle")
        for args, msg in [({"calc_time": 0}, "out of range"),
                          ({"calc_time": 61}, "out of range"),
                          ({"calc_time": 10, "calc_time_unit": "millisecond"}, "out of range"),
                          ({"calc_time": 1, "calc_time_unit": "hour"}, "calc-time-unit"),
                          ({"calc_time": 1, "mode": "page-sampling"}, "not supported"),
                          ({"calc_time": 1, "mode": "dirty-ring"}, "not supported"),
                          ({"calc_time": 1, "mode": "dirty-ring", "sample_pages": 512}, "page-sampling"),
                          ({"calc_time": 1, "sample_pages": 5}, "sample-pages"),
                          ({"calc_time": 1, "mode": "bogus"}, "expected")]:
            with self.assertRaises(QMPError) as cm:
                vm.cmd("calc-dirty-rate", **args)
            self.assertIn(msg, str(cm.exception), args)
        self.assertEqual(vm.cmd("query-dirty-rate")["status"], "unstarted")
        # A second measurement while one runs is refused; the first one ends.
        vm.cmd("calc-dirty-rate", calc_time=1)
        with self.assertRaises(QMPError) as cm:
            vm.cmd("calc-dirty-rate", calc_time=1)
        self.assertIn("already being measured", str(cm.exception))

    def test_exclusive_with_migration(self):
        src = self.vm("src", memory="128M", workload="random", extra=["--dirty-rate", "4M"])
        dst = self.vm("dst", memory="128M", workload="random", extra=["--dirty-rate", "4M"],
                      incoming="defer", paused=True)
        self.assertTrue(src.wait_running_steps())
        dst.cmd("migrate-incoming", uri="unix:" + self.path("mig.sock"))
        # A migration is refused while a measurement runs ...
        src.cmd("calc-dirty-rate", calc_time=1)
        with self.assertRaises(QMPError) as cm:
            src.cmd("migrate", uri="unix:" + self.path("mig.sock"))
        self.assertIn("dirty rate is being measured", str(cm.exception))
        while src.cmd("query-dirty-rate")["status"] != "measured":
            time.sleep(0.02)
        self.assertGreater(src.cmd("query-dirty-rate")["x-dirty-pages"], 0)
        # ... and a measurement while a migration runs (held before the
        # switchover, so it is surely running).
        src.set_caps(pause_before_switchover=True)
        src.cmd("migrate", uri="unix:" + self.path("mig.sock"))
        src.wait_migration(statuses=("pre-switchover",))
        with self.assertRaises(QMPError) as cm:
            src.cmd("calc-dirty-rate", calc_time=1)
        self.assertIn("migration is in progress", str(cm.exception))
        src.cmd("migrate-continue", state="pre-switchover")
        self.assertEqual(src.wait_migration()["status"], "completed")
        self.assertEqual(dst.wait_migration()["status"], "completed")
        self.assert_same_memory(src, dst)
        dst.cmd("cont")
        self.assert_guest_ok(dst)
        # Measuring works on both ends afterwards: the destination's guest
        # dirties, the stopped source does not.
        r, _ = self.measure(dst, 300)
        self.assertGreater(r["x-dirty-pages"], 0, r)
        r, _ = self.measure(src, 300)
        self.assertEqual(r["x-dirty-pages"], 0, r)
        self.assert_guest_ok(dst)


if __name__ == "__main__":
    lmtest.main()
