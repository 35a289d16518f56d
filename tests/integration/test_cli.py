"""The livemig command line, driven as an operator would."""
import json
import os
import subprocess

import lmtest
from lmtest import CLI_BIN, MigrationTest


def run(*args, timeout=120):
    return subprocess.run([CLI_BIN] + list(args), capture_output=True, text=True, timeout=timeout)


class CommandLine(MigrationTest):
    def test_help_everywhere(self):
        for sub in ([], ["migrate"], ["info"], ["qmp"], ["demo"]):
            r = run(*(sub + ["--help"]))
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("sage", r.stdout + r.stderr)

    def test_migrate_info_qmp(self):
        src = self.vm("src", memory="128M", workload="random", extra=lmtest.LIVE_RATE)
        dst = self.vm("dst", memory="128M", workload="random", incoming="defer")
        r = run("migrate", "--from", src.qmp_path, "--to", dst.qmp_path,
                "--uri", "unix:" + self.path("m.sock"), "--param", "downtime-limit=100",
                "--cap", "events")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        out = r.stdout + r.stderr
        self.assertIn("downtime", out.lower())
        self.assertEqual(src.migration()["status"], "completed")
        self.assert_guest_ok(dst)
        r = run("info", src.qmp_path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("completed", r.stdout)
        r = run("qmp", dst.qmp_path, "query-status")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["status"], "running")
        r = run("qmp", dst.qmp_path, "migrate-set-parameters", '{"downtime-limit": 7}')
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(dst.cmd("query-migrate-parameters")["downtime-limit"], 7)
        r = run("qmp", dst.qmp_path, "no-such-command")
        self.assertNotEqual(r.returncode, 0)

    def test_migrate_failure_exits_nonzero(self):
        src = self.vm("src", memory="64M")
        dst = self.vm("dst", memory="32M", incoming="defer")
        r = run("migrate", "--from", src.qmp_path, "--to", dst.qmp_path,
                "--uri", "unix:" + self.path("m.sock"))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("mismatch", (r.stdout + r.stderr).lower())
        self.assertEqual(src.status(), "running")

    def test_demo(self):
        env = dict(os.environ, LIVEMIG_VM=lmtest.VM_BIN)
        r = subprocess.run([CLI_BIN, "demo", "--memory", "256M"] + lmtest.LIVE_RATE,
                           capture_output=True, text=True,
                           timeout=300, env=env)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("verif", (r.stdout + r.stderr).lower())


if __name__ == "__main__":
    lmtest.main()
