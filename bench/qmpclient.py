"""What the bench/ scripts share to drive an emulator (livemig-vm or QEMU
alike): the integration tests' QMP client (tests/integration/lmtest.py),
connected once the process that just started listens, and the wait for a
migration's end.  Standard library only.
"""
import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                "tests", "integration"))
import lmtest  # noqa: E402

# query-migrate's statuses after which nothing more happens.
FINAL = ("completed", "failed", "cancelled")


def _retry_connect(connect, timeout):
    """connect() until it stops raising OSError (the socket is not there
    yet), or re-raises it after timeout s."""
    deadline = time.time() + timeout
    while True:
        try:
            return connect()
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.02)


def connect_unix(path, timeout):
    """A stream socket connected to the unix socket path."""
    def connect():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        return sock
    return _retry_connect(connect, timeout)


def QMP(path, timeout=60):
    """lmtest's client on path: cmd(name, **args) returns the reply's
    return, an error raises lmtest.QMPError."""
    return _retry_connect(lambda: lmtest.QMP(path, timeout), timeout)


def wait_migration(query, timeout, poll=0.05, on_poll=None, must_end=False):
    """Polls query() (a query-migrate reply; {} or None before the first
    migration) every poll s until its status is FINAL or timeout s have
    passed, and returns the last reply: on a timeout its status is not
    final (or absent), or TimeoutError with must_end.  on_poll(reply) sees
    each reply that was not final."""
    deadline = time.monotonic() + timeout
    while True:
        info = query() or {}
        if info.get("status") in FINAL:
            return info
        if time.monotonic() >= deadline:
            if must_end:
                raise TimeoutError("migration still %s after %ss" % (info.get("status"), timeout))
            return info
        if on_poll:
            on_poll(info)
        time.sleep(poll)
