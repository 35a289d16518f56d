#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "channel/tls.h"
#include "common/bitmap.h"
#include "common/clock.h"
#include "common/failure.h"
#include "common/util.h"
#include "livemig/buffer.h"
#include "postcopy/dest_internal.h"
#include "postcopy/return_path.h"
#include "ram/uffd_compat.h"
#include "ram/zero.h"

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

#define PLACER_MIN (1u << 20) /* one PAGES record of 4 KiB pages at most */

/* The placement pipeline (place_queue.h): placer threads by default, at
 * most, and receive buffers of PLACER_MIN bytes per placer (one being
 * filled, others queued: enough to ride out a placer's stall). */
#define PLACERS_DEFAULT 1u
#define PLACERS_MAX 4u
#define PQ_BUFS_PER_PLACER 4u

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* thp: the buffer assembles THP host pages (or frames of 4 KiB pages);
 * backed by a huge page itself, a whole one moves into guest RAM as one
 * PMD. */
static int placer_init(lm_pc_placer *pl, size_t cap, bool thp)
{
    memset(pl, 0, sizeof(*pl));
    size_t len = cap + LM_HUGE_2M;
    uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        return -ENOMEM;
    }
    pl->map = m;
    pl->map_len = len;
    pl->buf = (uint8_t *)(((uintptr_t)m + LM_HUGE_2M - 1) & ~(uintptr_t)(LM_HUGE_2M - 1));
    pl->cap = cap;
    pl->thp = thp;
    /* Best effort: without it pages are moved (or copied) one by one. */
    (void)madvise(pl->buf, cap, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    return 0;
}

static void placer_free(lm_pc_placer *pl)
{
    if (pl->map) {
        munmap(pl->map, pl->map_len);
    }
    pl->map = pl->buf = NULL;
    free(pl->lone);
    pl->lone = NULL;
    pl->lone_len = 0;
}

static void placer_reset(lm_pc_placer *pl)
{
    pl->filled = 0;
    pl->blk = NULL;
    pl->frame = false;
    memset(pl->have, 0, sizeof(pl->have));
}

static int open_uffd(lm_pc_dst *d, lm_error *err);
static int register_blocks(lm_pc_dst *d, lm_error *err);

/* LIVEMIG_POSTCOPY_PLACERS: how many placer threads (0: none, the load
 * thread places what it reads, as before the pipeline). */
static unsigned placers_wanted(void)
{
    const char *s = getenv("LIVEMIG_POSTCOPY_PLACERS");
    if (!s || !*s) {
        return PLACERS_DEFAULT;
    }
    char *end;
    unsigned long n = strtoul(s, &end, 10);
    if (*end || n > PLACERS_MAX) {
        lm_warn("LIVEMIG_POSTCOPY_PLACERS=%s: expected 0 to %u; using %u", s, PLACERS_MAX,
                PLACERS_DEFAULT);
        return PLACERS_DEFAULT;
    }
    return (unsigned)n;
}

int lm_pc_dst_new(const lm_pc_dst_ctx *ctx, lm_ram_block **blocks, size_t nblocks, uint32_t flags,
                  lm_pc_dst **out, lm_error *err)
{
    lm_pc_dst *d = calloc(1, sizeof(*d));
    if (!d) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    d->ctx = *ctx;
    if (d->ctx.nvcpus > LM_MAX_VCPUS) {
        d->ctx.nvcpus = LM_MAX_VCPUS;
    }
    d->nblocks = nblocks;
    d->preempt = flags & LM_ADVISE_PREEMPT;
    d->uffd = -1;
    d->wake_fd = -1;
    pthread_mutex_init(&d->lock, NULL);
    pthread_cond_init(&d->cond, NULL);
    pthread_mutex_init(&d->rp_lock, NULL);
    pthread_mutex_init(&d->bt_lock, NULL);
    size_t cap = PLACER_MIN, main_cap = PLACER_MIN;
    bool thp = false, frames = false;
    for (size_t i = 0; i < nblocks; i++) {
        d->blocks[i] = blocks[i];
        d->wire_of[blocks[i]->idx] = (uint32_t)i;
        d->total_pages += blocks[i]->npages;
        cap = LM_MAX(cap, lm_pc_hp_bytes(blocks[i]));
        thp |= lm_pc_hp_pages(blocks[i]) > 1;
        /* Background frames of 4 KiB pages (frame_*), if moves are on. */
        frames |= lm_pc_hp_pages(blocks[i]) == 1 && blocks[i]->page_size < LM_HUGE_2M;
        if (lm_pc_hp_pages(blocks[i]) > LM_PC_HP_MAX) {
            lm_pc_dst_free(d);
            return lm_error_set(err, -EINVAL, "postcopy: block '%s' has %llu pages per host page "
                                "(at most %u)", blocks[i]->name,
                                (unsigned long long)lm_pc_hp_pages(blocks[i]), LM_PC_HP_MAX);
        }
    }
    /* Placement by UFFDIO_MOVE where it pays and the kernel allows it;
     * "copy" keeps UFFDIO_COPY (the fallback, and how the tests reach
     * it), "frames" moves whole 2 MiB frames of 4 KiB blocks, "move"
     * moves every 4 KiB run too. */
    const char *how = getenv("LIVEMIG_POSTCOPY_PLACE");
    d->place_mode = !how || !*how            ? LM_PC_PLACE_AUTO
                    : !strcmp(how, "copy")   ? LM_PC_PLACE_COPY
                    : !strcmp(how, "frames") ? LM_PC_PLACE_FRAMES
                    : !strcmp(how, "move")   ? LM_PC_PLACE_MOVE
                                             : LM_PC_PLACE_AUTO;
    if (how && *how && strcmp(how, "copy") && strcmp(how, "frames") && strcmp(how, "move")) {
        lm_warn("LIVEMIG_POSTCOPY_PLACE=%s: expected copy, frames or move; using the default", how);
    }
    d->move_wanted = d->place_mode != LM_PC_PLACE_COPY;
    frames &= d->place_mode == LM_PC_PLACE_FRAMES || d->place_mode == LM_PC_PLACE_MOVE;
    d->frames = frames;
    d->nplacers = placers_wanted();
    if (d->frames || d->place_mode == LM_PC_PLACE_MOVE) {
        d->nplacers = 0; /* frames and moves stay on the load thread */
    }
    main_cap = frames ? LM_MAX(cap, (size_t)LM_HUGE_2M) : cap;
    d->trace = lm_pc_trace_open("dst");
    d->zero_len = cap;
    d->zero_buf = mmap(NULL, cap, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (d->zero_buf == MAP_FAILED) {
        d->zero_buf = NULL;
    }
    if (!d->zero_buf || placer_init(&d->main_pl, main_cap, thp || frames) < 0 || placer_init(&d->pre_pl, cap, thp) < 0) {
        lm_pc_dst_free(d);
        return lm_error_set(err, -ENOMEM, "out of memory for postcopy buffers");
    }
    /* Refuse ADVISE now, while the source can still give postcopy up with
     * its guest running, when userfaultfd is not there or cannot take this
     * guest's RAM (a file on a disk file system: only anonymous memory,
     * tmpfs/memfd and hugetlbfs can be registered).  QEMU checks the host
     * at ADVISE too.  LISTEN opens the one it uses. */
    int ret = open_uffd(d, err);
    if (ret == 0) {
        ret = register_blocks(d, err);
        close(d->uffd);
        d->uffd = -1;
    }
    if (ret < 0) {
        lm_pc_dst_free(d);
        return ret;
    }
    *out = d;
    return 0;
}

bool lm_pc_dst_preempt(const lm_pc_dst *d)
{
    return d->preempt;
}

void lm_pc_dst_free(lm_pc_dst *d)
{
    if (!d) {
        return;
    }
    lm_pc_dst_stop_preempt(d);
    lm_pc_fault_stop(d);
    /* Before the userfaultfd closes: placers use it. */
    uint64_t queued = d->pq ? lm_pc_pq_runs(d->pq) : 0;
    unsigned placers = d->pq ? d->nplacers : 0; /* none without a 4 KiB block */
    lm_pc_pq_free(d->pq);
    d->pq = NULL;
    if (d->listening) {
        lm_debug("postcopy placement: %llu bytes moved (UFFDIO_MOVE), %llu copied (UFFDIO_COPY), "
                 "%llu zero-filled, %llu zero left as holes; 2 MiB frames of 4 KiB pages: "
                 "%llu moved whole, %llu copied around a page placed early, %llu dropped at a "
                 "broken connection; %llu runs placed by %u placer threads",
                 (unsigned long long)d->moved_bytes, (unsigned long long)d->copied_bytes,
                 (unsigned long long)d->zero_bytes, (unsigned long long)d->zero_left_bytes,
                 (unsigned long long)d->frames_moved,
                 (unsigned long long)d->frames_early, (unsigned long long)d->frames_dropped,
                 (unsigned long long)queued, placers);
    }
    lm_pc_dst_set_rp(d, NULL, false, NULL);
    if (d->uffd >= 0) {
        /* Closing unregisters guest RAM; every page is placed by now
         * (or the migration failed and the guest is lost anyway). */
        close(d->uffd);
        d->uffd = -1;
        for (size_t i = 0; i < d->nblocks && d->listening; i++) {
            lm_ram_block *b = d->blocks[i];
            if (lm_pc_hp_pages(b) > 1) {
                /* Placement built 4 KiB mappings: rebuild huge pages. */
                madvise(b->host, b->size, MADV_COLLAPSE);
            }
        }
    }
    for (size_t i = 0; i < d->nblocks; i++) {
        lm_bitmap_free(d->requested[i]);
        lm_bitmap_free(d->waiting[i]);
    }
    placer_free(&d->main_pl);
    placer_free(&d->pre_pl);
    if (d->zero_buf) {
        munmap(d->zero_buf, d->zero_len);
    }
    lm_pc_trace_close(d->trace);
    pthread_mutex_destroy(&d->bt_lock);
    pthread_mutex_destroy(&d->rp_lock);
    pthread_cond_destroy(&d->cond);
    pthread_mutex_destroy(&d->lock);
    free(d);
}

/* Drops pages [first, first+n) so that the next access faults: private
 * memory loses its pages, shared memory (memfd, hugetlbfs) its backing. */
static int drop_pages(lm_ram_block *b, uint64_t first, uint64_t n, lm_error *err)
{
    int advice = lm_ram_block_is_private(b) ? MADV_DONTNEED : MADV_REMOVE;
    if (madvise(lm_ram_block_page(b, first), n << b->page_shift, advice) < 0) {
        return lm_error_set_errno(err, -errno, "cannot discard pages %llu+%llu of block '%s'",
                                  (unsigned long long)first, (unsigned long long)n, b->name);
    }
    return 0;
}

int lm_pc_dst_discard(lm_pc_dst *d, const uint8_t *body, uint16_t len, lm_error *err)
{
    if (d->listening) {
        return lm_error_set(err, -EBADMSG, "DISCARD after LISTEN");
    }
    if (len < 4) {
        return lm_error_set(err, -EBADMSG, "DISCARD command of %u bytes", len);
    }
    uint16_t wi = lm_load_be16(body), n = lm_load_be16(body + 2);
    if (wi >= d->nblocks || len != 4u + 16u * n) {
        return lm_error_set(err, -EBADMSG, "malformed DISCARD command (block %u, %u ranges, %u bytes)",
                            wi, n, len);
    }
    lm_ram_block *b = d->blocks[wi];
    uint64_t hp = lm_pc_hp_pages(b);
    for (uint16_t i = 0; i < n; i++) {
        uint64_t first = lm_load_be64(body + 4 + 16 * i), count = lm_load_be64(body + 12 + 16 * i);
        if (count == 0 || first >= b->npages || count > b->npages - first || (first | count) & (hp - 1)) {
            return lm_error_set(err, -EBADMSG, "DISCARD of block '%s' pages %llu+%llu out of range",
                                b->name, (unsigned long long)first, (unsigned long long)count);
        }
        lm_bitmap_clear_range(b->received, first, count);
        int ret = drop_pages(b, first, count, err);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

static int place_cb(void *opaque, uint8_t type, lm_ram_block *b, uint64_t first, uint32_t count,
                    lm_channel *ch, lm_error *err);

static int open_uffd_with(uint64_t want, int *out)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0 && errno == EPERM) {
        /* Unprivileged: placement never lets the kernel touch missing
         * pages (no read() into guest RAM), so user faults are enough. */
        fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    }
    if (fd < 0) {
        return -errno;
    }
    struct uffdio_api api = { .api = UFFD_API, .features = want };
    if (ioctl(fd, UFFDIO_API, &api) < 0) {
        int code = -errno;
        close(fd);
        return code;
    }
    *out = fd;
    return 0;
}

/* Opens the userfaultfd, with UFFD_FEATURE_MOVE when the kernel has it
 * (6.8) and placement by move is wanted; d->move_wanted says which. */
static int open_uffd(lm_pc_dst *d, lm_error *err)
{
    uint64_t want = UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_MISSING_HUGETLBFS;
    if (d->ctx.blocktime) {
        want |= UFFD_FEATURE_THREAD_ID;
    }
    int fd = -1, ret = -EINVAL;
    if (d->move_wanted && (ret = open_uffd_with(want | UFFD_FEATURE_MOVE, &fd)) < 0) {
        d->move_wanted = false; /* an older kernel: UFFDIO_COPY only */
    }
    if (!d->move_wanted) {
        ret = open_uffd_with(want, &fd);
    }
    if (ret == -ENOSYS || ret == -EPERM) {
        return lm_error_set_errno(err, ret, "postcopy: userfaultfd() is not available");
    }
    if (ret < 0) {
        return lm_error_set_errno(err, ret, "postcopy: userfaultfd lacks features 0x%llx",
                                  (unsigned long long)want);
    }
    d->uffd = fd;
    return 0;
}

/* Registers every block with d->uffd for missing faults, and learns which
 * placements the kernel offers for each. */
static int register_blocks(lm_pc_dst *d, lm_error *err)
{
    for (size_t i = 0; i < d->nblocks; i++) {
        lm_ram_block *b = d->blocks[i];
        struct uffdio_register reg = {
            .range = { .start = (uintptr_t)b->host, .len = b->size },
            .mode = UFFDIO_REGISTER_MODE_MISSING,
        };
        if (ioctl(d->uffd, UFFDIO_REGISTER, &reg) < 0) {
            int e = errno;
            return lm_error_set_errno(err, -e, "postcopy: cannot register block '%s' with userfaultfd%s",
                                      b->name, e == EINVAL && lm_ram_block_has_fd(b)
                                                   ? " (its file is not on tmpfs or hugetlbfs?)" : "");
        }
        if (!(reg.ioctls & (1ull << _UFFDIO_COPY))) {
            return lm_error_set(err, -EOPNOTSUPP, "postcopy: UFFDIO_COPY unsupported for block '%s'",
                                b->name);
        }
        d->zeropage_ok[i] = reg.ioctls & (1ull << _UFFDIO_ZEROPAGE);
        /* Moves take private anonymous pages only (not memfd, not
         * hugetlbfs). */
        d->move_ok[i] = d->move_wanted && (reg.ioctls & (1ull << _UFFDIO_MOVE)) &&
                        lm_ram_block_is_private(b) && !lm_ram_block_has_fd(b) &&
                        b->page_size < LM_HUGE_2M;
    }
    return 0;
}

static bool has_4k_block(const lm_pc_dst *d)
{
    for (size_t i = 0; i < d->nblocks; i++) {
        if (lm_pc_hp_pages(d->blocks[i]) == 1 && d->blocks[i]->page_size < LM_HUGE_2M) {
            return true;
        }
    }
    return false;
}

static int place_queued(void *opaque, const lm_pc_pq_run *run, lm_error *err);
static void placement_failed(void *opaque, const lm_error *err);

int lm_pc_dst_listen(lm_pc_dst *d, lm_ram_loader *l, lm_error *err)
{
    if (d->listening) {
        return lm_error_set(err, -EBADMSG, "second LISTEN command");
    }
    uint64_t received = 0;
    for (size_t i = 0; i < d->nblocks; i++) {
        lm_ram_block *b = d->blocks[i];
        uint64_t hp = lm_pc_hp_pages(b);
        /* A host page is there whole or not at all. */
        for (uint64_t first = 0; hp > 1 && first < b->npages; first += hp) {
            if (!lm_pc_all_set(b->received, first, hp)) {
                lm_bitmap_clear_range(b->received, first, hp);
            }
        }
        /* Whatever was not received must fault, even if an earlier
         * attempt left bytes there. */
        for (uint64_t p = 0; p < b->npages;) {
            uint64_t s = lm_bitmap_next_clear(b->received, b->npages, p);
            if (s >= b->npages) {
                break;
            }
            uint64_t q = lm_bitmap_next_set(b->received, b->npages, s);
            int ret = drop_pages(b, s, q - s, err);
            if (ret < 0) {
                return ret;
            }
            p = q;
        }
        received += lm_bitmap_count(b->received, b->npages);
        d->requested[i] = lm_bitmap_new(b->npages);
        d->waiting[i] = lm_bitmap_new(b->npages);
        if (!d->requested[i] || !d->waiting[i]) {
            return lm_error_set(err, -ENOMEM, "out of memory");
        }
    }
    __atomic_store_n(&d->received_pages, received, __ATOMIC_RELEASE);
    int ret = open_uffd(d, err);
    if (ret < 0) {
        return ret;
    }
    ret = register_blocks(d, err);
    if (ret < 0) {
        return ret;
    }
    d->listening = true;
    ret = lm_pc_fault_start(d, err);
    if (ret < 0) {
        return ret;
    }
    if (d->nplacers && has_4k_block(d)) {
        ret = lm_pc_pq_new(d->nplacers, d->nplacers * PQ_BUFS_PER_PLACER, PLACER_MIN, place_queued,
                           placement_failed, d, &d->pq, err);
        if (ret < 0) {
            return ret;
        }
    }
    l->place = place_cb;
    l->place_opaque = d;
    return 0;
}

/* ---- placement ---- */

int lm_pc_uffd_place(lm_pc_dst *d, uint32_t wi, void *addr, const uint8_t *src, size_t len,
                     lm_error *err)
{
    lm_ram_block *b = d->blocks[wi];
    uintptr_t a = (uintptr_t)addr;
    while (len > 0) {
        size_t chunk = len;
        long done;
        int r;
        if (!src && d->zeropage_ok[wi]) {
            struct uffdio_zeropage z = { .range = { .start = a, .len = chunk } };
            r = ioctl(d->uffd, UFFDIO_ZEROPAGE, &z);
            done = (long)z.zeropage;
        } else {
            if (!src && chunk > d->zero_len) {
                chunk = d->zero_len;
            }
            struct uffdio_copy c = { .dst = a, .src = (uintptr_t)(src ? src : d->zero_buf), .len = chunk };
            r = ioctl(d->uffd, UFFDIO_COPY, &c);
            done = (long)c.copy;
        }
        if (r == 0) {
            done = (long)chunk;
        } else if (errno == EAGAIN) {
            if (done <= 0) {
                continue;
            }
        } else if (errno == EEXIST) {
            /* Placed meanwhile by another path: skip that page; whoever
             * placed it woke its waiters, wake again to be sure. */
            if (done < 0) {
                done = 0;
            }
            struct uffdio_range w = { .start = a + (size_t)done, .len = b->page_size };
            ioctl(d->uffd, UFFDIO_WAKE, &w);
            done += b->page_size;
        } else {
            return lm_error_set_errno(err, -errno, "postcopy: cannot place %zu bytes in block '%s'",
                                      chunk, b->name);
        }
        if ((size_t)done > len) {
            done = (long)len;
        }
        a += (size_t)done;
        if (src) {
            src += done;
        }
        len -= (size_t)done;
    }
    return 0;
}

/* Moves len bytes from the receive buffer src into guest RAM at addr.
 * Returns how many bytes went in (a page placed meanwhile by another path
 * is skipped, and counted), or <0 when the kernel refuses the move: the
 * caller copies the rest. */
static long uffd_move(lm_pc_dst *d, uint32_t wi, uintptr_t addr, uint8_t *src, size_t len)
{
    lm_ram_block *b = d->blocks[wi];
    size_t done = 0;
    while (done < len) {
        struct uffdio_move m = { .dst = addr + done, .src = (uintptr_t)src + done, .len = len - done };
        int r = ioctl(d->uffd, UFFDIO_MOVE, &m);
        if (r == 0) {
            done = len;
            break;
        }
        int e = errno;
        if (m.move > 0) {
            done += (size_t)m.move;
        }
        if (e == EAGAIN) {
            continue;
        }
        if (e == EEXIST) {
            /* Placed meanwhile: skip that page, wake its waiters. */
            __atomic_fetch_add(&d->move_skips, 1, __ATOMIC_RELAXED);
            struct uffdio_range w = { .start = addr + done, .len = b->page_size };
            ioctl(d->uffd, UFFDIO_WAKE, &w);
            done += b->page_size;
            continue;
        }
        return done ? (long)done : -e;
    }
    return (long)done;
}

/* One run of pages not placed yet: moved from the receive buffer where
 * allowed, else copied (or zero-filled when src is NULL). */
static int place_run(lm_pc_dst *d, uint32_t wi, lm_ram_block *b, uint64_t p, uint64_t n, uint8_t *src,
                     bool movable, lm_error *err)
{
    uintptr_t addr = (uintptr_t)lm_ram_block_page(b, p);
    size_t len = n << b->page_shift;
    uint64_t hp = lm_pc_hp_pages(b);
    /* In a THP block only whole host pages move: a part would split the
     * buffer's huge page, and the guest's would not be one either. */
    bool whole = hp == 1 || (p % hp == 0 && n % hp == 0);
    if (src && movable && whole && __atomic_load_n(&d->move_ok[wi], __ATOMIC_RELAXED)) {
        long moved = uffd_move(d, wi, addr, src, len);
        if (moved < 0) {
            /* A page the kernel cannot move right now (EBUSY: pinned, or
             * a huge page it could not split) is copied; a refusal of the
             * mappings themselves (e.g. the guest's is locked and the
             * buffer not) turns moves off for the block. */
            if (moved != -EBUSY) {
                __atomic_store_n(&d->move_ok[wi], false, __ATOMIC_RELAXED);
            }
            lm_debug("postcopy: UFFDIO_MOVE refused for block '%s' (%s); using UFFDIO_COPY%s",
                     b->name, strerror((int)-moved), moved == -EBUSY ? " for this run" : "");
        } else {
            __atomic_fetch_add(&d->moved_bytes, (uint64_t)moved, __ATOMIC_RELAXED);
            addr += (size_t)moved;
            src += moved;
            len -= (size_t)moved;
        }
        if (len == 0) {
            return 0;
        }
    }
    __atomic_fetch_add(src ? &d->copied_bytes : &d->zero_bytes, len, __ATOMIC_RELAXED);
    return lm_pc_uffd_place(d, wi, (void *)addr, src, len, err);
}

/*
 * Zero pages of shared memory (memfd, a file, hugetlbfs) are left as the
 * holes they are: LISTEN dropped every page not received, so each one not
 * received since reads as zero, and filling it in would allocate a page
 * (UFFDIO_ZEROPAGE on shmem allocates one; 1 GiB of zeros took 157 ms
 * into a file).  Private memory takes UFFDIO_ZEROPAGE: it maps the shared
 * zero page, and a vCPU reading it does not fault again.
 *
 * Such a page counts as received: the source never sends it again, and a
 * vCPU that touches it faults to the fault thread, which places a zero page
 * then (fault.c, place_received).  A vCPU already waiting
 * for one of these pages is woken here by placing it: the fault thread
 * marks `waiting` then reads `received`, this marks `received` then reads
 * `waiting`, each with a full barrier between, so at least one of the two
 * sees the other's mark and places it (placing twice only wakes twice).
 */
static int leave_zero_run(lm_pc_dst *d, uint32_t wi, lm_ram_block *b, uint64_t p, uint64_t n,
                          uint64_t *newly, lm_error *err)
{
    *newly = lm_pc_set_range(b->received, p, n);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    /* A word of the map at a time: a 1 MiB run is 256 pages, rarely one
     * waited for. */
    uint64_t end = p + n;
    for (uint64_t i = lm_pc_next_set(d->waiting[wi], end, p); i < end;
         i = lm_pc_next_set(d->waiting[wi], end, i + 1)) {
        int ret = lm_pc_uffd_place(d, wi, lm_ram_block_page(b, i), NULL, b->page_size, err);
        if (ret < 0) {
            return ret;
        }
        __atomic_fetch_add(&d->zero_bytes, b->page_size, __ATOMIC_RELAXED);
    }
    __atomic_fetch_add(&d->zero_left_bytes, n << b->page_shift, __ATOMIC_RELAXED);
    return 0;
}

int lm_pc_place_range(lm_pc_dst *d, uint32_t wi, lm_ram_block *b, uint64_t first, uint64_t n,
                      uint8_t *src, bool movable, lm_error *err)
{
    uint64_t end = first + n;
    /* Shared memory keeps its zero pages as holes, those sent as data too
     * (a file-backed source sends its written-out zeros as data): runs are
     * cut where pages turn zero or not.  (waiting exists from LISTEN on,
     * when the holes are made.) */
    bool holes = !lm_ram_block_is_private(b) && d->waiting[wi];
    for (uint64_t p = first; p < end;) {
        if (lm_pc_test(b->received, p)) {
            p++;
            continue;
        }
        uint8_t *at = src ? src + ((p - first) << b->page_shift) : NULL;
        bool zero = holes && (!at || lm_buffer_is_zero(at, b->page_size));
        uint64_t q = p + 1;
        while (q < end && !lm_pc_test(b->received, q) &&
               (!holes || !src ||
                lm_buffer_is_zero(src + ((q - first) << b->page_shift), b->page_size) == zero)) {
            q++;
        }
        uint64_t newly;
        int ret;
        if (zero) {
            ret = leave_zero_run(d, wi, b, p, q - p, &newly, err);
        } else {
            ret = place_run(d, wi, b, p, q - p, at, movable, err);
            newly = ret < 0 ? 0 : lm_pc_set_range(b->received, p, q - p);
        }
        if (ret < 0) {
            return ret;
        }
        uint64_t waited = d->waiting[wi] ? lm_pc_clear_range(d->waiting[wi], p, q - p) : 0;
        if (waited && lm_pc_pause_for(b)) {
            lm_pc_waiting_done(d, waited);
        }
        __atomic_fetch_add(d->ctx.bytes, (q - p) << b->page_shift, __ATOMIC_RELAXED);
        if (newly && __atomic_add_fetch(&d->received_pages, newly, __ATOMIC_ACQ_REL) >= d->total_pages) {
            pthread_mutex_lock(&d->lock);
            pthread_cond_broadcast(&d->cond);
            pthread_mutex_unlock(&d->lock);
        }
        lm_pc_blocktime_end(d, wi, p, q - p);
        p = q;
    }
    return 0;
}

/* Any bit of [first, first+n) set?  (A word at a time: called per record.) */
static bool any_set(const uint64_t *map, uint64_t first, uint64_t n)
{
    for (uint64_t p = first, end = first + n; p < end;) {
        uint64_t bit = p % 64, take = LM_MIN(64 - bit, end - p);
        uint64_t mask = (take == 64 ? ~0ull : ((1ull << take) - 1)) << bit;
        if (__atomic_load_n(&map[p / 64], __ATOMIC_ACQUIRE) & mask) {
            return true;
        }
        p += take;
    }
    return false;
}

/* A run of a THP host page arrived before the rest of it: the pages a
 * vCPU waits for go in at once (copied: the buffer keeps its huge page
 * for the whole). */
static int place_waiting(lm_pc_dst *d, uint32_t wi, lm_ram_block *b, uint64_t first, uint64_t n,
                         uint8_t *src, lm_error *err)
{
    if (!any_set(d->waiting[wi], first, n)) {
        return 0;
    }
    for (uint64_t i = 0; i < n; i++) {
        if (lm_pc_test(d->waiting[wi], first + i)) {
            int ret = lm_pc_place_range(d, wi, b, first + i, 1, src + (i << b->page_shift), false, err);
            if (ret < 0) {
                return ret;
            }
        }
    }
    return 0;
}

/* Tracing (trace.h): marks ev for every requested page of [first,
 * first+n). */
static void trace_requested(lm_pc_dst *d, lm_pc_placer *pl, lm_pc_trace_event ev, uint32_t wi,
                            uint64_t first, uint64_t n)
{
    if (!d->trace || !d->requested[wi]) {
        return;
    }
    for (uint64_t p = first; p < first + n; p++) {
        if (lm_pc_test(d->requested[wi], p)) {
            lm_pc_trace_mark(d->trace, ev, pl == &d->pre_pl ? 'p' : 'm', wi, p);
        }
    }
}

/* The lone requested page of another host page, between two records of
 * the one being assembled: placed at once from a scratch page. */
static int place_lone(lm_pc_dst *d, lm_pc_placer *pl, uint32_t wi, lm_ram_block *b, uint64_t pg,
                      uint8_t type, lm_channel *ch, lm_error *err)
{
    uint8_t *src = NULL;
    if (type == LM_RAM_PAGES) {
        if (pl->lone_len < b->page_size) {
            free(pl->lone);
            pl->lone_len = 0;
            if (!(pl->lone = malloc(b->page_size))) {
                return lm_error_set(err, -ENOMEM, "out of memory");
            }
            pl->lone_len = b->page_size;
        }
        trace_requested(d, pl, LM_PCT_HDR, wi, pg, 1);
        if (lm_channel_get(ch, pl->lone, b->page_size) < 0) {
            return lm_channel_error(ch, err);
        }
        trace_requested(d, pl, LM_PCT_DATA, wi, pg, 1);
        src = pl->lone;
    }
    int ret = lm_pc_place_range(d, wi, b, pg, 1, src, false, err);
    trace_requested(d, pl, LM_PCT_PLACED, wi, pg, 1);
    return ret;
}

/* ---- frames: background 4 KiB pages placed as huge pages ----
 * (LIVEMIG_POSTCOPY_PLACE=frames or move; see place_mode for why not by
 * default.)
 *
 * A block of 4 KiB host pages gets its background pages in runs of up to
 * 1 MiB.  Copied run by run (UFFDIO_COPY), every page is a fresh 4 KiB
 * page and a PTE, and the guest ends with no huge page.  Instead the main
 * channel's placer holds the 2 MiB-aligned frame a run falls in, in its
 * THP-advised buffer, until all of the frame's pages came; then one
 * UFFDIO_MOVE puts the buffer's huge page in as one PMD (the kernel moves
 * the page, it copies nothing).  Only a frame none of whose pages is
 * placed yet is held (else its PMD is taken, and a move would split the
 * buffer's huge page): it starts with a PAGES record, and ZERO records
 * inside it become zeros in the buffer, as the stream says they are.
 *
 * Held pages are not `received` yet: a vCPU faulting on one asks the
 * source, which always sends a requested page again (send_requested), on
 * the preempt channel (placed there at once) or on this one (placed at
 * once by place_waiting, a copy, before the frame is whole).  The frame
 * is flushed (what it has is copied) when the background moves past it,
 * and at the end of the stream (lm_pc_dst_wait_all); a connection that
 * breaks drops it (lm_pc_dst_reset_main): its pages are not received, so
 * the bitmap sent on recovery makes the source send them again. */

/* Pages of a frame in block b. */
static uint64_t frame_pages(const lm_ram_block *b)
{
    return LM_HUGE_2M >> b->page_shift;
}

/* Whether the frame at page fr of block b may be held: moves on, a whole
 * aligned frame inside the block, none of its pages placed. */
static bool frame_ok(lm_pc_dst *d, const lm_pc_placer *pl, uint32_t wi, lm_ram_block *b, uint64_t fr)
{
    uint64_t fp = frame_pages(b);
    return d->frames && pl == &d->main_pl && pl->thp && pl->cap >= LM_HUGE_2M && lm_pc_hp_pages(b) == 1 &&
           b->page_size < LM_HUGE_2M && fp <= LM_PC_HP_MAX &&
           __atomic_load_n(&d->move_ok[wi], __ATOMIC_RELAXED) && fr + fp <= b->npages &&
           (uintptr_t)lm_ram_block_page(b, fr) % LM_HUGE_2M == 0 && !any_set(b->received, fr, fp);
}

/* Maps the buffer's first 2 MiB afresh.  After a move its huge page is
 * gone (a hole, and the next fill faults in a new huge page), but when
 * the kernel had to split it (the guest's frame had a page table, or a
 * page came meanwhile) a page table of holes stays and every later fill
 * would get 4 KiB pages: a new mapping has none. */
static void frame_renew_buffer(lm_pc_placer *pl)
{
    void *m = mmap(pl->buf, LM_HUGE_2M, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                   -1, 0);
    if (m != MAP_FAILED) {
        (void)madvise(pl->buf, LM_HUGE_2M, MADV_HUGEPAGE);
    }
}

/* Places the held frame, if any, and forgets it: moved whole when all of
 * it came and none of it was placed meanwhile, else copied (the pages it
 * has, skipping any placed meanwhile). */
static int frame_flush(lm_pc_dst *d, lm_pc_placer *pl, lm_error *err)
{
    if (!pl->frame) {
        return 0;
    }
    lm_ram_block *b = pl->blk;
    uint32_t wi = d->wire_of[b->idx];
    uint64_t fr = pl->hp_first, fp = frame_pages(b);
    bool early = any_set(b->received, fr, fp);
    bool whole = pl->filled == fp && !early;
    if (early) {
        d->frames_early++; /* the load thread's alone */
    }
    uint64_t have[LM_PC_HP_MAX / 64];
    memcpy(have, pl->have, sizeof(have));
    placer_reset(pl);
    if (whole) {
        uint64_t moved = __atomic_load_n(&d->moved_bytes, __ATOMIC_RELAXED);
        uint64_t skips = __atomic_load_n(&d->move_skips, __ATOMIC_RELAXED);
        int ret = lm_pc_place_range(d, wi, b, fr, fp, pl->buf, true, err);
        if (ret < 0) {
            return ret;
        }
        if (__atomic_load_n(&d->moved_bytes, __ATOMIC_RELAXED) - moved == LM_HUGE_2M &&
            __atomic_load_n(&d->move_skips, __ATOMIC_RELAXED) == skips) {
            __atomic_fetch_add(&d->frames_moved, 1, __ATOMIC_RELAXED);
        }
        frame_renew_buffer(pl);
        return 0;
    }
    for (uint64_t i = 0; i < fp;) {
        if (!lm_bitmap_test(have, i)) {
            i++;
            continue;
        }
        uint64_t j = i + 1;
        while (j < fp && lm_bitmap_test(have, j)) {
            j++;
        }
        int ret = lm_pc_place_range(d, wi, b, fr + i, j - i, pl->buf + (i << b->page_shift), false, err);
        if (ret < 0) {
            return ret;
        }
        i = j;
    }
    return 0;
}

/* Pages [pg, pg+n) of the held frame: into the buffer (PAGES from ch, or
 * zeros); the frame goes in when whole, a page a vCPU waits for at once. */
static int frame_add(lm_pc_dst *d, lm_pc_placer *pl, uint8_t type, uint64_t pg, uint64_t n,
                     lm_channel *ch, lm_error *err)
{
    lm_ram_block *b = pl->blk;
    uint32_t wi = d->wire_of[b->idx];
    uint64_t off = pg - pl->hp_first;
    uint8_t *dst = pl->buf + (off << b->page_shift);
    trace_requested(d, pl, LM_PCT_HDR, wi, pg, n);
    if (type == LM_RAM_PAGES) {
        if (lm_channel_get(ch, dst, n << b->page_shift) < 0) {
            return lm_channel_error(ch, err);
        }
    } else {
        memset(dst, 0, n << b->page_shift);
    }
    trace_requested(d, pl, LM_PCT_DATA, wi, pg, n);
    for (uint64_t i = off; i < off + n; i++) {
        if (!lm_bitmap_test(pl->have, i)) {
            lm_bitmap_set(pl->have, i);
            pl->filled++;
        }
    }
    int ret = pl->filled == frame_pages(b) ? frame_flush(d, pl, err)
                                           : place_waiting(d, wi, b, pg, n, dst, err);
    trace_requested(d, pl, LM_PCT_PLACED, wi, pg, n);
    return ret;
}

/* A run of a 4 KiB block, not held: read into the buffer, placed with
 * one ioctl per run of pages not placed yet. */
static int place_4k_run(lm_pc_dst *d, lm_pc_placer *pl, uint8_t type, uint32_t wi, lm_ram_block *b,
                        uint64_t first, uint64_t count, lm_channel *ch, lm_error *err)
{
    size_t psz = b->page_size;
    bool move = type == LM_RAM_PAGES && d->place_mode == LM_PC_PLACE_MOVE &&
                __atomic_load_n(&d->move_ok[wi], __ATOMIC_RELAXED);
    for (uint64_t done = 0; done < count;) {
        uint64_t chunk = LM_MIN(count - done, pl->cap / psz);
        if (move) {
            /* The last move left holes: fill them in one call rather
             * than a fault per page while reading. */
            (void)madvise(pl->buf, chunk * psz, MADV_POPULATE_WRITE);
        }
        trace_requested(d, pl, LM_PCT_HDR, wi, first + done, chunk);
        if (type == LM_RAM_PAGES && lm_channel_get(ch, pl->buf, chunk * psz) < 0) {
            return lm_channel_error(ch, err);
        }
        trace_requested(d, pl, LM_PCT_DATA, wi, first + done, chunk);
        int ret = lm_pc_place_range(d, wi, b, first + done, chunk, type == LM_RAM_PAGES ? pl->buf : NULL,
                                    move, err);
        if (ret < 0) {
            return ret;
        }
        trace_requested(d, pl, LM_PCT_PLACED, wi, first + done, chunk);
        done += chunk;
    }
    return 0;
}

/* The placement pipeline's placer (place_queue.h): one run, as
 * place_4k_run places it on the load thread. */
static int place_queued(void *opaque, const lm_pc_pq_run *run, lm_error *err)
{
    lm_pc_dst *d = opaque;
    int ret = lm_pc_place_range(d, run->wi, run->b, run->first, run->n, run->zero ? NULL : run->buf,
                                false, err);
    trace_requested(d, &d->main_pl, LM_PCT_PLACED, run->wi, run->first, run->n);
    return ret;
}

/* A placer failed: the migration fails (not a broken link, so no pause),
 * and the load thread hears of it now, even while it waits for the
 * socket; lm_pc_dst_wait_all too. */
static void placement_failed(void *opaque, const lm_error *err)
{
    lm_pc_dst *d = opaque;
    lm_warn("postcopy placement: %s", err->msg);
    pthread_mutex_lock(&d->lock);
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->lock);
    d->ctx.hooks.wake_main(d->ctx.hooks.opaque, err->code, err->msg);
}

/* A background run of a 4 KiB block on the main channel, with the
 * pipeline on: read into a free buffer of the queue (waiting for one
 * while all are in flight) and handed to the placers; the load thread
 * goes on reading meanwhile. */
static int queue_4k_run(lm_pc_dst *d, uint8_t type, uint32_t wi, lm_ram_block *b, uint64_t first,
                        uint64_t count, lm_channel *ch, lm_error *err)
{
    size_t psz = b->page_size;
    for (uint64_t done = 0; done < count;) {
        uint64_t chunk = LM_MIN(count - done, PLACER_MIN / psz);
        lm_pc_pq_run *run;
        int ret = lm_pc_pq_get(d->pq, &run, err);
        if (ret < 0) {
            return ret;
        }
        trace_requested(d, &d->main_pl, LM_PCT_HDR, wi, first + done, chunk);
        if (type == LM_RAM_PAGES && lm_channel_get(ch, run->buf, chunk * psz) < 0) {
            lm_pc_pq_unget(d->pq, run);
            return lm_channel_error(ch, err);
        }
        trace_requested(d, &d->main_pl, LM_PCT_DATA, wi, first + done, chunk);
        run->wi = wi;
        run->b = b;
        run->first = first + done;
        run->n = chunk;
        run->zero = type != LM_RAM_PAGES;
        lm_pc_pq_put(d->pq, run);
        done += chunk;
    }
    return 0;
}

/* A record of a 4 KiB block, split at frame boundaries: a piece inside
 * the held frame joins it; a piece past it (the background moved on)
 * flushes it first; a single page before it (or in an earlier block) or
 * one a vCPU asked for (a requested page on this channel) is placed at
 * once, the frame still held.  A piece outside any held frame starts one
 * if it may (PAGES, not a requested page, frame_ok), else is placed as a
 * run. */
static int place_4k_record(lm_pc_dst *d, lm_pc_placer *pl, uint8_t type, uint32_t wi, lm_ram_block *b,
                           uint64_t first, uint32_t count, lm_channel *ch, lm_error *err)
{
    uint64_t fp = frame_pages(b);
    for (uint64_t pg = first, end = first + count; pg < end;) {
        uint64_t fr = pg & ~(fp - 1);
        uint64_t n = LM_MIN(end, fr + fp) - pg;
        int ret = 0;
        /* A requested page sent alone: never held back. */
        bool urgent = count == 1 && d->requested[wi] && lm_pc_test(d->requested[wi], pg);
        if (pl->frame && (pl->blk != b || pl->hp_first != fr)) {
            uint32_t held = d->wire_of[pl->blk->idx];
            bool before = wi < held || (wi == held && pg < pl->hp_first);
            if ((before || urgent) && count == 1) {
                return place_lone(d, pl, wi, b, pg, type, ch, err);
            }
            ret = frame_flush(d, pl, err);
            if (ret < 0) {
                return ret;
            }
        }
        if (!pl->frame && type == LM_RAM_PAGES && !urgent && frame_ok(d, pl, wi, b, fr)) {
            placer_reset(pl);
            pl->frame = true;
            pl->blk = b;
            pl->hp_first = fr;
        }
        if (pl->frame) {
            ret = frame_add(d, pl, type, pg, n, ch, err);
        } else if (d->pq && pl == &d->main_pl && !urgent) {
            ret = queue_4k_run(d, type, wi, b, pg, n, ch, err);
        } else {
            ret = place_4k_run(d, pl, type, wi, b, pg, n, ch, err);
        }
        if (ret < 0) {
            return ret;
        }
        pg += n;
    }
    return 0;
}

static int place_record(lm_pc_dst *d, lm_pc_placer *pl, uint8_t type, lm_ram_block *b,
                        uint64_t first, uint32_t count, lm_channel *ch, lm_error *err)
{
    uint32_t wi = d->wire_of[b->idx];
    uint64_t hp = lm_pc_hp_pages(b);
    size_t psz = b->page_size;
    if (hp == 1 && pl->blk && !pl->frame) {
        /* A THP host page is being assembled in the buffer: only a lone
         * requested page may come meanwhile. */
        if (count != 1) {
            return lm_error_set(err, -EBADMSG, "host page %llu of block '%s' interrupted by pages "
                                "%llu+%u of block '%s'", (unsigned long long)pl->hp_first,
                                pl->blk->name, (unsigned long long)first, count, b->name);
        }
        return place_lone(d, pl, wi, b, first, type, ch, err);
    }
    if (hp == 1) {
        return place_4k_record(d, pl, type, wi, b, first, count, ch, err);
    }
    if (pl->frame) {
        /* The background moved on to a THP block. */
        int ret = frame_flush(d, pl, err);
        if (ret < 0) {
            return ret;
        }
    }
    /* A THP host page comes as runs, on one channel, back to back, in any
     * order (the page a vCPU faulted on may come first, on the main
     * channel); on the preempt channel LONE records may come between
     * them (pre_thread_fn). */
    for (uint64_t pg = first, end = first + count; pg < end;) {
        uint64_t hpf = pg & ~(hp - 1);
        if (pl->blk && (pl->blk != b || hpf != pl->hp_first)) {
            return lm_error_set(err, -EBADMSG,
                                "host page %llu of block '%s' interrupted by page %llu of block '%s'",
                                (unsigned long long)pl->hp_first, pl->blk->name,
                                (unsigned long long)pg, b->name);
        }
        if (!pl->blk) {
            placer_reset(pl);
            pl->blk = b;
            pl->hp_first = hpf;
        }
        uint64_t n = LM_MIN(end, hpf + hp) - pg, off = pg - hpf;
        uint8_t *dst = pl->buf + off * psz;
        if (type == LM_RAM_PAGES) {
            if (lm_channel_get(ch, dst, n * psz) < 0) {
                return lm_channel_error(ch, err);
            }
        } else {
            memset(dst, 0, n * psz);
        }
        for (uint64_t i = off; i < off + n; i++) {
            if (!lm_bitmap_test(pl->have, i)) {
                lm_bitmap_set(pl->have, i);
                pl->filled++;
            }
        }
        int ret = 0;
        if (pl->filled == hp) {
            placer_reset(pl);
            ret = lm_pc_place_range(d, wi, b, hpf, hp, pl->buf, true, err);
            trace_requested(d, pl, LM_PCT_PLACED, wi, hpf, 1);
        } else {
            ret = place_waiting(d, wi, b, pg, n, dst, err);
        }
        if (ret < 0) {
            return ret;
        }
        pg += n;
    }
    return 0;
}

void lm_pc_waiting_done(lm_pc_dst *d, uint64_t n)
{
    if (__atomic_sub_fetch(&d->nwaiting, n, __ATOMIC_ACQ_REL) == 0) {
        pthread_mutex_lock(&d->lock);
        pthread_cond_broadcast(&d->cond);
        pthread_mutex_unlock(&d->lock);
    }
}

/* The longest the background stream pauses before each of its records
 * while a vCPU waits. */
#define URGENT_PAUSE_NS (2 * 1000 * 1000ull)

/* A vCPU waits for a 2 MiB page (lm_pc_pause_for) that the preempt
 * channel brings: the background stream (this, the load thread, placing
 * its records, and the source's sender behind it once the socket fills)
 * holds off until that page is
 * placed, at most URGENT_PAUSE_NS per record.  On a 2-core host the two
 * CPU-bound background threads otherwise share the CPUs with the preempt
 * receiver's 2 MiB read and copy (the per-phase timing of
 * bench-postcopy-latency: a slow hugetlbfs fault's time goes into receiving
 * and placing its page, not into the request).  Without a preempt
 * connection the page comes this way: no pause. */
static void pause_for_urgent(lm_pc_dst *d)
{
    if (!d->preempt || !__atomic_load_n(&d->nwaiting, __ATOMIC_ACQUIRE)) {
        return;
    }
    uint64_t deadline = lm_now_ns() + URGENT_PAUSE_NS;
    pthread_mutex_lock(&d->lock);
    while (d->pre && !d->pre_code && __atomic_load_n(&d->nwaiting, __ATOMIC_ACQUIRE)) {
        uint64_t now = lm_now_ns();
        if (now >= deadline) {
            break;
        }
        struct timespec ts = lm_timespec_after(CLOCK_REALTIME, deadline - now);
        pthread_cond_timedwait(&d->cond, &d->lock, &ts);
    }
    pthread_mutex_unlock(&d->lock);
}

static int place_cb(void *opaque, uint8_t type, lm_ram_block *b, uint64_t first, uint32_t count,
                    lm_channel *ch, lm_error *err)
{
    lm_pc_dst *d = opaque;
    pause_for_urgent(d);
    return place_record(d, &d->main_pl, type, b, first, count, ch, err);
}

void lm_pc_dst_reset_main(lm_pc_dst *d)
{
    if (d->pq) {
        /* Runs read whole before the break are placed now, so that the
         * received bitmap sent on recovery is exact (a failure here fails
         * the migration at the next record, or at the end). */
        unsigned pending = 0;
        lm_error perr = LM_ERROR_INIT;
        if (lm_pc_pq_drain(d->pq, &pending, &perr) == 0 && pending) {
            lm_debug("postcopy: %u queued runs placed after the connection broke, before the "
                     "received bitmap goes out", pending);
        }
    }
    if (d->main_pl.frame) {
        d->frames_dropped++;
        lm_debug("postcopy: held frame at page %llu of block '%s' dropped (%llu of its pages came; "
                 "not received, so the source sends them again)",
                 (unsigned long long)d->main_pl.hp_first, d->main_pl.blk->name,
                 (unsigned long long)d->main_pl.filled);
    }
    placer_reset(&d->main_pl);
}

/* ---- return path ---- */

void lm_pc_send_request(lm_pc_dst *d, uint32_t wi, uint64_t first, uint64_t n)
{
    pthread_mutex_lock(&d->rp_lock);
    if (d->rp && lm_rp_send_req_pages(d->rp, (uint16_t)wi, first, (uint32_t)n) < 0) {
        /* The main channel shares the socket: the load thread sees the
         * failure too and pauses; the request is asked again on resume. */
        lm_channel_close(d->rp, NULL);
        d->rp = NULL;
    }
    pthread_mutex_unlock(&d->rp_lock);
    __atomic_fetch_add(d->ctx.requests, 1, __ATOMIC_RELAXED);
}

int lm_pc_dst_set_rp(lm_pc_dst *d, lm_channel *main_ch, bool resume, lm_error *err)
{
    lm_channel *rp = NULL;
    if (main_ch) {
        int dret = lm_channel_dup(main_ch, "return path", &rp, err);
        if (dret < 0) {
            return dret;
        }
    }
    int ret = 0;
    pthread_mutex_lock(&d->rp_lock);
    if (d->rp) {
        lm_channel_close(d->rp, NULL);
    }
    d->rp = rp;
    if (rp && resume) {
        for (size_t i = 0; i < d->nblocks && ret == 0; i++) {
            ret = lm_rp_send_recv_bitmap(rp, (uint16_t)i, d->blocks[i]->received, d->blocks[i]->npages);
        }
        if (ret == 0) {
            ret = lm_rp_send_resume_ack(rp);
        }
    }
    /* Faults asked for while paused, or whose answer was lost. */
    for (size_t i = 0; rp && ret == 0 && i < d->nblocks && d->listening; i++) {
        lm_ram_block *b = d->blocks[i];
        uint64_t hp = lm_pc_hp_pages(b);
        for (uint64_t p = lm_pc_next_set(d->requested[i], b->npages, 0); p < b->npages && ret == 0;
             p = lm_pc_next_set(d->requested[i], b->npages, p + hp)) {
            if (!lm_pc_test(b->received, p)) {
                ret = lm_rp_send_req_pages(rp, (uint16_t)i, p, (uint32_t)hp);
            }
        }
    }
    if (ret < 0) {
        lm_channel_error(rp, err);
        lm_channel_close(rp, NULL);
        d->rp = NULL;
    }
    pthread_mutex_unlock(&d->rp_lock);
    return ret;
}

/* SHUT or PONG: be32 value. */
static int send_u32(lm_pc_dst *d, uint16_t type, uint32_t value)
{
    int ret = -EPIPE;
    pthread_mutex_lock(&d->rp_lock);
    if (d->rp) {
        lm_channel_put_be16(d->rp, type);
        lm_channel_put_be16(d->rp, 4);
        lm_channel_put_be32(d->rp, value);
        ret = lm_channel_flush(d->rp);
    }
    pthread_mutex_unlock(&d->rp_lock);
    return ret;
}

int lm_pc_dst_send_shut(lm_pc_dst *d, uint32_t status)
{
    return send_u32(d, LM_RP_SHUT, status);
}

int lm_pc_dst_send_pong(lm_pc_dst *d, uint32_t value)
{
    return send_u32(d, LM_RP_PONG, value);
}

/* ---- the preempt receiver ---- */

static void pre_failed(lm_pc_dst *d, const lm_error *err)
{
    pthread_mutex_lock(&d->lock);
    /* Stopping, or before LISTEN, a broken connection is no failure. */
    bool report = !d->pre_stopping && d->listening &&
                  lm_failure_set_locked(&d->pre_code, &d->pre_err, err->code, err);
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->lock);
    if (report) {
        lm_warn("postcopy preempt connection: %s", err->msg);
        /* Wake the load thread: the whole connection pauses. */
        d->ctx.hooks.wake_main(d->ctx.hooks.opaque, -EIO, "postcopy preempt connection lost");
    }
}

static void *pre_thread_fn(void *arg)
{
    lm_pc_dst *d = arg;
    lm_error err = LM_ERROR_INIT;
    int fd, pid;
    lm_pc_urgent_thread("preempt receiver");
    if (lm_listener_accept(d->pre_listener, &fd, &pid, &err) < 0) {
        pre_failed(d, &err);
        return NULL;
    }
    lm_channel *ch = lm_channel_new(fd, "postcopy preempt channel", NULL);
    if (!ch) {
        close(fd);
        lm_error_set(&err, -ENOMEM, "out of memory");
        pre_failed(d, &err);
        return NULL;
    }
    if (lm_tls_server(ch, d->pre_listener, &err) < 0) {
        lm_channel_close(ch, NULL);
        pre_failed(d, &err);
        return NULL;
    }
    pthread_mutex_lock(&d->lock);
    d->pre = ch;
    bool stop = d->pre_stopping;
    pthread_mutex_unlock(&d->lock);
    d->ctx.hooks.preempt_channel(d->ctx.hooks.opaque, ch);
    uint32_t magic = 0, version = 0;
    int ret = stop ? -ECANCELED : 0;
    if (ret == 0 && (lm_channel_get_be32(ch, &magic) < 0 || lm_channel_get_be32(ch, &version) < 0)) {
        ret = lm_channel_error(ch, &err);
    } else if (ret == 0 && (magic != LM_PREEMPT_MAGIC || version != 1)) {
        ret = lm_error_set(&err, -EBADMSG, "not a postcopy preempt connection (magic 0x%08x version %u)",
                           magic, version);
    }
    lm_pc_placer *pl = &d->pre_pl;
    placer_reset(pl);
    while (ret == 0) {
        uint8_t type, hdr[14];
        if (lm_channel_get_u8(ch, &type) < 0) {
            ret = lm_channel_error(ch, &err);
            break;
        }
        if (type == LM_RAM_EOS) {
            break;
        }
        if (type != LM_RAM_PAGES && type != LM_RAM_ZERO && type != LM_RAM_LONE) {
            ret = lm_error_set(&err, -EBADMSG, "preempt channel: unknown record type 0x%02x", type);
            break;
        }
        if (lm_channel_get(ch, hdr, sizeof(hdr)) < 0) {
            ret = lm_channel_error(ch, &err);
            break;
        }
        lm_ram_block *b;
        ret = lm_ram_load_check_range(d->blocks, d->nblocks, lm_load_be16(hdr), lm_load_be64(hdr + 2),
                                      lm_load_be32(hdr + 10), &b, &err);
        if (ret == 0 && type == LM_RAM_LONE) {
            if (lm_load_be32(hdr + 10) != 1) {
                ret = lm_error_set(&err, -EBADMSG, "preempt channel: a LONE record of %u pages",
                                   lm_load_be32(hdr + 10));
            } else {
                ret = place_lone(d, pl, d->wire_of[b->idx], b, lm_load_be64(hdr + 2), LM_RAM_PAGES, ch,
                                 &err);
            }
        } else if (ret == 0) {
            ret = place_record(d, pl, type, b, lm_load_be64(hdr + 2), lm_load_be32(hdr + 10), ch, &err);
        }
    }
    if (ret < 0) {
        pre_failed(d, &err);
    }
    d->ctx.hooks.preempt_channel(d->ctx.hooks.opaque, NULL);
    pthread_mutex_lock(&d->lock);
    d->pre = NULL;
    pthread_mutex_unlock(&d->lock);
    lm_channel_close(ch, NULL);
    return NULL;
}

int lm_pc_dst_start_preempt(lm_pc_dst *d, lm_listener *l, lm_error *err)
{
    if (!d->preempt || d->pre_running) {
        return 0;
    }
    pthread_mutex_lock(&d->lock);
    d->pre_stopping = false;
    d->pre_code = 0;
    lm_error_clear(&d->pre_err);
    d->pre_listener = l;
    pthread_mutex_unlock(&d->lock);
    int rc = pthread_create(&d->pre_thread, NULL, pre_thread_fn, d);
    if (rc) {
        return lm_error_set(err, -rc, "cannot create the postcopy preempt thread");
    }
    d->pre_running = true;
    return 0;
}

void lm_pc_dst_stop_preempt(lm_pc_dst *d)
{
    if (!d->pre_running) {
        return;
    }
    pthread_mutex_lock(&d->lock);
    d->pre_stopping = true;
    if (d->pre) {
        lm_channel_shutdown(d->pre, -ECANCELED, "postcopy stopped");
    } else if (d->pre_listener) {
        lm_listener_abort(d->pre_listener);
    }
    pthread_mutex_unlock(&d->lock);
    pthread_join(d->pre_thread, NULL);
    d->pre_running = false;
    d->pre_listener = NULL;
}

int lm_pc_dst_wait_all(lm_pc_dst *d, lm_channel *main_ch, lm_error *err)
{
    /* The background stream ended: a frame held for pages that went on
     * the preempt channel instead goes in now, and the runs still queued
     * for the placers. */
    int ret = frame_flush(d, &d->main_pl, err);
    if (ret == 0 && d->pq) {
        ret = lm_pc_pq_drain(d->pq, NULL, err);
    }
    if (ret < 0) {
        return ret;
    }
    pthread_mutex_lock(&d->lock);
    while (__atomic_load_n(&d->received_pages, __ATOMIC_ACQUIRE) < d->total_pages) {
        if (d->pre_code) {
            lm_error_propagate(err, &d->pre_err);
            ret = d->pre_code;
            break;
        }
        if (lm_channel_error(main_ch, err) < 0) {
            ret = lm_channel_error(main_ch, NULL);
            break;
        }
        /* The engine's hook takes the engine's lock: not under ours. */
        pthread_mutex_unlock(&d->lock);
        bool cancel = d->ctx.hooks.cancelled(d->ctx.hooks.opaque);
        pthread_mutex_lock(&d->lock);
        if (cancel) {
            ret = lm_error_set(err, -ECANCELED, "incoming migration cancelled");
            break;
        }
        if (__atomic_load_n(&d->received_pages, __ATOMIC_ACQUIRE) >= d->total_pages ||
            d->pre_code) {
            continue; /* it came while the lock was let go: no wait */
        }
        struct timespec ts = lm_timespec_after(CLOCK_REALTIME, 50 * 1000 * 1000);
        pthread_cond_timedwait(&d->cond, &d->lock, &ts);
    }
    pthread_mutex_unlock(&d->lock);
    return ret;
}

/* ---- blocktime ---- */

void lm_pc_blocktime_begin(lm_pc_dst *d, int tid, uint32_t wi, uint64_t page)
{
    if (!d->ctx.blocktime) {
        return;
    }
    pthread_mutex_lock(&d->bt_lock);
    for (unsigned v = 0; v < d->ctx.nvcpus; v++) {
        if (d->ctx.vcpu_tids[v] == tid && !d->waits[v].active) {
            uint64_t now = lm_now_ns();
            d->waits[v] = (lm_pc_wait){ true, wi, page, now };
            if (++d->nblocked == d->ctx.nvcpus) {
                d->all_since_ns = now;
            }
            break;
        }
    }
    pthread_mutex_unlock(&d->bt_lock);
}

void lm_pc_blocktime_end(lm_pc_dst *d, uint32_t wi, uint64_t first, uint64_t n)
{
    if (!d->ctx.blocktime || __atomic_load_n(&d->nblocked, __ATOMIC_RELAXED) == 0) {
        return;
    }
    pthread_mutex_lock(&d->bt_lock);
    uint64_t now = lm_now_ns();
    for (unsigned v = 0; v < d->ctx.nvcpus; v++) {
        lm_pc_wait *w = &d->waits[v];
        if (w->active && w->block == wi && w->page >= first && w->page < first + n) {
            d->vcpu_ns[v] += now - w->start_ns;
            if (d->nblocked == d->ctx.nvcpus) {
                d->total_ns += now - d->all_since_ns;
            }
            d->nblocked--;
            w->active = false;
        }
    }
    pthread_mutex_unlock(&d->bt_lock);
}

void lm_pc_dst_blocktime(lm_pc_dst *d, lm_info *out)
{
    if (!d->ctx.blocktime) {
        return;
    }
    pthread_mutex_lock(&d->bt_lock);
    uint64_t now = lm_now_ns();
    out->has_blocktime = true;
    out->nvcpus = d->ctx.nvcpus;
    uint64_t total = d->total_ns;
    if (d->ctx.nvcpus && d->nblocked == d->ctx.nvcpus) {
        total += now - d->all_since_ns;
    }
    out->postcopy_blocktime_ms = total / 1000000ull;
    for (unsigned v = 0; v < d->ctx.nvcpus; v++) {
        uint64_t ns = d->vcpu_ns[v];
        if (d->waits[v].active) {
            ns += now - d->waits[v].start_ns;
        }
        out->vcpu_blocktime_ms[v] = ns / 1000000ull;
    }
    pthread_mutex_unlock(&d->bt_lock);
}
