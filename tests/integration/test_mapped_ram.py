"""Mapped-ram: a running guest saved to a file with every page at a fixed
offset (written in parallel by the multifd threads, or by the migration
thread), restored by reading the pages straight into guest RAM.

Every restore is checked byte for byte against the stopped source (the
destination stays paused until `cont`), by the workload's invariant, and
the guest must run on.  Corrupt or truncated files must fail with a clear
error and leave the destination process alive.
"""
import os
import struct
import time

import lmtest
from lmtest import MigrationTest, QMPError

MEM = "128M"
MEM_BYTES = 128 << 20
MIB = 1 << 20
# The RAM START section: SECTION_START, id 0, "ram", instance 0, version 1.
RAM_START = b"\x02\x00\x00\x00\x00\x03ram\x00\x00\x00\x00\x00\x00\x00\x01"
MAPPED_BLOCK = 0x05


def set_mapped_ram(vm, multifd=False, channels=None):
    vm.set_caps(**{"mapped-ram": True, "multifd": multifd})
    if channels:
        vm.set_params(**{"multifd-channels": channels})


class MappedRamBase(MigrationTest):
    def save(self, uri, multifd=False, channels=None, extra=(), workload="random",
             dirty_rate=lmtest.LIVE_RATE[1], tag="", stop_after_passes=None):
        """Saves a running guest; returns (source, its final query-migrate).
        stop_after_passes: stop the guest once the migration has made that
        many passes (a guest dirtying faster than the file is written would
        otherwise never let it end)."""
        src = self.vm("src" + tag, memory=MEM, workload=workload,
                      extra=["--dirty-rate", dirty_rate] + list(extra))
        set_mapped_ram(src, multifd, channels)
        if stop_after_passes:
            # No downtime fits while the guest dirties anything: the passes
            # go on until the guest is stopped, however slowly a loaded
            # machine lets it dirty (it converged in 3 passes once).
            src.set_params(downtime_limit=0)
        self.assertTrue(src.wait_running_steps())
        src.cmd("migrate", uri=uri)
        self.ended_before_stop = False
        if stop_after_passes:
            deadline = time.time() + lmtest.DEFAULT_TIMEOUT
            while True:
                m = src.migration()
                if m.get("status") in ("completed", "failed", "cancelled"):
                    self.ended_before_stop = True
                    break
                if m.get("ram", {}).get("dirty-sync-count", 0) >= stop_after_passes:
                    break
                self.assertLess(time.time(), deadline, "no pass %d" % stop_after_passes)
                time.sleep(0.02)
            src.cmd("stop")
        info = src.wait_migration()
        self.assertEqual(info["status"], "completed", info.get("error-desc"))
        self.assertEqual(src.status(), "postmigrate")
        return src, info

    def restore(self, uri, multifd=False, channels=None, extra=(), workload="random", tag="",
                mapped_ram=True):
        """A fresh, paused machine loading uri; returns it and its final query-migrate."""
        dst = self.vm("dst" + tag, memory=MEM, workload=workload, incoming="defer", paused=True,
                      extra=list(extra))
        if mapped_ram:
            set_mapped_ram(dst, multifd, channels)
        dst.cmd("migrate-incoming", uri=uri)
        return dst, dst.wait_migration()

    def check_restored(self, src, dst, dinfo):
        self.assertEqual(dinfo["status"], "completed", dinfo.get("error-desc"))
        self.assertEqual(dst.status(), "paused")
        self.assert_same_memory(src, dst)
        dst.cmd("cont")
        self.assert_guest_ok(dst)

    def assert_bounded(self, img, offset=0, blocks=1):
        """Header + RAM: pages dirtied again overwrote their slots."""
        size = os.path.getsize(img) - offset
        self.assertGreaterEqual(size, MEM_BYTES)
        self.assertLess(size, MEM_BYTES + blocks * 2 * MIB + MIB)


class SaveRestore(MappedRamBase):
    def test_capability_listed(self):
        vm = self.vm("vm", memory="32M", workload="idle")
        caps = {c["capability"]: c["state"] for c in vm.cmd("query-migrate-capabilities")}
        self.assertIn("mapped-ram", caps)
        self.assertFalse(caps["mapped-ram"])

    def test_multifd_four_channels(self):
        img = self.path("guest.img")
        src, info = self.save("file:" + img, multifd=True, channels=4)
        self.assertGreaterEqual(info["ram"]["dirty-sync-count"], 2)
        self.assert_bounded(img)
        dst, dinfo = self.restore("file:" + img, multifd=True, channels=4)
        self.check_restored(src, dst, dinfo)

    def test_without_multifd_blocks_and_offset(self):
        """The migration thread writes; four blocks; the stream at offset 4096."""
        img = self.path("guest.img")
        with open(img, "wb") as f:
            f.write(b"H" * 4096)
        uri = "file:%s,offset=4096" % img
        src, info = self.save(uri, extra=["--blocks", "4"])
        self.assertGreaterEqual(info["ram"]["dirty-sync-count"], 2)
        self.assert_bounded(img, offset=4096, blocks=4)
        with open(img, "rb") as f:
            self.assertEqual(f.read(4096), b"H" * 4096)
        dst, dinfo = self.restore(uri, extra=["--blocks", "4"])
        self.check_restored(src, dst, dinfo)

    def test_saved_with_multifd_restored_without(self):
        """The layout does not depend on the thread count on either side."""
        img = self.path("guest.img")
        src, _ = self.save("file:" + img, multifd=True, channels=3, workload="increment")
        dst, dinfo = self.restore("file:" + img, workload="increment")
        self.check_restored(src, dst, dinfo)

    def test_heavy_dirtying_stays_bounded(self):
        """Many passes over a guest that writes fast: the file does not grow."""
        img = self.path("guest.img")
        src, info = self.save("file:" + img, multifd=True, channels=2, dirty_rate="256M",
                              stop_after_passes=4)
        # Pages are write-protected when they are sent, so a pass re-sends
        # only what was written after its send: a guest the loaded machine
        # starves for a pass leaves under 64 KiB dirty, and the save ends
        # by itself (in 3 passes here once).  Many passes are checked when
        # the guest had to be stopped; the file is bounded either way.
        if not self.ended_before_stop:
            self.assertGreaterEqual(info["ram"]["dirty-sync-count"], 4)
        self.assertGreaterEqual(info["ram"]["dirty-sync-count"], 2)
        self.assertGreater(info["ram"]["normal-bytes"], 0)
        self.assert_bounded(img)
        dst, dinfo = self.restore("file:" + img, multifd=True, channels=2)
        self.check_restored(src, dst, dinfo)


class Refusals(MappedRamBase):
    def test_socket_transports_refused(self):
        src = self.vm("src", memory="32M")
        set_mapped_ram(src, multifd=True)
        for uri in ("unix:" + self.path("mig.sock"), "tcp:127.0.0.1:4444"):
            with self.subTest(uri=uri):
                with self.assertRaises(QMPError) as cm:
                    src.cmd("migrate", uri=uri)
                self.assertIn("mapped-ram needs the file: transport", cm.exception.desc)
        self.assertEqual(src.status(), "running")
        dst = self.vm("dst", memory="32M", incoming="defer")
        set_mapped_ram(dst)
        with self.assertRaises(QMPError) as cm:
            dst.cmd("migrate-incoming", uri="unix:" + self.path("in.sock"))
        self.assertIn("file: transport", cm.exception.desc)

    def test_incompatible_features(self):
        src = self.vm("src", memory="32M")
        img = "file:" + self.path("x.img")
        cases = [
            ({"postcopy-ram": True}, {}, "postcopy-ram"),
            ({"multifd": True}, {"multifd-compression": "zstd"}, "multifd-compression"),
        ]
        for caps, params, word in cases:
            with self.subTest(word=word):
                src.set_caps(**{"mapped-ram": True, "multifd": False, "postcopy-ram": False})
                src.set_params(**{"multifd-compression": "none"})
                # Refused when set (postcopy-ram, as QEMU) or at migrate.
                with self.assertRaises(QMPError) as cm:
                    src.set_caps(**caps)
                    if params:
                        src.set_params(**params)
                    src.cmd("migrate", uri=img)
                self.assertIn(word, cm.exception.desc)
                self.assertEqual(src.status(), "running")

    def test_capability_must_match(self):
        img = self.path("guest.img")
        self.save("file:" + img, workload="increment")
        dst, dinfo = self.restore("file:" + img, workload="increment", mapped_ram=False, tag="1")
        self.assertEqual(dinfo["status"], "failed")
        self.assertIn("capability mapped-ram is off", dinfo["error-desc"])
        # A plain save restored with the capability on.
        plain = self.path("plain.img")
        src2 = self.vm("plain", memory=MEM, workload="increment")
        # Only the file matters: a stopped guest's save completes on any
        # machine (this increment guest rewrites all its RAM at once).
        src2.cmd("stop")
        src2.cmd("migrate", uri="file:" + plain)
        self.assertEqual(src2.wait_migration()["status"], "completed")
        dst2, dinfo2 = self.restore("file:" + plain, workload="increment", tag="2")
        self.assertEqual(dinfo2["status"], "failed")
        self.assertIn("not saved with mapped-ram", dinfo2["error-desc"])


class CorruptFiles(MappedRamBase):
    """Each broken file fails the restore with its own message; the
    destination process stays alive and answers."""

    @classmethod
    def setUpClass(cls):
        cls.n = 0

    def saved(self):
        img = self.path("good.img")
        self.save("file:" + img, workload="increment", tag="0")
        with open(img, "rb") as f:
            data = bytearray(f.read())
        rec = data.index(RAM_START) + len(RAM_START)
        self.assertEqual(data[rec], MAPPED_BLOCK)
        return data, rec + 1  # the MAPPED_BLOCK record's body

    def expect_failure(self, data, word, multifd=False):
        type(self).n += 1
        img = self.path("bad%d.img" % self.n)
        with open(img, "wb") as f:
            f.write(data)
        dst, dinfo = self.restore("file:" + img, workload="increment", tag=str(self.n),
                                  multifd=multifd, channels=4 if multifd else None)
        self.assertEqual(dinfo["status"], "failed")
        self.assertIn(word, dinfo["error-desc"])
        self.assertTrue(dst.alive())
        self.assertIn(dst.status(), ("paused", "inmigrate"))

    def test_corrupt_records(self):
        data, body = self.saved()
        block, version, psize, boff, poff = struct.unpack_from(">HIIQQ", data, body)
        # Version 2: a file: save carries checksums by default (stream-format.md §4d).
        self.assertEqual((block, version, psize, boff), (0, 2, 4096, body + 26))
        self.assertEqual(poff % MIB, 0)

        def patched(fmt, off, value):
            d = bytearray(data)
            struct.pack_into(fmt, d, body + off, value)
            return d

        cases = [
            (patched(">H", 0, 7), "record names block 7"),
            (patched(">I", 2, 1), "unsupported version 1"),
            (patched(">I", 6, 65536), "65536-byte pages"),
            (patched(">Q", 10, boff + 8), "expected"),
            (patched(">Q", 18, boff + 4096 * 8), "overlap its bitmap"),
            (patched(">Q", 18, poff + 1), "misaligned"),
            (patched(">Q", 18, 1 << 62), "truncated"),
            (patched(">Q", 18, (1 << 64) - 4096), "truncated"),
        ]
        for d, word in cases:
            with self.subTest(word=word):
                self.expect_failure(d, word, multifd=word == "truncated")

    def test_truncated_files(self):
        data, body = self.saved()
        poff = struct.unpack_from(">Q", data, body + 18)[0]
        cases = [
            (data[:body + 10], "end of stream"),            # inside the record
            (data[:poff + MIB], "truncated"),                # inside the pages region
            (data[:poff + MEM_BYTES + 3], "end of stream"),  # inside the device state
        ]
        for d, word in cases:
            with self.subTest(length=len(d)):
                self.expect_failure(d, word, multifd=True)

    def test_described_twice(self):
        """A second MAPPED_BLOCK for the same block in a later RAM section."""
        data, body = self.saved()
        poff = struct.unpack_from(">Q", data, body + 18)[0]
        after = poff + MEM_BYTES  # the stream goes on here: EOS, footer
        self.assertEqual(data[after], 0x03)
        d = bytearray(data)
        d[after] = MAPPED_BLOCK  # the block again (its body: the bytes that follow)
        self.expect_failure(d, "mapped-ram")


if __name__ == "__main__":
    lmtest.main()
