#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/bitmap.h"
#include "common/util.h"
#include "ram/dirty.h"
#include "ram/uffd_compat.h"

#define SCAN_VEC_LEN 4096

/* TRACK_DIRTY_LOG: only the embedders' pull-style logs; every kind also
 * pulls them from the blocks that have one. */
enum tracker_kind { TRACK_UFFD, TRACK_MANUAL, TRACK_DIRTY_LOG };

struct lm_dirty_tracker {
    enum tracker_kind kind;
    lm_ram_block **blocks;
    size_t nblocks;
    int uffd;
    int pagemap;
    struct page_region *vec;
};

/* ---- userfaultfd write-protect (async) + PAGEMAP_SCAN ---- */

static int open_uffd(uint64_t features, uint64_t *got, lm_error *err)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0 && errno == EPERM) {
        /* Unprivileged: user-mode-only faults are enough for write tracking. */
        fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    }
    if (fd < 0) {
        return lm_error_set_errno(err, -errno, "userfaultfd() is not available");
    }
    struct uffdio_api api = { .api = UFFD_API, .features = features };
    if (ioctl(fd, UFFDIO_API, &api) < 0) {
        int code = -errno;
        close(fd);
        return lm_error_set_errno(err, code,
                                  "userfaultfd: the kernel lacks a feature (asked 0x%llx)",
                                  (unsigned long long)features);
    }
    if (got) {
        *got = api.features;
    }
    return fd;
}

/* One PAGEMAP_SCAN over [start, end); calls fn for each returned region.
 * The kernel stops when vec is full; walk_end says where to resume. */
static int scan_range(lm_dirty_tracker *t, uint8_t *start, uint8_t *end, uint64_t flags,
                      uint64_t mask, uint64_t anyof, uint64_t ret_mask,
                      void (*fn)(void *ctx, uint64_t s, uint64_t e), void *ctx, lm_error *err)
{
    uint64_t pos = (uint64_t)(uintptr_t)start, stop = (uint64_t)(uintptr_t)end;
    while (pos < stop) {
        struct pm_scan_arg arg = {
            .size = sizeof(arg),
            .flags = flags,
            .start = pos,
            .end = stop,
            .vec = (uint64_t)(uintptr_t)t->vec,
            .vec_len = SCAN_VEC_LEN,
            .category_mask = mask,
            .category_anyof_mask = anyof,
            .return_mask = ret_mask,
        };
        long n = ioctl(t->pagemap, PAGEMAP_SCAN, &arg);
        if (n < 0) {
            return lm_error_set_errno(err, -errno, "PAGEMAP_SCAN");
        }
        for (long i = 0; i < n && fn; i++) {
            fn(ctx, t->vec[i].start, t->vec[i].end);
        }
        if (arg.walk_end <= pos) {
            break; /* no progress: should not happen */
        }
        pos = arg.walk_end;
    }
    return 0;
}

struct mark_ctx {
    lm_ram_block *b;
    uint64_t *map;
    uint64_t newly;
};

static void mark_region(void *opaque, uint64_t s, uint64_t e)
{
    struct mark_ctx *c = opaque;
    uint64_t base = (uint64_t)(uintptr_t)c->b->host;
    uint64_t first = (s - base) >> c->b->page_shift;
    uint64_t last = (e - base + c->b->page_size - 1) >> c->b->page_shift;
    if (last > c->b->npages) {
        last = c->b->npages;
    }
    for (uint64_t p = first; p < last; p++) {
        if (!lm_bitmap_test(c->map, p)) {
            lm_bitmap_set(c->map, p);
            c->newly++;
        }
    }
}

static void tracker_free(lm_dirty_tracker *t)
{
    if (t->uffd >= 0) {
        close(t->uffd); /* closing unregisters every range */
    }
    if (t->pagemap >= 0) {
        close(t->pagemap);
    }
    free(t->vec);
    free(t);
}

static lm_dirty_tracker *tracker_alloc(enum tracker_kind kind, lm_ram_block **blocks, size_t n)
{
    lm_dirty_tracker *t = calloc(1, sizeof(*t));
    if (!t) {
        return NULL;
    }
    t->kind = kind;
    t->blocks = blocks;
    t->nblocks = n;
    t->uffd = t->pagemap = -1;
    return t;
}

static int open_pagemap(lm_dirty_tracker *t, lm_error *err)
{
    t->pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (t->pagemap < 0) {
        return lm_error_set_errno(err, -errno, "cannot open /proc/self/pagemap");
    }
    t->vec = calloc(SCAN_VEC_LEN, sizeof(*t->vec));
    return t->vec ? 0 : lm_error_set(err, -ENOMEM, "out of memory");
}

int lm_uffd_wp_async_probe(lm_error *err)
{
    uint64_t need = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
    int fd = open_uffd(need, NULL, err);
    if (fd < 0) {
        return fd;
    }
    close(fd);
    int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (pm < 0) {
        return lm_error_set_errno(err, -errno, "cannot open /proc/self/pagemap");
    }
    struct pm_scan_arg arg = { .size = sizeof(arg), .start = 0, .end = 0 };
    long r = ioctl(pm, PAGEMAP_SCAN, &arg);
    int code = r < 0 ? -errno : 0;
    close(pm);
    if (code == -ENOTTY || code == -EOPNOTSUPP) {
        return lm_error_set(err, code, "the kernel lacks the PAGEMAP_SCAN ioctl (Linux >= 6.7)");
    }
    return 0;
}

static int uffd_start(lm_dirty_tracker *t, lm_error *err)
{
    uint64_t features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
    for (size_t i = 0; i < t->nblocks; i++) {
        if (t->blocks[i]->flags & (LM_RAM_SHARED | LM_RAM_HUGETLB)) {
            features |= UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
        }
    }
    int fd = open_uffd(features, NULL, err);
    if (fd < 0) {
        return fd;
    }
    t->uffd = fd;
    int ret = open_pagemap(t, err);
    if (ret < 0) {
        return ret;
    }
    for (size_t i = 0; i < t->nblocks; i++) {
        lm_ram_block *b = t->blocks[i];
        struct uffdio_register reg = {
            .range = { (uint64_t)(uintptr_t)b->host, b->size },
            .mode = UFFDIO_REGISTER_MODE_WP,
        };
        if (ioctl(fd, UFFDIO_REGISTER, &reg) < 0) {
            return lm_error_set_errno(err, -errno, "userfaultfd: cannot write-protect block '%s'",
                                      b->name);
        }
        /* Arm: write-protect every page that has a page-table entry
         * (get-and-reprotect with no output needed).  Holes are left
         * alone: arming one would allocate page tables and a marker per
         * never-touched page (8 MiB and ~50 ms for an empty 4 GiB guest),
         * and the first write to a hole creates an entry without the
         * write-protect bit, which sync reports as written anyway. */
        ret = scan_range(t, b->host, b->host + b->size, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                         PAGE_IS_WRITTEN, PAGE_IS_PRESENT | PAGE_IS_SWAPPED, PAGE_IS_WRITTEN,
                         NULL, NULL, err);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

static int uffd_sync(lm_dirty_tracker *t, uint64_t *newly, lm_error *err)
{
    for (size_t i = 0; i < t->nblocks; i++) {
        lm_ram_block *b = t->blocks[i];
        struct mark_ctx c = { b, b->dirty, 0 };
        int ret = scan_range(t, b->host, b->host + b->size,
                             PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, PAGE_IS_WRITTEN,
                             PAGE_IS_PRESENT | PAGE_IS_SWAPPED, PAGE_IS_WRITTEN, mark_region, &c,
                             err);
        if (ret < 0) {
            return ret;
        }
        *newly += c.newly;
    }
    return 0;
}

/* Sets in map the pages of a file-backed block that hold file data;
 * holes read as zero.  A file system without SEEK_DATA reports all data. */
static int mark_file_data(const lm_ram_block *b, uint64_t *map)
{
    off_t start = (off_t)b->fd_offset, end = start + (off_t)b->size, pos = start;
    while (pos < end) {
        off_t data = lseek(b->fd, pos, SEEK_DATA);
        if (data < 0 && errno == ENXIO) {
            break; /* only holes from pos to the end of the file */
        }
        if (data < 0) {
            return -errno;
        }
        if (data >= end) {
            break;
        }
        off_t hole = lseek(b->fd, data, SEEK_HOLE);
        if (hole < 0) {
            return -errno;
        }
        hole = LM_MIN(hole, end);
        uint64_t first = (uint64_t)(data - start) >> b->page_shift;
        uint64_t last = ((uint64_t)(hole - start) + b->page_size - 1) >> b->page_shift;
        lm_bitmap_set_range(map, first, last - first);
        pos = hole;
    }
    return 0;
}

/* The pages of b that may hold data: file data for a file-backed block,
 * present (or swapped) pages for private memory. */
static int mark_populated(lm_dirty_tracker *t, lm_ram_block *b, uint64_t *map, lm_error *err)
{
    if (lm_ram_block_has_fd(b)) {
        int ret = mark_file_data(b, map);
        return ret < 0 ? lm_error_set_errno(err, ret, "RAM block '%s': SEEK_DATA on its file", b->name)
                       : 0;
    }
    struct mark_ctx c = { b, map, 0 };
    return scan_range(t, b->host, b->host + b->size, 0, 0,
                      PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_PFNZERO,
                      PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_PFNZERO, mark_region, &c, err);
}

int lm_ram_find_unpopulated(lm_ram_block **blocks, size_t nblocks)
{
    lm_dirty_tracker *t = tracker_alloc(TRACK_MANUAL, blocks, nblocks);
    if (!t || open_pagemap(t, NULL) < 0) {
        if (t) {
            tracker_free(t);
        }
        return 0;
    }
    for (size_t i = 0; i < nblocks; i++) {
        lm_ram_block *b = blocks[i];
        if (!lm_ram_block_is_private(b) && !lm_ram_block_has_fd(b)) {
            continue; /* shared memory: absent here may still hold data */
        }
        /* Collect the populated pages, then invert. */
        uint64_t *populated = lm_bitmap_new(b->npages);
        if (!populated) {
            continue;
        }
        if (mark_populated(t, b, populated, NULL) == 0) {
            for (uint64_t w = 0; w < LM_BITMAP_WORDS(b->npages); w++) {
                b->unpopulated[w] = ~populated[w];
            }
            if (b->npages % 64) {
                b->unpopulated[b->npages / 64] &= (1ull << (b->npages % 64)) - 1;
            }
        }
        lm_bitmap_free(populated);
    }
    tracker_free(t);
    return 0;
}

/* Pages sent as zero on the "never populated" hint that are present now
 * were written after all: queue them again.  This does not rely on the
 * write tracker having seen the first touch of a never-populated page, and
 * the last call, made with the guest stopped, sees every such write. */
int lm_ram_requeue_populated(lm_ram_block **blocks, size_t nblocks, uint64_t *requeued,
                             lm_error *err)
{
    *requeued = 0;
    lm_dirty_tracker *t = NULL;
    for (size_t i = 0; i < nblocks; i++) {
        lm_ram_block *b = blocks[i];
        if (!b->zero_unread ||
            lm_bitmap_next_set(b->zero_unread, b->npages, 0) >= b->npages) {
            continue;
        }
        if (!t) {
            t = tracker_alloc(TRACK_MANUAL, blocks, nblocks);
            if (!t) {
                return lm_error_set(err, -ENOMEM, "out of memory");
            }
            int ret = open_pagemap(t, err);
            if (ret < 0) {
                tracker_free(t);
                return ret;
            }
        }
        uint64_t *present = lm_bitmap_new(b->npages);
        if (!present) {
            tracker_free(t);
            return lm_error_set(err, -ENOMEM, "out of memory");
        }
        int ret = mark_populated(t, b, present, err);
        if (ret < 0) {
            lm_bitmap_free(present);
            tracker_free(t);
            return ret;
        }
        for (uint64_t w = 0; w < LM_BITMAP_WORDS(b->npages); w++) {
            uint64_t again = b->zero_unread[w] & present[w];
            if (again) {
                b->zero_unread[w] &= ~again;
                *requeued += (uint64_t)__builtin_popcountll(again & ~b->dirty[w]);
                b->dirty[w] |= again;
            }
        }
        lm_bitmap_free(present);
    }
    if (t) {
        tracker_free(t);
    }
    return 0;
}

/* ---- manual ---- */

static void set_reporting(lm_dirty_tracker *t, int on)
{
    for (size_t i = 0; i < t->nblocks; i++) {
        __atomic_store_n(&t->blocks[i]->reporting, on, __ATOMIC_RELEASE);
    }
}

static int manual_sync(lm_dirty_tracker *t, uint64_t *newly)
{
    for (size_t i = 0; i < t->nblocks; i++) {
        lm_ram_block *b = t->blocks[i];
        *newly += lm_bitmap_drain_into(b->dirty, b->manual, b->npages);
    }
    return 0;
}

/* ---- the embedder's pull-style dirty logs ---- */

static void dirty_logs_stop(lm_dirty_tracker *t)
{
    for (size_t i = 0; i < t->nblocks; i++) {
        lm_ram_block *b = t->blocks[i];
        if (b->dlog_active) {
            if (b->dlog_ops->stop) {
                b->dlog_ops->stop(b->dlog_opaque, b);
            }
            b->dlog_active = false;
        }
    }
}

static int dirty_logs_start(lm_dirty_tracker *t, lm_error *err)
{
    for (size_t i = 0; i < t->nblocks; i++) {
        lm_ram_block *b = t->blocks[i];
        if (!b->dlog_ops) {
            continue;
        }
        int ret = b->dlog_ops->start ? b->dlog_ops->start(b->dlog_opaque, b) : 0;
        if (ret < 0) {
            dirty_logs_stop(t);
            return lm_error_set_errno(err, ret, "RAM block '%s': the dirty log did not start",
                                      b->name);
        }
        b->dlog_active = true;
    }
    return 0;
}

static int dirty_logs_sync(lm_dirty_tracker *t, uint64_t *newly, lm_error *err)
{
    for (size_t i = 0; i < t->nblocks; i++) {
        lm_ram_block *b = t->blocks[i];
        if (!b->dlog_active) {
            continue;
        }
        uint64_t *log = lm_bitmap_new(b->npages);
        if (!log) {
            return lm_error_set(err, -ENOMEM, "out of memory");
        }
        int ret = b->dlog_ops->sync(b->dlog_opaque, b, log, b->npages);
        if (ret < 0) {
            lm_bitmap_free(log);
            return lm_error_set_errno(err, ret, "RAM block '%s': the dirty log sync failed",
                                      b->name);
        }
        if (b->npages % 64) {
            /* Bits past the block's end are the embedder's slip: ignore. */
            log[b->npages / 64] &= (1ull << (b->npages % 64)) - 1;
        }
        for (uint64_t w = 0; w < LM_BITMAP_WORDS(b->npages); w++) {
            *newly += (uint64_t)__builtin_popcountll(log[w] & ~b->dirty[w]);
            b->dirty[w] |= log[w];
        }
        lm_bitmap_free(log);
    }
    return 0;
}

static bool any_dirty_log(lm_ram_block **blocks, size_t nblocks)
{
    for (size_t i = 0; i < nblocks; i++) {
        if (blocks[i]->dlog_ops) {
            return true;
        }
    }
    return false;
}

/* ---- interface ---- */

static int tracker_start(const char *kind, lm_ram_block **blocks, size_t nblocks,
                         lm_dirty_tracker **out, lm_error *err)
{
    if (!strcmp(kind, "dirty-log")) {
        if (!any_dirty_log(blocks, nblocks)) {
            return lm_error_set(err, -EINVAL, "x-dirty-tracker 'dirty-log': no RAM block has a "
                                "dirty log (lm_ram_set_dirty_log)");
        }
        *out = tracker_alloc(TRACK_DIRTY_LOG, blocks, nblocks);
        return *out ? 0 : lm_error_set(err, -ENOMEM, "out of memory");
    }
    bool want_uffd = !strcmp(kind, "uffd-wp") || !strcmp(kind, "auto");
    if (!want_uffd && strcmp(kind, "manual")) {
        return lm_error_set(err, -EINVAL, "unknown dirty tracker '%s'", kind);
    }
    if (want_uffd) {
        lm_error probe = LM_ERROR_INIT;
        lm_dirty_tracker *t = tracker_alloc(TRACK_UFFD, blocks, nblocks);
        if (!t) {
            return lm_error_set(err, -ENOMEM, "out of memory");
        }
        int ret = uffd_start(t, &probe);
        if (ret == 0) {
            *out = t;
            return 0;
        }
        tracker_free(t);
        if (strcmp(kind, "auto")) {
            lm_error_propagate(err, &probe);
            return ret;
        }
        lm_warn("dirty tracking: userfaultfd write-protect unavailable (%s); using manual tracking",
                probe.msg);
    }
    lm_dirty_tracker *t = tracker_alloc(TRACK_MANUAL, blocks, nblocks);
    if (!t) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < nblocks; i++) {
        lm_bitmap_clear_range(blocks[i]->manual, 0, blocks[i]->npages);
    }
    set_reporting(t, 1);
    *out = t;
    return 0;
}

int lm_dirty_tracker_start(const char *kind, lm_ram_block **blocks, size_t nblocks,
                           lm_dirty_tracker **out, lm_error *err)
{
    int ret = tracker_start(kind, blocks, nblocks, out, err);
    if (ret < 0) {
        return ret;
    }
    ret = dirty_logs_start(*out, err);
    if (ret < 0) {
        lm_dirty_tracker_stop(*out);
        *out = NULL;
    }
    return ret;
}

int lm_dirty_tracker_sync(lm_dirty_tracker *t, uint64_t *newly, lm_error *err)
{
    *newly = 0;
    int ret = t->kind == TRACK_UFFD     ? uffd_sync(t, newly, err)
              : t->kind == TRACK_MANUAL ? manual_sync(t, newly)
                                        : 0;
    return ret < 0 ? ret : dirty_logs_sync(t, newly, err);
}

void lm_dirty_tracker_stop(lm_dirty_tracker *t)
{
    if (!t) {
        return;
    }
    if (t->kind == TRACK_MANUAL) {
        set_reporting(t, 0);
    }
    dirty_logs_stop(t);
    tracker_free(t);
}

const char *lm_dirty_tracker_name(const lm_dirty_tracker *t)
{
    bool logs = any_dirty_log(t->blocks, t->nblocks);
    switch (t->kind) {
    case TRACK_UFFD:
        return logs ? "uffd-wp-async+dirty-log" : "uffd-wp-async";
    case TRACK_MANUAL:
        return logs ? "manual+dirty-log" : "manual";
    case TRACK_DIRTY_LOG:
        break;
    }
    return "dirty-log";
}
