"""Integration-test helpers: start livemig-vm processes and drive them over
QMP exactly as a management tool would.  Standard library only.

Every test that migrates verifies the destination's memory (byte for byte
against the stopped source, or by the workload's invariant) and that the
guest runs on afterwards.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

BUILD = os.environ.get("LIVEMIG_BUILD", os.path.join(os.path.dirname(__file__), "..", "..", "build"))
VM_BIN = os.path.join(BUILD, "livemig-vm")
CLI_BIN = os.path.join(BUILD, "livemig")
DEFAULT_TIMEOUT = 60.0
# A dirty rate every migration outruns, whatever the load: tests that need
# a live guest and a migration that completes give the source this.  An
# unbounded writer (increment rewrites every page of RAM in a moment)
# converges only once all of RAM fits in the downtime limit, i.e. only on
# a machine fast enough; under ASan on a loaded 2-core host a file sink
# was measured at 80 MB/s, ten times this.
LIVE_RATE = ["--dirty-rate", "8M"]
# A max-bandwidth well below LIVE_RATE: a migration of a LIVE_RATE guest
# under it never converges, so it stays active until the test ends it.
SLOW_BANDWIDTH = 1 << 20


class QMPError(Exception):
    def __init__(self, error):
        self.error_class = error.get("class")
        self.desc = error.get("desc", "")
        super().__init__("%s: %s" % (self.error_class, self.desc))


class QMP:
    """A blocking QMP client with event collection."""

    def __init__(self, path, timeout=DEFAULT_TIMEOUT, enable=None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.events = []
        greeting = self._read()
        assert "QMP" in greeting, greeting
        self.greeting = greeting
        if enable:
            self.cmd("qmp_capabilities", enable=enable)
        else:
            self.cmd("qmp_capabilities")

    def _read(self):
        dec = json.JSONDecoder()
        while True:
            text = self.buf.lstrip()
            if text:
                try:
                    obj, end = dec.raw_decode(text.decode())
                    self.buf = text.decode()[end:].encode()
                    return obj
                except ValueError:
                    pass
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("QMP connection closed")
            self.buf += chunk

    def send_raw(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def read_reply(self):
        while True:
            msg = self._read()
            if "event" in msg:
                self.events.append(msg)
                continue
            return msg

    def cmd_raw(self, name, args=None):
        req = {"execute": name}
        if args is not None:
            req["arguments"] = args
        self.send_raw(json.dumps(req))
        return self.read_reply()

    def cmd(self, name, **args):
        reply = self.cmd_raw(name, {k.replace("_", "-"): v for k, v in args.items()} or None)
        if "error" in reply:
            raise QMPError(reply["error"])
        return reply["return"]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class VM:
    """One livemig-vm process with its QMP socket and serial console file."""

    def __init__(self, tmpdir, name, memory="128M", smp=2, workload="increment", extra=(),
                 incoming=None, paused=False, pass_fds=(), wrapper=()):
        self.name = name
        self.qmp_path = os.path.join(tmpdir, name + ".qmp")
        self.serial_path = os.path.join(tmpdir, name + ".serial")
        self.log_path = os.path.join(tmpdir, name + ".log")
        # wrapper: a command that runs the machine (prlimit, setpriv, ...).
        args = list(wrapper) + [VM_BIN, "--name", name, "--memory", str(memory), "--smp", str(smp),
                "--workload", workload, "--qmp", "unix:" + self.qmp_path,
                "--serial", "file:" + self.serial_path]
        if incoming:
            args += ["--incoming", incoming]
        if paused:
            args += ["--paused"]
        args += list(extra)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     pass_fds=pass_fds)
        self.qmp = self._connect()
        # MIGRATION events need the `events` capability (as QEMU); the
        # tests read them.
        self.qmp.cmd("migrate-set-capabilities",
                     capabilities=[{"capability": "events", "state": True}])

    def _connect(self):
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited early (%s): %s" % (self.name, self.proc.returncode,
                                                                 self.read_log()))
            if os.path.exists(self.qmp_path):
                try:
                    return QMP(self.qmp_path)
                except OSError:
                    pass
            time.sleep(0.02)
        raise RuntimeError("%s: QMP socket never appeared" % self.name)

    def read_log(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def serial(self):
        try:
            with open(self.serial_path) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def cmd(self, name, **args):
        if name == "migrate-incoming":
            # QEMU's default exit-on-error=true ends a destination whose
            # migration failed; tests keep it up to read its error unless
            # they ask otherwise.
            args.setdefault("exit_on_error", False)
        return self.qmp.cmd(name, **args)

    def status(self):
        return self.cmd("query-status")["status"]

    def workload(self):
        return self.cmd("x-query-workload")

    def verify(self):
        return self.cmd("x-verify-memory")

    def memory_hash(self):
        return self.cmd("x-query-memory-hash")["hash"]

    def migration(self):
        # query-migrate answers {} before the first migration (as QEMU).
        return self.cmd("query-migrate") or {"status": "none"}

    def set_caps(self, **caps):
        self.cmd("migrate-set-capabilities",
                 capabilities=[{"capability": k.replace("_", "-"), "state": v} for k, v in caps.items()])

    def set_params(self, **params):
        self.cmd("migrate-set-parameters", **params)

    def wait_migration(self, statuses=("completed", "failed", "cancelled"), timeout=DEFAULT_TIMEOUT):
        deadline = time.time() + timeout
        while time.time() < deadline:
            info = self.migration()
            if info.get("status") in statuses:
                return info
            if info.get("status") in ("completed", "failed", "cancelled"):
                raise AssertionError("%s: migration ended %s while waiting for %s: %s" % (
                    self.name, info["status"], statuses, info.get("error-desc", "")))
            time.sleep(0.02)
        raise TimeoutError("%s: migration still %s after %ss" % (self.name, info.get("status"), timeout))

    def wait_running_steps(self, timeout=10.0):
        """The guest runs: its workload counter grows."""
        first = self.workload()["steps"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            time.sleep(0.05)
            if self.workload()["steps"] > first:
                return True
        return False

    def alive(self):
        return self.proc.poll() is None

    def kill(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait()

    def shutdown(self):
        if self.alive():
            try:
                self.qmp.cmd("quit")
            except Exception:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.qmp.close()
        self.log.close()


class MigrationTest(unittest.TestCase):
    """Base class: a temp dir and VMs that are always cleaned up."""

    maxDiff = None

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="lmtest-")
        self.vms = []

    def tearDown(self):
        for vm in self.vms:
            try:
                vm.shutdown()
            except Exception:
                vm.kill()
        if self._outcome_failed():
            for vm in self.vms:
                print("---- %s log ----\n%s" % (vm.name, vm.read_log()[-4000:]))
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _outcome_failed(self):
        outcome = getattr(self, "_outcome", None)
        result = getattr(outcome, "result", None)
        if result is None:
            return False
        return any(t is self for t, _ in result.failures + result.errors)

    def vm(self, name, **kw):
        v = VM(self.tmp, name, **kw)
        self.vms.append(v)
        return v

    def path(self, name):
        return os.path.join(self.tmp, name)

    def migrate(self, src, dst, uri, dst_uri=None, timeout=DEFAULT_TIMEOUT, expect="completed"):
        """migrate-incoming on dst (unless dst_uri is False), migrate on src,
        wait for both ends; returns the source's final query-migrate."""
        if dst_uri is not False:
            dst.cmd("migrate-incoming", uri=dst_uri or uri)
            if (dst_uri or uri).startswith("tcp:") and (dst_uri or uri).endswith(":0"):
                addr = dst.migration()["socket-address"][0]
                uri = "tcp:%s:%s" % (addr["host"], addr["port"])
        src.cmd("migrate", uri=uri)
        info = src.wait_migration(timeout=timeout)
        self.assertEqual(info["status"], expect, info.get("error-desc"))
        if expect == "completed":
            dinfo = dst.wait_migration(timeout=timeout)
            self.assertEqual(dinfo["status"], "completed", dinfo.get("error-desc"))
        return info

    def assert_same_memory(self, src, dst):
        """Byte for byte: the stopped source against the destination."""
        self.assertEqual(src.status(), "postmigrate")
        self.assertEqual(src.memory_hash(), dst.memory_hash())

    def assert_guest_ok(self, vm):
        """The workload's invariant holds and the guest runs on."""
        v = vm.verify()
        self.assertTrue(v["ok"], v)
        self.assertEqual(vm.status(), "running")
        self.assertTrue(vm.wait_running_steps(), "guest does not run on %s" % vm.name)
        v = vm.verify()
        self.assertTrue(v["ok"], v)


def main():
    if not os.path.exists(VM_BIN):
        raise SystemExit("livemig-vm not built at %s (set LIVEMIG_BUILD)" % VM_BIN)
    unittest.main(verbosity=2)
