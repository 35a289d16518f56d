"""TLS on every connection of a migration: QEMU's TLS test matrix, ported.

Test certificates come from scripts/make-test-certs.sh (certtool).  Each
friendly case migrates and checks memory (byte for byte against the
stopped source for precopy and multifd, the workload's invariant for
postcopy) and that the guest runs on.  Each hostile case checks that both
sides fail with a message naming the cause, that the source guest runs on,
and that a retry with good credentials succeeds.

Coverage: precopy, multifd (4 channels) and postcopy with preempt each run
QEMU's matrix: x509 friendly, hostile client, no client certificate,
hostname mismatch, hostname through tls-hostname, authz allow, authz deny,
PSK match and mismatch (the case bodies live in TLSBase; each mode says how
a migration that must complete runs).  Precopy also runs the cases that
do not depend on the mode (expiry, authz-list globs, refusals).
"""
import os
import shutil
import subprocess
import tempfile
import time

import lmtest
from lmtest import MigrationTest, QMPError

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
MAKE_CERTS = os.path.join(ROOT, "scripts", "make-test-certs.sh")
MEM = "32M"
CLIENT_DN = "CN=livemig-client,O=livemig test"
# Seconds the "expired" client certificate is valid for after it is made.
EXPIRE_S = 4

CERTS = None
CERTS_MADE = 0.0


def setUpModule():
    global CERTS, CERTS_MADE
    CERTS = tempfile.mkdtemp(prefix="lmtls-")
    subprocess.run([MAKE_CERTS, CERTS, str(EXPIRE_S)], check=True, timeout=120)
    CERTS_MADE = time.time()


def tearDownModule():
    shutil.rmtree(CERTS, ignore_errors=True)


class TLSBase(MigrationTest):
    # A live guest that dirties slowly enough for any migration to outrun
    # it, also on a loaded machine under ASan.
    def pair(self, caps=None, workload="increment", dst_paused=True, extra=()):
        src = self.vm("src", memory=MEM, workload=workload,
                      extra=["--dirty-rate", "256K"] + list(extra))
        dst = self.vm("dst", memory=MEM, workload=workload, incoming="defer",
                      paused=dst_paused, extra=list(extra))
        if caps:
            src.set_caps(**caps)
            dst.set_caps(**caps)
        self.assertTrue(src.wait_running_steps())
        return src, dst

    def x509(self, vm, name, endpoint, oid="tls0", verify=True, base=None):
        vm.cmd("object-add", **{"qom-type": "tls-creds-x509", "id": oid,
                                "dir": os.path.join(base or CERTS, name), "endpoint": endpoint,
                                "verify-peer": verify})
        vm.set_params(**{"tls-creds": oid})

    def psk(self, vm, name, endpoint, oid="tls0", username=None):
        args = {"qom-type": "tls-creds-psk", "id": oid, "dir": os.path.join(CERTS, name),
                "endpoint": endpoint}
        if username:
            args["username"] = username
        vm.cmd("object-add", **args)
        vm.set_params(**{"tls-creds": oid})

    def friendly_x509(self, src, dst):
        self.x509(dst, "server", "server")
        self.x509(src, "client", "client")

    def incoming(self, dst, uri="tcp:127.0.0.1:0"):
        dst.cmd("migrate-incoming", uri=uri)
        if uri.startswith("tcp:"):
            addr = dst.migration()["socket-address"][0]
            return "tcp:%s:%s" % (addr["host"], addr["port"])
        return uri

    def run_ok(self, src, dst, uri="tcp:127.0.0.1:0"):
        """A migration that must complete; memory checked byte for byte."""
        info = self.migrate(src, dst, self.incoming(dst, uri), dst_uri=False)
        self.assertEqual(dst.status(), "paused")
        self.assert_same_memory(src, dst)
        dst.cmd("cont")
        self.assert_guest_ok(dst)
        return info

    def run_refused(self, src, dst, src_cause, dst_cause, uri="tcp:127.0.0.1:0"):
        """Both sides fail naming the cause; the source guest runs on."""
        src.cmd("migrate", uri=self.incoming(dst, uri))
        sinfo = src.wait_migration(statuses=("failed",))
        dinfo = dst.wait_migration(statuses=("failed",))
        print("\n  source: %s\n  destination: %s" % (sinfo.get("error-desc"),
                                                     dinfo.get("error-desc")))
        self.assertIn(src_cause, sinfo.get("error-desc", ""))
        self.assertIn(dst_cause, dinfo.get("error-desc", ""))
        self.assertEqual(src.status(), "running")
        self.assertTrue(src.wait_running_steps())
        self.assertTrue(src.verify()["ok"])
        return sinfo, dinfo

    def retry_with(self, src, dst, fix, uri="tcp:127.0.0.1:0"):
        """Replace the bad credentials (fix(src, dst)) and migrate again."""
        fix(src, dst)
        return self.run_ok(src, dst, uri)

    def replace_client(self, name, oid="tls0"):
        def fix(src, dst):
            src.cmd("object-del", id=oid)
            self.x509(src, name, "client", oid=oid)
        return fix

    def hostile(self, src, dst, uri="tcp:127.0.0.1:0"):
        """A client certificate from another CA: 'unknown CA' on both sides."""
        self.x509(dst, "server", "server")
        self.x509(src, "hostile", "client")
        self.run_refused(src, dst, "unknown CA", "unknown CA", uri)
        self.retry_with(src, dst, self.replace_client("client"), uri)


    # ---- QEMU's matrix: each mode's tests call these ----

    def case_x509_no_client_cert(self):
        src, dst = self.pair()
        self.x509(dst, "server", "server")
        self.x509(src, "noclient", "client")
        self.run_refused(src, dst, "no client certificate", "no client certificate")
        self.retry_with(src, dst, self.replace_client("client"))

    def case_x509_hostname_mismatch(self):
        src, dst = self.pair()
        self.friendly_x509(src, dst)
        src.set_params(**{"tls-hostname": "not-the-destination.example"})
        self.run_refused(src, dst, "hostname mismatch", "hostname mismatch")

        def fix(s, d):
            s.set_params(**{"tls-hostname": ""})
        self.retry_with(src, dst, fix)

    def case_x509_hostname_via_tls_hostname(self):
        # A unix: URI has no host: tls-hostname names the certificate's.
        src, dst = self.pair()
        self.friendly_x509(src, dst)
        src.set_params(**{"tls-hostname": "livemig-dst"})
        self.run_ok(src, dst, "unix:" + self.path("mig.sock"))
        self.assertEqual(src.cmd("query-migrate-parameters")["tls-hostname"], "livemig-dst")

    def case_authz_allow(self):
        src, dst = self.pair()
        self.friendly_x509(src, dst)
        dst.cmd("object-add", **{"qom-type": "authz-simple", "id": "auth0",
                                 "identity": CLIENT_DN})
        dst.set_params(**{"tls-authz": "auth0"})
        self.run_ok(src, dst)

    def case_authz_deny(self):
        src, dst = self.pair()
        self.friendly_x509(src, dst)
        dst.cmd("object-add", **{"qom-type": "authz-simple", "id": "auth0",
                                 "identity": "CN=someone-else,O=livemig test"})
        dst.set_params(**{"tls-authz": "auth0"})
        _, dinfo = self.run_refused(src, dst, "authorization denied", "authorization denied")
        self.assertIn(CLIENT_DN, dinfo["error-desc"])

        def fix(s, d):
            d.cmd("object-del", id="auth0")
            d.cmd("object-add", **{"qom-type": "authz-list", "id": "auth0", "policy": "deny",
                                   "rules": [{"match": CLIENT_DN, "policy": "allow"}]})
        self.retry_with(src, dst, fix)

    def case_psk_match(self):
        src, dst = self.pair()
        self.psk(dst, "psk", "server")
        self.psk(src, "psk", "client")
        return self.run_ok(src, dst, "unix:" + self.path("mig.sock"))

    def case_psk_mismatch(self):
        src, dst = self.pair()
        self.psk(dst, "psk", "server")
        self.psk(src, "psk-wrong", "client")
        self.run_refused(src, dst, "PSK mismatch", "PSK mismatch")

        def fix(s, d):
            s.cmd("object-del", id="tls0")
            self.psk(s, "psk", "client")
        self.retry_with(src, dst, fix)


class Precopy(TLSBase):
    def test_x509_friendly(self):
        src, dst = self.pair()
        self.friendly_x509(src, dst)
        info = self.run_ok(src, dst)
        self.assertGreater(info["ram"]["transferred"], 0)

    def test_x509_hostile_client(self):
        src, dst = self.pair()
        self.hostile(src, dst)

    def test_x509_no_client_cert(self):
        self.case_x509_no_client_cert()

    def test_x509_no_client_cert_without_verify(self):
        # verify-peer off on the destination: a client without a
        # certificate is let in (QEMU's "verify-peer": false).
        src, dst = self.pair()
        self.x509(dst, "server", "server", verify=False)
        self.x509(src, "noclient", "client")
        self.run_ok(src, dst)

    def test_x509_hostname_mismatch(self):
        self.case_x509_hostname_mismatch()

    def test_x509_hostname_via_tls_hostname(self):
        self.case_x509_hostname_via_tls_hostname()

    def test_x509_expired_client_cert(self):
        # Valid when object-add loads it (QEMU refuses expired certificates
        # there), expired by the time of the handshake: its own certificates,
        # the client's valid for a few seconds from when they are made (more
        # on a machine too slow to load it in time).
        src, dst = self.pair()
        certs = self.path("certs")
        for valid_s in (EXPIRE_S, 4 * EXPIRE_S, 16 * EXPIRE_S):
            shutil.rmtree(certs, ignore_errors=True)
            subprocess.run([MAKE_CERTS, certs, str(valid_s)], check=True, timeout=120)
            made = time.time()
            try:
                self.x509(src, "expired", "client", base=certs)
                break
            except QMPError as e:
                self.assertIn("has expired", e.desc)
        self.x509(dst, "server", "server", base=certs)
        time.sleep(max(0.0, made + valid_s + 1.5 - time.time()))
        self.run_refused(src, dst, "expired", "expired")

        def fix(s, d):
            s.cmd("object-del", id="tls0")
            self.x509(s, "client", "client", base=certs)
        self.retry_with(src, dst, fix)

    def test_expired_cert_refused_at_object_add(self):
        vm = self.vm("src", memory=MEM)
        wait = CERTS_MADE + EXPIRE_S + 1 - time.time()
        if wait > 0:
            time.sleep(wait)
        with self.assertRaises(QMPError) as cm:
            self.x509(vm, "expired", "client")
        self.assertIn("has expired", cm.exception.desc)
        self.assertIn("client-cert.pem", cm.exception.desc)

    def test_authz_allow(self):
        self.case_authz_allow()

    def test_authz_list_glob_allow(self):
        src, dst = self.pair()
        self.friendly_x509(src, dst)
        dst.cmd("object-add", **{"qom-type": "authz-list", "id": "auth0", "policy": "deny",
                                 "rules": [{"match": "CN=intruder*", "policy": "deny",
                                            "format": "glob"},
                                           {"match": "CN=livemig-client,*", "policy": "allow",
                                            "format": "glob"}]})
        dst.set_params(**{"tls-authz": "auth0"})
        self.run_ok(src, dst)

    def test_authz_deny(self):
        self.case_authz_deny()

    def test_psk_match(self):
        self.case_psk_match()

    def test_psk_mismatch(self):
        self.case_psk_mismatch()

    def test_psk_authz_username(self):
        # tls-authz checks a PSK client's username.
        src, dst = self.pair()
        self.psk(dst, "psk", "server")
        self.psk(src, "psk", "client", username="other")
        dst.cmd("object-add", **{"qom-type": "authz-simple", "id": "auth0", "identity": "qemu"})
        dst.set_params(**{"tls-authz": "auth0"})
        _, dinfo = self.run_refused(src, dst, "authorization denied", "authorization denied")
        self.assertIn("'other'", dinfo["error-desc"])

    def test_plain_source_to_tls_destination(self):
        src, dst = self.pair()
        self.x509(dst, "server", "server")
        src.cmd("migrate", uri=self.incoming(dst))
        src.wait_migration(statuses=("failed",))
        dinfo = dst.wait_migration(statuses=("failed",))
        self.assertIn("TLS", dinfo["error-desc"])
        self.assertEqual(src.status(), "running")

    def test_refusals(self):
        src = self.vm("src", memory=MEM)
        # Unknown ids and wrong endpoints fail `migrate` itself.
        src.set_params(**{"tls-creds": "nope"})
        with self.assertRaises(QMPError) as cm:
            src.cmd("migrate", uri="unix:" + self.path("x.sock"))
        self.assertIn("No TLS credentials with id 'nope'", cm.exception.desc)
        self.x509(src, "server", "server", oid="srv")
        with self.assertRaises(QMPError) as cm:
            src.cmd("migrate", uri="unix:" + self.path("x.sock"))
        self.assertIn("client endpoint", cm.exception.desc)
        self.x509(src, "client", "client")
        # Where QEMU refuses TLS.
        with self.assertRaises(QMPError) as cm:
            src.cmd("migrate", uri="file:" + self.path("img"))
        self.assertIn("socket transport", cm.exception.desc)
        src.set_caps(mapped_ram=True)
        with self.assertRaises(QMPError) as cm:
            src.cmd("migrate", uri="file:" + self.path("img"))
        self.assertIn("Cannot use TLS with mapped-ram", cm.exception.desc)
        src.set_caps(mapped_ram=False, multifd=True)
        src.set_params(**{"zero-copy-send": True})
        with self.assertRaises(QMPError) as cm:
            src.cmd("migrate", uri="tcp:127.0.0.1:1")
        self.assertIn("non-TLS", cm.exception.desc)
        # object-add's own errors.
        with self.assertRaises(QMPError) as cm:
            self.x509(src, "client", "client")
        self.assertIn("duplicate", cm.exception.desc)
        with self.assertRaises(QMPError) as cm:
            src.cmd("object-add", **{"qom-type": "tls-creds-x509", "id": "x",
                                     "dir": self.path("missing"), "endpoint": "client"})
        self.assertIn("ca-cert.pem", cm.exception.desc)
        with self.assertRaises(QMPError) as cm:
            src.cmd("object-del", id="missing")
        self.assertIn("not found", cm.exception.desc)
        self.assertEqual(src.status(), "running")
        self.assertFalse(os.path.exists(self.path("img")))


class Multifd(TLSBase):
    CAPS = {"multifd": True}

    def pair(self, **kw):
        src, dst = super().pair(caps=self.CAPS, **kw)
        src.set_params(**{"multifd-channels": 4})
        dst.set_params(**{"multifd-channels": 4})
        return src, dst

    def test_x509_friendly(self):
        src, dst = self.pair()
        self.friendly_x509(src, dst)
        info = self.run_ok(src, dst)
        self.assertGreater(info["ram"]["multifd-bytes"], 0)

    def run_ok(self, src, dst, uri="tcp:127.0.0.1:0"):
        info = super().run_ok(src, dst, uri)
        self.assertGreater(info["ram"]["multifd-bytes"], 0)
        return info

    def test_psk_match(self):
        self.case_psk_match()

    def test_x509_hostile_client(self):
        src, dst = self.pair()
        self.hostile(src, dst)

    def test_x509_no_client_cert(self):
        self.case_x509_no_client_cert()

    def test_x509_hostname_mismatch(self):
        self.case_x509_hostname_mismatch()

    def test_x509_hostname_via_tls_hostname(self):
        self.case_x509_hostname_via_tls_hostname()

    def test_authz_allow(self):
        self.case_authz_allow()

    def test_authz_deny(self):
        self.case_authz_deny()

    def test_psk_mismatch(self):
        self.case_psk_mismatch()


class Postcopy(TLSBase):
    def pair(self):
        src, dst = super().pair(caps={"postcopy_ram": True, "postcopy_preempt": True},
                                workload="random", dst_paused=False)
        # Precopy alone would never end: postcopy must finish it.
        src.set_params(**{"downtime-limit": 1, "max-bandwidth": 8 << 20})
        return src, dst

    def run_ok(self, src, dst, uri="tcp:127.0.0.1:0"):
        """Postcopy must finish it: the workload's invariant is checked."""
        # Only this run's log lines count: a refused attempt before it may
        # have logged its preempt channel's failed handshake.
        log_start = len(src.read_log())
        uri = self.incoming(dst, uri)
        src.cmd("migrate", uri=uri)
        src.cmd("migrate-start-postcopy")  # belongs to the migration just started
        info = src.wait_migration()
        self.assertEqual(info["status"], "completed", info.get("error-desc"))
        dinfo = dst.wait_migration()
        self.assertEqual(dinfo["status"], "completed", dinfo.get("error-desc"))
        self.assertGreater(info["ram"]["postcopy-bytes"], 0)
        self.assert_guest_ok(dst)
        # The preempt channel ran (TLS) rather than falling back.
        self.assertNotIn("postcopy preempt:", src.read_log()[log_start:])
        return info

    def test_x509_friendly(self):
        src, dst = self.pair()
        self.friendly_x509(src, dst)
        src.set_params(**{"tls-hostname": "localhost"})
        self.run_ok(src, dst, "unix:" + self.path("mig.sock"))

    def test_psk_match(self):
        self.case_psk_match()

    def test_x509_hostile_client(self):
        src, dst = self.pair()
        self.hostile(src, dst)

    def test_x509_no_client_cert(self):
        self.case_x509_no_client_cert()

    def test_x509_hostname_mismatch(self):
        self.case_x509_hostname_mismatch()

    def test_authz_allow(self):
        self.case_authz_allow()

    def test_authz_deny(self):
        self.case_authz_deny()

    def test_psk_mismatch(self):
        self.case_psk_mismatch()


if __name__ == "__main__":
    lmtest.main()
