"""QMP robustness: every bad request gets an error reply, the connection
and the guest survive, several clients may connect."""
import json
import socket

import lmtest
from lmtest import QMP, MigrationTest


class Robustness(MigrationTest):
    def setUp(self):
        super().setUp()
        self.m = self.vm("vm", memory="64M")

    def still_alive(self, q=None):
        q = q or self.m.qmp
        self.assertEqual(q.cmd("query-status")["status"], "running")
        self.assertTrue(self.m.wait_running_steps())

    def error_of(self, reply):
        self.assertIn("error", reply, reply)
        return reply["error"]

    def test_malformed_json(self):
        q = self.m.qmp
        q.send_raw('{"execute": "query-status",,, }')
        err = self.error_of(q.read_reply())
        self.assertEqual(err["class"], "GenericError")
        self.still_alive()

    def test_not_an_object(self):
        q = self.m.qmp
        q.send_raw('[1, 2, 3]')
        self.error_of(q.read_reply())
        q.send_raw('"just a string"')
        self.error_of(q.read_reply())
        self.still_alive()

    def test_unknown_command(self):
        err = self.error_of(self.m.qmp.cmd_raw("no-such-command"))
        self.assertEqual(err["class"], "CommandNotFound")
        self.still_alive()

    def test_wrong_types(self):
        q = self.m.qmp
        self.error_of(q.cmd_raw("migrate", {"uri": 42}))
        self.error_of(q.cmd_raw("migrate-set-parameters", {"downtime-limit": "fast"}))
        self.error_of(q.cmd_raw("migrate-set-capabilities",
                                {"capabilities": [{"capability": "events", "state": "yes"}]}))
        self.error_of(q.cmd_raw("migrate-set-capabilities", {"capabilities": "events"}))
        q.send_raw('{"execute": 17}')
        self.error_of(q.read_reply())
        q.send_raw('{"execute": "query-status", "arguments": [1]}')
        self.error_of(q.read_reply())
        self.still_alive()

    def test_missing_arguments(self):
        err = self.error_of(self.m.qmp.cmd_raw("migrate"))
        self.assertIn("uri", err["desc"])
        err = self.error_of(self.m.qmp.cmd_raw("migrate-continue"))
        self.still_alive()

    def test_unknown_capability_and_parameter(self):
        err = self.error_of(self.m.qmp.cmd_raw(
            "migrate-set-capabilities", {"capabilities": [{"capability": "warp-drive", "state": True}]}))
        self.assertIn("warp-drive", err["desc"])
        err = self.error_of(self.m.qmp.cmd_raw("migrate-set-parameters", {"warp-factor": 9}))
        self.assertIn("warp-factor", err["desc"])
        self.error_of(self.m.qmp.cmd_raw("migrate-set-parameters", {"downtime-limit": -1}))
        self.still_alive()

    def test_oversized_request(self):
        q = self.m.qmp
        big = json.dumps({"execute": "query-status", "arguments": {"pad": "x" * (2 << 20)}})
        q.send_raw(big)
        err = self.error_of(q.read_reply())
        self.assertEqual(err["class"], "GenericError")
        self.still_alive()

    def test_id_is_echoed(self):
        q = self.m.qmp
        q.send_raw('{"execute": "query-status", "id": "abc-1"}')
        self.assertEqual(q.read_reply().get("id"), "abc-1")
        q.send_raw('{"execute": "nope", "id": 7}')
        self.assertEqual(q.read_reply().get("id"), 7)

    def test_several_clients(self):
        others = [QMP(self.m.qmp_path) for _ in range(3)]
        for o in others:
            self.assertIn("status", o.cmd("query-status"))
        others[0].close()
        self.still_alive(others[1])
        self.m.cmd("stop")
        # Events reach every negotiated client.
        for o in others[1:]:
            while not any(e["event"] == "STOP" for e in o.events):
                o.events.append(o._read())
            o.close()
        self.m.cmd("cont")
        self.still_alive()

    def test_client_disconnects_mid_request(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.m.qmp_path)
        s.recv(4096)
        s.sendall(b'{"execute": "qmp_capabilities"}{"execute": "query-sta')
        s.close()
        self.still_alive()

    def test_commands_before_negotiation(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.m.qmp_path)
        s.settimeout(10)
        f = s.makefile("rb")
        self.assertIn("QMP", json.loads(f.readline()))
        s.sendall(b'{"execute": "query-status"}\n')
        reply = json.loads(f.readline())
        self.assertEqual(reply["error"]["class"], "CommandNotFound")
        f.close()
        s.close()
        self.still_alive()

    def test_query_migrate_parameters_and_capabilities(self):
        params = self.m.cmd("query-migrate-parameters")
        for key in ("downtime-limit", "max-bandwidth", "avail-switchover-bandwidth",
                    "x-dirty-tracker"):
            self.assertIn(key, params)
        caps = {c["capability"]: c["state"] for c in self.m.cmd("query-migrate-capabilities")}
        for key in ("events", "pause-before-switchover", "validate-uuid", "auto-converge"):
            self.assertIn(key, caps)
        self.m.set_params(**{"downtime-limit": 42})
        self.assertEqual(self.m.cmd("query-migrate-parameters")["downtime-limit"], 42)
        self.m.set_caps(auto_converge=True)
        caps = {c["capability"]: c["state"] for c in self.m.cmd("query-migrate-capabilities")}
        self.assertTrue(caps["auto-converge"])

    def test_verify_and_workload_commands(self):
        w1 = self.m.workload()["steps"]
        self.assertTrue(self.m.wait_running_steps())
        self.assertGreater(self.m.workload()["steps"], w1)
        v = self.m.verify()
        self.assertTrue(v["ok"], v)
        self.assertEqual(v["pages"], (64 << 20) // 4096)
        self.assertEqual(self.m.status(), "running")


if __name__ == "__main__":
    lmtest.main()
