#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/abi.h"
#include "common/bitmap.h"
#include "common/clock.h"
#include "core/dirtylimit.h"
#include "core/dirtyrate.h"
#include "core/engine_internal.h"
#include "ram/dirty.h"
#include "ram/ramblock.h"

/* QEMU's bounds on calc-time (migration/dirtyrate.h, in milliseconds). */
#define CALC_TIME_MIN_MS 50u
#define CALC_TIME_MAX_MS 60000u
#define SAMPLE_PAGES_DEFAULT 512u
#define SAMPLE_PAGES_MIN 128u
#define SAMPLE_PAGES_MAX 4096u

/* Owned by the engine (e->dirtyrate), guarded by e->lock except `info`'s
 * per-block part, which only the measuring thread writes while status is
 * MEASURING and nobody reads until it is MEASURED. */
struct lm_dirtyrate {
    pthread_t thread;
    bool thread_started;
    bool stop;              /* lm_dirtyrate_free: end the wait early */
    pthread_cond_t cond;    /* CLOCK_MONOTONIC: wakes the wait on stop */
    enum lm_dirty_tracker_kind tracker_kind; /* x-dirty-tracker when the measurement began */
    lm_dirtyrate_info info;
};

bool lm_dirtyrate_busy(lm_engine *e)
{
    return e->dirtyrate && e->dirtyrate->info.status == LM_DIRTYRATE_MEASURING;
}

static uint64_t mib_per_s(uint64_t bytes, uint64_t ns)
{
    if (ns == 0) {
        return 0;
    }
    /* bytes * 1e9 / ns / 2^20, without overflowing for any realistic RAM. */
    return (uint64_t)((double)bytes * 1e9 / (double)ns / (double)(1u << 20));
}

/* Waits until `deadline_ns` (monotonic) or a stop request.  Caller holds
 * e->lock. */
static void wait_until(lm_engine *e, struct lm_dirtyrate *d, uint64_t deadline_ns)
{
    while (!d->stop) {
        uint64_t now = lm_now_ns();
        if (now >= deadline_ns) {
            return;
        }
        struct timespec ts = lm_timespec_after(CLOCK_MONOTONIC, deadline_ns - now);
        pthread_cond_timedwait(&d->cond, &e->lock, &ts);
    }
}

/* One window: start the tracker, wait, sync, count.  Fills d->info's
 * result fields; returns 0 or a negative errno with err filled. */
static int measure(lm_engine *e, struct lm_dirtyrate *d, lm_ram_block **blocks, size_t n,
                   lm_error *err)
{
    for (size_t i = 0; i < n; i++) {
        int ret = lm_ram_block_prepare_source(blocks[i], err);
        if (ret < 0) {
            return ret;
        }
    }
    /* Arming and the final sync walk the blocks page by page: a write
     * during either counts or not depending on where the walk was, so the
     * window runs from the middle of one to the middle of the other. */
    lm_dirty_tracker *t;
    uint64_t arm = lm_now_ns();
    int ret = lm_dirty_tracker_start(d->tracker_kind, blocks, n, &t, err);
    if (ret < 0) {
        return ret;
    }
    uint64_t armed = lm_now_ns();
    uint64_t start = arm + (armed - arm) / 2;
    /* The vCPUs' own counts over the same window (outside every lock: the
     * embedder's callbacks). */
    uint64_t vcpu0[LM_MAX_VCPUS], vcpu1[LM_MAX_VCPUS];
    unsigned nv = lm_dirtylimit_counters(e, vcpu0, LM_MAX_VCPUS);

    pthread_mutex_lock(&e->lock);
    snprintf(d->info.tracker, sizeof(d->info.tracker), "%s", lm_dirty_tracker_name(t));
    wait_until(e, d, armed + d->info.calc_time_ms * 1000000u);
    bool stopped = d->stop;
    pthread_mutex_unlock(&e->lock);

    /* Only what the tracker saw: it reports first touches of holes too (the
     * new entry lacks the write-protect bit; the manual and log kinds hear
     * of every write).  The migration's extra "turned up populated" check
     * would count whole transparent huge pages that one write populated. */
    uint64_t newly, sync = lm_now_ns();
    ret = lm_dirty_tracker_sync(t, &newly, err);
    uint64_t synced = lm_now_ns();
    uint64_t end = sync + (synced - sync) / 2, elapsed = end - start;
    nv = nv ? lm_dirtylimit_counters(e, vcpu1, nv) : 0;
    lm_dirty_tracker_stop(t);
    if (ret < 0) {
        return ret;
    }
    if (stopped) {
        return lm_error_set(err, -ECANCELED, "the measurement was stopped");
    }

    uint64_t total_bytes = 0, total_pages = 0;
    for (size_t i = 0; i < n && i < LM_DIRTYRATE_MAX_BLOCKS; i++) {
        lm_dirtyrate_block *r = &d->info.blocks[i];
        uint64_t pages = lm_bitmap_count(blocks[i]->dirty, blocks[i]->npages);
        snprintf(r->name, sizeof(r->name), "%s", blocks[i]->name);
        r->dirty_pages = pages;
        r->dirty_rate = mib_per_s(pages * blocks[i]->page_size, elapsed);
        total_pages += pages;
        total_bytes += pages * blocks[i]->page_size;
    }
    pthread_mutex_lock(&e->lock);
    d->info.nblocks = n < LM_DIRTYRATE_MAX_BLOCKS ? n : LM_DIRTYRATE_MAX_BLOCKS;
    d->info.dirty_pages = total_pages;
    d->info.dirty_rate = mib_per_s(total_bytes, elapsed);
    /* As QEMU: once measured, calc-time is the time actually measured. */
    d->info.calc_time_ms = (elapsed + 500000u) / 1000000u;
    d->info.window_start_ns = start;
    d->info.window_end_ns = end;
    d->info.has_rate = true;
    d->info.nvcpus = nv;
    uint32_t page = n ? blocks[0]->page_size : 4096;
    for (unsigned i = 0; i < nv; i++) {
        uint64_t pages = vcpu1[i] >= vcpu0[i] ? vcpu1[i] - vcpu0[i] : 0;
        d->info.vcpus[i].dirty_pages = pages;
        d->info.vcpus[i].dirty_rate = mib_per_s(pages * page, elapsed);
    }
    pthread_mutex_unlock(&e->lock);
    return 0;
}

static void *measure_thread(void *arg)
{
    lm_engine *e = arg;
    /* A migration that ended may still be tearing down on its thread (its
     * tracker, its bitmaps): wait for it; begin() refuses new ones now. */
    lm_engine_join_thread(e);

    pthread_mutex_lock(&e->lock);
    struct lm_dirtyrate *d = e->dirtyrate;
    lm_ram_block *blocks[LM_DIRTYRATE_MAX_BLOCKS];
    size_t n = e->nblocks < LM_DIRTYRATE_MAX_BLOCKS ? e->nblocks : LM_DIRTYRATE_MAX_BLOCKS;
    memcpy(blocks, e->blocks, n * sizeof(blocks[0]));
    pthread_mutex_unlock(&e->lock);

    lm_error err = LM_ERROR_INIT;
    int ret = measure(e, d, blocks, n, &err);
    /* The source bitmaps were ours for the window; a migration makes its own. */
    for (size_t i = 0; i < n; i++) {
        lm_bitmap_free(blocks[i]->dirty);
        lm_bitmap_free(blocks[i]->unpopulated);
        lm_bitmap_free(blocks[i]->zero_unread);
        blocks[i]->dirty = blocks[i]->unpopulated = blocks[i]->zero_unread = NULL;
    }

    pthread_mutex_lock(&e->lock);
    if (ret < 0) {
        snprintf(d->info.error, sizeof(d->info.error), "%s", err.msg);
    }
    d->info.status = LM_DIRTYRATE_MEASURED;
    pthread_mutex_unlock(&e->lock);
    return NULL;
}

static struct lm_dirtyrate *state_new(void)
{
    struct lm_dirtyrate *d = calloc(1, sizeof(*d));
    if (!d) {
        return NULL;
    }
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int ret = pthread_cond_init(&d->cond, &attr);
    pthread_condattr_destroy(&attr);
    if (ret != 0) {
        free(d);
        return NULL;
    }
    return d;
}

static int check_mode(const char *mode, lm_error *err)
{
    if (strcmp(mode, "dirty-bitmap") == 0) {
        return 0;
    }
    if (strcmp(mode, "page-sampling") == 0) {
        return lm_error_set(err, -ENOTSUP,
                            "mode page-sampling is not supported: livemig measures with its "
                            "dirty tracker, use mode dirty-bitmap");
    }
    if (strcmp(mode, "dirty-ring") == 0) {
        return lm_error_set(err, -ENOTSUP, "mode dirty-ring is not supported: livemig has no "
                                           "per-vCPU dirty ring, use mode dirty-bitmap");
    }
    return lm_error_set(err, -EINVAL, "mode '%s': expected page-sampling, dirty-bitmap or "
                                      "dirty-ring", mode);
}

int lm_engine_calc_dirty_rate(lm_engine *e, uint64_t calc_time_ms, const char *mode,
                              uint64_t sample_pages, lm_error *err)
{
    if (!mode) {
        mode = "dirty-bitmap";
    }
    int ret = check_mode(mode, err);
    if (ret < 0) {
        return ret;
    }
    if (calc_time_ms < CALC_TIME_MIN_MS || calc_time_ms > CALC_TIME_MAX_MS) {
        return lm_error_set(err, -EINVAL, "calc-time is out of range [%u, %u] ms",
                            CALC_TIME_MIN_MS, CALC_TIME_MAX_MS);
    }
    if (sample_pages == 0) {
        sample_pages = SAMPLE_PAGES_DEFAULT;
    } else if (sample_pages < SAMPLE_PAGES_MIN || sample_pages > SAMPLE_PAGES_MAX) {
        return lm_error_set(err, -EINVAL, "sample-pages is out of range [%u, %u]",
                            SAMPLE_PAGES_MIN, SAMPLE_PAGES_MAX);
    }

    pthread_mutex_lock(&e->lock);
    if (lm_dirtyrate_busy(e)) {
        pthread_mutex_unlock(&e->lock);
        return lm_error_set(err, -EBUSY, "the dirty rate is already being measured");
    }
    if (lm_state_is_active(e->status)) {
        pthread_mutex_unlock(&e->lock);
        return lm_error_set(err, -EBUSY, "a migration is in progress: its dirty tracker is "
                                         "busy; query-migrate reports its dirty rate");
    }
    if (e->nblocks == 0) {
        pthread_mutex_unlock(&e->lock);
        return lm_error_set(err, -EINVAL, "no guest RAM registered");
    }
    if (!e->dirtyrate) {
        e->dirtyrate = state_new();
        if (!e->dirtyrate) {
            pthread_mutex_unlock(&e->lock);
            return lm_error_set(err, -ENOMEM, "out of memory");
        }
    }
    struct lm_dirtyrate *d = e->dirtyrate;
    /* Taken now, so that neither another calc nor a migration gets in
     * while the last measurement's thread is joined below. */
    d->info.status = LM_DIRTYRATE_MEASURING;
    bool joinable = d->thread_started;
    d->thread_started = false;
    pthread_mutex_unlock(&e->lock);
    if (joinable) {
        pthread_join(d->thread, NULL); /* the last one, finished already */
    }

    pthread_mutex_lock(&e->lock);
    memset(&d->info, 0, sizeof(d->info));
    d->info.status = LM_DIRTYRATE_MEASURING;
    d->info.start_time = (int64_t)time(NULL);
    d->info.calc_time_ms = calc_time_ms;
    snprintf(d->info.mode, sizeof(d->info.mode), "%s", mode);
    d->info.sample_pages = sample_pages;
    d->tracker_kind = e->params.x_dirty_tracker;
    d->stop = false;
    ret = pthread_create(&d->thread, NULL, measure_thread, e);
    if (ret != 0) {
        d->info.status = LM_DIRTYRATE_UNSTARTED;
        pthread_mutex_unlock(&e->lock);
        return lm_error_set_errno(err, -ret, "cannot start the measuring thread");
    }
    d->thread_started = true;
    pthread_mutex_unlock(&e->lock);
    return 0;
}

void lm_engine_query_dirty_rate(lm_engine *e, lm_dirtyrate_info *out)
{
    size_t n = lm_abi_size(out->struct_size, LM_ABI_END(lm_dirtyrate_info, blocks),
                           sizeof(lm_dirtyrate_info));
    lm_dirtyrate_info *all = calloc(1, sizeof(*all));
    if (!all) {
        memset(out, 0, n);
        out->struct_size = 0;
        return;
    }
    pthread_mutex_lock(&e->lock);
    if (e->dirtyrate) {
        *all = e->dirtyrate->info;
    } else {
        all->status = LM_DIRTYRATE_UNSTARTED;
        snprintf(all->mode, sizeof(all->mode), "dirty-bitmap");
        all->sample_pages = SAMPLE_PAGES_DEFAULT;
    }
    pthread_mutex_unlock(&e->lock);
    memcpy(out, all, n);
    out->struct_size = n;
    free(all);
}

void lm_dirtyrate_free(lm_engine *e)
{
    pthread_mutex_lock(&e->lock);
    struct lm_dirtyrate *d = e->dirtyrate;
    if (d) {
        d->stop = true;
        pthread_cond_broadcast(&d->cond);
    }
    pthread_mutex_unlock(&e->lock);
    if (!d) {
        return;
    }
    if (d->thread_started) {
        pthread_join(d->thread, NULL);
    }
    pthread_mutex_lock(&e->lock);
    e->dirtyrate = NULL;
    pthread_mutex_unlock(&e->lock);
    pthread_cond_destroy(&d->cond);
    free(d);
}
