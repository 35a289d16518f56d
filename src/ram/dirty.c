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

/* Hot groups (x-dirty-hot-groups): RAM is watched in groups of 512 small
 * pages (2 MiB).  A group in which at least HOT_MIN_PAGES pages were
 * written in each of two syncs in a row is "hot": the next syncs read which of its
 * pages were written without write-protecting them again, so the guest
 * stops paying a write fault per page per pass where it rewrites the same
 * memory anyway.  A page of a hot group stays reported (its write-protect
 * bit is clear) until the group is protected again, which happens to every
 * hot group each HOT_REARM_SYNCS syncs: a group that cooled down costs at
 * most that many resends of the pages written in it. */
#define HOT_GROUP_SHIFT 9
#define HOT_GROUP_PAGES (1u << HOT_GROUP_SHIFT)
#define HOT_REARM_SYNCS 8
/* Low on purpose: a write fault costs the guest ~70 us on an idle host and
 * ~1 ms on this loaded one (bench/live_dirty.py: a guest asked for 16k
 * writes/s managed ~1k), so a guest that pays them cannot write a group
 * densely between two syncs; uniform writes over all of RAM still stay
 * below it (1k writes/s spread over 512 groups per GiB). */
#define HOT_MIN_PAGES (HOT_GROUP_PAGES / 32)
/* Hot groups are for the passes far from the end: a page of a hot group is
 * reported at every sync until its group is protected again, so what
 * remains stops shrinking at about the hot groups' written pages.  Syncs in
 * a row that leave no fewer dirty pages than the fewest so far, after
 * which lm_dirty_tracker_review_hot_groups() retires them. */
#define HOT_STALL_SYNCS 2

struct hot_state {
    uint64_t ngroups;
    uint64_t *hot;     /* group left writable by the next sync */
    uint64_t *dense;   /* group was dense at the last sync */
    uint16_t *count;   /* pages written per group in this sync */
};

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
    bool protect_on_send;     /* LM_DIRTY_PROTECT_ON_SEND (uffd-wp only) */
    bool rearm_pass;          /* protect_on_send: this pass protects hot groups too */
    uint64_t *prot_from;      /* protect_on_send: per block, the window of */
    uint64_t *prot_to;        /* pages protected since the last sync */
    bool hot_groups;          /* x-dirty-hot-groups (uffd-wp only) */
    bool hot_retired;         /* retired for good by the review */
    uint64_t syncs;
    uint64_t fewest;          /* the fewest remaining since hot groups went on */
    unsigned stalls;          /* syncs in a row with no fewer than that */
    struct hot_state *hot;    /* one per block, NULL until hot_groups is on */
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
    uint16_t *count;   /* NULL, or pages written per hot group */
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
        if (c->count) {
            c->count[p >> HOT_GROUP_SHIFT]++;
        }
    }
}

static void hot_free(lm_dirty_tracker *t)
{
    if (!t->hot) {
        return;
    }
    for (size_t i = 0; i < t->nblocks; i++) {
        lm_bitmap_free(t->hot[i].hot);
        lm_bitmap_free(t->hot[i].dense);
        free(t->hot[i].count);
    }
    free(t->hot);
    t->hot = NULL;
}

static void tracker_free(lm_dirty_tracker *t)
{
    if (t->uffd >= 0) {
        close(t->uffd); /* closing unregisters every range */
    }
    if (t->pagemap >= 0) {
        close(t->pagemap);
    }
    hot_free(t);
    free(t->prot_from);
    free(t->prot_to);
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
        if (t->protect_on_send) {
            continue; /* each page is protected when it is claimed for sending */
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

#define WP_SCAN_FLAGS (PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC)

static int scan_written(lm_dirty_tracker *t, struct mark_ctx *c, uint64_t first_page,
                        uint64_t end_page, bool reprotect, lm_error *err)
{
    lm_ram_block *b = c->b;
    uint8_t *start = b->host + (first_page << b->page_shift);
    uint8_t *end = b->host + LM_MIN(end_page << b->page_shift, b->size);
    return scan_range(t, start, end, reprotect ? WP_SCAN_FLAGS : PM_SCAN_CHECK_WPASYNC,
                      PAGE_IS_WRITTEN, PAGE_IS_PRESENT | PAGE_IS_SWAPPED, PAGE_IS_WRITTEN,
                      mark_region, c, err);
}

/* Hot groups only for small-page blocks: a huge page faults once per 2 MiB
 * already. */
static bool hot_eligible(const lm_ram_block *b)
{
    return b->page_shift == 12 && b->npages >= HOT_GROUP_PAGES;
}

/* One block's sync with hot groups: runs of cold groups are read and
 * write-protected again, runs of hot groups only read; then each group's
 * density decides whether the next sync leaves it writable. */
static int uffd_sync_hot(lm_dirty_tracker *t, size_t i, struct mark_ctx *c, lm_error *err)
{
    struct hot_state *h = &t->hot[i];
    bool rearm = t->syncs % HOT_REARM_SYNCS == 0;
    t->rearm_pass = rearm;
    memset(h->count, 0, h->ngroups * sizeof(*h->count));
    c->count = h->count;
    uint64_t g = 0;
    while (g < h->ngroups) {
        bool hot = !rearm && lm_bitmap_test(h->hot, g);
        uint64_t e = hot ? lm_bitmap_next_clear(h->hot, h->ngroups, g)
                         : (rearm ? h->ngroups : lm_bitmap_next_set(h->hot, h->ngroups, g));
        int ret = scan_written(t, c, g << HOT_GROUP_SHIFT, e << HOT_GROUP_SHIFT,
                               !hot && !t->protect_on_send, err);
        if (ret < 0) {
            return ret;
        }
        g = e;
    }
    for (g = 0; g < h->ngroups; g++) {
        bool dense = h->count[g] >= HOT_MIN_PAGES;
        if (dense && lm_bitmap_test(h->dense, g)) {
            lm_bitmap_set(h->hot, g);
        } else if (rearm) {
            lm_bitmap_clear(h->hot, g);
        }
        if (dense) {
            lm_bitmap_set(h->dense, g);
        } else {
            lm_bitmap_clear(h->dense, g);
        }
    }
    return 0;
}

static int uffd_sync(lm_dirty_tracker *t, uint64_t *newly, lm_error *err)
{
    t->syncs++;
    if (t->prot_to) {
        memset(t->prot_from, 0, t->nblocks * sizeof(*t->prot_from));
        memset(t->prot_to, 0, t->nblocks * sizeof(*t->prot_to));
    }
    uint64_t remaining = 0;
    for (size_t i = 0; i < t->nblocks; i++) {
        lm_ram_block *b = t->blocks[i];
        struct mark_ctx c = { b, b->dirty, 0, NULL };
        int ret = t->hot_groups && t->hot[i].count
                      ? uffd_sync_hot(t, i, &c, err)
                      : scan_written(t, &c, 0, b->npages, !t->protect_on_send, err);
        if (ret < 0) {
            return ret;
        }
        *newly += c.newly;
        if (t->hot_groups) {
            remaining += lm_bitmap_count(b->dirty, b->npages);
        }
    }
    if (t->hot_groups) {
        if (remaining < t->fewest) {
            t->fewest = remaining;
            t->stalls = 0;
        } else {
            t->stalls++;
        }
    }
    return 0;
}

struct claim_ctx {
    lm_ram_block *b;
    uint64_t claim_p, claim_q; /* being sent now */
};

/* A page of the window written since its last protection and not being
 * sent now: its write must not be lost to the protection, so it joins the
 * pass's dirty pages (it lies ahead of the sender's cursor). */
static void requeue_written(void *opaque, uint64_t s, uint64_t e)
{
    struct claim_ctx *c = opaque;
    uint64_t base = (uint64_t)(uintptr_t)c->b->host;
    uint64_t first = (s - base) >> c->b->page_shift;
    uint64_t last = LM_MIN((e - base + c->b->page_size - 1) >> c->b->page_shift, c->b->npages);
    for (uint64_t p = first; p < last; p++) {
        if (p < c->claim_p || p >= c->claim_q) {
            lm_bitmap_set(c->b->dirty, p);
        }
    }
}

/* Write-protects the present pages of [p, q), re-queueing those written
 * that are not in the claim. */
static int protect_range(lm_dirty_tracker *t, struct claim_ctx *c, uint64_t p, uint64_t q)
{
    lm_ram_block *b = c->b;
    return scan_range(t, b->host + (p << b->page_shift),
                      b->host + LM_MIN(q << b->page_shift, b->size), WP_SCAN_FLAGS,
                      PAGE_IS_WRITTEN, PAGE_IS_PRESENT | PAGE_IS_SWAPPED, PAGE_IS_WRITTEN,
                      requeue_written, c, NULL);
}

void lm_dirty_tracker_protect(lm_dirty_tracker *t, lm_ram_block *b, uint64_t p, uint64_t q)
{
    if (!t || t->kind != TRACK_UFFD || !t->protect_on_send) {
        return;
    }
    size_t i = 0;
    while (i < t->nblocks && t->blocks[i] != b) {
        i++;
    }
    if (i == t->nblocks) {
        return;
    }
    /* One ioctl per 2 MiB window a pass claims from, not one per run: in
     * the later passes the dirty pages are scattered runs of a page or
     * two, and each ioctl flushes the TLB.  The window's other dirty pages
     * are protected a little before their own claim (a write in between
     * re-sends them next pass); a clean page of it written since its last
     * send is re-queued for this pass rather than losing that write.
     * Claims ascend within a pass; one that does not starts a new window. */
    struct claim_ctx c = { b, p, q };
    if (p >= t->prot_from[i] && q <= t->prot_to[i]) {
        return;
    }
    if (p >= t->prot_from[i] && p < t->prot_to[i]) {
        p = t->prot_to[i];
    } else {
        t->prot_from[i] = p;
    }
    q = LM_MIN((q + HOT_GROUP_PAGES - 1) & ~(uint64_t)(HOT_GROUP_PAGES - 1), b->npages);
    t->prot_to[i] = q;
    struct hot_state *h = t->hot_groups && !t->rearm_pass && t->hot[i].hot ? &t->hot[i] : NULL;
    while (p < q) {
        uint64_t e = q;
        if (h) {
            uint64_t g = p >> HOT_GROUP_SHIFT;
            if (lm_bitmap_test(h->hot, g)) {
                /* Left writable: the next sync reports its pages again. */
                p = LM_MIN(q, lm_bitmap_next_clear(h->hot, h->ngroups, g) << HOT_GROUP_SHIFT);
                continue;
            }
            e = LM_MIN(q, lm_bitmap_next_set(h->hot, h->ngroups, g) << HOT_GROUP_SHIFT);
        }
        /* A failure only costs a resend: a page left unprotected reads as
         * written at the next sync. */
        (void)protect_range(t, &c, p, e);
        p = e;
    }
}

int lm_dirty_tracker_set_hot_groups(lm_dirty_tracker *t, bool on, lm_error *err)
{
    if (t->kind != TRACK_UFFD || !on) {
        /* Only write-protect tracking faults; turning it off protects
         * every group again at the next sync. */
        if (t->hot) {
            for (size_t i = 0; i < t->nblocks; i++) {
                if (t->hot[i].hot) {
                    lm_bitmap_clear_range(t->hot[i].hot, 0, t->hot[i].ngroups);
                }
            }
        }
        t->hot_groups = false;
        return 0;
    }
    if (t->hot_retired) {
        return 0;
    }
    if (!t->hot_groups) {
        t->fewest = UINT64_MAX;
        t->stalls = 0;
    }
    if (!t->hot) {
        t->hot = calloc(t->nblocks, sizeof(*t->hot));
        if (!t->hot) {
            return lm_error_set(err, -ENOMEM, "out of memory");
        }
        for (size_t i = 0; i < t->nblocks; i++) {
            lm_ram_block *b = t->blocks[i];
            if (!hot_eligible(b)) {
                continue;
            }
            struct hot_state *h = &t->hot[i];
            h->ngroups = (b->npages + HOT_GROUP_PAGES - 1) >> HOT_GROUP_SHIFT;
            h->hot = lm_bitmap_new(h->ngroups);
            h->dense = lm_bitmap_new(h->ngroups);
            h->count = calloc(h->ngroups, sizeof(*h->count));
            if (!h->hot || !h->dense || !h->count) {
                hot_free(t);
                return lm_error_set(err, -ENOMEM, "out of memory");
            }
        }
    }
    t->hot_groups = true;
    return 0;
}

bool lm_dirty_tracker_review_hot_groups(lm_dirty_tracker *t, bool throttled)
{
    if (!t->hot_groups) {
        return false;
    }
    if (!throttled && t->stalls < HOT_STALL_SYNCS) {
        return false;
    }
    lm_dirty_tracker_set_hot_groups(t, false, NULL);
    t->hot_retired = true;
    return true;
}

uint64_t lm_dirty_tracker_hot_pages(const lm_dirty_tracker *t)
{
    uint64_t n = 0;
    for (size_t i = 0; t->hot && i < t->nblocks; i++) {
        const struct hot_state *h = &t->hot[i];
        for (uint64_t g = 0; h->hot && g < h->ngroups; g++) {
            n += lm_bitmap_test(h->hot, g) ? HOT_GROUP_PAGES : 0;
        }
    }
    return n;
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
    struct mark_ctx c = { b, map, 0, NULL };
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

static int tracker_start(enum lm_dirty_tracker_kind kind, lm_ram_block **blocks, size_t nblocks,
                         unsigned flags, lm_dirty_tracker **out, lm_error *err)
{
    if (kind == LM_DIRTY_TRACKER_DIRTY_LOG) {
        if (!any_dirty_log(blocks, nblocks)) {
            return lm_error_set(err, -EINVAL, "x-dirty-tracker 'dirty-log': no RAM block has a "
                                "dirty log (lm_ram_set_dirty_log)");
        }
        *out = tracker_alloc(TRACK_DIRTY_LOG, blocks, nblocks);
        return *out ? 0 : lm_error_set(err, -ENOMEM, "out of memory");
    }
    bool want_uffd = kind == LM_DIRTY_TRACKER_UFFD_WP || kind == LM_DIRTY_TRACKER_AUTO;
    if (!want_uffd && kind != LM_DIRTY_TRACKER_MANUAL) {
        return lm_error_set(err, -EINVAL, "unknown dirty tracker %d", (int)kind);
    }
    if (want_uffd) {
        lm_error probe = LM_ERROR_INIT;
        lm_dirty_tracker *t = tracker_alloc(TRACK_UFFD, blocks, nblocks);
        if (!t) {
            return lm_error_set(err, -ENOMEM, "out of memory");
        }
        t->protect_on_send = flags & LM_DIRTY_PROTECT_ON_SEND;
        if (t->protect_on_send) {
            t->prot_from = calloc(nblocks, sizeof(*t->prot_from));
            t->prot_to = calloc(nblocks, sizeof(*t->prot_to));
            if (!t->prot_from || !t->prot_to) {
                tracker_free(t);
                return lm_error_set(err, -ENOMEM, "out of memory");
            }
        }
        int ret = uffd_start(t, &probe);
        if (ret == 0) {
            *out = t;
            return 0;
        }
        tracker_free(t);
        if (kind != LM_DIRTY_TRACKER_AUTO) {
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

int lm_dirty_tracker_start(enum lm_dirty_tracker_kind kind, lm_ram_block **blocks, size_t nblocks,
                           lm_dirty_tracker **out, lm_error *err)
{
    return lm_dirty_tracker_start_flags(kind, blocks, nblocks, 0, out, err);
}

int lm_dirty_tracker_start_flags(enum lm_dirty_tracker_kind kind, lm_ram_block **blocks,
                                 size_t nblocks, unsigned flags, lm_dirty_tracker **out, lm_error *err)
{
    int ret = tracker_start(kind, blocks, nblocks, flags, out, err);
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
