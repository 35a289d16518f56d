"""What an embedding VMM hands the engine: a pull-style dirty log
(lm_ram_set_dirty_log, the shape of KVM_GET_DIRTY_LOG), here livemig-vm's
own log kept in its write path (--dirty-log).

Each migration runs a live random writer and checks the destination by the
workload's invariant (every data page matches its version) and that the
guest runs on.
"""
import lmtest
from lmtest import MigrationTest

MEM = "128M"


class DirtyLog(MigrationTest):
    def _migrate(self, tracker, expected, blocks=1, backend="anon"):
        extra = ["--dirty-rate", "32M", "--blocks", str(blocks), "--memory-backend", backend]
        src = self.vm("src", memory=MEM, workload="random", extra=extra + ["--dirty-log"])
        dst = self.vm("dst", memory=MEM, workload="random", incoming="defer",
                      extra=["--blocks", str(blocks), "--memory-backend", backend])
        src.set_params(**{"x-dirty-tracker": tracker})
        self.assertTrue(src.wait_running_steps())
        info = self.migrate(src, dst, "unix:" + self.path("m.sock"))
        self.assertEqual(info.get("dirty-tracker"), expected)
        # Passes after the first found pages through the log alone.
        self.assertGreater(info["ram"]["dirty-sync-count"], 1)
        self.assert_guest_ok(dst)
        # Tracking stopped: a second migration from the destination works too.
        return dst

    def test_dirty_log_alone(self):
        self._migrate("dirty-log", "dirty-log")

    def test_dirty_log_several_blocks(self):
        self._migrate("dirty-log", "dirty-log", blocks=4)

    def test_dirty_log_beside_uffd_wp(self):
        self._migrate("uffd-wp", "uffd-wp-async+dirty-log")

    def test_dirty_log_beside_manual(self):
        self._migrate("manual", "manual+dirty-log")

    def test_dirty_log_without_one_refused(self):
        src = self.vm("src", memory=MEM, workload="random", extra=["--dirty-rate", "32M"])
        dst = self.vm("dst", memory=MEM, workload="random", incoming="defer")
        src.set_params(**{"x-dirty-tracker": "dirty-log"})
        info = self.migrate(src, dst, "unix:" + self.path("m.sock"), expect="failed")
        self.assertIn("no RAM block has a dirty log", info.get("error-desc", ""))
        self.assert_guest_ok(src)
        # A retry with a tracker the machine has works.
        dst.kill()
        dst2 = self.vm("dst2", memory=MEM, workload="random", incoming="defer")
        src.set_params(**{"x-dirty-tracker": "auto"})
        self.migrate(src, dst2, "unix:" + self.path("m2.sock"))
        self.assert_guest_ok(dst2)


if __name__ == "__main__":
    lmtest.main()
