"""File-backed destination (issue 14 §2): a destination whose guest RAM is
a shared file (file:PATH here, /dev/shm or memfd alike) receives pages by
writing them into the file, and zero pages as holes.

Each test gives the destination a RAM file full of stale random bytes, and
the source a RAM file whose first half is a hole and whose second half is
zeros written out (data on disk that is zero).  The source runs the random
workload over a quarter of its RAM, is stopped (one multifd test keeps
it running at lmtest.LIVE_RATE), and moves by the single channel, multifd
(plain, four channels, with checksums, zstd), postcopy, or a mapped-ram
file restore.  Then:
  - the destination's memory equals the stopped source's, byte for byte,
    and so does its RAM file;
  - every page that is zero at the source is a hole in the destination's
    file (SEEK_DATA finds no data in it): holes were left alone, stale
    data and written-out zeros punched out, nothing filled in;
  - the guest runs on, its invariant intact.
"""
import os
import shutil
import tempfile

import lmtest
from lmtest import MigrationTest, main

MEM = "32M"
SIZE = 32 << 20
PAGE = 4096


def data_extents(path):
    """[(start, end)) of the file's data, as SEEK_DATA/SEEK_HOLE report it."""
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        end = os.fstat(fd).st_size
        off = 0
        while off < end:
            try:
                d = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break  # ENXIO: no data after off
            h = os.lseek(fd, d, os.SEEK_HOLE)
            out.append((d, h))
            off = h
    finally:
        os.close(fd)
    return out


def zero_pages(data):
    z = bytes(PAGE)
    return [i for i in range(len(data) // PAGE) if data[i * PAGE:(i + 1) * PAGE] == z]


class FileBackedDestination(MigrationTest):
    def ram_files(self, base=None):
        src, dst = [os.path.join(base, n) if base else self.path(n) for n in ("src.ram", "dst.ram")]
        with open(src, "wb") as f:
            f.truncate(SIZE)
            f.seek(SIZE // 2)
            f.write(bytes(SIZE // 2))
            f.flush()
            os.fsync(f.fileno())
        with open(dst, "wb") as f:
            f.write(os.urandom(SIZE))
        return src, dst

    def source(self, path, live=False):
        src = self.vm("src", memory=MEM, workload="random",
                      extra=["--memory-backend", "file:" + path, "--working-set", "25%"] +
                      (lmtest.LIVE_RATE if live else []))
        self.assertTrue(src.wait_running_steps())
        if not live:
            src.cmd("stop")
        return src

    def destination(self, path, tag="", live=False):
        return self.vm("dst" + tag, memory=MEM, workload="random", incoming="defer", paused=True,
                       extra=["--memory-backend", "file:" + path, "--working-set", "25%"] +
                       (lmtest.LIVE_RATE if live else []))

    def check(self, src, dst, src_ram, dst_ram):
        # The file's extents first: reading a hole of a tmpfs file through
        # a shared mapping (as the memory hash does) allocates a page there.
        extents = data_extents(dst_ram)
        self.assert_same_memory(src, dst)
        with open(src_ram, "rb") as f:
            want = f.read()
        with open(dst_ram, "rb") as f:
            got = f.read()
        self.assertTrue(want == got, "the destination's RAM file differs from the source's")
        zeros = zero_pages(want)
        # The stale bytes were everywhere: most of RAM had to be punched.
        self.assertGreater(len(zeros), (SIZE // PAGE) // 2)
        filled = [p for p in zeros
                  if any(s < (p + 1) * PAGE and p * PAGE < e for s, e in extents)]
        self.assertEqual(filled[:8], [], "%d zero pages of the source hold data in the "
                         "destination's file (SEEK_DATA finds them)" % len(filled))
        # And the data pages are data.
        self.assertTrue(extents, "the destination's file has no data at all")
        dst.cmd("cont")
        self.assert_guest_ok(dst)

    def _migrate(self, caps=None, params=None, checksum=False, live=False):
        src_ram, dst_ram = self.ram_files()
        src = self.source(src_ram, live)
        dst = self.destination(dst_ram, live=live)
        for vm in (src, dst):
            vm.set_caps(**dict(caps or {}, **{"x-checksum": checksum}))
            if params:
                vm.set_params(**params)
        self.migrate(src, dst, "unix:" + self.path("m.sock"))
        self.check(src, dst, src_ram, dst_ram)

    def test_single_channel(self):
        self._migrate()

    def test_single_channel_checksums(self):
        self._migrate(checksum=True)

    def test_multifd(self):
        self._migrate(caps={"multifd": True}, params={"multifd-channels": 2}, checksum=True)

    def test_multifd_four_channels(self):
        """Plain multifd (no checksums, no compression) with four
        receivers writing into one file, which they take turns at."""
        self._migrate(caps={"multifd": True}, params={"multifd-channels": 4})

    def test_multifd_live(self):
        """The source's guest keeps writing while four receivers fill the
        file: pages sent again land over their earlier copies."""
        self._migrate(caps={"multifd": True}, params={"multifd-channels": 4}, live=True)

    def test_multifd_zstd(self):
        self._migrate(caps={"multifd": True},
                      params={"multifd-channels": 2, "multifd-compression": "zstd"})

    def test_postcopy(self):
        """Postcopy from the start, the background stream held to a pace
        that leaves most of RAM to postcopy: its data pages are placed
        into the file's page cache (UFFDIO_COPY), its zero pages are left
        as the holes LISTEN made (no page placed, none allocated), and the
        stale bytes are gone all the same.  The files are on /dev/shm:
        userfaultfd takes tmpfs and hugetlbfs files, not a disk file
        system's (where the destination refuses postcopy at ADVISE)."""
        shm = tempfile.mkdtemp(prefix="livemig-filedest-", dir="/dev/shm")
        self.addCleanup(shutil.rmtree, shm, True)
        src_ram, dst_ram = self.ram_files(shm)
        src = self.source(src_ram)
        dst = self.destination(dst_ram)
        for vm in (src, dst):
            vm.set_caps(postcopy_ram=True)
        src.set_params(**{"max-bandwidth": 8 << 20})
        uri = "unix:" + self.path("m.sock")
        dst.cmd("migrate-incoming", uri=uri)
        src.cmd("migrate", uri=uri)
        src.cmd("migrate-start-postcopy")
        info = src.wait_migration()
        self.assertEqual(info["status"], "completed", info.get("error-desc"))
        dinfo = dst.wait_migration()
        self.assertEqual(dinfo["status"], "completed", dinfo.get("error-desc"))
        self.assertGreater(info["ram"]["postcopy-bytes"], 0)
        self.check(src, dst, src_ram, dst_ram)

    def _restore(self, multifd):
        src_ram, dst_ram = self.ram_files()
        src = self.source(src_ram)
        img = self.path("guest.img")
        caps = {"mapped-ram": True, "multifd": multifd}
        src.set_caps(**caps)
        src.cmd("migrate", uri="file:" + img)
        info = src.wait_migration()
        self.assertEqual(info["status"], "completed", info.get("error-desc"))
        dst = self.destination(dst_ram)
        dst.set_caps(**caps)
        if multifd:
            dst.set_params(**{"multifd-channels": 3})
        dst.cmd("migrate-incoming", uri="file:" + img)
        dinfo = dst.wait_migration()
        self.assertEqual(dinfo["status"], "completed", dinfo.get("error-desc"))
        self.check(src, dst, src_ram, dst_ram)

    def test_mapped_ram_restore(self):
        self._restore(multifd=False)

    def test_mapped_ram_restore_threads(self):
        self._restore(multifd=True)


if __name__ == "__main__":
    main()
