#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/util.h"
#include "core/dirtylimit.h"
#include "core/engine_internal.h"
#include "ram/ramblock.h"

/* The throttle never stops a vCPU completely: it must still reach the
 * points where it parks for a switchover. */
#define MAX_THROTTLE 99
/* One period moves a vCPU's share of run time by at most this factor, so
 * that a noisy sample (a descheduled vCPU) does not swing it far. */
#define MAX_STEP 4.0

typedef struct dl_vcpu {
    uint64_t limit;      /* MiB/s, 0: none */
    bool by_migration;   /* set by a dirty-limit migration */
    uint64_t last_pages;
    uint64_t last_ns;
    uint64_t rate;       /* bytes/s over the last period */
    double run;          /* share of time the controller lets it run */
    int pct;             /* throttle asked of the embedder */
} dl_vcpu;

struct lm_dirtylimit {
    pthread_mutex_t lock;
    pthread_cond_t cond; /* CLOCK_MONOTONIC: wakes the controller */
    const lm_vcpu_ops *ops;
    void *opaque;
    unsigned n;
    uint32_t page_size;
    pthread_mutex_t ctl; /* serialises starting and joining the controller */
    bool thread_started;
    bool exited;         /* the controller left its loop: join it */
    bool quit;
    bool migration_owned;
    uint64_t period_ms;  /* the last one the controller used */
    pthread_t thread;
    dl_vcpu v[LM_MAX_VCPUS];
};

static bool any_limit(const struct lm_dirtylimit *d)
{
    for (unsigned i = 0; i < d->n; i++) {
        if (d->v[i].limit) {
            return true;
        }
    }
    return false;
}

static uint64_t period_ms(lm_engine *e)
{
    pthread_mutex_lock(&e->lock);
    uint64_t p = e->params.x_vcpu_dirty_limit_period;
    pthread_mutex_unlock(&e->lock);
    return p ? p : 1000;
}

/* The next share of run time: the rate scales with it (a vCPU that runs
 * half the time dirties half as fast), so aim it at limit / rate. */
static double next_run(double run, uint64_t rate, uint64_t limit_bps)
{
    double target = rate ? run * (double)limit_bps / (double)rate : run * MAX_STEP;
    if (target > run * MAX_STEP) {
        target = run * MAX_STEP;
    }
    if (target < run / MAX_STEP) {
        target = run / MAX_STEP;
    }
    if (target > 1.0) {
        target = 1.0;
    }
    if (target < (100 - MAX_THROTTLE) / 100.0) {
        target = (100 - MAX_THROTTLE) / 100.0;
    }
    return target;
}

/* One period: sample every vCPU, recompute the limited ones' throttles,
 * then tell the embedder what changed (outside the lock). */
static void control(lm_engine *e, struct lm_dirtylimit *d)
{
    unsigned n = d->n;
    uint64_t pages[LM_MAX_VCPUS];
    for (unsigned i = 0; i < n; i++) {
        pages[i] = d->ops->dirty_pages(d->opaque, i);
    }
    uint64_t now = lm_now_ns();
    int set[LM_MAX_VCPUS];
    pthread_mutex_lock(&d->lock);
    for (unsigned i = 0; i < n; i++) {
        dl_vcpu *v = &d->v[i];
        set[i] = -1;
        uint64_t dt = now - v->last_ns;
        if (v->last_ns && dt > 0 && pages[i] >= v->last_pages) {
            v->rate = (uint64_t)((double)(pages[i] - v->last_pages) * d->page_size * 1e9 /
                                 (double)dt);
        }
        v->last_pages = pages[i];
        v->last_ns = now;
        int pct = 0;
        if (v->limit) {
            v->run = next_run(v->run, v->rate, v->limit << 20);
            pct = (int)(100.0 * (1.0 - v->run) + 0.5);
            pct = pct < 0 ? 0 : pct > MAX_THROTTLE ? MAX_THROTTLE : pct;
        } else {
            v->run = 1.0;
        }
        if (pct != v->pct) {
            v->pct = pct;
            set[i] = pct;
        }
    }
    pthread_mutex_unlock(&d->lock);
    for (unsigned i = 0; i < n; i++) {
        if (set[i] >= 0) {
            d->ops->throttle(d->opaque, i, set[i]);
        }
    }
    (void)e;
}

static void *controller(void *arg)
{
    lm_engine *e = arg;
    struct lm_dirtylimit *d = e->dirtylimit;
    pthread_mutex_lock(&d->lock);
    while (!d->quit && any_limit(d)) {
        pthread_mutex_unlock(&d->lock);
        uint64_t p = period_ms(e);
        control(e, d);
        pthread_mutex_lock(&d->lock);
        d->period_ms = p;
        struct timespec ts = lm_timespec_after(CLOCK_MONOTONIC, p * 1000000u);
        while (!d->quit && any_limit(d)) {
            if (pthread_cond_timedwait(&d->cond, &d->lock, &ts) == ETIMEDOUT) {
                break;
            }
        }
    }
    /* No limit left (or quitting): every vCPU runs freely again. */
    d->exited = true;
    int set[LM_MAX_VCPUS];
    unsigned n = d->n;
    for (unsigned i = 0; i < n; i++) {
        set[i] = d->v[i].pct;
        d->v[i].pct = 0;
        d->v[i].run = 1.0;
    }
    pthread_mutex_unlock(&d->lock);
    for (unsigned i = 0; i < n; i++) {
        if (set[i]) {
            d->ops->throttle(d->opaque, i, 0);
        }
    }
    return NULL;
}

/* Starts the controller if some vCPU has a limit and none runs; one that
 * left its loop (no limit at its last look) is joined first.  Serialised
 * by d->ctl: the QMP commands and the migration thread both get here. */
static int ensure_thread(lm_engine *e, struct lm_dirtylimit *d, lm_error *err)
{
    pthread_mutex_lock(&d->ctl);
    pthread_mutex_lock(&d->lock);
    bool started = d->thread_started, exited = d->exited;
    pthread_mutex_unlock(&d->lock);
    int ret = 0;
    if (started && exited) {
        pthread_join(d->thread, NULL);
        started = false;
    }
    pthread_mutex_lock(&d->lock);
    d->thread_started = started;
    if (!started && !d->quit && any_limit(d)) {
        d->exited = false;
        ret = pthread_create(&d->thread, NULL, controller, e);
        d->thread_started = ret == 0;
    }
    pthread_mutex_unlock(&d->lock);
    pthread_mutex_unlock(&d->ctl);
    return ret ? lm_error_set_errno(err, -ret, "cannot start the dirty-limit thread") : 0;
}

int lm_engine_set_vcpu_ops(lm_engine *e, unsigned nvcpus, const lm_vcpu_ops *ops, void *opaque,
                           lm_error *err)
{
    if (!ops || !ops->dirty_pages || !ops->throttle) {
        return lm_error_set(err, -EINVAL, "lm_vcpu_ops needs dirty_pages and throttle");
    }
    if (nvcpus == 0 || nvcpus > LM_MAX_VCPUS) {
        return lm_error_set(err, -EINVAL, "%u vCPUs: expected 1..%u", nvcpus, LM_MAX_VCPUS);
    }
    struct lm_dirtylimit *d = calloc(1, sizeof(*d));
    if (!d) {
        return lm_error_set(err, -ENOMEM, "out of memory");
    }
    pthread_mutex_init(&d->lock, NULL);
    pthread_mutex_init(&d->ctl, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&d->cond, &attr);
    pthread_condattr_destroy(&attr);
    d->ops = ops;
    d->opaque = opaque;
    d->n = nvcpus;
    for (unsigned i = 0; i < nvcpus; i++) {
        d->v[i].run = 1.0;
    }
    pthread_mutex_lock(&e->lock);
    int ret = 0;
    if (e->dirtylimit || e->status != LM_STATUS_NONE || e->thread_started) {
        ret = lm_error_set(err, -EBUSY, e->dirtylimit ? "vCPU ops are already registered"
                                                      : "registration is closed once a migration "
                                                        "has started");
    } else {
        d->page_size = e->nblocks ? e->blocks[0]->page_size : 4096;
        e->dirtylimit = d;
    }
    pthread_mutex_unlock(&e->lock);
    if (ret < 0) {
        pthread_cond_destroy(&d->cond);
        pthread_mutex_destroy(&d->ctl);
        pthread_mutex_destroy(&d->lock);
        free(d);
    }
    return ret;
}

static struct lm_dirtylimit *get(lm_engine *e)
{
    pthread_mutex_lock(&e->lock);
    struct lm_dirtylimit *d = e->dirtylimit;
    pthread_mutex_unlock(&e->lock);
    return d;
}

bool lm_dirtylimit_available(lm_engine *e)
{
    return get(e) != NULL;
}

unsigned lm_dirtylimit_counters(lm_engine *e, uint64_t *pages, unsigned max)
{
    struct lm_dirtylimit *d = get(e);
    unsigned n = d ? (d->n < max ? d->n : max) : 0;
    for (unsigned i = 0; i < n; i++) {
        pages[i] = d->ops->dirty_pages(d->opaque, i);
    }
    return n;
}

static int check_target(struct lm_dirtylimit *d, int cpu_index, lm_error *err)
{
    if (!d) {
        return lm_error_set(err, -ENOTSUP, "dirty limit is not supported: the embedder reports "
                                           "no per-vCPU dirty pages (lm_engine_set_vcpu_ops)");
    }
    if (cpu_index >= (int)d->n) {
        return lm_error_set(err, -EINVAL, "cpu-index %d out of range: the guest has %u vCPUs",
                            cpu_index, d->n);
    }
    return 0;
}

/* The one place limits change, with d->lock held; the caller then runs
 * ensure_thread.  The operator sets limit (0 lifts it) on cpu_index, -1
 * meaning every vCPU.  A migration sets limit on every vCPU, but a tighter
 * limit the operator set stays (QEMU's dirtylimit_set_all); with 0 it
 * lifts the limits it set and leaves the operator's. */
static void change_limits(struct lm_dirtylimit *d, int cpu_index, uint64_t limit,
                          bool by_migration)
{
    for (unsigned i = 0; i < d->n; i++) {
        dl_vcpu *v = &d->v[i];
        bool hit;
        if (!by_migration) {
            hit = cpu_index < 0 || (unsigned)cpu_index == i;
        } else if (limit) {
            hit = !v->limit || v->limit > limit;
        } else {
            hit = v->by_migration;
        }
        if (hit) {
            v->limit = limit;
            v->by_migration = by_migration && limit;
        }
    }
    pthread_cond_broadcast(&d->cond);
}

static int set_limit(lm_engine *e, int cpu_index, uint64_t limit, lm_error *err)
{
    struct lm_dirtylimit *d = get(e);
    int ret = check_target(d, cpu_index, err);
    if (ret < 0) {
        return ret;
    }
    pthread_mutex_lock(&d->lock);
    if (d->migration_owned) {
        pthread_mutex_unlock(&d->lock);
        return lm_error_set(err, -EBUSY, "dirty-limit live migration is running: it sets the "
                                         "limits (vcpu-dirty-limit) until it ends");
    }
    change_limits(d, cpu_index, limit, false);
    pthread_mutex_unlock(&d->lock);
    return ensure_thread(e, d, err);
}

int lm_engine_set_vcpu_dirty_limit(lm_engine *e, int cpu_index, uint64_t limit_mbps, lm_error *err)
{
    if (limit_mbps == 0 || limit_mbps > (UINT64_MAX >> 21)) {
        return lm_error_set(err, -EINVAL, "dirty-rate must be at least 1 MB/s "
                                          "(cancel-vcpu-dirty-limit lifts a limit)");
    }
    return set_limit(e, cpu_index, limit_mbps, err);
}

int lm_engine_cancel_vcpu_dirty_limit(lm_engine *e, int cpu_index, lm_error *err)
{
    return set_limit(e, cpu_index, 0, err);
}

unsigned lm_engine_query_vcpu_dirty_limit(lm_engine *e, lm_vcpu_dirty_limit *out, unsigned max)
{
    struct lm_dirtylimit *d = get(e);
    if (!d) {
        return 0;
    }
    pthread_mutex_lock(&d->lock);
    unsigned n = d->n < max ? d->n : max;
    for (unsigned i = 0; i < n; i++) {
        out[i] = (lm_vcpu_dirty_limit){ .cpu_index = i, .limit_rate = d->v[i].limit,
                                        .current_rate = d->v[i].rate >> 20,
                                        .throttle_percent = d->v[i].pct };
    }
    pthread_mutex_unlock(&d->lock);
    return n;
}

bool lm_dirtylimit_migration_engage(lm_engine *e, uint64_t limit_mbps)
{
    struct lm_dirtylimit *d = get(e);
    if (!d) {
        return false;
    }
    pthread_mutex_lock(&d->lock);
    bool first = !d->migration_owned;
    d->migration_owned = true;
    change_limits(d, -1, limit_mbps, true);
    pthread_mutex_unlock(&d->lock);
    lm_error err = LM_ERROR_INIT;
    if (ensure_thread(e, d, &err) < 0) {
        lm_warn("dirty-limit: %s", err.msg);
    }
    return first;
}

void lm_dirtylimit_migration_release(lm_engine *e)
{
    struct lm_dirtylimit *d = get(e);
    if (!d) {
        return;
    }
    pthread_mutex_lock(&d->lock);
    bool owned = d->migration_owned;
    d->migration_owned = false;
    change_limits(d, -1, 0, true);
    pthread_mutex_unlock(&d->lock);
    if (owned) {
        ensure_thread(e, d, NULL);
    }
}

bool lm_dirtylimit_migration_owned(lm_engine *e)
{
    struct lm_dirtylimit *d = get(e);
    if (!d) {
        return false;
    }
    pthread_mutex_lock(&d->lock);
    bool owned = d->migration_owned;
    pthread_mutex_unlock(&d->lock);
    return owned;
}

uint64_t lm_dirtylimit_throttle_us_per_round(lm_engine *e)
{
    struct lm_dirtylimit *d = get(e);
    if (!d) {
        return 0;
    }
    pthread_mutex_lock(&d->lock);
    uint64_t sum = 0, n = 0;
    for (unsigned i = 0; i < d->n; i++) {
        if (d->v[i].limit) {
            sum += (uint64_t)d->v[i].pct;
            n++;
        }
    }
    uint64_t us = n ? sum * d->period_ms * 1000 / 100 / n : 0;
    pthread_mutex_unlock(&d->lock);
    return us;
}

void lm_dirtylimit_free(lm_engine *e)
{
    struct lm_dirtylimit *d = get(e);
    if (!d) {
        return;
    }
    pthread_mutex_lock(&d->ctl);
    pthread_mutex_lock(&d->lock);
    d->quit = true;
    bool started = d->thread_started;
    d->thread_started = false;
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->lock);
    if (started) {
        pthread_join(d->thread, NULL);
    }
    pthread_mutex_unlock(&d->ctl);
    pthread_mutex_lock(&e->lock);
    e->dirtylimit = NULL;
    pthread_mutex_unlock(&e->lock);
    pthread_cond_destroy(&d->cond);
    pthread_mutex_destroy(&d->ctl);
    pthread_mutex_destroy(&d->lock);
    free(d);
}
