/*
 * Shared bandwidth budget as a virtual clock: `next_free_ns` is when the
 * bytes accounted so far will have drained at the configured rate.  Every
 * writer advances the same clock, so N writers share one budget; a writer
 * may run ahead of the clock by one window (100 ms) of data.
 */
#include "channel/ratelimit.h"
#include "common/clock.h"

#define WINDOW_NS 100000000ull /* burst allowance, as QEMU's 100 ms BUFFER_DELAY */
#define SLEEP_SLICE_NS 10000000ull /* re-check abort this often while waiting */

void lm_ratelimit_init(lm_ratelimit *rl, uint64_t bytes_per_sec)
{
    pthread_mutex_init(&rl->lock, NULL);
    rl->bytes_per_sec = bytes_per_sec;
    rl->next_free_ns = 0;
    rl->aborted = 0;
}

void lm_ratelimit_destroy(lm_ratelimit *rl)
{
    pthread_mutex_destroy(&rl->lock);
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
    __atomic_store_n(&rl->aborted, aborted ? 1 : 0, __ATOMIC_RELEASE);
}

void lm_ratelimit_charge(lm_ratelimit *rl, uint64_t n)
{
    pthread_mutex_lock(&rl->lock);
    if (rl->bytes_per_sec) {
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
    uint64_t until = rl->bytes_per_sec ? rl->next_free_ns : 0;
    pthread_mutex_unlock(&rl->lock);
    uint64_t now = lm_now_ns();
    return until > now + WINDOW_NS ? until - WINDOW_NS - now : 0;
}

void lm_ratelimit_consume(lm_ratelimit *rl, uint64_t n)
{
    pthread_mutex_lock(&rl->lock);
    uint64_t bps = rl->bytes_per_sec;
    if (bps == 0) {
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
    pthread_mutex_unlock(&rl->lock);
    /* Write only once the budget has drained to within one window. */
    while (until > lm_now_ns() + WINDOW_NS && !__atomic_load_n(&rl->aborted, __ATOMIC_ACQUIRE)) {
        uint64_t wait = until - WINDOW_NS - lm_now_ns();
        lm_sleep_ns(wait < SLEEP_SLICE_NS ? wait : SLEEP_SLICE_NS);
    }
}
