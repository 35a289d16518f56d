/*
 * Shared bandwidth budget as a virtual clock: `next_free_ns` is when the
 * bytes accounted so far will have drained at the configured rate.  Every
 * writer advances the same clock, so N writers share one budget; a writer
 * may run ahead of the clock by one window (100 ms) of data.
 */
#include "channel/ratelimit.h"
#include "common/clock.h"

#include <time.h>

#define WINDOW_NS 100000000ull /* burst allowance, as QEMU's 100 ms BUFFER_DELAY */

void lm_ratelimit_init(lm_ratelimit *rl, uint64_t bytes_per_sec)
{
    pthread_mutex_init(&rl->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&rl->cond, &ca);
    pthread_condattr_destroy(&ca);
    rl->bytes_per_sec = bytes_per_sec;
    rl->next_free_ns = 0;
    rl->aborted = 0;
    rl->lifted = false;
    rl->waiters = 0;
    rl->held_since_ns = 0;
    rl->held_ns = 0;
}

void lm_ratelimit_destroy(lm_ratelimit *rl)
{
    pthread_mutex_destroy(&rl->lock);
    pthread_cond_destroy(&rl->cond);
}

void lm_ratelimit_set(lm_ratelimit *rl, uint64_t bytes_per_sec)
{
    pthread_mutex_lock(&rl->lock);
    rl->bytes_per_sec = bytes_per_sec;
    rl->next_free_ns = 0;
    pthread_mutex_unlock(&rl->lock);
}

void lm_ratelimit_abort(lm_ratelimit *rl, bool aborted)
{
    pthread_mutex_lock(&rl->lock);
    __atomic_store_n(&rl->aborted, aborted ? 1 : 0, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&rl->cond);
    pthread_mutex_unlock(&rl->lock);
}

void lm_ratelimit_lift(lm_ratelimit *rl, bool lifted)
{
    pthread_mutex_lock(&rl->lock);
    rl->lifted = lifted;
    rl->next_free_ns = 0;
    pthread_cond_broadcast(&rl->cond);
    pthread_mutex_unlock(&rl->lock);
}

uint64_t lm_ratelimit_held_ns(lm_ratelimit *rl)
{
    pthread_mutex_lock(&rl->lock);
    uint64_t held = rl->held_ns;
    if (rl->waiters) {
        held += lm_now_ns() - rl->held_since_ns;
    }
    pthread_mutex_unlock(&rl->lock);
    return held;
}

/* Called with the lock. */
static bool limited(const lm_ratelimit *rl)
{
    return rl->bytes_per_sec && !rl->lifted;
}

/* Counts the wall time during which any writer sleeps (the union of the
 * sleeps of several writers, not their sum).  Called with the lock. */
static void held_begin(lm_ratelimit *rl)
{
    if (rl->waiters++ == 0) {
        rl->held_since_ns = lm_now_ns();
    }
}

static void held_end(lm_ratelimit *rl)
{
    if (--rl->waiters == 0) {
        rl->held_ns += lm_now_ns() - rl->held_since_ns;
    }
}

void lm_ratelimit_charge(lm_ratelimit *rl, uint64_t n)
{
    pthread_mutex_lock(&rl->lock);
    if (limited(rl)) {
        uint64_t now = lm_now_ns();
        uint64_t base = rl->next_free_ns < now ? now : rl->next_free_ns;
        rl->next_free_ns = base + (uint64_t)((double)n * 1e9 / (double)rl->bytes_per_sec);
    }
    pthread_mutex_unlock(&rl->lock);
}

uint64_t lm_ratelimit_window_bytes(lm_ratelimit *rl)
{
    pthread_mutex_lock(&rl->lock);
    uint64_t bps = rl->bytes_per_sec;
    pthread_mutex_unlock(&rl->lock);
    if (bps == 0) {
        return 0;
    }
    uint64_t w = (uint64_t)((double)bps * (double)WINDOW_NS / 1e9);
    return w < (64u << 10) ? (64u << 10) : w;
}

uint64_t lm_ratelimit_delay_ns(lm_ratelimit *rl)
{
    pthread_mutex_lock(&rl->lock);
    uint64_t until = limited(rl) ? rl->next_free_ns : 0;
    pthread_mutex_unlock(&rl->lock);
    uint64_t now = lm_now_ns();
    return until > now + WINDOW_NS ? until - WINDOW_NS - now : 0;
}

void lm_ratelimit_consume(lm_ratelimit *rl, uint64_t n)
{
    pthread_mutex_lock(&rl->lock);
    uint64_t bps = rl->bytes_per_sec;
    if (!limited(rl)) {
        pthread_mutex_unlock(&rl->lock);
        return;
    }
    uint64_t now = lm_now_ns();
    uint64_t base = rl->next_free_ns;
    if (base < now) {
        base = now; /* idle time is not saved up */
    }
    uint64_t cost = (uint64_t)((double)n * 1e9 / (double)bps);
    rl->next_free_ns = base + cost;
    uint64_t until = rl->next_free_ns;
    if (until <= now + WINDOW_NS) {
        pthread_mutex_unlock(&rl->lock);
        return;
    }
    held_begin(rl);
    /* Write only once the budget has drained to within one window; a
     * switchover that lifts the limit, or a cancel, ends the wait. */
    while (until > lm_now_ns() + WINDOW_NS && !__atomic_load_n(&rl->aborted, __ATOMIC_ACQUIRE) &&
           !rl->lifted) {
        uint64_t wake = until - WINDOW_NS;
        struct timespec ts = { .tv_sec = (time_t)(wake / 1000000000ull),
                               .tv_nsec = (long)(wake % 1000000000ull) };
        pthread_cond_timedwait(&rl->cond, &rl->lock, &ts);
    }
    held_end(rl);
    pthread_mutex_unlock(&rl->lock);
}
