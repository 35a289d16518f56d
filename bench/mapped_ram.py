#!/usr/bin/env python3
"""mapped-ram save/restore benchmark: how long saving a guest to a file and
restoring it take, next to the time it takes to read the same file.

For each guest RAM size: RAM filled with random data (`--memory-backend
file:F`, F on /dev/shm from os.urandom, so no page is zero), guest idle.
Modes, interleaved in every repetition:
  plain          the ordinary stream to file: (one sequential stream)
  mapped-ram     mapped-ram, the migration/load thread alone
  mapped-ram+N   mapped-ram with multifd, N threads on both sides
Save = the source's query-migrate total-time; restore = wall time from
migrate-incoming to `completed` on a fresh paused livemig-vm (anonymous
RAM), polled every 2 ms; read = `cat FILE > /dev/null` of that same file
right after the restore; touch = writing every page of fresh anonymous
memory of the guest's size once (4 KiB pages or THP, like the destination's
RAM), the floor of any restore on this host.  Memory is warmed up before each save and
restore (see warm()).  The file lives on /dev/shm (tmpfs): the page
cache *is* the file, so `cat` reads from memory and nothing is dropped —
this compares engine cost against the cost of touching the bytes, not
disk speed.  Every restore is verified (x-query-memory-hash equal to the
stopped source's).  Medians of --reps runs; ratios are to the read time.

    python3 bench/mapped_ram.py --sizes 1G [--reps 3] [--channels 4] [--dir /dev/shm]
"""
import argparse
import mmap
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
os.environ.setdefault("LIVEMIG_BUILD", os.path.join(ROOT, "build"))
import lmtest  # noqa: E402
import qmpclient  # noqa: E402

CHUNK = 64 << 20


def parse_size(s):
    mult = {"M": 1 << 20, "G": 1 << 30}
    return int(float(s[:-1]) * mult[s[-1].upper()]) if s[-1].upper() in mult else int(s)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def fill_random(path, size):
    if os.path.exists(path) and os.path.getsize(path) == size:
        return
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(CHUNK, left)
            f.write(os.urandom(n))
            left -= n


def warm(n):
    """Touch and free n bytes: this host hands memory idle for ~2 s back to
    the hypervisor, and the first touch of such memory costs 10-50x more
    than the engine's work.  Both save (tmpfs pages) and restore (fresh
    guest RAM) allocate memory, so each is preceded by this."""
    m = mmap.mmap(-1, n)
    block = b"\x01" * CHUNK
    for off in range(0, n, CHUNK):
        m[off:off + CHUNK] = block[:min(CHUNK, n - off)]
    m.close()


def touch_fresh(size, thp):
    """The floor of any restore here: writing every page of fresh anonymous
    memory once (what the destination's RAM is), in seconds."""
    warm(size + (256 << 20))
    m = mmap.mmap(-1, size)
    if thp:
        m.madvise(mmap.MADV_HUGEPAGE)
    block = b"\x02" * CHUNK
    t0 = time.perf_counter()
    for off in range(0, size, CHUNK):
        m[off:off + CHUNK] = block[:min(CHUNK, size - off)]
    t = time.perf_counter() - t0
    m.close()
    return t


def wait(vm, timeout):
    """vm's migration at its end, polled every 2 ms (restore is wall clock)."""
    return qmpclient.wait_migration(vm.migration, timeout, 0.002, must_end=True)


def set_mode(vm, mode, channels):
    if mode == "plain":
        return
    vm.set_caps(**{"mapped-ram": True, "multifd": channels > 0})
    if channels:
        vm.set_params(**{"multifd-channels": channels})


def one_run(tmp, data, size, img, mode, channels, timeout, dst_thp):
    mem = str(size)
    if os.path.exists(img):
        os.unlink(img)
    src = lmtest.VM(tmp, "src", memory=mem, workload="idle", extra=["--memory-backend", "file:" + data])
    dst = None
    try:
        # A running VMM's guest RAM is mapped already: a first, discarded
        # save maps every page into the source before the timed one.
        src.cmd("migrate", uri="exec:cat > /dev/null")
        if wait(src, timeout)["status"] != "completed":
            raise RuntimeError("pre-fault save failed")
        set_mode(src, mode, channels)
        warm(size + (256 << 20))
        src.cmd("migrate", uri="file:" + img)
        info = wait(src, timeout)
        if info["status"] != "completed":
            raise RuntimeError("save failed: %s" % info.get("error-desc"))
        save_s = info["total-time"] / 1000.0
        dst = lmtest.VM(tmp, "dst", memory=mem, workload="idle", incoming="defer", paused=True,
                        extra=["--thp"] if dst_thp else ["--no-thp"])
        set_mode(dst, mode, channels)
        warm(size + (256 << 20))
        t0 = time.perf_counter()
        dst.cmd("migrate-incoming", uri="file:" + img)
        dinfo = wait(dst, timeout)
        restore_s = time.perf_counter() - t0
        if dinfo["status"] != "completed":
            raise RuntimeError("restore failed: %s" % dinfo.get("error-desc"))
        t0 = time.perf_counter()
        subprocess.run("cat '%s' > /dev/null" % img, shell=True, check=True)
        read_s = time.perf_counter() - t0
        ok = src.status() == "postmigrate" and src.memory_hash() == dst.memory_hash()
        return save_s, restore_s, read_s, os.path.getsize(img), ok, touch_fresh(size, dst_thp)
    finally:
        for vm in (src, dst):
            if vm:
                vm.shutdown()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1G")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--dir", default="/dev/shm")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--dst-ram", default="anon,thp",
                    help="destination guest RAM: anon (4 KiB pages), thp (--thp), or both")
    args = ap.parse_args()
    modes = [("plain", 0), ("mapped-ram", 0), ("mapped-ram+%d" % args.channels, args.channels)]
    print("| RAM | dst RAM | mode | save s | restore s | read s (`cat`) | touch s | file size | save/read | restore/read | restore/(read+touch) | restore GiB/s | verified |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    kinds = args.dst_ram.split(",")
    for s in args.sizes.split(","):
        size = parse_size(s)
        tmp = tempfile.mkdtemp(prefix="lm-mrbench-")
        data = os.path.join(args.dir, "lm-mrbench-data-%d" % size)
        img = os.path.join(args.dir, "lm-mrbench-save.img")
        log("filling %s with %d random bytes" % (data, size))
        fill_random(data, size)
        runs = {(k, m): [] for k in kinds for m, _ in modes}
        try:
            for rep in range(args.reps):
                for kind in kinds:
                    for name, ch in modes:
                        mode = "plain" if name == "plain" else "mapped-ram"
                        r = one_run(tmp, data, size, img, mode, ch, args.timeout, kind == "thp")
                        log("%s %s rep %d %s: save %.3f restore %.3f read %.3f size %d ok %s touch %.3f" %
                            ((s, kind, rep, name) + r))
                        runs[(kind, name)].append(r)
        finally:
            for p in (data, img):
                if os.path.exists(p):
                    os.unlink(p)
        for kind, name in runs:
            rs = runs[(kind, name)]
            save = statistics.median(r[0] for r in rs)
            restore = statistics.median(r[1] for r in rs)
            read = statistics.median(r[2] for r in rs)
            fsize = max(r[3] for r in rs)
            ok = all(r[4] for r in rs)
            touch = statistics.median(r[5] for r in rs)
            print("| %s | %s | %s | %.3f | %.3f | %.3f | %.3f | %.2f GiB | %.2f× | %.2f× | %.2f× | %.2f | %s |" % (
                s, "THP" if kind == "thp" else "4 KiB", name, save, restore, read, touch,
                fsize / (1 << 30), save / read, restore / read, restore / (read + touch),
                size / (1 << 30) / restore, "yes" if ok else "NO"))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
