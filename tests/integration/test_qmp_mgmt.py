"""QMP for management stacks (QEMU's semantics): descriptors passed with
SCM_RIGHTS and named by getfd, migrate's channels argument, out-of-band
execution, query-version, and query-migrate's {} before any migration.

Every migration verifies the destination's memory byte for byte against
the stopped source and that the guest runs on there.
"""
import json
import os
import signal
import socket
import time

import lmtest
from lmtest import MigrationTest, QMPError
from test_postcopy import PostcopyBase

MEM = "64M"


def send_with_fd(vm, request, fd):
    """One request on the machine's QMP connection, with fd attached."""
    socket.send_fds(vm.qmp.sock, [json.dumps(request).encode()], [fd])
    return vm.qmp.read_reply()


class Management(MigrationTest):
    def pair(self):
        src = self.vm("src", memory=MEM, workload="increment")
        dst = self.vm("dst", memory=MEM, workload="increment", incoming="defer")
        self.assertTrue(src.wait_running_steps())
        return src, dst

    def finish(self, src, dst):
        info = src.wait_migration()
        self.assertEqual(info["status"], "completed", info.get("error-desc"))
        dinfo = dst.wait_migration()
        self.assertEqual(dinfo["status"], "completed", dinfo.get("error-desc"))
        self.assert_same_memory(src, dst)
        dst.cmd("cont")  # the source was stopped: so is the destination
        self.assert_guest_ok(dst)

    def test_version_commands_and_empty_query(self):
        vm = self.vm("m", memory=MEM, workload="idle")
        v = vm.cmd("query-version")
        self.assertEqual(sorted(v["qemu"]), ["major", "micro", "minor"])
        self.assertTrue(v["package"].startswith("livemig "))
        names = {c["name"] for c in vm.cmd("query-commands")}
        for n in ("getfd", "closefd", "query-version", "yank", "query-yank", "migrate",
                  "add-fd", "remove-fd", "query-fdsets", "query-migrationthreads"):
            self.assertIn(n, names)
        # As QEMU: nothing to report before the first migration.
        self.assertEqual(vm.cmd("query-migrate"), {})
        self.assertEqual(vm.cmd("query-yank"), [])

    def test_events_capability(self):
        """MIGRATION events only with the `events` capability, as QEMU."""
        src, dst = self.pair()
        for vm in (src, dst):
            vm.set_caps(events=False)
        src.cmd("stop")
        self.migrate(src, dst, "unix:" + self.path("quiet.sock"))
        for vm in (src, dst):
            vm.qmp.cmd("query-status")  # collect whatever was sent
            self.assertFalse([e for e in vm.qmp.events
                              if e["event"] in ("MIGRATION", "MIGRATION_PASS")], vm.name)
        dst.cmd("cont")
        self.assert_guest_ok(dst)
        # Back on: the next migration (from the destination) reports again.
        dst2 = self.vm("dst2", memory=MEM, workload="increment", incoming="defer")
        dst.cmd("stop")
        dst.set_caps(events=True)
        self.migrate(dst, dst2, "unix:" + self.path("loud.sock"))
        seen = [e["data"]["status"] for e in dst.qmp.events if e["event"] == "MIGRATION"]
        self.assertEqual(seen[-1], "completed")
        self.assertIn("MIGRATION_PASS", [e["event"] for e in dst.qmp.events])

    def _feed_garbage(self, dst, sock):
        dst.qmp.cmd("migrate-incoming", uri="unix:" + sock,
                    **({} if dst.name == "dflt" else {"exit-on-error": False}))
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(sock)
        c.sendall(b"this is not a migration stream" * 4)
        c.close()

    def test_exit_on_error(self):
        # Default (QEMU's): the destination exits, status 1, saying why.
        dflt = self.vm("dflt", memory=MEM, workload="idle", incoming="defer")
        self._feed_garbage(dflt, self.path("d.sock"))
        self.assertEqual(dflt.proc.wait(timeout=60), 1)
        self.assertIn("exiting (exit-on-error)", dflt.read_log())
        # exit-on-error false: it stays up and query-migrate says why.
        keep = self.vm("keep", memory=MEM, workload="idle", incoming="defer")
        self._feed_garbage(keep, self.path("k.sock"))
        info = keep.wait_migration(statuses=("failed",))
        self.assertTrue(info.get("error-desc"), info)
        self.assertTrue(keep.alive())
        self.assertEqual(keep.status(), "inmigrate")

    def test_getfd_then_migrate_fd_name(self):
        src, dst = self.pair()
        a, b = socket.socketpair()
        try:
            r = send_with_fd(dst, {"execute": "getfd", "arguments": {"fdname": "mig"}}, b.fileno())
            self.assertEqual(r, {"return": {}})
            r = send_with_fd(src, {"execute": "getfd", "arguments": {"fdname": "mig"}}, a.fileno())
            self.assertEqual(r, {"return": {}})
        finally:
            a.close()
            b.close()
        # A stopped guest: this test is about the address, not convergence.
        src.cmd("stop")
        dst.cmd("migrate-incoming", uri="fd:mig")
        src.cmd("migrate", uri="fd:mig")
        self.finish(src, dst)
        # The migration took the descriptor: the name is gone.
        with self.assertRaisesRegex(QMPError, "File descriptor named 'mig' has not been found"):
            src.cmd("closefd", fdname="mig")

    def test_getfd_errors(self):
        vm = self.vm("m", memory=MEM, workload="idle")
        with self.assertRaisesRegex(QMPError, "No file descriptor supplied via SCM_RIGHTS"):
            vm.cmd("getfd", fdname="x")
        r, w = os.pipe()
        try:
            reply = send_with_fd(vm, {"execute": "getfd", "arguments": {"fdname": "7up"}}, w)
            self.assertIn("not starting with a digit", reply["error"]["desc"])
            reply = send_with_fd(vm, {"execute": "getfd", "arguments": {"fdname": "p"}}, w)
            self.assertEqual(reply, {"return": {}})
        finally:
            os.close(w)
        # closefd closes the machine's copy: the pipe reads EOF.
        vm.cmd("closefd", fdname="p")
        self.assertEqual(os.read(r, 1), b"")
        os.close(r)
        with self.assertRaisesRegex(QMPError, "File descriptor named 'nope' has not been found"):
            vm.cmd("migrate", uri="fd:nope")
        self.assertEqual(vm.status(), "running")

    def test_add_fd_file_migration(self):
        """file:/dev/fdset/N: the image opened by the client (the machine
        could not open the path itself), passed with add-fd, saved through
        it and restored through another set, memory byte for byte."""
        src = self.vm("src", memory=MEM, workload="increment")
        self.assertTrue(src.wait_running_steps())
        img = self.path("fdset.img")
        wfd = os.open(img, os.O_WRONLY | os.O_CREAT, 0o600)
        rfd_early = os.open(img, os.O_RDONLY)
        try:
            r = send_with_fd(src, {"execute": "add-fd",
                                   "arguments": {"fdset-id": 3, "opaque": "rdonly:img"}},
                             rfd_early)
            self.assertEqual(r["return"]["fdset-id"], 3, r)
            r = send_with_fd(src, {"execute": "add-fd",
                                   "arguments": {"fdset-id": 3, "opaque": "wronly:img"}}, wfd)
            self.assertEqual(r["return"]["fdset-id"], 3, r)
            wr_in_vm = r["return"]["fd"]
        finally:
            os.close(wfd)
            os.close(rfd_early)
        sets = src.cmd("query-fdsets")
        self.assertEqual([s["fdset-id"] for s in sets], [3])
        self.assertEqual([f["opaque"] for f in sets[0]["fds"]], ["rdonly:img", "wronly:img"])
        # Only the passed descriptors reach the image now.
        moved = self.path("fdset-moved.img")
        os.rename(img, moved)
        src.cmd("stop")
        # The write-only descriptor is the one dup'ed for the save (QEMU
        # matches the access mode), with an offset as file: allows.
        src.cmd("migrate", uri="file:/dev/fdset/3,offset=4096")
        self.assertEqual(src.wait_migration()["status"], "completed")
        self.assertGreater(os.path.getsize(moved), 4096)
        self.assertFalse(os.path.exists(img))
        # The set still holds both: the migration used (and closed) a copy.
        self.assertEqual(len(src.cmd("query-fdsets")[0]["fds"]), 2)
        src.cmd("remove-fd", **{"fdset-id": 3, "fd": wr_in_vm})
        self.assertEqual([f["opaque"] for f in src.cmd("query-fdsets")[0]["fds"]],
                         ["rdonly:img"])
        # No write-only descriptor left: a save through the set is refused.
        with self.assertRaisesRegex(QMPError, "Could not dup FD for /dev/fdset/3"):
            src.cmd("migrate", uri="file:/dev/fdset/3,offset=4096")
        src.cmd("remove-fd", **{"fdset-id": 3})
        self.assertEqual(src.cmd("query-fdsets"), [])

        # Restore: a read-only descriptor in a set of its own (no
        # fdset-id: the first free one, 0).
        dst = self.vm("dst", memory=MEM, workload="increment", incoming="defer")
        rfd = os.open(moved, os.O_RDONLY)
        try:
            r = send_with_fd(dst, {"execute": "add-fd", "arguments": {}}, rfd)
        finally:
            os.close(rfd)
        self.assertEqual(r["return"]["fdset-id"], 0, r)
        os.unlink(moved)
        dst.cmd("migrate-incoming", channels=[{"channel-type": "main", "addr": {
            "transport": "file", "filename": "/dev/fdset/0", "offset": 4096}}])
        self.assertEqual(dst.wait_migration()["status"], "completed")
        self.assertEqual(src.memory_hash(), dst.memory_hash())
        self.assertEqual(dst.cmd("x-verify-memory")["ok"], True)
        dst.cmd("cont")
        self.assert_guest_ok(dst)
        # The source was stopped for the save and runs on.
        src.cmd("cont")
        self.assert_guest_ok(src)

    def test_fdset_errors(self):
        vm = self.vm("m", memory=MEM, workload="idle")
        with self.assertRaisesRegex(QMPError, "No file descriptor supplied via SCM_RIGHTS"):
            vm.cmd("add-fd", **{"fdset-id": 1})
        r, w = os.pipe()
        try:
            reply = send_with_fd(vm, {"execute": "add-fd", "arguments": {"fdset-id": -1}}, w)
            self.assertIn("'fdset-id' expects a non-negative value", reply["error"]["desc"])
            reply = send_with_fd(vm, {"execute": "add-fd", "arguments": {"fdset-id": 5}}, w)
            self.assertEqual(reply["return"]["fdset-id"], 5)
        finally:
            os.close(w)
        with self.assertRaisesRegex(QMPError, "File descriptor named 'fdset-id:9' not found"):
            vm.cmd("remove-fd", **{"fdset-id": 9})
        with self.assertRaisesRegex(QMPError,
                                    "File descriptor named 'fdset-id:5, fd:999' not found"):
            vm.cmd("remove-fd", **{"fdset-id": 5, "fd": 999})
        with self.assertRaisesRegex(QMPError, "Could not dup FD for /dev/fdset/9"):
            vm.cmd("migrate", uri="file:/dev/fdset/9")
        with self.assertRaisesRegex(QMPError, "Could not parse fdset /dev/fdset/x"):
            vm.cmd("migrate", uri="file:/dev/fdset/x")
        self.assertEqual(vm.status(), "running")
        # remove-fd closes the machine's copy: the pipe reads EOF.
        vm.cmd("remove-fd", **{"fdset-id": 5})
        self.assertEqual(os.read(r, 1), b"")
        os.close(r)
        self.assertEqual(vm.cmd("query-fdsets"), [])

    def test_query_migrationthreads(self):
        src, dst = self.pair()
        self.assertEqual(src.cmd("query-migrationthreads"), [])
        for vm in (src, dst):
            vm.set_caps(multifd=True)
            vm.set_params(**{"multifd-channels": 2})
        # Held before the switchover, every thread still there when asked.
        src.set_caps(**{"pause-before-switchover": True})
        src.cmd("stop")
        sock = "unix:" + self.path("thr.sock")
        dst.cmd("migrate-incoming", uri=sock)
        src.cmd("migrate", uri=sock)
        src.wait_migration(statuses=("pre-switchover",))
        threads = src.cmd("query-migrationthreads")
        self.assertEqual(sorted(t["name"] for t in threads),
                         ["mig/src/main", "mig/src/send_0", "mig/src/send_1"])
        for t in threads:
            # A thread of the machine's process.
            self.assertTrue(os.path.exists("/proc/%d/task/%d" % (src.proc.pid, t["thread-id"])))
        src.cmd("migrate-continue", state="pre-switchover")
        self.finish(src, dst)
        # The migration thread lists itself off as it returns, just after
        # the final status (as QEMU's).
        deadline = time.time() + 30
        while src.cmd("query-migrationthreads") and time.time() < deadline:
            time.sleep(0.05)
        self.assertEqual(src.cmd("query-migrationthreads"), [])

    def test_channels(self):
        src, dst = self.pair()
        sock = self.path("ch.sock")
        chan = [{"channel-type": "main",
                 "addr": {"transport": "socket", "type": "unix", "path": sock}}]
        with self.assertRaisesRegex(QMPError, "mutually exclusive"):
            src.cmd("migrate", uri="unix:" + sock, channels=chan)
        with self.assertRaisesRegex(QMPError, "Need either 'uri' or 'channels'"):
            src.cmd("migrate")
        with self.assertRaisesRegex(QMPError, "channel-type"):
            src.cmd("migrate", channels=[{"channel-type": "other", "addr": chan[0]["addr"]}])
        src.cmd("stop")
        dst.cmd("migrate-incoming", channels=chan)
        src.cmd("migrate", channels=chan)
        self.finish(src, dst)

    def test_channels_file_and_exec(self):
        src = self.vm("src", memory=MEM, workload="increment")
        self.assertTrue(src.wait_running_steps())
        src.cmd("stop")
        img = self.path("guest.img")
        # exec: argv, each argument kept whole (a space inside one).
        os.mkdir(self.path("a dir"))
        target = os.path.join(self.path("a dir"), "out.img")
        src.cmd("migrate", channels=[{"channel-type": "main", "addr": {
            "transport": "exec", "args": ["/bin/sh", "-c", 'cat > "$0"', target]}}])
        self.assertEqual(src.wait_migration()["status"], "completed")
        self.assertTrue(os.path.getsize(target) > 0)
        # file: with an offset, restored through channels too.
        src2 = self.vm("src2", memory=MEM, workload="increment")
        self.assertTrue(src2.wait_running_steps())
        src2.cmd("stop")
        fileaddr = {"transport": "file", "filename": img, "offset": 4096}
        src2.cmd("migrate", channels=[{"channel-type": "main", "addr": fileaddr}])
        self.assertEqual(src2.wait_migration()["status"], "completed")
        dst = self.vm("dst", memory=MEM, workload="increment", incoming="defer")
        dst.cmd("migrate-incoming", channels=[{"channel-type": "main", "addr": fileaddr}])
        self.assertEqual(dst.wait_migration()["status"], "completed")
        self.assertEqual(src2.memory_hash(), dst.memory_hash())
        dst.cmd("cont")
        self.assert_guest_ok(dst)


class OutOfBand(PostcopyBase):
    def test_oob_pause_and_recover_while_inband_waits(self):
        """QEMU's case for out-of-band execution: the destination's in-band
        queue is stuck behind a command that waits on guest pages that can
        no longer arrive (the source is frozen); migrate-pause and
        migrate-recover still run, out of band, and recovery unblocks it."""
        src, dst = self.pair(params={"max-postcopy-bandwidth": 1 << 20})
        oob = lmtest.QMP(dst.qmp_path, enable=["oob"])

        self.start(src, dst)
        deadline = time.time() + 20
        while dst.status() != "running" and time.time() < deadline:
            time.sleep(0.01)
        os.kill(src.proc.pid, signal.SIGSTOP)
        try:
            # In band: reads every page of guest RAM; the pages still on the
            # frozen source fault and wait.
            oob.send_raw(json.dumps({"execute": "x-verify-memory", "id": "verify"}))
            oob.send_raw(json.dumps({"exec-oob": "migrate-pause", "id": "pause"}))
            first = oob.read_reply()
            self.assertEqual(first.get("id"), "pause", first)
            self.assertIn("return", first, first)
            # Every in-band queue is blocked (one command worker, as QEMU's
            # main loop): the state change is seen through the event.
            while not any(e["event"] == "MIGRATION" and
                          e["data"]["status"] == "postcopy-paused" for e in oob.events):
                oob.events.append(oob._read())
            # Recovery goes out of band too.
            oob.send_raw(json.dumps({"exec-oob": "migrate-recover", "id": "recover",
                                     "arguments": {"uri": "unix:" + self.path("rec.sock")}}))
            for _ in range(50):
                r = oob.read_reply()
                if r.get("id") == "recover":
                    break
                self.assertNotEqual(r.get("id"), "verify", "in-band reply overtook OOB")
            self.assertIn("return", r, r)
        finally:
            os.kill(src.proc.pid, signal.SIGCONT)
        src.wait_migration(statuses=("postcopy-paused",))
        src.cmd("migrate", uri="unix:" + self.path("rec.sock"), resume=True)
        src.set_params(**{"max-postcopy-bandwidth": 0})
        verify = oob.read_reply()
        self.assertEqual(verify.get("id"), "verify", verify)
        self.assertTrue(verify["return"]["ok"], verify)
        oob.close()
        self.finish(src, dst)


if __name__ == "__main__":
    lmtest.main()
