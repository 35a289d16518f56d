#include "channel/ratelimit.h"
#include "common/clock.h"

#define WINDOW_NS 100000000ull /* 100 ms, as QEMU's BUFFER_DELAY */

void lm_ratelimit_init(lm_ratelimit *rl, uint64_t bytes_per_sec)
{
    pthread_mutex_init(&rl->lock, NULL);
    rl->bytes_per_sec = bytes_per_sec;
    rl->window_start_ns = lm_now_ns();
    rl->window_bytes = 0;
}

void lm_ratelimit_destroy(lm_ratelimit *rl)
{
    pthread_mutex_destroy(&rl->lock);
}

void lm_ratelimit_set(lm_ratelimit *rl, uint64_t bytes_per_sec)
{
    pthread_mutex_lock(&rl->lock);
    rl->bytes_per_sec = bytes_per_sec;
    pthread_mutex_unlock(&rl->lock);
}

void lm_ratelimit_consume(lm_ratelimit *rl, uint64_t n)
{
    for (;;) {
        pthread_mutex_lock(&rl->lock);
        uint64_t bps = rl->bytes_per_sec;
        if (bps == 0) {
            pthread_mutex_unlock(&rl->lock);
            return;
        }
        uint64_t now = lm_now_ns();
        if (now - rl->window_start_ns >= WINDOW_NS) {
            rl->window_start_ns = now;
            rl->window_bytes = 0;
        }
        uint64_t budget = bps / 10 ? bps / 10 : 1;
        if (rl->window_bytes < budget || rl->window_bytes == 0) {
            /* Under budget: take it (a large write may overshoot one window;
             * the following windows then wait it off). */
            rl->window_bytes += n;
            pthread_mutex_unlock(&rl->lock);
            return;
        }
        uint64_t wait = rl->window_start_ns + WINDOW_NS - now;
        /* Carry the overshoot into the next window. */
        rl->window_bytes -= budget;
        rl->window_start_ns += WINDOW_NS;
        pthread_mutex_unlock(&rl->lock);
        if (wait <= WINDOW_NS) {
            lm_sleep_ns(wait);
        }
    }
}
