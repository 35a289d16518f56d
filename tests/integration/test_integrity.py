"""Nothing lost, ever (issue 9): a destination never starts a guest from a
stream that lost a record, and checksums catch page data that changed on
the way or in a file.

A proxy between the two machines (streamproxy.py) drops or corrupts one
record of an otherwise valid migration; the destination must refuse to
start the guest, with an error naming what is missing or corrupt, the
source (whose guest was stopped before the migration, so that nothing is
sent twice) must run on intact once continued, and a retry must complete
with memory verified.  Saved files (plain and mapped-ram, checksummed by
default) are corrupted in place and must fail to restore, naming the block
and page range, while the intact file restores and verifies.
"""
import json
import os
import shutil
import struct
import subprocess

import lmtest
import streamproxy
from lmtest import MigrationTest

MEM = "64M"


class ProxyTest(MigrationTest):
    """A source guest (stopped for each migration) and migrations through
    a record-dropping or -corrupting proxy."""

    def setUp(self):
        super().setUp()
        self.src = self.vm("src", memory=MEM, workload="increment", extra=("--vram", "1M"))
        self.assertTrue(self.src.wait_running_steps())
        self.src.set_caps(return_path=True)
        self.proxies = []
        self.n = 0

    def tearDown(self):
        for p in self.proxies:
            p.close()
        super().tearDown()

    def through_proxy(self, policy, multifd=False, expect_error=(), src_caps=None, params=None):
        """One migration of the stopped source through a proxy applying
        policy; the destination must fail with every word of expect_error,
        and the source guest must run on when continued."""
        self.n += 1
        name = "dst%d" % self.n
        dst = self.vm(name, memory=MEM, workload="increment", extra=("--vram", "1M"),
                      incoming="defer")
        if multifd:
            for vm in (self.src, dst):
                vm.set_caps(multifd=True)
                vm.set_params(**{"multifd-channels": 2}, **(params or {}))
        if src_caps:
            self.src.set_caps(**src_caps)
        self.src.cmd("stop")
        target = self.path(name + ".sock")
        front = self.path(name + "-proxy.sock")
        dst.cmd("migrate-incoming", uri="unix:" + target)
        proxy = streamproxy.Proxy(front, target, policy)
        self.proxies.append(proxy)
        self.src.cmd("migrate", uri="unix:" + front)
        info = self.src.wait_migration()
        self.assertEqual(info["status"], "failed", info)
        dinfo = dst.wait_migration()
        self.assertEqual(dinfo["status"], "failed", dinfo)
        for word in expect_error:
            self.assertIn(word, dinfo.get("error-desc", ""))
        self.assertNotEqual(dst.status(), "running")
        # Nothing lost: the source guest runs on when continued.
        self.assertEqual(self.src.status(), "paused")
        self.src.cmd("cont")
        self.assert_guest_ok(self.src)
        if multifd:
            self.src.set_caps(multifd=False)
        if src_caps:
            self.src.set_caps(**{k: False for k in src_caps})
        return dinfo

    def retry_succeeds(self, multifd=False, src_caps=None, params=None):
        dst = self.vm("final", memory=MEM, workload="increment", extra=("--vram", "1M"),
                      incoming="defer")
        if multifd:
            for vm in (self.src, dst):
                vm.set_caps(multifd=True)
                vm.set_params(**{"multifd-channels": 2}, **(params or {}))
        if src_caps:
            self.src.set_caps(**src_caps)
        self.src.cmd("stop")
        self.migrate(self.src, dst, "unix:" + self.path("final.sock"))
        self.assert_same_memory(self.src, dst)
        dst.cmd("cont")
        self.assert_guest_ok(dst)


class Incomplete(ProxyTest):
    def test_lost_pages_record(self):
        state = {"dropped": False}

        def drop_first_pages(conn, kind, raw, info):
            if kind == "ram" and info["rtype"] == streamproxy.RAM_PAGES and not state["dropped"]:
                state["dropped"] = True
                state["range"] = (info["first"], info["first"] + info["count"] - 1)
                return b""
            return raw
        d = self.through_proxy(drop_first_pages, expect_error=("incomplete", "RAM block 'ram0'",
                                                               "never arrived"))
        self.assertIn("pages %d-" % state["range"][0], d["error-desc"])
        self.retry_succeeds()

    def test_lost_multifd_packet(self):
        state = {"dropped": False}

        def drop_first_data(conn, kind, raw, info):
            if (conn.startswith("multifd") and kind == "packet" and info["type"] == 1 and
                    any(r[0] == streamproxy.RAM_PAGES for r in info["runs"]) and
                    not state["dropped"]):
                state["dropped"] = True
                return b""
            return raw
        self.through_proxy(drop_first_data, multifd=True,
                           expect_error=("incomplete", "RAM block 'ram0'", "never arrived"))
        self.assertTrue(state["dropped"])
        self.retry_succeeds()

    def test_lost_device_sections(self):
        # cpu 0's FULL, vram's END (an iterative device), clock, serial and
        # globalstate: each lost in turn.
        cases = [(("cpu", 0, streamproxy.REC_FULL), "device 'cpu' instance 0 has no section"),
                 (("vram", 0, streamproxy.REC_END), "device 'vram' instance 0 has no END section"),
                 (("clock", 0, streamproxy.REC_FULL), "device 'clock' instance 0 has no section"),
                 (("serial", 0, streamproxy.REC_FULL), "device 'serial' instance 0 has no section"),
                 (("globalstate", 0, streamproxy.REC_FULL), "no globalstate section")]
        for (idstr, instance, typ), message in cases:
            with self.subTest(section=idstr):
                def drop(conn, kind, raw, info):
                    if (kind == "section" and info["idstr"] == idstr and
                            info["instance"] == instance and info["type"] == typ):
                        return b""
                    return raw
                self.through_proxy(drop, expect_error=("incomplete", message))
        self.retry_succeeds()


def flip(raw, at):
    """raw with one bit of byte `at` flipped ("bit rot")."""
    b = bytearray(raw)
    b[at] ^= 0x10
    return bytes(b)


class SocketChecksums(ProxyTest):
    """x-checksum over a socket: one flipped bit of page data in flight."""

    def test_single_channel(self):
        state = {}

        def corrupt_first_pages(conn, kind, raw, info):
            if kind == "ram" and info["rtype"] == streamproxy.RAM_PAGES and "page" not in state:
                state["page"] = info["first"]
                return flip(raw, info["data_at"] + 100)
            return raw
        d = self.through_proxy(corrupt_first_pages, src_caps={"x-checksum": True},
                               expect_error=("checksum mismatch", "RAM block 'ram0'"))
        self.assertIn("pages %d-%d" % (state["page"], state["page"]), d["error-desc"])
        self.retry_succeeds(src_caps={"x-checksum": True})

    def multifd_case(self, compression, message):
        state = {}

        def corrupt_first_data(conn, kind, raw, info):
            if (conn.startswith("multifd") and kind == "packet" and info["type"] == 1 and
                    any(r[0] == streamproxy.RAM_PAGES for r in info["runs"]) and "done" not in state
                    and len(raw) > info["payload_at"] + 100):
                state["done"] = True
                return flip(raw, info["payload_at"] + 100)
            return raw
        self.through_proxy(corrupt_first_data, multifd=True, src_caps={"x-checksum": True},
                           params={"multifd-compression": compression},
                           expect_error=("checksum mismatch",) + message)
        self.assertTrue(state.get("done"))
        # A clean migration with the same settings completes and verifies.
        self.retry_succeeds(multifd=True, src_caps={"x-checksum": True},
                            params={"multifd-compression": compression})

    def test_multifd(self):
        self.multifd_case("none", ("RAM block 'ram0'",))

    def test_multifd_zstd(self):
        self.multifd_case("zstd", ("multifd channel", "RAM block 'ram0'"))


class FileChecksums(MigrationTest):
    """file: saves carry checksums by default; a flipped bit on disk fails
    the restore, naming the block and range; the intact file restores."""

    def setUp(self):
        super().setUp()
        self.src = self.vm("src", memory=MEM, workload="increment")
        self.assertTrue(self.src.wait_running_steps())
        self.src.cmd("stop")

    def save(self, path, mapped=False):
        if mapped:
            self.src.set_caps(mapped_ram=True)
        self.src.cmd("migrate", uri="file:" + path)
        info = self.src.wait_migration()
        self.assertEqual(info["status"], "completed", info.get("error-desc"))

    def restore(self, path, name, mapped=False, expect="completed"):
        dst = self.vm(name, memory=MEM, workload="increment", incoming="defer")
        if mapped:
            dst.set_caps(mapped_ram=True)
        dst.cmd("migrate-incoming", uri="file:" + path)
        info = dst.wait_migration()
        self.assertEqual(info["status"], expect, info.get("error-desc"))
        if expect == "completed":
            self.assertEqual(self.src.memory_hash(), dst.memory_hash())
            dst.cmd("cont")
            self.assert_guest_ok(dst)
        else:
            self.assertNotEqual(dst.status(), "running")
        return info

    def corrupt_copy(self, path, mapped):
        """A copy of the file with one bit of one guest page flipped;
        returns (copy, page)."""
        bad = path + ".bad"
        shutil.copyfile(path, bad)
        with open(path, "rb") as f:
            read = streamproxy.file_reader(f)
            at = page = None
            for kind, raw, info in streamproxy.walk(read, seek=f.seek):
                if kind == "ram" and info["rtype"] == streamproxy.RAM_PAGES:
                    # The unit ended at f.tell(): its data starts data_at in.
                    at = f.tell() - len(raw) + info["data_at"] + 100
                    page = info["first"]
                    break
                if kind == "mapped" and info["block"] == 0:
                    f.seek(info["bitmap_offset"])
                    word, page = 0, 0
                    while not word:
                        word = struct.unpack(">Q", f.read(8))[0]
                        page += 64
                    page = page - 64 + ((word & -word).bit_length() - 1)
                    at = info["pages_offset"] + page * 4096 + 100
                    break
        self.assertIsNotNone(at, "no page data found in the file")
        with open(bad, "r+b") as f:
            f.seek(at)
            b = f.read(1)
            f.seek(at)
            f.write(bytes([b[0] ^ 0x10]))
        return bad, page

    def test_plain_file(self):
        path = self.path("save.lm")
        self.save(path)
        bad, page = self.corrupt_copy(path, mapped=False)
        info = self.restore(bad, "dst-bad", expect="failed")
        self.assertIn("checksum mismatch", info["error-desc"])
        self.assertIn("RAM block 'ram0' pages %d-%d" % (page, page), info["error-desc"])
        self.restore(path, "dst-good")

    def test_mapped_ram_file(self):
        path = self.path("save-mapped.lm")
        self.save(path, mapped=True)
        bad, page = self.corrupt_copy(path, mapped=True)
        info = self.restore(bad, "dst-bad", mapped=True, expect="failed")
        chunk = page // 256 * 256
        self.assertIn("checksum mismatch: mapped-ram RAM block 'ram0' pages %d-%d" % (
            chunk, chunk + 255), info["error-desc"])
        self.restore(path, "dst-good", mapped=True)


class Analyze(FileChecksums):
    """livemig analyze on saved files: good ones (plain with vmdesc,
    mapped-ram) described right, broken ones located to the byte."""

    def analyze(self, path, expect_rc):
        r = subprocess.run([lmtest.CLI_BIN, "analyze", "--json", path], capture_output=True,
                           text=True, timeout=120)
        self.assertEqual(r.returncode, expect_rc, r.stderr + r.stdout[-2000:])
        return json.loads(r.stdout)

    def test_plain_file(self):
        self.src.set_params(**{"x-vmdesc": True})
        path = self.path("save.lm")
        self.save(path)
        rep = self.analyze(path, 0)
        self.assertTrue(rep["ok"] and rep["eof"] and rep["vmdesc"])
        self.assertEqual(rep["header"]["version"], 2)
        self.assertIn("checksum", rep["config_flags"])
        blk = rep["ram_blocks"][0]
        self.assertEqual(blk["name"], "ram0")
        self.assertEqual(blk["pages_settled"], blk["pages"])
        self.assertEqual(blk["data_pages"] + blk["zero_pages"], blk["pages"])  # guest stopped
        self.assertEqual(blk["checksums"]["bad"], 0)
        self.assertEqual(blk["checksums"]["ok"], blk["data_pages"])
        cpus = [s for s in rep["sections"] if s["idstr"] == "cpu"]
        self.assertEqual([c["instance"] for c in cpus], [0, 1])
        self.assertEqual(cpus[0]["type"], "FULL")
        # Decoded through the vmdesc: the workload's registers.
        self.assertEqual(cpus[0]["fields"]["cpu"], 0)
        self.assertEqual(cpus[1]["fields"]["cpu"], 1)
        self.assertGreater(cpus[0]["fields"]["steps"], 0)
        self.assertIn("globalstate", [s["idstr"] for s in rep["sections"]])

        # Truncated: where and why.
        size = os.path.getsize(path)
        cut = self.path("cut.lm")
        with open(path, "rb") as f, open(cut, "wb") as g:
            g.write(f.read(size // 2))
        rep = self.analyze(cut, 1)
        self.assertFalse(rep["ok"])
        self.assertLessEqual(rep["error"]["offset"], size // 2)
        self.assertIn("the file ends inside", rep["error"]["reason"])

        # A record type byte overwritten: the error names its offset.
        at = cpus[1]["offset"]
        bad = self.path("badtype.lm")
        shutil.copyfile(path, bad)
        with open(bad, "r+b") as f:
            f.seek(at)
            f.write(b"\x7f")
        rep = self.analyze(bad, 1)
        self.assertEqual(rep["error"]["offset"], at)
        self.assertIn("unknown record type 0x7f", rep["error"]["reason"])

        # A bit of page data flipped: the checksum names the record and page.
        flipped, page = self.corrupt_copy(path, mapped=False)
        rep = self.analyze(flipped, 1)
        first_bad = rep["ram_blocks"][0]["first_bad_checksum"]
        self.assertEqual((first_bad["first_page"], first_bad["last_page"]), (page, page))
        self.assertEqual(rep["ram_blocks"][0]["checksums"]["bad"], 1)
        text = subprocess.run([lmtest.CLI_BIN, "analyze", flipped], capture_output=True, text=True,
                              timeout=120)
        self.assertEqual(text.returncode, 1)
        self.assertIn("BROKEN", text.stdout)

    def test_mapped_ram_file(self):
        path = self.path("save-mapped.lm")
        self.save(path, mapped=True)
        rep = self.analyze(path, 0)
        self.assertTrue(rep["ok"])
        self.assertEqual(rep["config_flags"], ["mapped-ram", "checksum"])
        blk = rep["ram_blocks"][0]
        self.assertEqual(blk["pages_settled"], blk["pages"])
        self.assertEqual(blk["checksums"], {"ok": blk["pages"] // 256, "bad": 0})
        flipped, page = self.corrupt_copy(path, mapped=True)
        rep = self.analyze(flipped, 1)
        first_bad = rep["ram_blocks"][0]["first_bad_checksum"]
        self.assertEqual(first_bad["first_page"], page // 256 * 256)
        self.assertIn("mapped-ram", first_bad["in"])


if __name__ == "__main__":
    lmtest.main()
